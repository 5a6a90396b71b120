"""Evaluate a policy on fixed seeds of a split: success per task type with 95 % confidence intervals.

The seeds of split ``s`` are always ``empg.envs.split_seeds(s, episodes)``, so two evaluations (two iterations, two
runs) play the same tasks. Rollouts reuse :func:`empg.rollout.collect` (one episode per seed, ``group_size=1``) at the
evaluation temperature (default 0.4) or greedily.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from empg.envs import split_seeds
from empg.eval.stats import SuccessStats, success_table
from empg.policy.sampling import SamplingParams
from empg.rollout import collect
from empg.rollout.prompts import DEFAULT_PROMPT, PromptSpec

EVAL_SAMPLING = SamplingParams(temperature=0.4)  # evaluate_policy's default: the presets' eval.temperature


@dataclass
class EvalReport:
    """Result of one evaluation: ``table["all"]`` and one :class:`SuccessStats` per task type."""

    env_id: str
    split: str
    episodes: int
    table: dict[str, SuccessStats]
    mean_length: float
    invalid_rate: float
    outcomes: dict[int, bool] | None = None  # env seed -> success, for paired comparisons of two evaluations

    @property
    def success(self) -> float:
        return self.table["all"].rate

    def metrics(self) -> dict[str, float]:
        """Flat metric keys: ``<key>/success``, ``<key>/success/<type>``, ``<key>/ep_len``, ``<key>/invalid_rate``
        with ``<key> = metric_key(split)``."""
        key = metric_key(self.split)
        out = {
            f"{key}/success": self.success,
            f"{key}/episodes": float(self.episodes),
            f"{key}/ep_len": self.mean_length,
            f"{key}/invalid_rate": self.invalid_rate,
        }
        for name, row in self.table.items():
            if name != "all":
                out[f"{key}/success/{name}"] = row.rate
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict`."""
        table = {k: SuccessStats(**v) for k, v in d["table"].items()}
        outcomes = {int(k): bool(v) for k, v in d["outcomes"].items()} if d.get("outcomes") is not None else None
        return cls(d["env_id"], d["split"], d["episodes"], table, d["mean_length"], d["invalid_rate"], outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "split": self.split,
            "episodes": self.episodes,
            "mean_length": self.mean_length,
            "invalid_rate": self.invalid_rate,
            "table": {k: v.to_dict() for k, v in self.table.items()},
            "outcomes": None if self.outcomes is None else {str(k): v for k, v in self.outcomes.items()},
        }


def metric_key(split: str) -> str:
    """Prefix of a split's evaluation metrics: ``eval_in``, ``eval_out``, and ``eval_train`` for the train split (whose
    plain name prefixes the training rollouts' own metrics, ``train/success`` ...)."""
    return split if split.startswith("eval_") else f"eval_{split}"


def eval_seeds(split: str, episodes: int, train_pool: int | None = None) -> list[int]:
    """The env seeds of an evaluation: the first ``episodes`` seeds of ``split``. For ``split="train"`` with a
    ``train_pool`` smaller than ``episodes``, the pool's seeds (the first ``train_pool`` train seeds, which RL samples
    its tasks from) cycled, so the evaluation measures the tasks RL trains on, each played several times."""
    if split == "train" and train_pool is not None and 0 < train_pool < episodes:
        pool = split_seeds(split, train_pool)
        return [pool[i % train_pool] for i in range(episodes)]
    return split_seeds(split, episodes)


def evaluate_policy(
    policy: Any,
    env_id: str,
    split: str,
    episodes: int,
    *,
    sampling: SamplingParams = EVAL_SAMPLING,
    max_turns: int | None = None,
    prompt: PromptSpec = DEFAULT_PROMPT,
    seed: int = 0,
    env_kwargs: dict | None = None,
    train_pool: int | None = None,
    constrain_actions: bool = False,
    constrain_scope: str = "action",
    thoughts: str = "verb",
) -> EvalReport:
    """Play the first ``episodes`` seeds of ``split`` once each and tabulate success (:func:`eval_seeds`).

    Args:
        policy: an :class:`empg.policy.Policy`.
        env_id: registered env id.
        split: ``train`` | ``eval_in`` | ``eval_out``.
        episodes: number of seeds (fixed: ``split_seeds(split, episodes)``).
        sampling: generation settings (:class:`empg.policy.SamplingParams`; default T = 0.4).
        max_turns: turn limit (default: the env's).
        prompt: how the prompts show each step (:class:`empg.rollout.prompts.PromptSpec`, the ``rollout.*`` prompt
            fields).
        seed: seeds the sampling generator (the same seed gives the same evaluation).
        env_kwargs: extra env constructor arguments.
        train_pool: the run's RL task pool (``env.train_pool``): a ``train`` evaluation plays only its tasks.
        constrain_actions, constrain_scope: decode actions under the admissible-action trie
            (``rollout.constrain_actions``, ``rollout.constrain_scope``).
        thoughts: style of the templated thoughts of constrained responses (``rollout.thoughts``).
    """
    seeds = eval_seeds(split, episodes, train_pool)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # in case the generation backend samples from the global generator
    result = collect(
        policy,
        env_id,
        seeds,
        group_size=1,
        split=split,
        sampling=sampling,
        max_turns=max_turns,
        prompt=prompt,
        record_behaviour=False,
        generator=generator,
        env_kwargs=env_kwargs,
        constrain_actions=constrain_actions,
        constrain_scope=constrain_scope,
        thoughts=thoughts,
    )
    trajs = [t for t in result.trajectories if not t.failed]
    table = success_table([t.task_type for t in trajs], [t.success for t in trajs])
    n_steps = sum(t.length for t in trajs)
    return EvalReport(
        env_id=env_id,
        split=split,
        episodes=len(trajs),
        table=table,
        mean_length=n_steps / max(1, len(trajs)),
        invalid_rate=sum(t.n_invalid for t in trajs) / max(1, n_steps),
        outcomes={t.seed: bool(t.success) for t in trajs},
    )


def evaluate_with_config(
    policy: Any, cfg: Any, split: str, episodes: int, *, seed: int, greedy: bool = False
) -> EvalReport:
    """:func:`evaluate_policy` with a run's settings (a :class:`empg.train.config.TrainConfig`): its env, turn limit,
    env kwargs and task pool, the rollout's history and token budget, the evaluation temperature (greedy when
    ``greedy`` or ``cfg.eval.greedy``). The one place the RL loop, SFT and ``empg eval`` turn a config into an
    evaluation."""
    return evaluate_policy(
        policy,
        cfg.env.id,
        split,
        episodes,
        sampling=SamplingParams(
            temperature=cfg.eval.temperature,
            max_new_tokens=cfg.rollout.max_new_tokens,
            greedy=greedy or cfg.eval.greedy,
            jump_forward=cfg.rollout.jump_forward,
        ),
        max_turns=cfg.env.max_turns,
        prompt=PromptSpec.from_config(cfg.rollout),
        seed=seed,
        env_kwargs=cfg.env.kwargs,
        train_pool=cfg.env.train_pool,
        constrain_actions=cfg.rollout.constrain_actions,
        constrain_scope=cfg.rollout.constrain_scope,
        thoughts=cfg.rollout.thoughts,
    )


def save_report(report: EvalReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path


def render_report(report: EvalReport, title: str | None = None) -> Any:
    """A rich Table: task type, episodes, success, 95 % CI."""
    from rich.table import Table

    table = Table(title=title or f"{report.env_id} — {report.split} ({report.episodes} episodes)")
    for col in ("task type", "n", "success", "95% CI"):
        table.add_column(col, justify="left" if col == "task type" else "right")
    for name, row in report.table.items():
        table.add_row(name, str(row.n), f"{row.rate:.1%}", f"[{row.low:.1%}, {row.high:.1%}]")
    return table


def eval_sampling_seed(seed: int) -> int:
    """The sampling seed of every evaluation of a run of training seed ``seed`` (SFT's, the RL loop's and
    `empg eval`'s by default): the same at every iteration, so two evaluations of a run differ only by the model
    (paired), and runs of different training seeds sample differently."""
    return seed * 1_000_003
