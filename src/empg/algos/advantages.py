"""Group-relative base advantages (METHOD §2): GRPO and Dr.GRPO, over trajectories or over step rows.

Implemented variants:

* **GRPO** (arXiv 2402.03300, outcome supervision): ``A_i = (R_i - mean_g R) / (std_g R + eps)``, std unbiased
  (N - 1). Each trajectory counts once in its group statistics.
* **Dr.GRPO**: the same without the division by the std (``norm_by_std=False``).
* verl-agent's step-level statistics (``grpo_stats="steps"``): every step row counts in the group statistics.

A group of one trajectory carries no relative signal: its advantage is exactly 0 (the group is
given mean ``R_i`` and std 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["trajectory_returns", "grpo_advantages", "step_level_grpo_advantages"]


def trajectory_returns(
    outcome: Tensor, n_invalid: Tensor, *, reward_scale: float = 10.0, invalid_penalty: float = 0.1
) -> Tensor:
    """Episode return ``R_i = reward_scale * outcome_i - invalid_penalty * n_invalid_i`` (METHOD §2 Decision).

    Args:
        outcome: (N,) final env reward per trajectory (success 0/1 or a score in [0, 1]).
        n_invalid: (N,) number of invalid or unparsable actions in the trajectory.
        reward_scale: multiplier of the outcome.
        invalid_penalty: subtracted once per invalid step.

    Returns:
        (N,) returns, in the floating dtype of ``outcome`` (float32 when ``outcome`` is an integer tensor).
    """
    outcome = torch.as_tensor(outcome)
    n_invalid = torch.as_tensor(n_invalid)
    if outcome.shape != n_invalid.shape or outcome.dim() != 1:
        raise ValueError(
            f"outcome {tuple(outcome.shape)} and n_invalid {tuple(n_invalid.shape)} must both be 1-D of the same "
            "length (one value per trajectory)"
        )
    dtype = outcome.dtype if outcome.is_floating_point() else torch.float32
    return reward_scale * outcome.to(dtype) - invalid_penalty * n_invalid.to(dtype)


def _check_1d(values: Tensor, group_id: Tensor, what: str) -> None:
    if values.dim() != 1 or group_id.shape != values.shape:
        raise ValueError(
            f"{what} {tuple(values.shape)} and group_id {tuple(group_id.shape)} must both be 1-D of the same length"
        )
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} contains NaN or inf; check the rewards before computing advantages")


def _group_moments(values: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row group count, mean and unbiased std (N - 1) of ``values`` (N,) grouped by ``group_id`` (N,).

    Groups of one get mean = the value itself and std = 1; every group whose values are all equal gets mean = the
    value itself, so its centred value is exactly 0 (not a rounding residue of the mean).
    """
    _, inv = torch.unique(group_id, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    x = values.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64, device=x.device).index_add_(0, inv, torch.ones_like(x))
    mean = torch.zeros_like(count).index_add_(0, inv, x) / count
    sq = torch.zeros_like(count).index_add_(0, inv, (x - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    # all-equal groups (singletons included) centre to exactly 0, free of the rounding of the mean
    hi = torch.full_like(count, -torch.inf).scatter_reduce(0, inv, x, "amax")
    lo = torch.full_like(count, torch.inf).scatter_reduce(0, inv, x, "amin")
    const = (hi == lo)[inv]
    row_mean = torch.where(const, x, mean[inv])
    row_std = torch.where(count[inv] == 1, torch.ones_like(x), std[inv])
    return count[inv], row_mean, row_std


def grpo_advantages(returns: Tensor, group_id: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages, one value per trajectory.

    Args:
        returns: (N,) episode return R_i of each trajectory.
        group_id: (N,) integer group of each trajectory (same task and env seed); any order.
        norm_by_std: divide by the group's unbiased std (GRPO); False gives Dr.GRPO (mean only).
        eps: added to the std.

    Returns:
        (N,) advantages in the dtype of ``returns`` (float32 for integer returns). Groups of one get 0.
    """
    returns = torch.as_tensor(returns)
    group_id = torch.as_tensor(group_id, device=returns.device)
    _check_1d(returns, group_id, "returns")
    out_dtype = returns.dtype if returns.is_floating_point() else torch.float32
    if returns.numel() == 0:
        return returns.to(out_dtype)
    _, mean, std = _group_moments(returns, group_id)
    adv = returns.to(torch.float64) - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return adv.to(out_dtype)


def step_level_grpo_advantages(
    step_scores: Tensor, group_id: Tensor, *, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """verl-agent's ``grpo_stats="steps"`` variant: GRPO statistics over per-step rows.

    Every step row counts once in its group's mean and std, so long trajectories weigh more than short ones
    (contrast :func:`grpo_advantages`, where each trajectory counts once).

    Args:
        step_scores: (S,) score of each step row (usually the return of the step's trajectory).
        group_id: (S,) group of each step row.
        norm_by_std: divide by the unbiased std over the group's step rows.
        eps: added to the std.

    Returns:
        (S,) advantage per step row.
    """
    return grpo_advantages(step_scores, group_id, norm_by_std=norm_by_std, eps=eps)
