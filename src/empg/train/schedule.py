"""Learning-rate schedules shared by SFT and RL: a linear warm-up, then constant, cosine or linear decay to 0."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at 0-based optimizer ``step`` of ``steps`` planned steps.

    Linear warm-up ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps; then 1 (``constant``), a
    cosine from 1 down to 0 at the last step (``cosine``), or a straight line from 1 down to 0 (``linear``). Steps
    past ``steps`` (a run extended beyond its plan) keep the last value.

    >>> [round(lr_factor(i, 5, "cosine", 1), 3) for i in range(5)]
    [1.0, 1.0, 0.75, 0.25, 0.0]
    >>> [lr_factor(i, 5, "linear", 1) for i in range(5)]
    [1.0, 1.0, 0.6666666666666667, 0.33333333333333337, 0.0]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use {' | '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = steps - warmup_steps - 1
    if span <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
