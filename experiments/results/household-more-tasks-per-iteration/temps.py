"""Success of a household model at several sampling temperatures on the first N seeds of each split, paired by seed
and sampling seed (the quick start's evaluation otherwise: history 2, trie-constrained responses, jump-forward).

    python temps.py MODEL_DIR OUT.json --temps 0.4 1.0 --splits eval_in eval_out --episodes 256 --sampling-seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/, for household_episodes
from household_episodes import play  # noqa: E402

from empg.policy import Policy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an exported model directory (a warm start, or checkpoints/iter_NNNN)")
    ap.add_argument("out", help="JSON file: '<split>@<T>' -> {env seed: success}")
    ap.add_argument("--temps", type=float, nargs="+", default=[0.4, 1.0])
    ap.add_argument("--splits", nargs="+", default=["eval_in"])
    ap.add_argument("--episodes", type=int, default=256)
    ap.add_argument("--sampling-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = Policy.load(args.model)
    out = {}
    for split in args.splits:
        for t in args.temps:
            result = play(policy, args.episodes, split=split, sampling_seed=args.sampling_seed, temperature=t)
            wins = {tr.seed: bool(tr.success) for tr in result.trajectories}
            out[f"{split}@{t}"] = wins
            print(split, t, f"{sum(wins.values()) / len(wins):.3f}", flush=True)
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
