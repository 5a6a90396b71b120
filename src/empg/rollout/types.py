"""Typed records that flow from the rollout to the trainer.

One :class:`StepRecord` per (env, turn): a step is one generated response (thought + action) and the env's answer.
Ids are explicit and never recovered from text or batch order:

* ``group_id``: index of the task group (all ``group_size`` copies of one task share it, and the env seed);
* ``traj_id``: globally unique trajectory index within one rollout result;
* ``step_idx``: 0-based turn index inside the trajectory; the next step of (traj, t) is (traj, t+1);
* ``is_last``: the trajectory ended after this step (terminated or truncated).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepRecord:
    """One agent step. Token lists are plain Python lists; the trainer packs them (``empg.train.batch``)."""

    group_id: int
    traj_id: int
    step_idx: int
    is_last: bool
    env_id: str
    seed: int
    task_type: str
    prompt_ids: list[int]  # chat-templated prompt tokens (not trained on)
    response_ids: list[int]  # the model's own generated tokens for this step (trained on)
    response_text: str
    action: str | None  # parsed action; None when the response could not be parsed
    valid: bool  # parsed AND the env understood/applied it
    parsed: bool  # the response had a well-formed action
    env_reward: float  # reward the env returned for this step (sparse: success at the end)
    won: bool  # the env reported success after this step
    terminated: bool
    truncated: bool
    # Behaviour-policy quantities at the rollout temperature, one per response token (None until scored).
    old_logprobs: list[float] | None = None
    token_entropies: list[float] | None = None
    # 1 for response tokens inside <action>...</action> (for step_entropy="action"/"weighted"); same length as response.
    action_token_mask: list[int] | None = None
    # Key of the state the step acted on (observation + admissible actions, hashed to 63 bits; -1 = unknown): steps
    # of one group with the same key are compared by GiGPO's step-level advantage (``empg.algos.anchors``).
    state_key: int = -1
    # Constrained decoding (rollout.constrain_actions): per response token the ids its distribution was restricted
    # to ([] = free text); None when the step was not constrained. ``constrained`` is True when the action span was
    # decoded under the admissible-action trie, False when the step fell back to free text (no admissible actions).
    allowed_ids: list[list[int]] | None = None
    constrained: bool | None = None
    # Free-form extras. The rollout sets "observation" (the env text this step acted on) and "task" (the episode's
    # instruction), which run_dir/trajectories.jsonl shows (``empg.train.trajlog``).
    extra: dict = field(default_factory=dict)


@dataclass
class TrajectorySummary:
    """Per-trajectory outcome. ``outcome`` is the env's final reward (success 1/0, or WebShop's score in [0, 1])."""

    group_id: int
    traj_id: int
    env_id: str
    seed: int
    task_type: str
    length: int
    outcome: float
    success: bool
    n_invalid: int
    truncated: bool
    failed: bool = False  # infrastructure failure (e.g. a dead env worker): excluded from training
    response_lengths: tuple[int, ...] = ()  # tokens of each step's response, in step order (DAPO overlong shaping)


@dataclass
class RolloutResult:
    """Everything one call to ``empg.rollout.collect`` produced."""

    steps: list[StepRecord]
    trajectories: list[TrajectorySummary]
    stats: dict = field(default_factory=dict)  # timings, tokens generated, tokens/s, env steps/s ...

    @property
    def success_rate(self) -> float:
        kept = [t for t in self.trajectories if not t.failed]
        return sum(t.success for t in kept) / max(1, len(kept))
