"""Progress of long phases: live rich bars on a terminal, plain timestamped lines anywhere else.

When the console is not a terminal (``empg train … > train.log``, nohup, a scheduler, CI), rich draws a progress bar
only when it ends, so a log would stay empty for the whole SFT phase. :class:`Progress` then prints lines instead:
``[12:03:04] SFT 300/2000 loss 0.412 (41 s, 7.3 steps/s)`` at most every ``every`` seconds of work (``log.every``)
and at the end, and one line per call of :meth:`Progress.line` (one per RL iteration). On a terminal it is a rich
progress bar with the same text as its description.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any


def stamp(console: Any, text: str) -> None:
    """Print ``text`` with a ``[HH:MM:SS]`` prefix (plain output) or as is (terminal); nothing without a console."""
    if console is None:
        return
    if getattr(console, "is_terminal", False):
        console.print(text, highlight=False)
    else:
        console.print(f"[{datetime.now():%H:%M:%S}] {text}", highlight=False, markup=False)


class Progress:
    """Progress of ``total`` units of a phase called ``label``.

    Args:
        console: a rich Console (None: silent).
        label: the phase (``SFT``, ``RL``).
        total: units (steps, iterations).
        completed: units already done (a resumed run).
        every: plain output: seconds between two throttled lines (:meth:`update`).
        unit: what a unit is called in the rate (``steps``, ``its``).
    """

    def __init__(self, console: Any, label: str, total: int, *, completed: int = 0, every: float = 30.0,
                 unit: str = "steps"):  # fmt: skip
        self.console, self.label, self.total, self.done = console, label, total, completed
        self.every, self.unit = every, unit
        self.live = console is not None and bool(getattr(console, "is_terminal", False))
        self._bar: Any = None
        self._task: Any = None
        self._t0 = self._last = time.monotonic()
        self._start = completed
        self._text = ""

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=self.console)  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None and self._text and self.done > self._printed_at:
            self._plain(self._text)  # the last throttled state

    _printed_at = -1

    def update(self, completed: int, text: str = "") -> None:
        """``completed`` units done; ``text`` describes the state (throttled to one line per ``every`` s in plain
        output, and the last state is printed when the phase ends)."""
        self.done, self._text = completed, text
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, description=text)
        elif self.console is not None and time.monotonic() - self._last >= self.every:
            self._plain(text)

    def line(self, completed: int, text: str) -> None:
        """``completed`` units done, and print ``text`` now (plain output) or show it (terminal)."""
        self.done, self._text = completed, text
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, description=text)
        elif self.console is not None:
            self._plain(text)

    def _plain(self, text: str) -> None:
        elapsed = time.monotonic() - self._t0
        rate = (self.done - self._start) / elapsed if elapsed > 0 else 0.0
        stamp(self.console, f"{self.label} {self.done}/{self.total} {text} ({elapsed:.0f} s, {rate:.2f} {self.unit}/s)")
        self._last, self._printed_at = time.monotonic(), self.done


def iteration_summary(m: dict[str, Any]) -> str:
    """One line of an iteration's metrics: training success, return, invalid rate, mixed groups, entropy, KL,
    seconds per phase, and the evaluation when there was one."""
    parts = [
        f"success {m.get('train/success', 0):.0%}",
        f"return {m.get('train/return', 0):.2f}",
        f"invalid {m.get('train/invalid_rate', 0):.0%}",
        f"mixed {m.get('train/mixed_groups', 0):.0f}/{m.get('dapo/kept_groups', 0):.0f} kept",
        f"H {m.get('entropy/token_mean', 0):.3f}",
    ]
    if "actor/approx_kl" in m:
        parts.append(f"kl {m['actor/approx_kl']:.1e}")
    secs = "/".join(f"{m.get(f'time/{k}', 0):.0f}" for k in ("rollout", "scoring", "update", "eval"))
    parts.append(f"s {secs}")
    for split in ("eval_train", "eval_in", "eval_out"):
        if f"{split}/success" in m:
            parts.append(f"{split} {m[f'{split}/success']:.1%}")
    return " | ".join(parts)
