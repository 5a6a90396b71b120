"""Paired success differences between evaluations of the same seeds (start vs end of a run, or run vs run).

    python experiments/paired.py RUN_DIR [RUN_DIR ...] [--split eval_in] [--against OTHER_RUN_DIR]

For each run: the first and the last full evaluation of ``--split`` (``eval/<split>_iter_XXXX.json``; an SFT-only run's
``sft.json``), each with its 95 % Wilson interval, and the paired end - start difference with a 95 % bootstrap
interval over the seeds both played (:func:`empg.eval.stats.paired_difference`). With ``--against``, each run's last
evaluation is also compared with that run's last one (e.g. RL vs SFT given the same wall time), or with an evaluation
file (``empg eval``'s ``eval/cli/*.json``, e.g. the other model at this run's sampling seed). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from empg.eval.evaluate import EvalReport
from empg.eval.stats import paired_difference


def evaluations(run_dir: Path, split: str) -> list[tuple[str, EvalReport]]:
    """``(label, report)`` of every evaluation of ``split`` that recorded per-seed outcomes, in iteration order."""
    out = []
    sft = run_dir / "sft.json"
    if sft.is_file() and (d := json.loads(sft.read_text()).get(f"eval/{split}")) is not None:
        out.append(("sft", EvalReport.from_dict(d)))
    for path in sorted((run_dir / "eval").glob(f"{split}_iter_*.json")):
        out.append((path.stem.removeprefix(f"{split}_"), EvalReport.from_dict(json.loads(path.read_text()))))
    full = max((r.episodes for _, r in out), default=0)
    return [(label, r) for label, r in out if r.outcomes is not None and r.episodes == full]


def _fmt(r: EvalReport) -> str:
    row = r.table["all"]
    return f"{row.rate:.1%} [{row.low:.1%}, {row.high:.1%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="eval_in")
    ap.add_argument("--against", type=Path, default=None)
    args = ap.parse_args()
    other = None
    if args.against is not None and args.against.is_file():
        other = (args.against.stem, EvalReport.from_dict(json.loads(args.against.read_text())))
    elif args.against is not None:
        other = evaluations(args.against, args.split)[-1]
    print(f"| run | {args.split} start | end | end - start (paired) |" + (" end - other |" if other else ""))
    print("| --- | --- | --- | --- |" + (" --- |" if other else ""))
    for run in args.runs:
        evals = evaluations(run, args.split)
        if not evals:
            print(f"| {run.name} | no full evaluation with per-seed outcomes | | |")
            continue
        (l0, first), (l1, last) = evals[0], evals[-1]
        d = paired_difference(first.outcomes, last.outcomes)
        cells = [run.name, f"{_fmt(first)} ({l0})", f"{_fmt(last)} ({l1})",
                 f"{d.diff:+.1%} [{d.low:+.1%}, {d.high:+.1%}] (n={d.n})"]  # fmt: skip
        if other:
            o = paired_difference(other[1].outcomes, last.outcomes)
            cells.append(f"{o.diff:+.1%} [{o.low:+.1%}, {o.high:+.1%}]")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
