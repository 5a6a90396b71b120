"""Success-rate statistics with 95 % Wilson score intervals (via scipy)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from scipy.stats import binomtest


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``(0, 1)`` when ``n == 0``).

    >>> lo, hi = wilson_interval(5, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.2366, 0.7634)
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class SuccessStats:
    """Success of ``n`` episodes: ``rate`` and its 95 % Wilson interval ``[low, high]``."""

    n: int
    successes: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, outcomes: Iterable[bool]) -> SuccessStats:
        outcomes = [bool(o) for o in outcomes]
        n, k = len(outcomes), sum(outcomes)
        low, high = wilson_interval(k, n)
        return cls(n=n, successes=k, rate=k / n if n else float("nan"), low=low, high=high)

    def to_dict(self) -> dict:
        return asdict(self)


def success_table(task_types: list[str], outcomes: list[bool]) -> dict[str, SuccessStats]:
    """Per-task-type success plus ``"all"``: ``{"all": SuccessStats, "<type>": SuccessStats, ...}`` (types sorted)."""
    if len(task_types) != len(outcomes):
        raise ValueError(f"{len(task_types)} task types but {len(outcomes)} outcomes")
    by_type: dict[str, list[bool]] = defaultdict(list)
    for task_type, outcome in zip(task_types, outcomes, strict=True):
        by_type[task_type].append(outcome)
    table = {"all": SuccessStats.of(outcomes)}
    for task_type in sorted(by_type):
        table[task_type] = SuccessStats.of(by_type[task_type])
    return table
