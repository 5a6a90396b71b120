"""Paired gains of RL runs over their warm start and over the 6,000-step SFT model (session 46's SFT-same-time run).

    python vs_sft6k.py RUN_DIR [RUN_DIR ...]   # the training seed is read from each run's config.yaml

Every evaluation is the first 256 seeds of the split at T = 0.4 with sampling seed = training seed x 1,000,003, so
a run's start, its end and the SFT model under that sampling seed are paired seed for seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from empg.eval.evaluate import EvalReport
from empg.eval.stats import paired_difference

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/, for paired.py
from paired import evaluations  # noqa: E402

SFT6K = Path(__file__).resolve().parent.parent / "household-sft-plateau-rl-steps" / "sft6k-s0"


def sft6k(split: str, seed: int) -> dict[int, bool]:
    """The 6,000-step SFT model's outcomes under training seed ``seed``'s sampling seed: its own evaluation
    (``sft.json``, sampling seed 0) for seed 0, ``empg eval --sampling-seed`` reports for the others."""
    if seed == 0:
        ((_, report),) = evaluations(SFT6K, split)
        return report.outcomes
    path = SFT6K / "eval" / f"{split}_base_model_n256_s{seed * 1_000_003}.json"
    return EvalReport.from_dict(json.loads(path.read_text())).outcomes


def pct(d) -> str:
    return f"{d.diff:+.1%} [{d.low:+.1%}, {d.high:+.1%}]"


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        seed = OmegaConf.load(run / "config.yaml").seed
        for split in ("eval_in", "eval_out"):
            (_, first), *_, (label, last) = evaluations(run, split)  # the first and last full evaluations
            gain, vs_sft = (
                paired_difference(first.outcomes, last.outcomes),
                paired_difference(sft6k(split, seed), last.outcomes),
            )
            print(
                f"{run.name} {split}: start {gain.rate_a:.1%} end {gain.rate_b:.1%} ({split}_{label}) gain "
                f"{pct(gain)} | sft6k {vs_sft.rate_a:.1%}, end - sft6k {pct(vs_sft)}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
