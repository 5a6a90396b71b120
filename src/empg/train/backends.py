"""Rollout back ends of the RL loop: the vLLM engine, Ray env workers, and the settings every rollout shares.

Used by :mod:`empg.train.rl` (and the data-parallel and diagnostic paths): :func:`rollout_backends` starts and stops
the optional engines around a run, :func:`sync_rollout_weights` pushes updated weights into vLLM,
:func:`rollout_settings` turns the config into the keyword arguments of :func:`empg.rollout.collect`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from empg.policy.sampling import SamplingParams
from empg.rollout.prompts import PromptSpec
from empg.train.config import TrainConfig


def rescores(cfg: TrainConfig) -> bool:
    """Whether the trainer recomputes the behaviour log-probs and entropies before the update (``rollout.rescore``,
    or a generation engine other than the trained model itself) instead of using the ones recorded while sampling."""
    return cfg.rollout.rescore or cfg.model.backend != "hf"


def rollout_settings(
    cfg: TrainConfig, generator: torch.Generator | None, *, record_behaviour: bool | None = None
) -> dict:
    """Keyword arguments of :func:`empg.rollout.collect` / ``collect_with_envs`` for training rollouts of ``cfg``.

    ``record_behaviour`` defaults to "when the trainer will not rescore" (:func:`rescores`): the hf back end samples
    with the very weights the update starts from, so what it records is the behaviour policy.
    """
    if record_behaviour is None:
        record_behaviour = not rescores(cfg)
    return {
        "sampling": SamplingParams(
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens,
            jump_forward=cfg.rollout.jump_forward,
        ),
        "max_turns": cfg.env.max_turns,
        "prompt": PromptSpec.from_config(cfg.rollout),
        "record_behaviour": record_behaviour,
        "generator": generator,
        "constrain_actions": cfg.rollout.constrain_actions,
        "constrain_scope": cfg.rollout.constrain_scope,
        "thoughts": cfg.rollout.thoughts,
    }


@contextmanager
def rollout_backends(run: Any) -> Iterator[None]:
    """Start the vLLM engine (``model.backend=vllm``) and the Ray env workers (``rollout.env_workers > 0``) for the
    body, and stop them when it exits, normally or by an exception (Ray itself too when it was started here)."""
    cfg = run.cfg
    started_ray = False
    try:
        if cfg.model.backend == "vllm":
            from empg.policy.vllm import make_policy

            run.rollout_policy = make_policy(run.policy, "vllm")
        if cfg.rollout.env_workers > 0:
            started_ray = init_ray()
            run.env_pool = make_env_pool(cfg)
        yield
    finally:
        if run.env_pool is not None:
            run.env_pool.close()
            run.env_pool = None
        if run.rollout_policy is not None:
            run.rollout_policy.close()
            run.rollout_policy = None
        if started_ray:
            import ray

            ray.shutdown()


def init_ray() -> bool:
    """Join Ray: the running instance, else the cluster at ``RAY_ADDRESS``, else a new local one. True if started."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False)
    return True


def make_env_pool(cfg: TrainConfig) -> Any:
    """``n_tasks * group_size`` train envs spread over ``rollout.env_workers`` Ray actors.

    Each actor reserves one CPU, or an equal share of the cluster's CPUs when there are more actors than CPUs (Ray
    would otherwise leave the extra actors waiting for a CPU forever).
    """
    import ray

    from empg.rollout.workers import RayEnvPool

    n = cfg.rollout.env_workers
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return RayEnvPool(
        cfg.env.id,
        cfg.rollout.n_tasks * cfg.rollout.group_size,
        n_workers=n,
        split="train",
        max_turns=cfg.env.max_turns,
        env_kwargs=cfg.env.kwargs,
        num_cpus_per_worker=min(1.0, round(cpus / n, 4)),
        step_timeout=cfg.rollout.env_step_timeout or None,
    )


def sync_rollout_weights(run: Any) -> dict[str, float]:
    """Push the updated weights into the vLLM engine (``model.backend=vllm``); nothing to do with the hf backend."""
    if run.rollout_policy is None:
        return {}
    t0 = time.perf_counter()
    run.rollout_policy.sync_weights(run.policy.model)
    return {"time/weight_sync": time.perf_counter() - t0}
