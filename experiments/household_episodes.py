"""Shared helpers of the household diagnostics (``experiments/failures.py`` and the scripts under
``experiments/results/household-*``): play the quick start's evaluation episodes with a model, classify its
``take`` and clean/heat/cool actions against the task, and replay an episode next to the systematic expert.

    from household_episodes import play, take_kind, replay

A script in ``experiments/results/<question>/`` imports it after ``sys.path.insert(0, <experiments dir>)``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from empg.envs import make
from empg.envs.checks import expert_episode
from empg.eval.evaluate import eval_seeds
from empg.policy import SamplingParams
from empg.rollout.collect import collect
from empg.rollout.prompts import PromptSpec
from empg.rollout.types import RolloutResult, StepRecord

ENV_ID = "household-v0"
ENV_KWARGS = {"scene_size": "small", "expert": "systematic"}  # the quick start's env
MAX_TURNS = 20
QUICKSTART_PROMPT = PromptSpec(history=2, task_reminder=True)


def play(
    policy,
    episodes: int,
    *,
    split: str = "eval_in",
    sampling_seed: int = 0,
    temperature: float = 0.4,
    prompt: PromptSpec = QUICKSTART_PROMPT,
    thoughts: str = "take_first",
) -> RolloutResult:
    """The first ``episodes`` seeds of ``split`` played once each as the quick start evaluates them: prompts as
    ``prompt`` renders them (default the quick start's: history 2, task reminder), the response decoded under the
    admissible-action trie (jump-forward), T = ``temperature``, the sampling generator seeded with
    ``sampling_seed``. The prompt options must be the ones the model was trained with."""
    return collect(
        policy,
        ENV_ID,
        eval_seeds(split, episodes),
        group_size=1,
        split=split,
        sampling=SamplingParams(temperature=temperature, max_new_tokens=48, jump_forward=True),
        max_turns=MAX_TURNS,
        prompt=prompt,
        record_behaviour=False,
        generator=torch.Generator().manual_seed(sampling_seed),
        env_kwargs=ENV_KWARGS,
        constrain_actions=True,
        constrain_scope="response",
        thoughts=thoughts,
    )


def take_kind(action: str | None, task: str) -> str | None:
    """``"right"`` / ``"wrong"`` for a ``take`` whose object's name is / is not in the task, else None.

    >>> take_kind("take pen 2 from shelf 1", "put some pen on desk."), take_kind("take mug 1 from desk 1", "put a pen")
    ('right', 'wrong')
    """
    if m := re.match(r"take (\w+) \d+ from", action or ""):
        return "right" if m.group(1) in task else "wrong"
    return None


def op_kind(action: str | None, task: str) -> str | None:
    """``"right"`` / ``"wrong"`` for a clean/heat/cool whose verb is / is not in the task's text, else None (tasks
    worded "hot"/"cold" count as wrong: a lower bound on right).

    >>> op_kind("cool apple 1 with fridge 1", "cool some apple and put it in countertop."), op_kind("look", "")
    ('right', None)
    """
    if m := re.match(r"(clean|heat|cool) ", action or ""):
        return "right" if m.group(1) in task else "wrong"
    return None


def take_counts(steps: list[StepRecord]) -> Counter:
    """``Counter`` of :func:`take_kind` over the steps that are takes (keys ``"right"``, ``"wrong"``)."""
    return Counter(k for s in steps if (k := take_kind(s.action, s.extra.get("task", ""))) is not None)


def episodes_of(result: RolloutResult) -> list[list[StepRecord]]:
    """The steps of each trajectory of ``result``, in trajectory order, each list in step order."""
    by_traj: dict[int, list[StepRecord]] = defaultdict(list)
    for s in result.steps:
        by_traj[s.traj_id].append(s)
    return [sorted(by_traj[t.traj_id], key=lambda s: s.step_idx) for t in result.trajectories]


@dataclass
class Replay:
    """An episode's actions replayed in a fresh env next to the systematic expert."""

    agree: int  # steps whose action equals the expert's action in the state it acted on
    steps: int
    first_divergence: tuple[str, str, int] | None  # (expert's verb, agent's verb, step) at the first disagreement
    revisits: int  # ``go to`` actions naming a receptacle the episode had already gone to
    expert_length: int  # turns the expert alone needs from the episode's first state (its cap: 50)


def _verb(action: str | None) -> str:
    return (action or "none").split()[0]


def expert_length(seed: int, split: str) -> int:
    """Turns the systematic expert needs to solve ``seed`` of ``split`` alone (50 when it does not)."""
    episode = expert_episode(make(ENV_ID, split, max_turns=50, **ENV_KWARGS), seed)
    return len(episode) - 1 if episode[-1][3] else 50  # [3]: the last step's ``terminated``


def replay(actions: list[str | None], seed: int, split: str) -> Replay:
    """Replay ``actions`` (an episode's, in order; None = unparsed, replayed as ``look``) on ``seed`` of ``split``,
    asking the expert before each step what it would do there."""
    env = make(ENV_ID, split, max_turns=50, **ENV_KWARGS)
    env.reset(seed=seed)
    agree, first, seen, revisits = 0, None, set(), 0
    for i, action in enumerate(actions):
        wanted = env.unwrapped.expert_action()
        agree += wanted == action
        if wanted != action and first is None:
            first = (_verb(wanted), _verb(action), i)
        if (action or "").startswith("go to "):
            revisits += action in seen
            seen.add(action)
        env.step(action or "look")
    return Replay(agree, len(actions), first, revisits, expert_length(seed, split))
