"""DAPO sampling helpers (arXiv 2503.14476): dynamic-sampling group filter and overlong reward shaping."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["filter_groups", "overlong_penalty"]


def filter_groups(returns: Tensor, group_id: Tensor) -> Tensor:
    """Keep mask of trajectories whose group is informative (its returns are not all equal).

    Args:
        returns: (N,) episode return per trajectory.
        group_id: (N,) integer group per trajectory; any order.

    Returns:
        (N,) bool; False for every trajectory of a group whose returns are all equal (including groups of one),
        because such a group has zero GRPO advantage everywhere.
    """
    returns = torch.as_tensor(returns)
    group_id = torch.as_tensor(group_id, device=returns.device)
    if returns.dim() != 1 or group_id.shape != returns.shape:
        raise ValueError(
            f"returns {tuple(returns.shape)} and group_id {tuple(group_id.shape)} must both be 1-D of the same length"
        )
    if returns.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=returns.device)
    _, inv = torch.unique(group_id, return_inverse=True)
    n = int(inv.max()) + 1
    x = returns.to(torch.float64)
    hi = torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amax")
    lo = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amin")
    return (hi > lo)[inv]


def overlong_penalty(lengths: Tensor, *, max_len: int, cache_len: int) -> Tensor:
    """DAPO soft overlong punishment, added to the reward.

    0 for ``L <= max_len - cache_len``, then ``(max_len - cache_len - L) / cache_len`` (linear down to -1 at
    ``L = max_len``), and -1 beyond ``max_len``.

    Args:
        lengths: (N,) response lengths in tokens.
        max_len: L_max, the hard response cap.
        cache_len: L_cache, width of the soft-penalty band (0 < cache_len <= max_len).

    Returns:
        (N,) float32 penalties in [-1, 0].
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len; got cache_len={cache_len}, max_len={max_len}")
    lengths = torch.as_tensor(lengths).to(torch.float32)
    start = float(max_len - cache_len)
    return ((start - lengths) / cache_len).clamp(-1.0, 0.0)
