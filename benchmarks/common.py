"""Shared inputs of the comparison benchmarks: a policy by name, and the trainer's real household step rows.

The rows come from a short lock-step rollout (``collect_with_envs``) on ``household-v0`` small scenes, so prompts
carry the task, the last observations/actions and the admissible actions exactly as the trainer builds them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from empg.envs import make, split_seeds
from empg.policy import Policy, SamplingParams
from empg.rollout import StepRecord, collect_with_envs
from empg.rollout.corpus import env_corpus
from empg.train import warmstart
from empg.train.batch import StepBatch, pack

ENV_ID = "household-v0"


def load_policy(spec: str, device: str = "cpu") -> Policy:
    """``tiny-1m`` / ``tiny-5m`` / ``tiny-25m`` (built locally, cached), ``smollm2-135m`` (from the GGUF package),
    a shipped warm start such as ``household-tiny-take-first`` (the quick start's), or a local model directory."""
    if spec in warmstart.packaged() or Path(spec).is_dir():
        return Policy.load(warmstart.resolve(spec), device=device)
    return Policy.from_spec(spec, device=device, corpus=env_corpus)


def household_steps(policy: Policy, n_envs: int, *, turns: int = 3, max_new_tokens: int = 48) -> list[StepRecord]:
    """The step records of ``n_envs`` household episodes of at most ``turns`` turns (sampling seed 0)."""
    envs = [make(ENV_ID, "train", max_turns=turns, scene_size="small") for _ in range(n_envs)]
    seeds = split_seeds("train", n_envs)
    gen = torch.Generator().manual_seed(0)
    res = collect_with_envs(
        policy,
        envs,
        seeds,
        env_id=ENV_ID,
        sampling=SamplingParams(max_new_tokens=max_new_tokens),
        max_turns=turns,
        generator=gen,
    )
    return res.steps


def household_prompts(policy: Policy, batch: int, *, turns: int = 3) -> list[list[int]]:
    """``batch`` prompts of the trainer, taken from the latest turns of short rollouts (so they carry history)."""
    steps = sorted(household_steps(policy, batch, turns=turns), key=lambda s: -s.step_idx)
    return [s.prompt_ids for s in steps[:batch]]


def household_rows(policy: Policy, rows: int, *, turns: int = 3) -> StepBatch:
    """A packed :class:`StepBatch` of ``rows`` real step rows (prompt + the model's own response)."""
    steps: list[StepRecord] = []
    n = rows
    while len(steps) < rows:
        steps = household_steps(policy, n, turns=turns)
        n *= 2
    steps = steps[:rows]
    return pack([s.prompt_ids for s in steps], [s.response_ids for s in steps], policy.pad_id)


def paired_medians(fns: list, repeats: int) -> list[float]:
    """Median wall seconds of each function over ``repeats`` rounds that call them in turn (interleaved, so load
    that comes and goes on a shared machine hits every side alike), after one untimed warm-up call of each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [sorted(ts)[len(ts) // 2] for ts in times]
