"""Jump-forward decoding (``rollout.jump_forward``) vs one decode step per token, on the quick start's rollouts.

Same warm start, the same tasks, the quick start's own rollout settings (``configs/household-tiny.yaml``: 16 tasks x
4 rollouts, T = 1, constrained decoding of the whole response, up to 20 turns), one run each per round. Round k
samples with seed k on both sides and the sides alternate, after one untimed warm-up each. The two sides draw
different random streams (a forced token draws no number with jump-forward), so their episodes differ; the
medians over rounds compare like with like, and success rates and tokens per step are printed to show that the
rollouts are alike. A greedy check first: with ``greedy`` decoding the two sides must emit the same tokens.

    python benchmarks/bench_jump_forward.py                      # 3 rounds, one thread
    python benchmarks/bench_jump_forward.py --rounds 5 --threads 2

The last line is the ratio of median rollout times (> 1: jump-forward is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from common import load_policy
from empg.envs import split_seeds
from empg.rollout import collect
from empg.train.backends import rollout_settings
from empg.train.config import load_config


def rollout(policy, cfg, seeds, seed: int, jump: bool, greedy: bool = False) -> dict:
    settings = rollout_settings(cfg, torch.Generator().manual_seed(seed), record_behaviour=True)
    settings["sampling"] = dataclasses.replace(settings["sampling"], jump_forward=jump, greedy=greedy)
    calls: list[int] = []
    handle = policy.model.register_forward_hook(lambda *_: calls.append(1))
    t0 = time.perf_counter()
    res = collect(policy, cfg.env.id, seeds, group_size=cfg.rollout.group_size, env_kwargs=cfg.env.kwargs, **settings)
    wall = time.perf_counter() - t0
    handle.remove()
    trajs = res.trajectories
    return {
        "wall": wall,
        "forwards": len(calls),
        "steps": len(res.steps),
        "tokens": sum(len(s.response_ids) for s in res.steps),
        "success": sum(t.success for t in trajs) / len(trajs),
        "responses": [s.response_ids for s in res.steps],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/household-tiny.yaml", help="the run whose rollouts are timed")
    ap.add_argument("--rounds", type=int, default=3, help="timed rollouts per side (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the profile in the README used 1)")
    ap.add_argument("--greedy-tasks", type=int, default=4, help="tasks of the greedy equality check (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    policy = load_policy(cfg.model.init)
    seeds = split_seeds("train", cfg.env.train_pool)[: cfg.rollout.n_tasks]

    if args.greedy_tasks:
        a, b = (rollout(policy, cfg, seeds[: args.greedy_tasks], 0, jump, greedy=True) for jump in (False, True))
        same = a["responses"] == b["responses"]
        print(f"greedy check ({args.greedy_tasks} tasks x {cfg.rollout.group_size}, {a['steps']} steps): "
              f"identical responses: {same}; forwards {a['forwards']} -> {b['forwards']}")  # fmt: skip
        if not same:
            raise SystemExit("jump-forward changed a greedy rollout: a bug")

    sides: dict[bool, list[dict]] = {False: [], True: []}
    for k in range(args.rounds + 1):
        for jump in (False, True):
            r = rollout(policy, cfg, seeds, k, jump)
            if k:  # round 0 is the warm-up
                sides[jump].append(r)
                print(f"round {k} {'jump-forward' if jump else 'one-token   '}: {r['wall']:6.1f} s, "
                      f"{r['forwards']:5d} forwards, {r['steps']} steps, {r['tokens']} tokens, "
                      f"success {r['success']:.3f}")  # fmt: skip
    med = {j: statistics.median(r["wall"] for r in rs) for j, rs in sides.items()}
    fwd = {j: statistics.median(r["forwards"] for r in rs) for j, rs in sides.items()}
    print(f"median rollout: one-token {med[False]:.1f} s ({fwd[False]:.0f} forwards), "
          f"jump-forward {med[True]:.1f} s ({fwd[True]:.0f} forwards)")  # fmt: skip
    print(f"ratio (one-token / jump-forward): {med[False] / med[True]:.2f}x")


if __name__ == "__main__":
    main()
