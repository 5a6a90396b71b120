"""Tests of empg.algos.sampling: DAPO dynamic-sampling filter and overlong shaping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import filter_groups, grpo_advantages, overlong_penalty


def test_filter_groups_golden():
    # group 0: [1, 1] all equal -> drop; group 1: [0, 1] -> keep; group 2: [3, 3, 3] -> drop; group 4 singleton -> drop
    returns = torch.tensor([1.0, 0.0, 3.0, 1.0, 3.0, 1.0, 3.0, 9.0])
    groups = torch.tensor([0, 1, 2, 0, 2, 1, 2, 4])
    keep = filter_groups(returns, groups)
    assert keep.tolist() == [False, True, False, False, False, True, False, False]
    assert filter_groups(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        filter_groups(torch.zeros(2), torch.zeros(3, dtype=torch.long))


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 1.0, 10.0, -0.1])), min_size=1, max_size=25))
def test_filter_groups_keeps_exactly_groups_with_nonzero_advantage(rows):
    groups = torch.tensor([g for g, _ in rows])
    returns = torch.tensor([r for _, r in rows], dtype=torch.float64)
    keep = filter_groups(returns, groups)
    adv = grpo_advantages(returns, groups)
    for gid in set(groups.tolist()):
        sel = groups == gid
        assert bool(keep[sel].all()) == bool((adv[sel] != 0).any())
        assert bool(keep[sel].all()) or not bool(keep[sel].any())  # whole groups only


def test_overlong_penalty_golden():
    # max_len 10, cache 4 -> penalty starts after 6: L = 5, 6 -> 0; L = 8 -> (6 - 8) / 4 = -0.5; L = 10 -> -1; 12 -> -1
    out = overlong_penalty(torch.tensor([5, 6, 8, 10, 12]), max_len=10, cache_len=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=10, cache_len=0)
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache_len=5)
