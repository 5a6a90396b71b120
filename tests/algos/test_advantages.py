"""Tests of empg.algos.advantages: golden values, group invariants, loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import grpo_advantages, step_level_grpo_advantages, trajectory_returns


def loop_grpo(returns: list[float], groups: list[int], norm_by_std: bool = True, eps: float = 1e-6) -> list[float]:
    """Slow reference: one Python pass per trajectory."""
    out = []
    for r, g in zip(returns, groups, strict=True):
        members = [x for x, gg in zip(returns, groups, strict=True) if gg == g]
        n = len(members)
        if n == 1:
            out.append(0.0)
            continue
        mean = sum(members) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
        out.append((r - mean) / (std + eps) if norm_by_std else r - mean)
    return out


def test_trajectory_returns_golden():
    # R = 10 * outcome - 0.1 * n_invalid: [10 - 0, 0 - 0.3, 10 - 0.2, 0 - 0]
    r = trajectory_returns(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 3, 2, 0]))
    torch.testing.assert_close(r, torch.tensor([10.0, -0.3, 9.8, 0.0]))
    r2 = trajectory_returns(torch.tensor([1, 0]), torch.tensor([1, 1]), reward_scale=1.0, invalid_penalty=0.5)
    torch.testing.assert_close(r2, torch.tensor([0.5, -0.5]))
    with pytest.raises(ValueError, match="same length"):
        trajectory_returns(torch.zeros(3), torch.zeros(2))


def test_grpo_golden_one_group():
    # mean 5; unbiased var = 4 * 25 / 3 = 33.33; std = 5.7735; A = +-5 / 5.7735 = +-0.866025
    a = grpo_advantages(torch.tensor([10.0, 0.0, 10.0, 0.0]), torch.tensor([3, 3, 3, 3]))
    torch.testing.assert_close(a, torch.tensor([0.866025, -0.866025, 0.866025, -0.866025]), atol=1e-5, rtol=0)
    # Dr.GRPO: mean only -> +-5
    d = grpo_advantages(torch.tensor([10.0, 0.0, 10.0, 0.0]), torch.tensor([3, 3, 3, 3]), norm_by_std=False)
    torch.testing.assert_close(d, torch.tensor([5.0, -5.0, 5.0, -5.0]))


def test_grpo_golden_mixed_groups_and_singleton():
    # group 7: [1, 3]: mean 2, std sqrt(2) -> -+1/1.41421 = -+0.707107; group 2: [2, 2]: std 0 -> 0 / 1e-6 = 0
    # group 9: one trajectory -> mean = R, std = 1 -> 0
    a = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 2.0, 5.0]), torch.tensor([7, 2, 7, 2, 9]))
    torch.testing.assert_close(a, torch.tensor([-0.707107, 0.0, 0.707107, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert a.dtype == torch.float32
    # all-equal group: exactly 0 even where the float mean of -0.1 * 3 / 3 is not exactly -0.1
    z = grpo_advantages(torch.tensor([-0.1, -0.1, -0.1], dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    assert z.tolist() == [0.0, 0.0, 0.0]


def test_step_level_counts_every_row():
    # traj A (R = 10) has 3 step rows, traj B (R = 0) one: rows [10, 10, 10, 0]
    # mean 7.5; unbiased var = (3 * 2.5^2 + 7.5^2) / 3 = 75 / 3 = 25; std 5 -> [0.5, 0.5, 0.5, -1.5]
    a = step_level_grpo_advantages(torch.tensor([10.0, 10.0, 10.0, 0.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-6, rtol=0)
    # the trajectory-level estimator counts each trajectory once: +-0.707107
    t = grpo_advantages(torch.tensor([10.0, 0.0]), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(t, torch.tensor([0.707107, -0.707107]), atol=1e-5, rtol=0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="same length"):
        grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), torch.zeros(2, dtype=torch.long))
    assert grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


groups_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.floats(-20, 20, allow_nan=False, allow_subnormal=False)), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None)
@given(rows=groups_strategy, norm=st.booleans(), seed=st.integers(0, 1000))
def test_grpo_matches_loop_and_permutation(rows, norm, seed):
    groups = [g for g, _ in rows]
    returns = [r for _, r in rows]
    a = grpo_advantages(torch.tensor(returns, dtype=torch.float64), torch.tensor(groups), norm_by_std=norm)
    ref = loop_grpo(returns, groups, norm)
    torch.testing.assert_close(a, torch.tensor(ref, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    b = grpo_advantages(torch.tensor(returns, dtype=torch.float64)[perm], torch.tensor(groups)[perm], norm_by_std=norm)
    torch.testing.assert_close(b, a[perm])
    # each group's advantages sum to zero
    g = torch.tensor(groups)
    for gid in set(groups):
        assert abs(float(a[g == gid].sum())) < 1e-6 * max(1.0, float(a.abs().max()))
