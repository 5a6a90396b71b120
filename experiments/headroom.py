"""How much room a warm start leaves RL: G samples of each of N training tasks at the rollout temperature.

    python experiments/headroom.py MODEL_DIR [--config configs/household-tiny.yaml] [--tasks 32] [--group 8]

Prints the success rate (pass@1), pass@G (tasks solved at least once), and how many task groups are all-fail,
all-success or mixed. GRPO learns only from mixed groups, and the gap between pass@1 and pass@G is the most that
sharpening the policy on these tasks could gain; a small gap or few mixed groups means RL has little to work with.
The environment, turn limit, prompts and sampling settings come from the config.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from empg.envs import split_seeds
from empg.policy import Policy, SamplingParams
from empg.rollout import collect
from empg.rollout.prompts import PromptSpec
from empg.train.config import load_config


def headroom(won_by_group: dict[int, list[bool]]) -> dict[str, float]:
    """pass@1, pass@G and the all-fail / all-success / mixed group counts of ``{group: [won, ...]}``."""
    rates = [sum(w) / len(w) for w in won_by_group.values()]
    n = len(rates)
    return {
        "tasks": n,
        "pass@1": sum(rates) / n,
        "pass@G": sum(r > 0 for r in rates) / n,
        "all_fail": sum(r == 0 for r in rates),
        "all_success": sum(r == 1 for r in rates),
        "mixed": sum(0 < r < 1 for r in rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model directory (e.g. RUN_DIR/base_model after SFT)")
    ap.add_argument("--config", default="configs/household-tiny.yaml", help="env, turn limit and rollout settings")
    ap.add_argument("--tasks", type=int, default=32, help="training tasks (the first N seeds of the train split)")
    ap.add_argument("--group", type=int, default=8, help="samples per task (G)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = ap.parse_args()

    cfg = load_config(args.config, [])
    policy = Policy.load(args.model)
    result = collect(
        policy,
        cfg.env.id,
        split_seeds("train", args.tasks),
        group_size=args.group,
        split="train",
        sampling=SamplingParams(temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens),
        max_turns=cfg.env.max_turns,
        prompt=PromptSpec.from_config(cfg.rollout),
        env_kwargs=cfg.env.kwargs,
        generator=torch.Generator().manual_seed(args.seed),
        record_behaviour=False,
    )
    won: dict[int, list[bool]] = defaultdict(list)
    for traj in result.trajectories:
        won[traj.group_id].append(traj.success)
    h = headroom(won)
    print(
        f"{h['tasks']} tasks x {args.group} samples at T={cfg.rollout.temperature}: pass@1 {h['pass@1']:.1%}, "
        f"pass@{args.group} {h['pass@G']:.1%}; groups all-fail {h['all_fail']}, all-success {h['all_success']}, "
        f"mixed {h['mixed']}"
    )


if __name__ == "__main__":
    main()
