"""Rollouts: ReAct prompts and parsing (:mod:`.prompts`), lock-step multi-turn collection (:mod:`.collect`) and the
records they produce (:mod:`.types`).
"""

from empg.rollout import prompts
from empg.rollout.collect import action_token_mask, collect, collect_with_envs
from empg.rollout.types import RolloutResult, StepRecord, TrajectorySummary

__all__ = [
    "RolloutResult",
    "StepRecord",
    "TrajectorySummary",
    "action_token_mask",
    "collect",
    "collect_with_envs",
    "prompts",
]
