"""Token entropies and log-probs from logits, chunked; step-level aggregation (METHOD §3.1).

All logits functions walk the rows of ``logits`` (..., V) as views (no copy, also for non-contiguous slices such as
``logits[:, :-1]``) and process ``chunk_size`` rows at a time in float32, so the extra memory is a few
(chunk_size, V) float32 buffers instead of several (N, V) ones. ``temperature`` divides the logits (the rollout
temperature defines the behaviour policy).

Masked positions: a token's value depends only on its own logits row, and every reduction over tokens selects with
``torch.where``, so NaN or inf planted at masked positions never reaches an unmasked result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "STEP_ENTROPY_MODES",
    "token_entropy",
    "token_renyi2",
    "token_logprobs",
    "logprobs_and_entropy",
    "masked_logprobs_and_entropy",
    "step_entropy",
    "broadcast_to_tokens",
]

STEP_ENTROPY_MODES = ("mean", "renyi2", "weighted", "action")


def _check(logits: Tensor, temperature: float, chunk_size: int) -> None:
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty vocabulary dim (..., V); got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits); got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


def _scaled(chunk: Tensor, temperature: float) -> Tensor:
    z = chunk.float()
    return z / temperature if temperature != 1.0 else z


def _row_chunks(logits: Tensor, chunk_size: int) -> list[Tensor]:
    """Views (c, V) covering the rows of ``logits`` (..., V) in order, without copying the logits.

    A non-contiguous input (e.g. ``logits[:, :-1]``) cannot be flattened as a view, and ``reshape`` would copy the
    whole tensor; it is then split along its first dim first.
    """
    v = logits.shape[-1]
    try:
        return list(logits.view(-1, v).split(chunk_size))
    except RuntimeError:
        return [c for sub in logits.unbind(0) for c in _row_chunks(sub, chunk_size)]


def _per_row(logits: Tensor, fn: Callable[[Tensor], Tensor], temperature: float, chunk_size: int) -> Tensor:
    """Apply ``fn`` (c, V) float32 → (c,) to row chunks of ``logits`` (..., V); returns (...) float32."""
    _check(logits, temperature, chunk_size)
    outs = [fn(_scaled(c, temperature)) for c in _row_chunks(logits, chunk_size)]
    out = torch.cat(outs) if outs else logits.new_zeros(0, dtype=torch.float32)
    return out.reshape(logits.shape[:-1])


def _entropy_rows(z: Tensor) -> Tensor:
    # H = -sum p log p; entr(0) = 0 handles -inf logits (banned tokens) without NaN
    return torch.special.entr(torch.softmax(z, dim=-1)).sum(-1)


def _renyi2_rows(z: Tensor) -> Tensor:
    # H2 = -log sum p^2 = -logsumexp(2 log p)
    return -torch.logsumexp(2.0 * torch.log_softmax(z, dim=-1), dim=-1)


def token_entropy(logits: Tensor, *, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Shannon entropy (nats) of softmax(logits / temperature) per position.

    Args:
        logits: (..., V) any float dtype.
        temperature: divides the logits.
        chunk_size: rows of the flattened (N, V) view processed at once.

    Returns:
        (...) float32 entropies. Differentiable (grad memory then grows with the whole tensor).
    """
    return _per_row(logits, _entropy_rows, temperature, chunk_size)


def token_renyi2(logits: Tensor, *, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Rényi-2 entropy ``-log sum_a p(a)^2`` per position (METHOD §4), shape (...) float32 from logits (..., V)."""
    return _per_row(logits, _renyi2_rows, temperature, chunk_size)


def _check_labels(logits: Tensor, labels: Tensor) -> None:
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match the logits' leading dims {tuple(logits.shape[:-1])}")
    if labels.is_floating_point():
        raise ValueError("labels must be an integer tensor of token ids")
    if labels.numel() and int(labels.max()) >= logits.shape[-1]:
        raise ValueError(f"label id {int(labels.max())} is out of range for a vocabulary of {logits.shape[-1]}")


def token_logprobs(logits: Tensor, labels: Tensor, *, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """``log softmax(logits / temperature)[label]`` per position (differentiable; the trainer's log-probs).

    Args:
        logits: (..., V).
        labels: (...) token ids; negative ids (e.g. -100 padding) are ignored and give 0.
        temperature: divides the logits.
        chunk_size: rows processed at once.

    Returns:
        (...) float32 log-probs.
    """
    logp, _ = logprobs_and_entropy(logits, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=False)
    return logp


def logprobs_and_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    entropy_grad: bool = False,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``labels`` and token entropies in one pass over the logits chunks.

    Args:
        logits: (..., V).
        labels: (...) token ids; negative ids give log-prob 0.
        temperature: divides the logits.
        chunk_size: rows processed at once.
        entropy_grad: let gradients flow through the entropy (for an entropy bonus); off by default, which saves
            the autograd buffers of the entropy.
        with_entropy: False skips the entropy (returns None in its place).

    Returns:
        (logp (...) float32, entropy (...) float32 or None).
    """
    _check(logits, temperature, chunk_size)
    _check_labels(logits, labels)
    lead = logits.shape[:-1]
    chunks = _row_chunks(logits, chunk_size)  # views (c, V), no copy of the logits
    flat_labels = labels.reshape(-1)  # (N,)
    logps, ents = [], []
    for c, lab in zip(chunks, flat_labels.split([c.shape[0] for c in chunks]), strict=True):
        z = _scaled(c, temperature)  # (c, V)
        valid = lab >= 0
        picked = z.gather(-1, torch.where(valid, lab, 0).unsqueeze(-1)).squeeze(-1)  # (c,)
        lp = picked - torch.logsumexp(z, dim=-1)
        logps.append(torch.where(valid, lp, torch.zeros_like(lp)))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ents.append(_entropy_rows(z))
    empty = logits.new_zeros(0, dtype=torch.float32)
    logp = (torch.cat(logps) if logps else empty).reshape(lead)
    ent = (torch.cat(ents) if ents else empty).reshape(lead) if with_entropy else None
    return logp, ent


def masked_logprobs_and_entropy(
    logits: Tensor,
    labels: Tensor,
    allowed: Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probs and entropies under softmax(logits / temperature) **restricted to an allowed set** per position.

    The constrained-decoding distribution (:mod:`empg.policy.constrain`): ``p(a) = exp(z_a) / Σ_{b ∈ A} exp(z_b)`` for
    ``a ∈ A``, 0 elsewhere. Positions with no allowed set (all ``-1``) are not constrained: their outputs are 0 and
    ``constrained`` is False there, so callers select the full-softmax values with ``torch.where``. Finite (and with
    finite gradients) everywhere, also at unconstrained positions.

    Args:
        logits: (..., V).
        labels: (...) token ids (at constrained positions they must be in the allowed set).
        allowed: (..., K) long, the allowed token ids of each position padded with -1 (K >= 1).
        temperature: divides the logits.

    Returns:
        (logp (...) float32, entropy (...) float32, constrained (...) bool).
    """
    _check(logits, temperature, 1)
    _check_labels(logits, labels)
    if allowed.shape[:-1] != labels.shape or allowed.shape[-1] < 1:
        raise ValueError(f"allowed {tuple(allowed.shape)} must be the labels' shape {tuple(labels.shape)} + (K,)")
    valid = allowed >= 0  # (..., K)
    constrained = valid.any(-1)  # (...)
    # unconstrained positions get the one-element set {label}: finite values and gradients, discarded by the caller
    first = torch.zeros_like(valid)
    first[..., 0] = True
    ids = torch.where(valid, allowed, torch.where(first, labels.clamp_min(0).unsqueeze(-1), 0))
    keep = valid | (first & ~constrained.unsqueeze(-1))
    z = _scaled(logits.gather(-1, ids), temperature).masked_fill(~keep, float("-inf"))  # (..., K)
    logz = torch.log_softmax(z, dim=-1)
    logz = torch.where(keep, logz, torch.zeros_like(logz))  # no -inf left: products and their gradients stay finite
    hit = (ids == labels.unsqueeze(-1)) & keep
    lp = torch.where(hit, logz, torch.zeros_like(logz)).sum(-1)
    ent = -(torch.where(keep, logz.exp(), torch.zeros_like(logz)) * logz).sum(-1)
    zero = torch.zeros_like(lp)
    return torch.where(constrained, lp, zero), torch.where(constrained, ent, zero), constrained


def step_entropy(token_values: Tensor, mask: Tensor, *, mode: str = "mean", weights: Tensor | None = None) -> Tensor:
    """Aggregate token entropies of each step's response into one step entropy H.

    Args:
        token_values: (B, T) per-token values (Shannon entropies; Rényi-2 entropies for ``mode="renyi2"``).
        mask: (B, T) 1/True = the model's own generated token, 0 = anything else (never counted).
        mode: ``"mean"``: mean over masked tokens. ``"renyi2"``: same mean; the caller passes Rényi-2 token values.
            ``"weighted"``: ``sum(w v) / sum(w)`` over masked tokens with ``weights`` (B, T) >= 0 (e.g. action tokens
            weighted above thought tokens); rows whose weights sum to 0 fall back to ``"mean"``. ``"action"``: mean
            over masked tokens with ``weights > 0`` (the action span); rows without such a token fall back to
            ``"mean"``.
        weights: (B, T), required for ``"weighted"`` and ``"action"``.

    Returns:
        (B,) float step entropies; a row with no masked token gets 0.
    """
    if mode not in STEP_ENTROPY_MODES:
        raise ValueError(f"step entropy mode {mode!r} is not one of {STEP_ENTROPY_MODES}")
    if token_values.dim() != 2 or mask.shape != token_values.shape:
        raise ValueError(
            f"token_values {tuple(token_values.shape)} and mask {tuple(mask.shape)} must both be (B, T) (one row per "
            "step's response)"
        )
    m = mask.bool() if mask.dtype == torch.bool else mask > 0
    v = token_values if token_values.is_floating_point() else token_values.float()
    zero = torch.zeros_like(v)
    mean = _masked_mean(v, m, zero)
    if mode in ("mean", "renyi2"):
        return mean
    if weights is None or weights.shape != v.shape:
        got = None if weights is None else tuple(weights.shape)
        raise ValueError(f"mode={mode!r} needs weights of shape {tuple(v.shape)} (B, T); got {got}")
    if mode == "action":
        am = m & (torch.where(m, weights, torch.zeros_like(weights)) > 0)
        return torch.where(am.any(-1), _masked_mean(v, am, zero), mean)
    w = torch.where(m, weights.to(v.dtype), zero)
    if bool((w < 0).any()):
        raise ValueError("weights must be >= 0 at masked (model) tokens")
    wsum = w.sum(-1)
    num = torch.where(m, w * torch.where(m, v, zero), zero).sum(-1)
    return torch.where(wsum > 0, num / torch.where(wsum > 0, wsum, torch.ones_like(wsum)), mean)


def _masked_mean(v: Tensor, m: Tensor, zero: Tensor) -> Tensor:
    count = m.sum(-1)
    return torch.where(m, v, zero).sum(-1) / count.clamp(min=1).to(v.dtype)


def broadcast_to_tokens(step_values: Tensor, mask: Tensor) -> Tensor:
    """Give every masked token of row b the value ``step_values[b]``; 0 elsewhere.

    Args:
        step_values: (B,) one value per step (e.g. the final advantage).
        mask: (B, T) 1/True = model token.

    Returns:
        (B, T) in the dtype of ``step_values``.
    """
    if step_values.dim() != 1 or mask.dim() != 2 or mask.shape[0] != step_values.shape[0]:
        raise ValueError(f"step_values {tuple(step_values.shape)} must be (B,) and mask {tuple(mask.shape)} (B, T)")
    m = mask.bool() if mask.dtype == torch.bool else mask > 0
    vals = step_values.unsqueeze(-1).expand(m.shape)
    return torch.where(m, vals, torch.zeros_like(vals))
