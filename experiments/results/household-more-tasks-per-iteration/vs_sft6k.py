"""Paired gains of RL runs over their warm start and over the 6,000-step SFT model (session 46's SFT-same-time run).

    python vs_sft6k.py RUN_DIR [RUN_DIR ...]   # run dirs named ...-s<training seed>

Every evaluation is the first 256 seeds of the split at T = 0.4 with sampling seed = training seed x 1,000,003, so
a run's start, its end and the SFT model under that sampling seed are paired seed for seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from empg.eval.stats import paired_difference

SFT6K = Path(__file__).resolve().parent.parent / "household-sft-plateau-rl-steps" / "sft6k-s0"


def outcomes(path: Path) -> dict[int, bool]:
    return {int(k): v for k, v in json.loads(path.read_text())["outcomes"].items()}


def sft6k(split: str, seed: int) -> dict[int, bool]:
    """The 6,000-step SFT model's outcomes under training seed ``seed``'s sampling seed."""
    if seed == 0:  # SFT's own evaluation used sampling seed 0
        report = json.loads((SFT6K / "sft.json").read_text())[f"eval/{split}"]
        return {int(k): v for k, v in report["outcomes"].items()}
    return outcomes(SFT6K / "eval" / f"{split}_base_model_n256_s{seed * 1_000_003}.json")


def pct(d) -> str:
    return f"{d.diff:+.1%} [{d.low:+.1%}, {d.high:+.1%}]"


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        seed = int(run.name.rsplit("-s", 1)[1])
        for split in ("eval_in", "eval_out"):
            evals = sorted((run / "eval").glob(f"{split}_iter_*.json"))
            start, end = outcomes(evals[0]), outcomes(evals[-1])
            gain, vs_sft = paired_difference(start, end), paired_difference(sft6k(split, seed), end)
            print(
                f"{run.name} {split}: start {gain.rate_a:.1%} end {gain.rate_b:.1%} ({evals[-1].stem}) gain "
                f"{pct(gain)} | sft6k {vs_sft.rate_a:.1%}, end - sft6k {pct(vs_sft)}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
