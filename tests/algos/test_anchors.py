"""Tests of empg.algos.anchors (GiGPO step credit): golden values by hand, a loop reference, input errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import anchor_advantages, anchor_sets, discounted_step_returns


def test_discounted_returns_golden_in_any_row_order():
    # traj 5: rewards 0, -0.1, 10 at steps 0, 1, 2; gamma 0.5 -> R2 = 10, R1 = -0.1 + 5 = 4.9, R0 = 2.45
    # traj 2: one step with reward 3 -> 3
    rewards = torch.tensor([10.0, 3.0, 0.0, -0.1])
    traj = torch.tensor([5, 2, 5, 5])
    step = torch.tensor([2, 0, 0, 1])
    out = discounted_step_returns(rewards, traj, step, gamma=0.5)
    torch.testing.assert_close(out, torch.tensor([10.0, 3.0, 2.45, 4.9], dtype=torch.float64))
    assert out.dtype == torch.float64


def test_undiscounted_return_of_the_first_step_is_the_episode_return():
    rewards = torch.tensor([0.0, -0.1, 0.0, -0.1, 10.0, 0.0, 0.0])
    traj = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    step = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    out = discounted_step_returns(rewards, traj, step, gamma=1.0)
    assert out[0].item() == pytest.approx(9.8) and out[5].item() == 0.0
    assert discounted_step_returns(rewards, traj, step, gamma=0.0).tolist() == rewards.double().tolist()


def test_anchor_advantages_golden():
    # group 0: state 7 seen twice with returns 2 and 4 -> mean 3, unbiased std sqrt(2) -> -/+ 1/sqrt(2);
    # state 9 seen once -> 0; two unknown states (-1) with different returns -> 0 (never compared).
    # group 1: state 7 once (keys are compared within a group only) -> 0.
    returns = torch.tensor([2.0, 4.0, 5.0, 1.0, 8.0, 100.0])
    group = torch.tensor([0, 0, 0, 0, 0, 1])
    key = torch.tensor([7, 7, 9, -1, -1, 7])
    out = anchor_advantages(returns, group, key)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(out, torch.tensor([-r, r, 0, 0, 0, 0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert anchor_sets(group, key)[1].tolist() == [2, 2, 1, 1, 1, 1]  # unknown states are sets of their own
    torch.testing.assert_close(
        anchor_advantages(returns, group, key, norm_by_std=False),
        torch.tensor([-1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64),
    )


def test_equal_returns_at_a_shared_state_give_exactly_zero():
    out = anchor_advantages(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([1, 1, 1]), torch.tensor([4, 4, 4]))
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_empty_inputs():
    e = torch.zeros(0)
    assert discounted_step_returns(e, e.long(), e.long(), 0.9).numel() == 0
    assert anchor_advantages(e, e.long(), e.long()).numel() == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: discounted_step_returns(torch.ones(2), torch.tensor([0, 0]), torch.tensor([1, 1]), 0.9), "once"),
        (lambda: discounted_step_returns(torch.ones(2), torch.tensor([0, 0]), torch.tensor([0, 1]), 1.5), "gamma"),
        (lambda: discounted_step_returns(torch.ones(2), torch.tensor([0]), torch.tensor([0, 1]), 0.9), "1-D"),
        (lambda: discounted_step_returns(torch.ones(1), torch.tensor([0]), torch.tensor([-1]), 0.9), ">= 0"),
        (lambda: anchor_advantages(torch.ones(2), torch.tensor([0, 0]), torch.tensor([1])), "1-D"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- loop references
def loop_returns(rewards, traj, step, gamma):
    out = []
    for r_i, (tr, t) in enumerate(zip(traj, step, strict=True)):
        later = sorted((s, r) for r, tt, s in zip(rewards, traj, step, strict=True) if tt == tr and s >= t)
        out.append(sum(gamma ** (s - t) * r for s, r in later))
        assert later[0][1] == rewards[r_i]
    return out


def loop_anchor(returns, group, key, eps=1e-6):
    out = []
    for r, g, k in zip(returns, group, key, strict=True):
        same = [x for x, gg, kk in zip(returns, group, key, strict=True) if gg == g and kk == k]
        if k < 0 or len(same) < 2 or max(same) == min(same):
            out.append(0.0)
            continue
        mean = sum(same) / len(same)
        std = math.sqrt(sum((x - mean) ** 2 for x in same) / (len(same) - 1))
        out.append((r - mean) / (std + eps))
    return out


@st.composite
def trajectories(draw):
    lengths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=6))
    rows = [(tr, t) for tr, n in enumerate(lengths) for t in range(n)]
    order = draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]
    rewards = draw(st.lists(st.sampled_from([0.0, -0.1, 1.0, 10.0]), min_size=len(rows), max_size=len(rows)))
    gamma = draw(st.sampled_from([0.0, 0.5, 0.95, 1.0]))
    group = [tr % 2 for tr, _ in rows]
    key = draw(st.lists(st.integers(-1, 2), min_size=len(rows), max_size=len(rows)))
    return rows, rewards, gamma, group, key


@settings(max_examples=60, deadline=None)
@given(trajectories())
def test_matches_the_loop_references(case):
    rows, rewards, gamma, group, key = case
    traj, step = [tr for tr, _ in rows], [t for _, t in rows]
    ret = discounted_step_returns(torch.tensor(rewards), torch.tensor(traj), torch.tensor(step), gamma)
    torch.testing.assert_close(ret, torch.tensor(loop_returns(rewards, traj, step, gamma), dtype=torch.float64))
    adv = anchor_advantages(ret, torch.tensor(group), torch.tensor(key))
    ref = loop_anchor(ret.tolist(), group, key)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64), atol=1e-6, rtol=1e-6)
