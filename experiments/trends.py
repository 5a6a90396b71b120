"""Trends the success table cannot show, per method of a sweep (means over seeds), as a Markdown table.

    python experiments/trends.py runs/sweeps/household-main [METHOD ...]

Columns: training invalid-action rate over the first vs the last 4 iterations, training success over all iterations,
eval invalid rate at the first vs the last evaluation, mean step entropy of successful / failed trajectories, and the
mean advantage of the steps of failed trajectories before → after EMPG's final normalisation (``adv/failure_*``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

METHODS = ["grpo", "grpo+empg", "dapo", "dapo+empg"]
COLUMNS = ["inv_first", "inv_last", "success", "ei_first", "ei_last", "eo_first", "eo_last", "h_succ", "h_fail"]


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else float("nan")


def run_trends(path: Path) -> dict[str, float] | None:
    """One run's trend values, or None when it has fewer than 8 RL iterations."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "train/success" in r]
    if len(train) < 8:
        return None
    evals = [r for r in rows if "eval_in/invalid_rate" in r]
    out = {
        "inv_first": _mean([r["train/invalid_rate"] for r in train[:4]]),
        "inv_last": _mean([r["train/invalid_rate"] for r in train[-4:]]),
        "success": _mean([r["train/success"] for r in train]),
        "h_succ": _mean([r.get("entropy/step_success") for r in train]),
        "h_fail": _mean([r.get("entropy/step_failure") for r in train]),
    }
    for split, tag in (("eval_in", "ei"), ("eval_out", "eo")):
        out[f"{tag}_first"] = evals[0][f"{split}/invalid_rate"] if evals else float("nan")
        out[f"{tag}_last"] = evals[-1][f"{split}/invalid_rate"] if evals else float("nan")
    if "adv/failure_before" in train[0]:
        out["adv_before"] = _mean([r.get("adv/failure_before") for r in train])
        out["adv_after"] = _mean([r.get("adv/failure_after") for r in train])
    return out


def table(sweep_dir: Path, methods: list[str]) -> str:
    head = (
        "| method | seeds | train invalid, first → last 4 its (%) | train success (%) | eval_in invalid, first → last "
        "(%) | eval_out invalid, first → last (%) | step entropy success / failure | A of failed steps before → after |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in methods:
        runs = [t for p in sorted((sweep_dir / method).glob("seed*/metrics.jsonl")) if (t := run_trends(p))]
        if not runs:
            continue
        m = {k: _mean([r[k] for r in runs]) for k in COLUMNS}
        adv = [r for r in runs if "adv_before" in r]
        before, after = _mean([r["adv_before"] for r in adv]), _mean([r["adv_after"] for r in adv])
        a = f"{before:+.3f} → {after:+.3f}" if adv else "–"
        lines.append(
            f"| `{method}` | {len(runs)} | {100 * m['inv_first']:.1f} → {100 * m['inv_last']:.1f} | "
            f"{100 * m['success']:.2f} | {100 * m['ei_first']:.1f} → {100 * m['ei_last']:.1f} | "
            f"{100 * m['eo_first']:.1f} → {100 * m['eo_last']:.1f} | {m['h_succ']:.3f} / {m['h_fail']:.3f} | {a} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(table(Path(sys.argv[1]), sys.argv[2:] or METHODS))
