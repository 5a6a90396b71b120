"""The EMPG advantage transform (METHOD §3), vectorised over steps.

For every step (i, t) of the batch S with base advantage A(i) and step entropy H_{i,t}:

1. ``h = (H - min_S H) / (max_S H - min_S H + eps)``                       (batch min-max normalisation)
2. ``g = exp(-k h) / (mean_S exp(-k h) + eps)``                             (self-calibrating scaling, mean 1)
3. ``f_{i,t} = exp(-k_next h_{i,t+1})`` if step t+1 of trajectory i exists, else 0   (future-clarity bonus)
4. ``A_mod = g A + zeta f``
5. ``A_final = A_mod - mean_S A_mod`` (``final_norm="mean"``; see :data:`FINAL_NORMS` for the others)

Variants for METHOD §6's two ways EMPG can hurt, and for AEM (arXiv 2605.00425), each an :class:`EMPGParams` field
(the defaults are the paper's): ``bonus_nonneg`` gives the bonus only to steps with A >= 0, so it cannot lift a failed
trajectory's steps; ``final_norm="group_mean"`` centres A_mod within each task group instead of over the batch;
``entropy_norm="group"`` takes step 1's min-max and step 2's mean of g within each task group (AEM's per-group
entropy scaling; AEM itself has no bonus: ``zeta=0``). The group variants need each step's ``group_id``.

Rows may come in any order; the next step of (traj, t) is the row with the same ``traj_id`` and ``step_idx == t+1``.

Duplicated rows (same ``traj_id`` and ``step_idx``) are de-duplicated: identical duplicates count once in every
statistic (min, max, means) and all copies receive the same output. Duplicates that disagree on entropy or
advantage raise a ``ValueError`` because the batch is then inconsistent.

The hyper-parameters (k, k', ζ, the g switch, the final normalisation, eps) travel as one :class:`EMPGParams`;
:func:`empg_transform_with_stats` reads as the five steps above, after a pre-step that de-duplicates the rows and
links each step to its next. Everything is tensor code with no Python loop over steps or trajectories: O(S) with a
dense key table when the trajectory ids are small non-negative integers and rows are unique (the trainer's case),
else one O(S log S) sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_PARAMS",
    "ENTROPY_NORMS",
    "FINAL_NORMS",
    "EMPGParams",
    "EMPGStats",
    "empg_transform",
    "empg_transform_with_stats",
]

FINAL_NORMS = ("mean", "mean_std", "none", "traj_mean", "group_mean")
"""``"mean"``: subtract the step-level mean (paper). ``"mean_std"``: also divide by the step-level std (population,
plus eps). ``"none"``: A_mod as is. ``"traj_mean"``: subtract the mean over trajectories of each trajectory's mean
A_mod, so long (usually failed) trajectories do not dominate the shift (METHOD §6 risk 1). ``"group_mean"``: subtract
the mean A_mod of the step's task group (each step counted once), so the shift is not set by other tasks' steps."""

ENTROPY_NORMS = ("batch", "group")
"""Where step 1's min-max and step 2's mean of g are taken: over the batch (paper) or within each task group (AEM)."""


@dataclass(frozen=True)
class EMPGParams:
    """EMPG's hyper-parameters (METHOD §3); the defaults are the paper's.

    Attributes:
        k: sharpness of the self-calibrating scale g.
        k_next: sharpness k' of the future-clarity bonus f.
        zeta: weight ζ of the bonus (0 = the "g only" ablation).
        use_scaling: False sets g ≡ 1 (the "f only" ablation).
        final_norm: one of :data:`FINAL_NORMS`.
        eps: epsilon of the min-max range, of the mean of g and of ``"mean_std"``.
        bonus_nonneg: give the bonus ζ f only to steps whose base advantage is >= 0.
        entropy_norm: one of :data:`ENTROPY_NORMS`.
    """

    k: float = 1.0
    k_next: float = 1.0
    zeta: float = 0.1
    use_scaling: bool = True
    final_norm: str = "mean"
    eps: float = 1e-8
    bonus_nonneg: bool = False
    entropy_norm: str = "batch"

    def __post_init__(self) -> None:
        if self.final_norm not in FINAL_NORMS:
            raise ValueError(f"final_norm={self.final_norm!r} is not one of {FINAL_NORMS}")
        if self.entropy_norm not in ENTROPY_NORMS:
            raise ValueError(f"entropy_norm={self.entropy_norm!r} is not one of {ENTROPY_NORMS}")
        for name in ("k", "k_next", "zeta", "eps"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"EMPG {name} must be finite, got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"EMPG eps must be > 0, got {self.eps}")

    @property
    def needs_groups(self) -> bool:
        """The transform needs each step's task group (``group_id``)."""
        return self.final_norm == "group_mean" or self.entropy_norm == "group"


DEFAULT_PARAMS = EMPGParams()


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


def _validate(advantages: Tensor, step_entropy: Tensor, traj_id: Tensor, step_idx: Tensor) -> int:
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
    # .min(), not .amin(): torch's int64 amin is far slower than amax on x86 CPUs (README, "Tests and benchmarks")
    step_min, step_max = int(step_idx.min()), int(step_idx.amax())
    if step_min < 0:
        raise ValueError("step_idx must be >= 0 (0-based turn index inside the trajectory)")
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


def _unique_steps(advantages: Tensor, step_entropy: Tensor, traj_id: Tensor, step_idx: Tensor) -> _StepIndex:
    """The pre-step: validate the input, then de-duplicate the rows and link each step to its next (float64)."""
    max_step = _validate(advantages, step_entropy, traj_id, step_idx)
    f64 = torch.float64
    return _index_steps(advantages.to(f64), step_entropy.to(f64), traj_id, step_idx, max_step)


def _extremes(h: Tensor) -> tuple[float, float]:
    """``(min h, max h)`` as Python floats; raises when either is not finite (amin/amax propagate NaN; +-inf is an
    extreme), which is the step entropies' NaN/inf check."""
    h_min, h_max = float(h.amin()), float(h.amax())
    if not (math.isfinite(h_min) and math.isfinite(h_max)):
        raise ValueError(_NON_FINITE.format(name="step_entropy"))
    return h_min, h_max


def _min_max(h: Tensor, eps: float) -> Tensor:
    """Step 1: ``(h - min h) / (max h - min h + eps)`` (U,), in [0, 1)."""
    h_min, h_max = _extremes(h)  # Python floats: no 0-dim tensor arithmetic below
    return (h - h_min).mul_(1.0 / (h_max - h_min + eps))


def _step_groups(group_id: Tensor | None, steps: _StepIndex, n_rows: int) -> Tensor:
    """Dense task-group label (U,) of every unique step, from the rows' ``group_id`` (S,)."""
    if group_id is None:
        raise ValueError(
            "final_norm='group_mean' and entropy_norm='group' need each step's group_id (S,): pass group_id=..."
        )
    if group_id.dim() != 1 or group_id.shape[0] != n_rows or group_id.is_floating_point():
        raise ValueError(f"group_id must be a 1-D integer tensor with one entry per step ({n_rows},), got "
                         f"{tuple(group_id.shape)} {group_id.dtype}")  # fmt: skip
    labels = torch.unique(group_id, return_inverse=True)[1].to(torch.int64)
    if steps.inv is not None:  # one label per unique step; duplicates must agree
        unique = torch.zeros(steps.adv.shape[0], dtype=torch.int64).scatter_(0, steps.inv, labels)
        if not torch.equal(unique[steps.inv], labels):
            raise ValueError("duplicated step rows disagree on their group_id; duplicates must be exact copies")
        labels = unique
    n_traj = int(steps.traj.max()) + 1
    lo = torch.full((n_traj,), labels.shape[0], dtype=torch.int64).scatter_reduce(0, steps.traj, labels, "amin")
    hi = torch.full((n_traj,), -1, dtype=torch.int64).scatter_reduce(0, steps.traj, labels, "amax")
    if not torch.equal(lo[steps.traj], hi[steps.traj]):
        raise ValueError("a trajectory's steps carry different group_ids; every trajectory belongs to one task group")
    return labels


def _group_mean(x: Tensor, group: Tensor) -> Tensor:
    """Each step's group mean of ``x`` (U,), every step counted once."""
    sums = torch.bincount(group, weights=x)
    counts = torch.bincount(group).to(x.dtype).clamp_min_(1.0)
    return (sums / counts).index_select(0, group)


def _group_min_max(h: Tensor, group: Tensor, eps: float) -> Tensor:
    """Step 1 within each task group: ``(h - min_g h) / (max_g h - min_g h + eps)`` (U,), in [0, 1)."""
    _extremes(h)  # the NaN/inf check
    n = int(group.max()) + 1
    lo = torch.full((n,), math.inf, dtype=h.dtype).scatter_reduce(0, group, h, "amin").index_select(0, group)
    hi = torch.full((n,), -math.inf, dtype=h.dtype).scatter_reduce(0, group, h, "amax").index_select(0, group)
    return (h - lo).div_(hi - lo + eps)


def _self_calibrating_scale(
    h_norm: Tensor, k: float, eps: float, clarity: Tensor, k_next: float, group: Tensor | None = None
) -> Tensor:
    """Step 2: ``g = exp(-k h) / (mean exp(-k h) + eps)`` (U,), mean 1 over the batch's steps, or over each task
    group's when ``group`` is given. ``clarity`` is ``exp(-k_next h)``, reused when ``k == k_next``."""
    w = clarity if k == k_next else torch.mul(h_norm, -k).exp_()
    if group is not None:
        return w / (_group_mean(w, group) + eps)
    return w * (1.0 / (float(w.mean()) + eps))


def _of_next_step(x: Tensor, nxt: Tensor) -> Tensor:
    """Step 3's gather: ``x`` of each step's next step (U,), 0 where the trajectory has none (``nxt`` = 1 + the
    next step's index, 0 if none: a gather from ``x`` with a leading 0)."""
    return torch.cat([x.new_zeros(1), x]).index_select(0, nxt)


def _final_norm(
    a_mod: Tensor, traj: Tensor, final_norm: str, eps: float, inputs: tuple[Tensor, Tensor], group: Tensor | None
) -> Tensor:
    """Step 5 on the unique steps' A_mod (U,) (``traj`` (U,) labels their trajectories, ``group`` their task groups
    for ``"group_mean"``); a new tensor.

    The sum of A_mod is non-finite when any A_mod is: that one reduction serves as the NaN/inf check (naming the
    culprit among ``inputs`` = (advantages, step_entropy), else an overflow) and, for ``"mean"``, as the mean.
    """
    total = float(a_mod.sum())
    if not math.isfinite(total):
        _check_finite(*inputs)
        raise ValueError(
            "EMPG produced a non-finite advantage from finite inputs (an overflow: check the scale of the "
            "advantages and entropies)"
        )
    if final_norm == "none":
        return a_mod.clone()
    mean = total / a_mod.shape[0]
    if final_norm == "mean":
        return a_mod - mean
    if final_norm == "mean_std":
        centred = a_mod - mean
        return centred.div_(float(centred.pow(2).mean().sqrt()) + eps)
    if final_norm == "group_mean":
        return a_mod - _group_mean(a_mod, group)
    # "traj_mean": mean over trajectories of each trajectory's mean A_mod
    sums = torch.bincount(traj, weights=a_mod)
    counts = torch.bincount(traj).to(a_mod.dtype)
    present = counts > 0
    return a_mod - float((sums[present] / counts[present]).mean())


def empg_transform_with_stats(
    advantages: Tensor,
    step_entropy: Tensor,
    traj_id: Tensor,
    step_idx: Tensor,
    params: EMPGParams = DEFAULT_PARAMS,
    group_id: Tensor | None = None,
) -> tuple[Tensor, EMPGStats]:
    """EMPG-modulated advantages and the per-step intermediates (METHOD §3).

    Args:
        advantages: (S,) base advantage A(i) of each step (e.g. GRPO of its trajectory).
        step_entropy: (S,) step entropy H_{i,t}.
        traj_id: (S,) integer trajectory id.
        step_idx: (S,) 0-based turn index inside the trajectory.
        params: k, k', ζ, the g switch, the final normalisation, eps and the §6 / AEM variants (:class:`EMPGParams`).
        group_id: (S,) integer task group of each step; needed by the per-group variants only.

    Returns:
        (a_final (S,), stats). a_final has the dtype of ``advantages``; rows that are duplicates get equal values.

    Raises:
        ValueError: on malformed input (shapes, dtypes, negative steps, NaN or inf, disagreeing duplicates).
    """
    p = params
    steps = _unique_steps(advantages, step_entropy, traj_id, step_idx)  # pre-step: de-duplicate, link t -> t+1
    group = _step_groups(group_id, steps, advantages.shape[0]) if p.needs_groups else None
    by_group = group if p.entropy_norm == "group" else None
    h = _min_max(steps.ent, p.eps) if by_group is None else _group_min_max(steps.ent, by_group, p.eps)  # 1. [0, 1)
    clarity = torch.mul(h, -p.k_next).exp_()  # exp(-k' h) of every step
    if p.use_scaling:  # 2.
        g = _self_calibrating_scale(h, p.k, p.eps, clarity, p.k_next, by_group)
    else:
        g = torch.ones_like(h)
    f = _of_next_step(clarity, steps.nxt)  # 3. f_{i,t} = exp(-k' h_{i,t+1}), 0 on a last step
    if p.bonus_nonneg:
        f = f * (steps.adv >= 0)  # no bonus for the steps of below-average trajectories
    a_mod = torch.addcmul(p.zeta * f, g, steps.adv)  # 4. A_mod = g A + zeta f
    a_final = _final_norm(a_mod, steps.traj, p.final_norm, p.eps, (advantages, step_entropy), group)  # 5.
    out = _out_dtype(advantages)
    parts = {"g": g, "f": f, "h_norm": h, "has_next": steps.nxt > 0, "a_mod": a_mod, "a_final": a_final}
    stats = EMPGStats(**{name: steps.rows(t, out) for name, t in parts.items()})
    return stats.a_final, stats


def empg_transform(
    advantages: Tensor,
    step_entropy: Tensor,
    traj_id: Tensor,
    step_idx: Tensor,
    params: EMPGParams = DEFAULT_PARAMS,
    group_id: Tensor | None = None,
) -> Tensor:
    """EMPG-modulated advantages (S,); see :func:`empg_transform_with_stats`."""
    return empg_transform_with_stats(advantages, step_entropy, traj_id, step_idx, params, group_id)[0]


def _out_dtype(advantages: Tensor) -> torch.dtype:
    """The returned advantages' dtype: the input's, or float32 for integer advantages."""
    return advantages.dtype if advantages.is_floating_point() else torch.float32
