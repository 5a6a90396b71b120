"""Phase 3 of the RL loop: per-step advantages from the rollout's returns (GRPO / Dr.GRPO, GiGPO's step credit,
EMPG, the invalid-step rules), as :mod:`empg.train.rl` describes; pure functions of the config and the batch."""

from __future__ import annotations

from typing import Any

import torch

from empg.train.config import TrainConfig
from empg.train.metrics import check_finite, stats


def episode_returns(cfg: TrainConfig, trajs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory returns (T,) float64 and group ids (T,) long.

    With ``algo.overlong_buffer`` > 0 (DAPO's soft overlong punishment, per step here), each step whose response is
    longer than ``rollout.max_new_tokens - overlong_buffer`` tokens adds ``overlong_penalty`` times
    :func:`empg.algos.overlong_penalty` (in [-1, 0]) to its trajectory's return."""
    from empg.algos import overlong_penalty, trajectory_returns

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
    """Per-step entropy H (B,) from the behaviour token entropies, per ``algo.step_entropy``."""
    from empg.algos import step_entropy

    mode = cfg.algo.step_entropy
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


def advantage_phase(
    cfg: TrainConfig, batch: Any, steps: list, trajs: list, it: int, *, details: dict | None = None
) -> tuple[torch.Tensor, dict]:
    """Per-step advantages (S,) aligned with the batch rows: base GRPO/Dr.GRPO, then EMPG when enabled.

    With a ``details`` dict, also fills it with per-step (S,) tensors of the same computation (the numbers do not
    change): ``"base"`` (the advantage before EMPG, GiGPO credit included), ``"final"`` (the returned one) and, when
    EMPG is on, ``"h"`` (step entropy), ``"g"`` and ``"f"`` (:class:`empg.algos.empg.EMPGStats`; f is 0 on a last
    step). :mod:`empg.train.trajlog` logs them per episode.
    """
    from empg.algos import empg_transform_with_stats, grpo_advantages, step_level_grpo_advantages

    returns, group_id = episode_returns(cfg, trajs)
    row_of = {t.traj_id: i for i, t in enumerate(trajs)}
    step_traj = torch.tensor([row_of[s.traj_id] for s in steps], dtype=torch.long)
    if cfg.algo.grpo_stats == "steps":
        base = step_level_grpo_advantages(returns[step_traj], group_id[step_traj], norm_by_std=cfg.algo.norm_by_std)
    else:
        base = grpo_advantages(returns, group_id, norm_by_std=cfg.algo.norm_by_std)[step_traj]
    metrics: dict[str, float] = {}
    if cfg.algo.gigpo_weight:
        a_step, anchor_metrics = anchor_credit(cfg, batch, steps, trajs, step_traj, group_id)
        base = base + cfg.algo.gigpo_weight * a_step
        metrics.update(anchor_metrics)
    base = base.to(torch.float32)
    check_finite("base advantages", base, it)
    success = torch.tensor([trajs[i].success for i in step_traj.tolist()], dtype=torch.bool)
    if cfg.algo.empg:
        h = step_entropies(cfg, batch).to(torch.float32)
        check_finite("step entropies", h, it)
        final, st = empg_transform_with_stats(
            base,
            h,
            batch.traj_id,
            batch.step_idx,
            cfg.algo.empg_params(),
        )
        metrics.update(stats("empg/g", st.g))
        metrics.update(stats("empg/f", st.f[st.has_next.bool()]))
        before = st.a_mod
        if details is not None:
            details.update(h=h, g=st.g, f=st.f)
    else:
        final = before = base
    invalid = torch.tensor([not s.valid for s in steps] if steps else [], dtype=torch.bool)
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


def anchor_credit(
    cfg: TrainConfig, batch: Any, steps: list, trajs: list, step_traj: torch.Tensor, group_id: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """GiGPO's step-level advantages (S,) (:mod:`empg.algos.anchors`) and their metrics.

    Step rewards follow the episode return: ``reward_scale · outcome`` on the last step, ``-invalid_penalty`` on each
    invalid step, so the undiscounted return to go of a trajectory's first step is its episode return.
    """
    from empg.algos import anchor_advantages, anchor_sets, discounted_step_returns

    rows = step_traj.tolist()
    outcome = torch.tensor([float(trajs[i].outcome) for i in rows], dtype=torch.float64)
    last = torch.tensor([s.is_last for s in steps], dtype=torch.float64)
    invalid = torch.tensor([not s.valid for s in steps], dtype=torch.float64)
    rewards = cfg.algo.reward_scale * outcome * last - cfg.algo.invalid_penalty * invalid
    to_go = discounted_step_returns(rewards, batch.traj_id, batch.step_idx, cfg.algo.gigpo_gamma)
    keys = torch.tensor([s.state_key for s in steps], dtype=torch.long)
    adv = anchor_advantages(to_go, group_id[step_traj], keys, norm_by_std=cfg.algo.norm_by_std)
    shared = anchor_sets(group_id[step_traj], keys)[1] > 1
    n = max(1, len(steps))
    return adv, {
        "gigpo/shared_state_frac": float(shared.sum()) / n,  # steps whose state another step of the group also saw
        "gigpo/informative_frac": float((adv != 0).sum()) / n,  # ... and whose returns there differed
        "gigpo/abs_adv_mean": float(adv.abs().mean()) if len(steps) else 0.0,
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
    from empg.algos import broadcast_to_tokens

    return broadcast_to_tokens(step_values.to(mask.dtype), mask)
