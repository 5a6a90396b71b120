"""Warm start vs the RL'd model of one run, at the preset's evaluation temperature, the training one, and greedy.

The run's ``base_model`` and ``checkpoints/iter_0030`` play the first 256 seeds of ``eval_in`` and ``eval_out`` with
the run's sampling seed (so every pair is paired), at T = 0.4 (the preset's ``eval.temperature``), T = 1.0 (the
rollout temperature) and greedily; one line per split and mode, the paired gain with its 95 % BCa interval.

    python evaluate_at_temperatures.py RUN_DIR
"""

from __future__ import annotations

import sys

import torch

from empg.eval.evaluate import eval_sampling_seed, evaluate_with_config
from empg.eval.stats import paired_difference
from empg.policy import Policy
from empg.train.config import load_run_config

MODES = {"T=0.4": (0.4, False), "T=1.0": (1.0, False), "greedy": (0.4, True)}


def main(run: str, episodes: int = 256) -> None:
    torch.set_num_threads(2)
    cfg = load_run_config(run)
    models = {"warm start": f"{run}/base_model", "RL 30": f"{run}/checkpoints/iter_0030"}
    for split in ("eval_in", "eval_out"):
        for mode, (temperature, greedy) in MODES.items():
            cfg.eval.temperature = temperature
            outcomes = {}
            for name, path in models.items():
                policy = Policy.load(path)
                policy.model.eval()
                seed = eval_sampling_seed(cfg.seed)
                outcomes[name] = evaluate_with_config(policy, cfg, split, episodes, seed=seed, greedy=greedy).outcomes
            d = paired_difference(outcomes["warm start"], outcomes["RL 30"])
            print(
                f"{split} {mode}: warm {100 * d.rate_a:.1f} % -> RL {100 * d.rate_b:.1f} %, "
                f"gain {100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] pp",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1])
