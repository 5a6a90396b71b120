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
    step_min, step_max = int(step_idx.amin()), int(step_idx.amax())  # amin/amax: ~3x faster than aminmax on int64
    if step_min < 0:
        raise ValueError("step_idx must be >= 0 (0-based turn index inside the trajectory)")
    for name, t in (("advantages", advantages), ("step_entropy", step_entropy)):
        # one reduction on the fast path; the sum of finite float32 values cannot overflow float64
        if not bool(torch.isfinite(t.sum(dtype=torch.float64))) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf; mask padding before computing step entropies")
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"final_norm={final_norm!r} is not one of {FINAL_NORMS}")
    return step_max


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


def _traj_labels(traj_id: Tensor) -> tuple[Tensor, int]:
    """Non-negative trajectory labels and their maximum: the ids themselves when already small and >= 0, else
    their rank."""
    lo, hi = int(traj_id.amin()), int(traj_id.amax())
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
    """
    max_step = _validate(advantages, step_entropy, traj_id, step_idx, final_norm)
    out_dtype = advantages.dtype if advantages.is_floating_point() else torch.float32
    f64 = torch.float64
    idx = _index_steps(advantages.to(f64), step_entropy.to(f64), traj_id, step_idx, max_step)
    a, h = idx.adv, idx.ent  # (U,)

    h_min, h_max = float(h.amin()), float(h.amax())  # Python floats: no 0-dim tensor arithmetic below
    h_norm = (h - h_min).div_(h_max - h_min + eps)  # (U,)
    # exp(-k' h) lives in a buffer with a leading 0, so gathering at idx.nxt (0 = no next step) gives f directly
    e_pad = h_norm.new_empty(h_norm.shape[0] + 1)
    e_pad[0] = 0.0
    e_next = torch.mul(h_norm, -k_next, out=e_pad[1:]).exp_()
    if use_scaling:
        w = e_next if k_next == k else torch.exp(-k * h_norm)
        g = w / (float(w.mean()) + eps)
    else:
        g = torch.ones_like(h_norm)
    has_next = idx.nxt > 0  # (U,)
    f = e_pad.index_select(0, idx.nxt)
    a_mod = g * a
    if use_bonus:
        a_mod.add_(f, alpha=zeta)
    a_final = _final_norm(a_mod, idx.traj, final_norm, eps)

    def rows(x: Tensor) -> Tensor:
        x = x if idx.inv is None else x[idx.inv]
        return x.to(out_dtype) if x.is_floating_point() else x

    stats = EMPGStats(
        g=rows(g), f=rows(f), h_norm=rows(h_norm), has_next=rows(has_next), a_mod=rows(a_mod), a_final=rows(a_final)
    )
    return stats.a_final, stats


def _final_norm(a_mod: Tensor, traj: Tensor, final_norm: str, eps: float) -> Tensor:
    """Final normalisation of the unique steps' A_mod (U,); ``traj`` (U,) labels their trajectories."""
    if final_norm == "none":
        return a_mod
    if final_norm == "mean":
        return a_mod - a_mod.mean()
    if final_norm == "mean_std":
        centred = a_mod - a_mod.mean()
        return centred / (centred.pow(2).mean().sqrt() + eps)
    # "traj_mean": mean over trajectories of each trajectory's mean A_mod
    sums = torch.bincount(traj, weights=a_mod)
    counts = torch.bincount(traj).to(a_mod.dtype)
    present = counts > 0
    return a_mod - (sums[present] / counts[present]).mean()


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
    """EMPG-modulated advantages (S,); see :func:`empg_transform_with_stats` for the arguments."""
    a_final, _ = empg_transform_with_stats(
        advantages,
        step_entropy,
        traj_id,
        step_idx,
        k=k,
        k_next=k_next,
        zeta=zeta,
        use_scaling=use_scaling,
        use_bonus=use_bonus,
        final_norm=final_norm,
        eps=eps,
    )
    return a_final
