"""Env throughput under the expert policy: steps/s, reset time, expert episode length and success, per env.

    python benchmarks/bench_envs.py                    # embedded envs, 200 episodes each
    python benchmarks/bench_envs.py --envs household-v0 --episodes 1000
    python benchmarks/bench_envs.py --adapters --episodes 5   # also the real-engine adapters (slow)
    python benchmarks/bench_envs.py --policy random    # uniform admissible actions: long, full-length episodes

Step time counts ``env.step`` plus choosing the action (``expert_action`` for the expert); ``info`` building,
including ``admissible_actions``, is inside ``step``. The last column is steps/s divided by the 1,000 steps/s
target for embedded envs. Envs whose module or engine is missing are reported and skipped.
"""

from __future__ import annotations

import argparse
import random
import time

from empg.envs import list_envs, make, spec, split_seeds

TARGET_STEPS_PER_S = 1000.0


def bench_env(env_id: str, episodes: int, split: str = "train", policy: str = "expert") -> dict:
    """Run ``episodes`` episodes of ``policy`` on the first seeds of ``split``; return timing and outcome stats.

    ``policy="random"`` picks uniformly among ``info["admissible_actions"]`` (envs without them get ``"look"``).
    """
    env = make(env_id, split)
    rng = random.Random(0)
    reset_s = step_s = 0.0
    steps = wins = 0
    try:
        for seed in split_seeds(split, episodes):
            t0 = time.perf_counter()
            _, info = env.reset(seed=seed)
            t1 = time.perf_counter()
            reset_s += t1 - t0
            while True:
                t0 = time.perf_counter()
                if policy == "expert":
                    action = env.expert_action()
                else:
                    action = rng.choice(info.get("admissible_actions") or ["look"])
                _, _, terminated, truncated, info = env.step(action)
                step_s += time.perf_counter() - t0
                steps += 1
                if terminated or truncated:
                    wins += bool(info.get("won"))
                    break
    finally:
        env.close()
    return {
        "env": env_id,
        "episodes": episodes,
        "steps": steps,
        "steps_per_s": steps / step_s if step_s else float("inf"),
        "reset_ms": 1000 * reset_s / episodes,
        "mean_len": steps / episodes,
        "success": wins / episodes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="*", default=None, help="env ids (default: every registered embedded env)")
    parser.add_argument("--episodes", type=int, default=200, help="expert episodes per env")
    parser.add_argument("--split", default="train", help="split whose first seeds are played")
    parser.add_argument("--policy", choices=("expert", "random"), default="expert", help="who picks actions")
    parser.add_argument("--adapters", action="store_true", help="include real-engine adapters (slow)")
    args = parser.parse_args(argv)
    env_ids = args.envs or [
        e for e in list_envs() if args.adapters or not str(spec(e).entry_point).startswith("empg.envs.adapters.")
    ]
    print(f"policy: {args.policy}, split: {args.split}")
    header = f"{'env':<18}{'episodes':>9}{'steps':>8}{'steps/s':>11}{'reset ms':>10}{'mean len':>10}{'success':>9}"
    print(header + f"{'x target':>10}")
    print("-" * (len(header) + 10))
    for env_id in env_ids:
        try:
            r = bench_env(env_id, args.episodes, args.split, args.policy)
        except (ImportError, RuntimeError) as exc:
            print(f"{env_id:<18}skipped: {str(exc).splitlines()[0]}")
            continue
        print(
            f"{r['env']:<18}{r['episodes']:>9}{r['steps']:>8}{r['steps_per_s']:>11.0f}{r['reset_ms']:>10.2f}"
            f"{r['mean_len']:>10.2f}{r['success']:>9.1%}{r['steps_per_s'] / TARGET_STEPS_PER_S:>10.1f}"
        )


if __name__ == "__main__":
    main()
