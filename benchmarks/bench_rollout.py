"""Lock-step batched rollout vs generating env by env: tokens/s, env-steps/s and their ratio.

Same model, same tasks (seeds), one run each; the sequential baseline runs the very same code
(:func:`empg.rollout.collect_with_envs`) with one env at a time. Target: >= 5x with 16 envs on the tiny model.

    python benchmarks/bench_rollout.py                       # tiny-1m, household-v0, 16 envs
    python benchmarks/bench_rollout.py --group-size 4               # 4 tasks x 4 copies, as the trainer rolls out
    python benchmarks/bench_rollout.py --model smollm2-135m --n-envs 4 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import time

import torch

from empg.envs import make, split_seeds
from empg.policy import Policy, SamplingParams
from empg.rollout import collect_with_envs
from empg.rollout.corpus import env_corpus


def run(policy: Policy, env_id: str, seeds: list[int], args: argparse.Namespace, batched: bool) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
    kw = dict(sampling=sampling, max_turns=args.max_turns, generator=gen)
    envs = [make(env_id, "train", max_turns=args.max_turns) for _ in seeds]
    t0 = time.perf_counter()
    if batched:
        results = [collect_with_envs(policy, envs, seeds, env_id=env_id, **kw)]
    else:
        results = [collect_with_envs(policy, [e], [s], env_id=env_id, **kw) for e, s in zip(envs, seeds, strict=True)]
    wall = time.perf_counter() - t0
    tokens = sum(r.stats["tokens"] for r in results)
    steps = sum(r.stats["env_steps"] for r in results)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "env_steps": steps,
        "tokens_per_s": tokens / wall,
        "steps_per_s": steps / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1m")
    ap.add_argument("--env", default="household-v0")
    ap.add_argument("--n-envs", type=int, default=16)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--group-size", type=int, default=1, help="copies per task (GRPO group); n_envs / group tasks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    policy = Policy.from_spec(args.model, cache_dir=args.cache_dir, device=args.device, corpus=env_corpus)
    if args.group_size < 1 or args.n_envs % args.group_size:
        ap.error("--group-size must be >= 1 and divide --n-envs")
    seeds = [s for s in split_seeds("train", args.n_envs // args.group_size) for _ in range(args.group_size)]
    run(policy, args.env, seeds[:2], args, batched=True)  # warm-up
    batched = run(policy, args.env, seeds, args, batched=True)
    sequential = run(policy, args.env, seeds, args, batched=False)
    print(f"model={args.model} env={args.env} n_envs={args.n_envs} group_size={args.group_size} "
          f"max_turns={args.max_turns} max_new_tokens={args.max_new_tokens} device={args.device} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    for name, r in (("lock-step batched", batched), ("env by env", sequential)):
        print(f"{name:>18}: {r['tokens']:6d} tokens, {r['env_steps']:4d} env steps in {r['wall_s']:7.2f} s -> "
              f"{r['tokens_per_s']:8.1f} tokens/s, {r['steps_per_s']:6.2f} env-steps/s")  # fmt: skip
    print(f"ratio tokens/s: {batched['tokens_per_s'] / sequential['tokens_per_s']:.2f}x   "
          f"ratio env-steps/s: {batched['steps_per_s'] / sequential['steps_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
