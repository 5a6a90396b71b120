"""Step-level credit from anchor states (GiGPO, arXiv 2505.10978), an optional term added to the base advantage.

The G trajectories of a group start from the same state, so they often pass through the same states again later (the
agent at the same place, seeing the same things) and take different actions there. GiGPO groups the steps of a task
group by the state they acted on (the *anchor state*) and compares what followed each action:

* discounted return of each step ``R_t = Σ_{k ≥ t} γ^{k-t} r_k`` over its own trajectory
  (:func:`discounted_step_returns`);
* step advantage ``A^S = (R_t - mean_anchor R) / (std_anchor R + eps)`` within each (group, anchor state) set, 0 for
  a state visited once (:func:`anchor_advantages`);
* the trainer adds ``ω · A^S`` to the trajectory-level (GRPO) advantage of every step (``algo.gigpo_weight = ω``).

A state key is an integer the rollout derives from what the agent saw (``StepRecord.state_key``); a negative key means
"unknown" and such steps get no step-level advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from empg.algos.advantages import grpo_advantages

__all__ = ["anchor_advantages", "anchor_sets", "discounted_step_returns"]


def discounted_step_returns(rewards: Tensor, traj_id: Tensor, step_idx: Tensor, gamma: float) -> Tensor:
    """Discounted return-to-go of every step within its trajectory: ``R_t = r_t + γ R_{t+1}``.

    Args:
        rewards: (S,) reward of each step row.
        traj_id: (S,) trajectory of each row (any integers, any order).
        step_idx: (S,) 0-based turn index of each row inside its trajectory (unique within a trajectory).
        gamma: discount in [0, 1].

    Returns:
        (S,) float64 returns, aligned with the rows.
    """
    rewards, traj_id, step_idx = (torch.as_tensor(x) for x in (rewards, traj_id, step_idx))
    if not (rewards.dim() == 1 and rewards.shape == traj_id.shape == step_idx.shape):
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, traj_id {tuple(traj_id.shape)} and step_idx {tuple(step_idx.shape)} must "
            "all be 1-D of the same length (one value per step row)"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if rewards.numel() == 0:
        return rewards.to(torch.float64)
    if int(step_idx.min()) < 0:
        raise ValueError("step_idx must be >= 0")
    _, traj = torch.unique(traj_id, return_inverse=True)
    grid = torch.zeros(int(traj.max()) + 1, int(step_idx.max()) + 2, dtype=torch.float64)  # (n_traj, T + 1)
    seen = torch.zeros_like(grid, dtype=torch.long).index_put_((traj, step_idx), torch.ones_like(traj), accumulate=True)
    if int(seen.max()) > 1:
        raise ValueError("two rows share a (traj_id, step_idx); each step must appear once")
    grid[traj, step_idx] = rewards.to(torch.float64)
    for t in range(grid.shape[1] - 2, -1, -1):  # right to left over turns, vectorised over trajectories
        grid[:, t] += gamma * grid[:, t + 1]
    return grid[traj, step_idx]


def anchor_advantages(
    step_returns: Tensor, group_id: Tensor, state_key: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GiGPO step advantages: group-relative returns among the steps of one task group that acted on the same state.

    Args:
        step_returns: (S,) discounted return of each step (:func:`discounted_step_returns`).
        group_id: (S,) task group of each step.
        state_key: (S,) integer key of the state the step acted on; negative = unknown (advantage 0).
        norm_by_std: divide by the anchor set's unbiased std (False: only subtract its mean).
        eps: added to the std.

    Returns:
        (S,) float64 advantages; 0 for a state seen once in its group, for unknown states and for sets whose returns
        are all equal.
    """
    step_returns, group_id, state_key = (torch.as_tensor(x) for x in (step_returns, group_id, state_key))
    if not (step_returns.dim() == 1 and step_returns.shape == group_id.shape == state_key.shape):
        raise ValueError(
            f"step_returns {tuple(step_returns.shape)}, group_id {tuple(group_id.shape)} and state_key "
            f"{tuple(state_key.shape)} must all be 1-D of the same length (one value per step row)"
        )
    if step_returns.numel() == 0:
        return step_returns.to(torch.float64)
    anchor, _ = anchor_sets(group_id, state_key)
    adv = grpo_advantages(step_returns.to(torch.float64), anchor, norm_by_std=norm_by_std, eps=eps)
    return torch.where(state_key >= 0, adv, torch.zeros_like(adv))


def anchor_sets(group_id: Tensor, state_key: Tensor) -> tuple[Tensor, Tensor]:
    """The (group, state) set of each step: labels (S,) and the size of each step's set (S,). A step with an unknown
    state (negative key) is a set of its own, never compared with another step."""
    group_id, state_key = torch.as_tensor(group_id), torch.as_tensor(state_key)
    own = -1 - torch.arange(state_key.numel(), device=state_key.device)
    key = torch.where(state_key >= 0, state_key, own)
    pairs = torch.stack([group_id.to(torch.long), key.to(torch.long)], dim=1)
    _, anchor, count = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
    return anchor, count[anchor]
