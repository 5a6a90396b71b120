"""The EMPG advantage transform (METHOD §3), vectorised over steps.

For every step (i, t) of the batch S with base advantage A(i) and step entropy H_{i,t}:

1. ``h = (H - min_S H) / (max_S H - min_S H + eps)``                       (batch min-max normalisation)
2. ``g = exp(-k h) / (mean_S exp(-k h) + eps)``                             (self-calibrating scaling, mean 1)
3. ``f_{i,t} = exp(-k_next h_{i,t+1})`` if step t+1 of trajectory i exists, else 0   (future-clarity bonus)
4. ``A_mod = g A + zeta f``
5. ``A_final = A_mod - mean_S A_mod`` (``final_norm="mean"``; see :data:`FINAL_NORMS` for the others)

Rows may come in any order; the next step of (traj, t) is the row with the same ``traj_id`` and ``step_idx == t+1``.

Duplicated rows (same ``traj_id`` and ``step_idx``) are de-duplicated: identical duplicates count once in every
statistic (min, max, means) and all copies receive the same output. Duplicates that disagree on entropy or
advantage raise a ``ValueError`` because the batch is then inconsistent.

Everything is tensor code with no Python loop over steps or trajectories: O(S) with a dense key table when the
trajectory ids are small non-negative integers and rows are unique (the trainer's case), else one O(S log S) sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FINAL_NORMS", "EMPGStats", "empg_transform", "empg_transform_with_stats"]

FINAL_NORMS = ("mean", "mean_std", "none", "traj_mean")
"""``"mean"``: subtract the step-level mean (paper). ``"mean_std"``: also divide by the step-level std (population,
plus eps). ``"none"``: A_mod as is. ``"traj_mean"``: subtract the mean over trajectories of each trajectory's mean
A_mod, so long (usually failed) trajectories do not dominate the shift (METHOD §6 risk 1)."""


@dataclass
class EMPGStats:
    """Per-step intermediates of the transform, all (S,) in the input row order.

    Attributes:
        g: self-calibrating scale (1 everywhere when ``use_scaling=False``).
        f: future-clarity bonus factor ``exp(-k_next h_next)`` before ``zeta``; 0 where there is no next step.
        h_norm: min-max normalised step entropy in [0, 1).
        has_next: bool, the trajectory has a step ``step_idx + 1``.
        a_mod: modulated advantage before the final normalisation.
        a_final: the returned advantage.
    """

    g: Tensor
    f: Tensor
    h_norm: Tensor
    has_next: Tensor
    a_mod: Tensor
    a_final: Tensor

    def metrics(self, success: Tensor | None = None, prefix: str = "empg") -> dict[str, float]:
        """Scalar summaries: mean/min/max of g and of f (over steps with a next step), and, when ``success`` (S,)
        bool is given, the mean advantage of successful and failed steps before (a_mod) and after normalisation.
        """
        out: dict[str, float] = {}
        f_next = self.f[self.has_next]
        for name, t in (("g", self.g), ("f", f_next)):
            if t.numel():
                out.update({f"{prefix}/{name}_mean": float(t.mean()), f"{prefix}/{name}_min": float(t.min())})
                out[f"{prefix}/{name}_max"] = float(t.max())
        if success is not None:
            success = success.to(torch.bool)
            for tag, m in (("success", success), ("failure", ~success)):
                if bool(m.any()):
                    out[f"{prefix}/adv_{tag}_before"] = float(self.a_mod[m].double().mean())
                    out[f"{prefix}/adv_{tag}_after"] = float(self.a_final[m].double().mean())
        return out


def _validate(advantages: Tensor, step_entropy: Tensor, traj_id: Tensor, step_idx: Tensor, final_norm: str) -> int:
    """Raise ``ValueError`` naming the problem; return the largest ``step_idx``."""
    n = advantages.shape[0] if advantages.dim() == 1 else -1
    for name, t in (("advantages", advantages), ("step_entropy", step_entropy), ("traj_id", traj_id)):
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; advantages, step_entropy, traj_id and step_idx must all be "
                f"1-D with one entry per step (advantages has {tuple(advantages.shape)})"
            )
    if step_idx.dim() != 1 or step_idx.shape[0] != n:
        raise ValueError(f"step_idx has shape {tuple(step_idx.shape)}; expected ({n},)")
    if n == 0:
        raise ValueError("empg_transform needs at least one step; got an empty batch")
    if traj_id.is_floating_point() or step_idx.is_floating_point():
        raise ValueError("traj_id and step_idx must be integer tensors (torch.long)")
    # .min(): int64 amin takes ~6x as long as amax on x86 CPUs (torch 2.13); .min() ~2.5x
    step_min, step_max = int(step_idx.min()), int(step_idx.amax())
    if step_min < 0:
        raise ValueError("step_idx must be >= 0 (0-based turn index inside the trajectory)")
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"final_norm={final_norm!r} is not one of {FINAL_NORMS}")
    return step_max


_NON_FINITE = "{name} contains NaN or inf; mask padding before computing step entropies"


def _check_finite(advantages: Tensor, step_entropy: Tensor) -> None:
    """Raise ``ValueError`` naming the input that holds a NaN or inf.

    Not run on every call (each is a pass over memory): the transform checks the entropies' min and max, which
    it needs anyway, and the sum of A_mod, which is non-finite when any advantage is (g > 0 or g = 0 times
    NaN/inf); this names the culprit. It runs before de-duplication, which compares values (NaN != NaN).
    """
    for name, t in (("advantages", advantages), ("step_entropy", step_entropy)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(_NON_FINITE.format(name=name))


@dataclass
class _StepIndex:
    """Unique steps of a batch: per-unique-step values and the links between them.

    Attributes:
        adv: (U,) float64 advantage per unique step.
        ent: (U,) float64 entropy per unique step.
        nxt: (U,) 1 + the index of the next step (same trajectory, step + 1) among the unique steps, 0 if none
            (so a gather from a table with a leading 0 gives "0 where there is no next step").
        traj: (U,) non-negative integer trajectory label (dense enough for ``bincount``).
        inv: (S,) row → unique step, or None when every row is unique (identity).
    """

    adv: Tensor
    ent: Tensor
    nxt: Tensor
    traj: Tensor
    inv: Tensor | None

    def rows(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-unique-step values (U,) back in input row order (S,); floating ones cast to ``dtype``."""
        x = x if self.inv is None else x[self.inv]
        return x.to(dtype) if x.is_floating_point() else x


def _traj_labels(traj_id: Tensor) -> tuple[Tensor, int]:
    """Non-negative trajectory labels and their maximum: the ids themselves when already small and >= 0, else
    their rank."""
    lo, hi = int(traj_id.min()), int(traj_id.amax())
    if lo >= 0 and hi <= 4 * traj_id.shape[0] + 1024:
        return traj_id.to(torch.int64), hi
    labels = torch.unique(traj_id, return_inverse=True)[1].to(torch.int64)
    return labels, int(labels.max())


def _index_steps(adv: Tensor, ent: Tensor, traj_id: Tensor, step_idx: Tensor, max_step: int) -> _StepIndex:
    """Link each step to its next step, de-duplicating identical duplicate rows.

    Each row gets the key ``traj * M + step`` with ``M = max_step + 2``, so ``key + 1`` is the next step of the same
    trajectory and never wraps into the next trajectory. Fast path (no duplicates, key range <= 8 S): a dense
    key → (row + 1) table, O(S) with no sort. Every row writes its own non-zero number 1..S into its key's slot; S
    slots are non-zero exactly when no row was overwritten, i.e. when there are no duplicate keys. Otherwise one
    sort of the keys; duplicates must be exact copies.
    """
    traj, traj_max = _traj_labels(traj_id)
    m = max_step + 2
    key = torch.add(step_idx.to(torch.int64), traj, alpha=m)  # (S,) traj * m + step
    n = key.shape[0]
    r = (traj_max + 1) * m
    if r <= 8 * n + 1024:
        # int32 row numbers halve the table's cache footprint (random access dominates large shuffled batches)
        rdt = torch.int32 if n < 2**31 - 1 else torch.int64
        table = torch.zeros(r + 1, dtype=rdt, device=key.device)  # slot r stays 0: the last key's next
        table.index_copy_(0, key, torch.arange(1, n + 1, dtype=rdt, device=key.device))
        if int(torch.count_nonzero(table)) == n:  # every row owns its slot: no duplicate keys
            nxt = table[1:].index_select(0, key)  # table[key + 1]
            return _StepIndex(adv, ent, nxt, traj, None)
    _check_finite(adv, ent)  # before the comparison of duplicates (NaN != NaN)
    ks, order = torch.sort(key)
    new = torch.ones_like(ks, dtype=torch.bool)
    new[1:] = ks[1:] != ks[:-1]
    uid = torch.cumsum(new, 0) - 1  # (S,) sorted position → unique step
    inv = torch.empty_like(uid)
    inv[order] = uid
    uk = ks[new]  # (U,) sorted unique keys
    out = []
    for name, x in (("advantage", adv), ("step entropy", ent)):
        xs = x[order]
        xu = xs[new]
        bad = xs != xu[uid]
        if bool(bad.any()):
            b = int(ks[bad.nonzero()[0, 0]])
            raise ValueError(
                f"duplicated step rows disagree on their {name} (trajectory label {b // m}, step {b % m}); "
                "duplicates must be exact copies — fix the batch packing"
            )
        out.append(xu)
    nxt = torch.zeros_like(uk)
    linked = uk[1:] == uk[:-1] + 1  # sorted unique keys: the next step, if any, is adjacent
    nxt[:-1] = torch.where(linked, torch.arange(2, uk.shape[0] + 1, device=uk.device), 0)
    return _StepIndex(out[0], out[1], nxt, uk // m, inv)


def _modulate(
    idx: _StepIndex, *, k: float, k_next: float, zeta: float, use_scaling: bool, use_bonus: bool, eps: float, keep: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """A_mod = g A + zeta f over the unique steps (U,); with ``keep``, also g, f, h_norm and has_next.

    Written for few passes over memory (the transform is bandwidth-bound): exp(-k' h) goes into a buffer with a
    leading 0 so that one gather at ``idx.nxt`` gives f, and ``addcmul_`` applies g without materialising it.
    """
    a, h = idx.adv, idx.ent
    h_min, h_max = float(h.amin()), float(h.amax())  # Python floats: no 0-dim tensor arithmetic below
    if not (math.isfinite(h_min) and math.isfinite(h_max)):  # amin/amax propagate NaN; +-inf is an extreme
        raise ValueError(_NON_FINITE.format(name="step_entropy"))
    inv_range = 1.0 / (h_max - h_min + eps)
    e_pad = h.new_empty(h.shape[0] + 1)
    e_pad[0] = 0.0
    e_next = torch.mul(h, -k_next * inv_range, out=e_pad[1:]).add_(k_next * inv_range * h_min).exp_()
    f = e_pad.index_select(0, idx.nxt)  # (U,) exp(-k' h_next), 0 where there is no next step
    w = c = None
    if use_scaling:
        w = e_next if k_next == k else torch.mul(h, -k * inv_range).add_(k * inv_range * h_min).exp_()
        c = 1.0 / (float(w.mean()) + eps)  # g = c w
    parts = {}
    if keep:
        parts = {"h_norm": (h - h_min).mul_(inv_range), "f": f.clone(), "has_next": idx.nxt > 0}
        parts["g"] = w * c if w is not None else torch.ones_like(h)
    a_mod = f.mul_(zeta) if use_bonus else torch.zeros_like(a)
    if w is not None:
        a_mod.addcmul_(w, a, value=c)
    else:
        a_mod.add_(a)
    return a_mod, parts


def _transform(
    advantages: Tensor,
    step_entropy: Tensor,
    traj_id: Tensor,
    step_idx: Tensor,
    *,
    keep: bool,
    final_norm: str,
    **kw: float | bool,
) -> tuple[Tensor, Tensor, dict[str, Tensor], _StepIndex]:
    """Shared body of the two public functions: (a_final (U,), a_mod (U,), parts, step index)."""
    max_step = _validate(advantages, step_entropy, traj_id, step_idx, final_norm)
    f64 = torch.float64
    idx = _index_steps(advantages.to(f64), step_entropy.to(f64), traj_id, step_idx, max_step)
    a_mod, parts = _modulate(idx, keep=keep, **kw)
    a_final, total = _final_norm(a_mod.clone() if keep else a_mod, idx.traj, final_norm, kw["eps"])
    if not math.isfinite(total):  # a NaN or inf in either input reaches A_mod, hence its sum
        _check_finite(advantages, step_entropy)
        raise ValueError(
            "EMPG produced a non-finite advantage from finite inputs (an overflow: check the scale of the "
            "advantages and entropies)"
        )
    return a_final, a_mod, parts, idx


def empg_transform_with_stats(
    advantages: Tensor,
    step_entropy: Tensor,
    traj_id: Tensor,
    step_idx: Tensor,
    *,
    k: float = 1.0,
    k_next: float = 1.0,
    zeta: float = 0.1,
    use_scaling: bool = True,
    use_bonus: bool = True,
    final_norm: str = "mean",
    eps: float = 1e-8,
) -> tuple[Tensor, EMPGStats]:
    """EMPG transform returning the final advantages and the per-step intermediates.

    Args:
        advantages: (S,) base advantage A(i) of each step (e.g. GRPO of its trajectory).
        step_entropy: (S,) step entropy H_{i,t}.
        traj_id: (S,) integer trajectory id.
        step_idx: (S,) 0-based turn index inside the trajectory.
        k: scaling sharpness of g.
        k_next: sharpness of the future-clarity bonus f.
        zeta: bonus weight.
        use_scaling: False sets g ≡ 1 (ablation "f only").
        use_bonus: False sets zeta = 0 (ablation "g only").
        final_norm: one of :data:`FINAL_NORMS`.
        eps: numerical epsilon of the min-max range, of the mean of g, and of ``"mean_std"``.

    Returns:
        (a_final (S,), stats). a_final has the dtype of ``advantages``; rows that are duplicates get equal values.

    Raises:
        ValueError: on malformed input (shapes, dtypes, negative steps, NaN or inf, disagreeing duplicates).
    """
    kw = dict(k=k, k_next=k_next, zeta=zeta, use_scaling=use_scaling, use_bonus=use_bonus, eps=eps)
    a_final, a_mod, parts, idx = _transform(
        advantages, step_entropy, traj_id, step_idx, keep=True, final_norm=final_norm, **kw
    )
    out = _out_dtype(advantages)
    stats = EMPGStats(
        a_mod=idx.rows(a_mod, out), a_final=idx.rows(a_final, out), **{n: idx.rows(t, out) for n, t in parts.items()}
    )
    return stats.a_final, stats


def _final_norm(a_mod: Tensor, traj: Tensor, final_norm: str, eps: float) -> tuple[Tensor, float]:
    """Final normalisation of the unique steps' A_mod (U,), in place; ``traj`` (U,) labels their trajectories.

    Returns:
        (a_final (U,), sum of A_mod). The sum is non-finite when any A_mod is: one reduction serves as the NaN/inf
        check and, for ``"mean"``, as the mean.
    """
    total = float(a_mod.sum())
    if final_norm == "none":
        return a_mod, total
    mean = total / a_mod.shape[0]
    if final_norm == "mean":
        return a_mod.sub_(mean), total
    if final_norm == "mean_std":
        centred = a_mod.sub_(mean)
        return centred.div_(float(centred.pow(2).mean().sqrt()) + eps), total
    # "traj_mean": mean over trajectories of each trajectory's mean A_mod
    sums = torch.bincount(traj, weights=a_mod)
    counts = torch.bincount(traj).to(a_mod.dtype)
    present = counts > 0
    return a_mod.sub_(float((sums[present] / counts[present]).mean())), total


def empg_transform(
    advantages: Tensor,
    step_entropy: Tensor,
    traj_id: Tensor,
    step_idx: Tensor,
    *,
    k: float = 1.0,
    k_next: float = 1.0,
    zeta: float = 0.1,
    use_scaling: bool = True,
    use_bonus: bool = True,
    final_norm: str = "mean",
    eps: float = 1e-8,
) -> Tensor:
    """EMPG-modulated advantages (S,); see :func:`empg_transform_with_stats` for the arguments (this one skips the
    intermediates, a few passes less)."""
    kw = dict(k=k, k_next=k_next, zeta=zeta, use_scaling=use_scaling, use_bonus=use_bonus, eps=eps)
    a_final, _, _, idx = _transform(
        advantages, step_entropy, traj_id, step_idx, keep=False, final_norm=final_norm, **kw
    )
    return idx.rows(a_final, _out_dtype(advantages))


def _out_dtype(advantages: Tensor) -> torch.dtype:
    """The returned advantages' dtype: the input's, or float32 for integer advantages."""
    return advantages.dtype if advantages.is_floating_point() else torch.float32
