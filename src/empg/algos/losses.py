"""PPO-style policy loss (GRPO / DAPO), loss aggregation, KL estimators and the entropy bonus (METHOD §2).

* Clipped surrogate with separate ``clip_low`` / ``clip_high`` (DAPO clip-higher: 0.2 / 0.28) and optional dual clip
  ``c`` (> 1) bounding the loss of negative-advantage tokens by ``-c A`` (arXiv 1912.09729).
* Aggregation kept separate from the per-token objective (:func:`agg_loss`): ``"token-mean"`` (DAPO),
  ``"seq-mean-token-mean"`` (GRPO), ``"seq-mean-token-sum-norm"`` (Dr.GRPO, divide by a constant max length).
* ``denominator`` lets micro-batches with gradient accumulation reproduce the full-batch loss exactly: pass the
  mini-batch's token count (``"token-mean"``) or sequence count (the seq modes).

Every input is first selected with ``torch.where(mask, x, 0)``, so NaN/inf at masked positions reach neither the
loss nor the gradients.

Metric keys (all floats, token-mean over masked tokens):
``actor/pg_loss`` the aggregated loss; ``actor/clipfrac_low`` share of tokens with A < 0 and ratio < 1 - clip_low
(the clip is active); ``actor/clipfrac_high`` share with A > 0 and ratio > 1 + clip_high; ``actor/clipfrac`` their
sum; ``actor/dual_clipfrac`` share where the dual clip is active; ``actor/approx_kl`` mean of
``(r - 1) - log r`` (KL(old || new) estimate, http://joschu.net/blog/kl-approx.html); ``actor/ratio_mean``,
``actor/ratio_min``, ``actor/ratio_max``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["AGG_MODES", "KL_KINDS", "agg_loss", "policy_loss", "kl_penalty", "entropy_loss"]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of the values {tuple(like.shape)} (B, T)")
    return mask if mask.dtype == torch.bool else mask > 0


def agg_loss(
    loss_mat: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    denominator: float | Tensor | None = None,
    *,
    max_len: int | None = None,
) -> Tensor:
    """Aggregate a per-token loss (B, T) into a scalar.

    Args:
        loss_mat: (B, T) per-token loss; values at masked positions are ignored (even NaN).
        mask: (B, T) 1/True = token counts.
        agg: ``"token-mean"``: sum / number of masked tokens. ``"seq-mean-token-mean"``: mean over each row's
            tokens, then mean over all B rows (a row without tokens counts as 0). ``"seq-mean-token-sum-norm"``: each
            row's sum / ``max_len``, then mean over all B rows (Dr.GRPO).
        denominator: global normaliser replacing the local one: the total token count for ``"token-mean"``, the
            total number of rows for the seq modes. Summing micro-batch losses computed with the mini-batch's
            denominator gives the mini-batch loss exactly.
        max_len: the constant of ``"seq-mean-token-sum-norm"`` (default T).

    Returns:
        Scalar loss (0 when nothing is masked in).
    """
    if agg not in AGG_MODES:
        raise ValueError(f"loss aggregation {agg!r} is not one of {AGG_MODES}")
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be (B, T); got {tuple(loss_mat.shape)}")
    m = _bool_mask(mask, loss_mat)
    x = torch.where(m, loss_mat, torch.zeros_like(loss_mat))
    if agg == "token-mean":
        denom = m.sum() if denominator is None else denominator
        return x.sum() / torch.clamp(torch.as_tensor(denom, dtype=x.dtype, device=x.device), min=1e-12)
    if agg == "seq-mean-token-mean":
        per_seq = x.sum(-1) / m.sum(-1).clamp(min=1).to(x.dtype)  # (B,); a row without tokens gives 0
    else:
        per_seq = x.sum(-1) / float(max_len if max_len is not None else loss_mat.shape[-1])  # (B,)
    rows = loss_mat.shape[0] if denominator is None else denominator
    return per_seq.sum() / torch.clamp(torch.as_tensor(rows, dtype=x.dtype, device=x.device), min=1e-12)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    denominator: float | Tensor | None = None,
    max_len: int | None = None,
    advantages_neg: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate loss.

    Args:
        logp: (B, T) log-probs of the taken tokens under the current policy (differentiable).
        old_logp: (B, T) behaviour log-probs.
        advantages: (B, T) per-token advantages, or (B,) one per row (broadcast over T).
        mask: (B, T) 1/True = trainable model token.
        clip_low: ratio lower bound ``1 - clip_low``.
        clip_high: ratio upper bound ``1 + clip_high`` (DAPO: 0.28).
        dual_clip: c > 1 bounds the loss of A < 0 tokens by ``-c A``; None disables.
        agg: see :func:`agg_loss`.
        denominator: see :func:`agg_loss`.
        max_len: see :func:`agg_loss`.
        advantages_neg: (B, T) or (B,) non-positive advantages whose surrogate is added to that of ``advantages``
            (then non-negative) at the same ratio: merged duplicate rows
            (:meth:`empg.train.batch.StepBatch.merge_duplicates`), whose loss is the sum of their rows' losses.

    Returns:
        (scalar loss, metrics) — the metric keys are listed in the module docstring.
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (typically 3) or None; got {dual_clip}")
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0; got {clip_low}, {clip_high}")
    parts = [advantages] if advantages_neg is None else [advantages, advantages_neg]
    parts = [a.unsqueeze(-1).expand_as(logp) if a.dim() == 1 else a for a in parts]
    m = _bool_mask(mask, logp)
    if old_logp.shape != logp.shape or any(a.shape != logp.shape for a in parts):
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and advantages {tuple(parts[0].shape)} "
            "must share the shape (B, T)"
        )
    zero = torch.zeros_like(logp)
    log_ratio = torch.where(m, logp - torch.where(m, old_logp, zero), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # (B, T)
    pg, low, high, dual_active = zero, torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m)
    for part in parts:
        adv = torch.where(m, part.to(logp.dtype), zero)
        part_pg, part_dual = _surrogate(ratio, adv, clip_low, clip_high, dual_clip)
        pg, dual_active = pg + part_pg, dual_active | part_dual
        low, high = low | ((adv < 0) & (ratio < 1.0 - clip_low)), high | ((adv > 0) & (ratio > 1.0 + clip_high))
    loss = agg_loss(pg, m, agg, denominator, max_len=max_len)
    metrics = _metrics(loss, ratio.detach(), log_ratio.detach(), low, high, dual_active, m)
    return loss, metrics


def _surrogate(
    ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float, dual_clip: float | None
) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate ``max(-A r, -A clip(r))`` (B, T), dual-clipped for A < 0, and where the dual
    clip is active."""
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    dual_active = torch.zeros_like(adv, dtype=torch.bool)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (pg > bound)
        pg = torch.where(adv < 0, torch.minimum(pg, bound), pg)
    return pg, dual_active


def _metrics(
    loss: Tensor, ratio: Tensor, log_ratio: Tensor, low: Tensor, high: Tensor, dual_active: Tensor, m: Tensor
) -> dict[str, float]:
    """Metrics of the module docstring; ``low`` / ``high`` / ``dual_active`` (B, T) bool: clipped tokens."""
    n = max(int(m.sum()), 1)

    def frac(x: Tensor) -> float:
        return float((x & m).sum()) / n

    low, high = frac(low), frac(high)
    r = ratio[m]
    out = {
        "actor/pg_loss": float(loss.detach()),
        "actor/clipfrac_low": low,
        "actor/clipfrac_high": high,
        "actor/clipfrac": low + high,
        "actor/dual_clipfrac": frac(dual_active),
        "actor/approx_kl": float(torch.where(m, (ratio - 1.0) - log_ratio, torch.zeros_like(ratio)).sum()) / n,
        "actor/ratio_mean": float(r.mean()) if r.numel() else 1.0,
        "actor/ratio_min": float(r.min()) if r.numel() else 1.0,
        "actor/ratio_max": float(r.max()) if r.numel() else 1.0,
    }
    return out


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3", mask: Tensor | None = None) -> Tensor:
    """Per-token KL(current || reference) estimate (B, T), to aggregate with :func:`agg_loss`.

    ``k1 = logp - ref``; ``k2 = (logp - ref)^2 / 2``; ``k3 = exp(ref - logp) - (ref - logp) - 1`` clamped to
    [-10, 10] (http://joschu.net/blog/kl-approx.html).

    Args:
        logp: (B, T) current log-probs (differentiable).
        ref_logp: (B, T) frozen reference log-probs.
        kind: one of :data:`KL_KINDS`.
        mask: optional (B, T); positions outside it give 0. Without a mask, non-finite differences (padding of
            either model) are set to 0 with ``torch.where`` so they can never poison the gradient.

    Returns:
        (B, T) per-token penalty.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"KL estimator {kind!r} is not one of {KL_KINDS}")
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp {tuple(ref_logp.shape)} must match logp {tuple(logp.shape)}")
    diff = ref_logp.to(logp.dtype) - logp  # (B, T)
    keep = torch.isfinite(diff) if mask is None else _bool_mask(mask, logp)
    diff = torch.where(keep, diff, torch.zeros_like(diff))
    if kind == "k1":
        return -diff
    if kind == "k2":
        return 0.5 * diff.pow(2)
    return (torch.exp(diff) - diff - 1.0).clamp(-10.0, 10.0)


def entropy_loss(
    entropy: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    denominator: float | Tensor | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Aggregated token entropy (B, T) → scalar, for an entropy bonus ``loss - entropy_coef * entropy_loss``."""
    return agg_loss(entropy, mask, agg, denominator, max_len=max_len)
