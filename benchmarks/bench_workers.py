"""Env-steps/s of in-process envs vs Ray env workers (1 and 2 actors).

Two paths (``--paths``):

* ``expert`` — every env plays full episodes with ``expert_action()``; in-process envs are stepped one after the
  other, the Ray pool steps all live envs of a turn together (:meth:`RayEnvPool.step_many`).
* ``collect`` — the trainer's rollout loop, :func:`empg.rollout.collect_with_envs`, with a constant policy (always
  ``look``, so every episode runs to ``--max-turns``) over a list of in-process envs or a :class:`RayEnvPool`.
  This is what ``rollout.env_workers: N`` runs, minus the model.

With ``--step-ms`` each env step also sleeps that long, standing in for an expensive env (a simulator or a web
server): Ray pays off only there, since a step of the embedded envs costs microseconds and a Ray round trip about a
millisecond.

    python benchmarks/bench_workers.py --envs 8 --episodes 2 --step-ms 0 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from empg.envs import make, split_seeds
from empg.envs.household import HouseholdEnv


class SlowHousehold(HouseholdEnv):
    """``household`` whose every step also sleeps ``step_ms`` milliseconds (a stand-in for an expensive env)."""

    family = "household"

    def __init__(self, split: str = "train", *, step_ms: float = 0.0, **kwargs):
        super().__init__(split, **kwargs)
        self.step_ms = step_ms

    def _step(self, action):
        if self.step_ms:
            time.sleep(self.step_ms / 1000)
        return super()._step(action)


ENV_ID = "bench_workers:SlowHousehold"


def run_in_process(n_envs: int, episodes: int, step_ms: float, max_turns: int) -> tuple[int, float]:
    envs = [make(ENV_ID, max_turns=max_turns, step_ms=step_ms) for _ in range(n_envs)]
    steps, t0 = 0, time.perf_counter()
    for ep in range(episodes):
        for i, env in enumerate(envs):
            env.reset(seed=split_seeds("train", 1, start=10 * (ep * n_envs + i))[0])
        live = set(range(n_envs))
        while live:
            for i in sorted(live):
                _, _, term, trunc, _ = envs[i].step(envs[i].expert_action())
                steps += 1
                if term or trunc:
                    live.discard(i)
    return steps, time.perf_counter() - t0


def run_ray(n_envs: int, workers: int, episodes: int, step_ms: float, max_turns: int) -> tuple[int, float]:
    from empg.rollout.workers import RayEnvPool

    with RayEnvPool(
        ENV_ID, n_envs, n_workers=workers, max_turns=max_turns, env_kwargs={"step_ms": step_ms}, num_cpus_per_worker=0.5
    ) as pool:
        steps, t0 = 0, time.perf_counter()
        for ep in range(episodes):
            seeds = [split_seeds("train", 1, start=10 * (ep * n_envs + i))[0] for i in range(n_envs)]
            pool.reset_many(seeds)
            live = list(range(n_envs))
            while live:
                results = pool.step_many(dict(zip(live, pool.expert_actions(live), strict=True)))
                steps += len(results)
                live = [i for i, r in results.items() if not (r[2] or r[3])]
        return steps, time.perf_counter() - t0


class _ConstTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return LOOK if ids else ""


LOOK = "<action>look</action>"


class LookPolicy:
    """The policy interface ``collect_with_envs`` needs, answering ``look`` at once (one token per response)."""

    tokenizer = _ConstTokenizer()

    def chat_prompt_ids(self, messages):
        return [1]

    def generate(self, prompt_ids, **kwargs):
        from empg.policy.hf import Generation

        return [Generation([1], LOOK, None, None, "stop") for _ in prompt_ids]


def run_collect(envs, episodes: int, max_turns: int) -> tuple[int, float]:
    from empg.rollout import collect_with_envs

    steps, t0 = 0, time.perf_counter()
    for ep in range(episodes):
        seeds = [split_seeds("train", 1, start=10 * (ep * len(envs) + i))[0] for i in range(len(envs))]
        result = collect_with_envs(LookPolicy(), envs, seeds, max_turns=max_turns, record_behaviour=False)
        assert not any(t.failed for t in result.trajectories)
        steps += len(result.steps)
    return steps, time.perf_counter() - t0


def collect_in_process(n_envs: int, episodes: int, step_ms: float, max_turns: int) -> tuple[int, float]:
    envs = [make(ENV_ID, max_turns=max_turns, step_ms=step_ms) for _ in range(n_envs)]
    return run_collect(envs, episodes, max_turns)


def collect_ray(n_envs: int, workers: int, episodes: int, step_ms: float, max_turns: int) -> tuple[int, float]:
    from empg.rollout.workers import RayEnvPool

    with RayEnvPool(
        ENV_ID, n_envs, n_workers=workers, max_turns=max_turns, env_kwargs={"step_ms": step_ms}, num_cpus_per_worker=0.5
    ) as pool:
        return run_collect(pool, episodes, max_turns)


PATHS = {"expert": (run_in_process, run_ray), "collect": (collect_in_process, collect_ray)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8, help="number of envs")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per env")
    parser.add_argument("--max-turns", type=int, default=50, help="turn limit")
    parser.add_argument("--step-ms", type=float, nargs="+", default=[0.0, 5.0], help="simulated cost of one step")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="what to time")
    args = parser.parse_args()

    import ray

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        print(
            f"{'path':>8} {'step cost':>10} {'backend':>12} {'env steps':>10} {'seconds':>9} {'steps/s':>10} "
            f"{'vs in-process':>14}"
        )
        for path in args.paths:
            local, remote = PATHS[path]
            for step_ms in args.step_ms:
                steps, secs = local(args.envs, args.episodes, step_ms, args.max_turns)
                base = steps / secs
                _row(path, step_ms, "in-process", steps, secs, base)
                for workers in args.workers:
                    steps, secs = remote(args.envs, workers, args.episodes, step_ms, args.max_turns)
                    _row(path, step_ms, f"ray x{workers}", steps, secs, base)
    finally:
        ray.shutdown()


def _row(path: str, step_ms: float, label: str, steps: int, secs: float, base: float) -> None:
    rate = steps / secs
    print(f"{path:>8} {step_ms:>8.1f}ms {label:>12} {steps:>10} {secs:>9.2f} {rate:>10.1f} {rate / base:>13.2f}x")


if __name__ == "__main__":
    main()
