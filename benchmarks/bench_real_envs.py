"""Speed of the real-env adapters that are installed: start-up, reset time and expert steps per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_real_envs.py [--seeds 3] [--only scienceworld textworld retriever]

Not a test: it prints a table. Adapters whose package (or Java) is missing are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from empg.envs import split_seeds


def _expert_rollouts(env, seeds: list[int], max_steps: int = 100) -> dict[str, float]:
    """Reset each seed twice (cold, then warm) and follow the expert; return timings."""
    cold, warm, steps, step_time, wins = [], [], 0, 0.0, 0
    for seed in seeds:
        t = time.perf_counter()
        env.reset(seed=seed)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        env.reset(seed=seed)
        warm.append(time.perf_counter() - t)
        for _ in range(max_steps):
            action = env.expert_action()
            t = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            step_time += time.perf_counter() - t
            steps += 1
            if terminated or truncated:
                wins += bool(info["won"])
                break
    return {
        "reset_first_s": statistics.mean(cold),
        "reset_again_s": statistics.mean(warm),
        "steps_per_s": steps / step_time if step_time else float("nan"),
        "expert_success": wins / len(seeds),
    }


def bench_scienceworld(seeds: list[int]) -> dict[str, float]:
    if importlib.util.find_spec("scienceworld") is None or shutil.which("java") is None:
        raise RuntimeError("scienceworld or Java 17 not installed")
    from empg.envs.adapters.scienceworld import ScienceWorldEnv

    t = time.perf_counter()
    env = ScienceWorldEnv("train")
    start = time.perf_counter() - t
    try:
        out = {"start_s": start, **_expert_rollouts(env, seeds)}
        env.with_admissible = True
        out["steps_per_s_with_admissible"] = _expert_rollouts(env, seeds[:1])["steps_per_s"]
    finally:
        env.close()
    return out


def bench_textworld(seeds: list[int]) -> dict[str, float]:
    if importlib.util.find_spec("textworld") is None:
        raise RuntimeError("textworld not installed")
    from empg.envs.adapters.textworld import TextWorldEnv

    with tempfile.TemporaryDirectory() as cache:  # "reset_first_s" includes generating the game
        env = TextWorldEnv("train", cache_dir=cache)
        try:
            return _expert_rollouts(env, seeds)
        finally:
            env.close()


def bench_webshop(seeds: list[int]) -> dict[str, float]:
    if importlib.util.find_spec("web_agent_site") is None:
        raise RuntimeError("WebShop not installed (see empg.envs.adapters.webshop.SETUP_STEPS)")
    from empg.envs.adapters.webshop import WebShopEnv

    t = time.perf_counter()
    env = WebShopEnv("train")
    return {"start_s": time.perf_counter() - t, **_expert_rollouts(env, seeds, max_steps=15)}


def bench_retriever(seeds: list[int]) -> dict[str, float]:
    from empg.envs.adapters.retriever import HttpRetriever, serve_bm25

    docs = [f'"Entity {i}"\nEntity {i} was born in city {i % 97} and works on topic {i % 31}.' for i in range(5000)]
    t = time.perf_counter()
    with serve_bm25(docs) as server:
        start = time.perf_counter() - t
        client = HttpRetriever(server.url, topk=3)
        n = 200
        t = time.perf_counter()
        for i in range(n):
            client.search(f"entity {i} born city")
        per_query = (time.perf_counter() - t) / n
    return {"index_5000_docs_s": start, "queries_per_s": 1 / per_query}


BENCHES: dict[str, Callable[[list[int]], dict[str, float]]] = {
    "scienceworld": bench_scienceworld,
    "textworld": bench_textworld,
    "webshop": bench_webshop,
    "retriever": bench_retriever,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="train seeds per env")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="adapters to run (default all)")
    args = parser.parse_args()
    seeds = split_seeds("train", args.seeds)
    for name in args.only or BENCHES:
        try:
            result = BENCHES[name](seeds)
        except RuntimeError as exc:
            print(f"{name:13s} skipped: {exc}")
            continue
        print(f"{name:13s} " + "  ".join(f"{k}={v:.3g}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
