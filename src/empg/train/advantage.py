"""Phase 3 of the RL loop: per-step advantages from the rollout's returns (GRPO / Dr.GRPO, GiGPO's step credit,
EMPG, the invalid-step rules), as :mod:`empg.train.rl` describes.

The phase reads one :class:`StepTable`, built once right after scoring by :func:`step_table` (the step entropy is
computed there and nowhere else); everything below it is a pure function of the config and the table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from empg.algos import (
    anchor_advantages,
    anchor_sets,
    broadcast_to_tokens,
    discounted_step_returns,
    empg_transform_with_stats,
    grpo_advantages,
    overlong_penalty,
    step_entropy,
    step_level_grpo_advantages,
    trajectory_returns,
)
from empg.train.config import TrainConfig
from empg.train.metrics import check_finite, stats


def episode_returns(cfg: TrainConfig, trajs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory returns (T,) float64 and group ids (T,) long.

    With ``algo.overlong_buffer`` > 0 (DAPO's soft overlong punishment, per step here), each step whose response is
    longer than ``rollout.max_new_tokens - overlong_buffer`` tokens adds ``overlong_penalty`` times
    :func:`empg.algos.overlong_penalty` (in [-1, 0]) to its trajectory's return."""
    outcome = torch.tensor([float(t.outcome) for t in trajs], dtype=torch.float64)
    n_invalid = torch.tensor([float(t.n_invalid) for t in trajs], dtype=torch.float64)
    returns = trajectory_returns(
        outcome, n_invalid, reward_scale=cfg.algo.reward_scale, invalid_penalty=cfg.algo.invalid_penalty
    )
    if cfg.algo.overlong_buffer > 0:
        cap, band = cfg.rollout.max_new_tokens, cfg.algo.overlong_buffer
        shaped = [
            float(overlong_penalty(torch.tensor(t.response_lengths), max_len=cap, cache_len=band).sum())
            if t.response_lengths
            else 0.0
            for t in trajs
        ]
        returns = returns + cfg.algo.overlong_penalty * torch.tensor(shaped, dtype=returns.dtype)
    return returns, torch.tensor([t.group_id for t in trajs], dtype=torch.long)


def step_entropies(cfg: TrainConfig, batch: Any) -> torch.Tensor:
    """Per-step entropy H (B,) from the behaviour token entropies, per ``algo.step_entropy`` (``"mean"`` when EMPG is
    off: the Rényi-2 token values exist only for EMPG)."""
    mode = cfg.algo.step_entropy if cfg.algo.empg else "mean"
    mask = batch.response_mask
    weights = None
    values = batch.token_entropy
    if mode == "action":
        weights = batch.action_mask * mask
    elif mode == "weighted":
        weights = (1.0 + (cfg.algo.action_weight - 1.0) * batch.action_mask) * mask
    elif mode == "renyi2":
        values = batch.token_renyi2
    return step_entropy(values, mask, mode=mode, weights=weights)


@dataclass(frozen=True)
class StepTable:
    """What the advantage phase reads: one entry per step (S,), in the batch's row order, and per trajectory (T,).

    Attributes:
        traj_id, step_idx: (S,) long. Trajectory id and 0-based turn of each step.
        valid: (S,) bool. The env understood the step's action.
        is_last: (S,) bool. The trajectory ended after this step.
        state_key: (S,) long. GiGPO's anchor-state key (-1: none).
        entropy: (S,) float32. Step entropy H (:func:`step_entropies`).
        traj: (S,) long. Row of the step's trajectory in the (T,) columns.
        returns: (T,) float64. Episode returns (:func:`episode_returns`).
        group_id: (T,) long. Task group of each trajectory.
        outcome: (T,) float64. 1 for a success, else 0.
        success: (T,) bool.
    """

    traj_id: Tensor
    step_idx: Tensor
    valid: Tensor
    is_last: Tensor
    state_key: Tensor
    entropy: Tensor
    traj: Tensor
    returns: Tensor
    group_id: Tensor
    outcome: Tensor
    success: Tensor

    def __len__(self) -> int:
        return int(self.traj_id.shape[0])

    @classmethod
    def cat(cls, parts: list[StepTable]) -> StepTable:
        """The tables of several shards as one (steps and trajectories in shard order)."""
        offsets, n = [], 0
        for t in parts:
            offsets.append(n)
            n += int(t.returns.shape[0])
        cols = {f.name: torch.cat([getattr(t, f.name) for t in parts]) for f in fields(cls) if f.name != "traj"}
        return cls(**cols, traj=torch.cat([t.traj + off for t, off in zip(parts, offsets, strict=True)]))


def step_table(cfg: TrainConfig, batch: Any, steps: list, trajs: list) -> StepTable:
    """The :class:`StepTable` of a scored batch (row i ↔ ``steps[i]``) and its trajectory summaries."""
    row_of = {t.traj_id: i for i, t in enumerate(trajs)}
    returns, group_id = episode_returns(cfg, trajs)
    entropy = step_entropies(cfg, batch).to(torch.float32) if steps else torch.zeros(0)
    return StepTable(
        traj_id=torch.tensor([s.traj_id for s in steps], dtype=torch.long),
        step_idx=torch.tensor([s.step_idx for s in steps], dtype=torch.long),
        valid=torch.tensor([s.valid for s in steps], dtype=torch.bool),
        is_last=torch.tensor([s.is_last for s in steps], dtype=torch.bool),
        state_key=torch.tensor([s.state_key for s in steps], dtype=torch.long),
        entropy=entropy,
        traj=torch.tensor([row_of[s.traj_id] for s in steps], dtype=torch.long),
        returns=returns,
        group_id=group_id,
        outcome=torch.tensor([float(t.outcome) for t in trajs], dtype=torch.float64),
        success=torch.tensor([bool(t.success) for t in trajs], dtype=torch.bool),
    )


def advantage_phase(
    cfg: TrainConfig, table: StepTable, it: int, *, details: dict | None = None
) -> tuple[torch.Tensor, dict]:
    """Per-step advantages (S,) aligned with the table's steps: base GRPO/Dr.GRPO (+ GiGPO), then EMPG when enabled.

    With a ``details`` dict, also fills it with per-step (S,) tensors of the same computation (the numbers do not
    change): ``"base"`` (the advantage before EMPG, GiGPO credit included), ``"final"`` (the returned one) and, when
    EMPG is on, ``"h"`` (step entropy), ``"g"`` and ``"f"`` (:class:`empg.algos.empg.EMPGStats`; f is 0 on a last
    step). :mod:`empg.train.trajlog` logs them per episode.
    """
    returns, group_id, step_traj = table.returns, table.group_id, table.traj
    if cfg.algo.grpo_stats == "steps":
        base = step_level_grpo_advantages(returns[step_traj], group_id[step_traj], norm_by_std=cfg.algo.norm_by_std)
    else:
        base = grpo_advantages(returns, group_id, norm_by_std=cfg.algo.norm_by_std)[step_traj]
    metrics: dict[str, float] = {}
    if cfg.algo.gigpo_weight:
        a_step, anchor_metrics = anchor_credit(cfg, table)
        base = base + cfg.algo.gigpo_weight * a_step
        metrics.update(anchor_metrics)
    base = base.to(torch.float32)
    check_finite("base advantages", base, it)
    success = table.success[step_traj]
    if cfg.algo.empg:
        h = table.entropy
        check_finite("step entropies", h, it)
        params = cfg.algo.empg_params()
        group = table.group_id[table.traj] if params.needs_groups else None  # (S,) each step's task group
        final, st = empg_transform_with_stats(base, h, table.traj_id, table.step_idx, params, group_id=group)
        metrics.update(stats("empg/g", st.g))
        metrics.update(stats("empg/f", st.f[st.has_next.bool()]))
        before = st.a_mod
        if details is not None:
            details.update(h=h, g=st.g, f=st.f)
    else:
        final = before = base
    invalid = ~table.valid
    if cfg.algo.invalid_step_penalty:
        final = final - cfg.algo.invalid_step_penalty * invalid.to(final.dtype)
    if not cfg.algo.invalid_credit:
        final = torch.where(invalid, final.clamp(max=0.0), final)
    if cfg.algo.negative_weight != 1.0:
        final = torch.where(final < 0, final * cfg.algo.negative_weight, final)
    check_finite("advantages", final, it)
    if details is not None:
        details.update(base=base, final=final)
    metrics.update(_adv_split("before", before, success))
    metrics.update(_adv_split("after", final, success))
    metrics.update({"adv/mean": float(final.mean()), "adv/min": float(final.min()), "adv/max": float(final.max())})
    metrics["adv/std"] = float(final.std()) if final.numel() > 1 else 0.0
    metrics["train/zero_adv_frac"] = float((final.abs() < 1e-12).double().mean()) if final.numel() else 1.0
    return final, metrics


def anchor_credit(cfg: TrainConfig, table: StepTable) -> tuple[torch.Tensor, dict[str, float]]:
    """GiGPO's step-level advantages (S,) (:mod:`empg.algos.anchors`) and their metrics.

    Step rewards follow the episode return: ``reward_scale · outcome`` on the last step, ``-invalid_penalty`` on each
    invalid step, so the undiscounted return to go of a trajectory's first step is its episode return.
    """
    outcome = table.outcome[table.traj]
    last, invalid = table.is_last.to(torch.float64), (~table.valid).to(torch.float64)
    rewards = cfg.algo.reward_scale * outcome * last - cfg.algo.invalid_penalty * invalid
    to_go = discounted_step_returns(rewards, table.traj_id, table.step_idx, cfg.algo.gigpo_gamma)
    group = table.group_id[table.traj]
    adv = anchor_advantages(to_go, group, table.state_key, norm_by_std=cfg.algo.norm_by_std)
    shared = anchor_sets(group, table.state_key)[1] > 1
    n = max(1, len(table))
    return adv, {
        "gigpo/shared_state_frac": float(shared.sum()) / n,  # steps whose state another step of the group also saw
        "gigpo/informative_frac": float((adv != 0).sum()) / n,  # ... and whose returns there differed
        "gigpo/abs_adv_mean": float(adv.abs().mean()) if len(table) else 0.0,
    }


def _adv_split(tag: str, adv: torch.Tensor, success: torch.Tensor) -> dict[str, float]:
    """Mean advantage of steps of successful / failed trajectories (METHOD §6 risk 1)."""
    out = {}
    for name, m in (("success", success), ("failure", ~success)):
        if bool(m.any()):
            out[f"adv/{name}_{tag}"] = float(adv[m].double().mean())
    return out


def to_tokens(step_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each step's value on every response token of its row (B, L), in the mask's dtype."""
    return broadcast_to_tokens(step_values.to(mask.dtype), mask)
