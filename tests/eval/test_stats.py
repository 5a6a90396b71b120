"""Wilson intervals and per-task-type tables."""

from __future__ import annotations

import math

import pytest

from empg.eval.stats import SuccessStats, success_table, wilson_interval

Z = 1.959963984540054  # 97.5 % normal quantile


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(5, 10), (0, 4), (10, 10), (3, 32), (31, 32)])
def test_wilson_matches_formula(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = _wilson_by_hand(k, n)
    assert lo == pytest.approx(max(elo, 0.0), abs=1e-9) and hi == pytest.approx(min(ehi, 1.0), abs=1e-9)


def test_wilson_golden_and_edges():
    # 5/10: centre = (0.5 + 1.9208/10)/(1 + 0.38415) = 0.5; half = 1.96*sqrt(0.025 + 0.0096)/1.38415 = 0.2634
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_success_table_per_type():
    table = success_table(["a", "b", "a", "a"], [True, False, False, True])
    assert list(table) == ["all", "a", "b"]
    assert (table["all"].n, table["all"].successes, table["all"].rate) == (4, 2, 0.5)
    assert (table["a"].n, table["a"].successes) == (3, 2)
    assert table["b"].rate == 0.0 and table["b"].high > 0
    assert isinstance(SuccessStats.of([]).rate, float)


def test_paired_difference_golden_and_pairing():
    from empg.eval.stats import paired_difference

    a = {s: s % 4 == 0 for s in range(200)}  # 25 %
    same = paired_difference(a, a)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    b = {s: s % 4 == 0 or s % 4 == 1 for s in range(200)}  # 50 %, every seed a won still won
    d = paired_difference(a, b)
    assert d.n == 200 and d.rate_a == 0.25 and d.rate_b == 0.5 and d.diff == 0.25
    assert d.low < 0.25 < d.high and d.low > 0.15  # per-seed diffs are Bernoulli(0.25): sd/sqrt(n) ~ 0.031
    only_shared = paired_difference({0: True, 1: False, 7: True}, {0: True, 1: True, 9: False})
    assert only_shared.n == 2 and only_shared.diff == 0.5
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: True}, {1: True})
