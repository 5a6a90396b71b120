"""Lock-step multi-turn rollouts: G copies of each of n tasks, all live envs generated as one batch per turn.

At every turn: build the prompts of all live envs (:func:`empg.rollout.prompts.build_messages`), generate them as one
left-padded batch with the KV cache (:meth:`empg.policy.Policy.generate`), parse, step every env, drop finished ones.

* **Invalid steps.** A response without a well-formed ``<action>…</action>`` is stepped with the empty action
  :data:`INVALID_ACTION` (so the turn counts against the turn limit and the env answers as it does to any unknown
  command, changing nothing): never with its raw text, which an env could carry out (a bare ``go to fridge 1``) while
  the step is recorded invalid. The record has ``parsed=False`` and ``valid=False``; ``valid`` is
  ``parsed and info["valid"]``.
* **Behaviour quantities.** With ``record_behaviour=True`` the per-token log-probs and entropies are **recorded during
  generation** (full softmax at the rollout temperature); they agree with a recomputation by
  :func:`empg.train.forward.response_logprobs` to 1e-4 (tested). The trainer may recompute them instead (as verl does).
* **Turn limits.** ``collect`` builds envs with :func:`empg.envs.make` (``TimeLimit``); ``collect_with_envs`` also
  stops every trajectory after ``max_turns`` (default: the env's ``max_turns`` or 50) and marks it truncated.
* **State keys.** Each record carries ``state_key``, a 63-bit hash of the observation the step acted on and the
  admissible actions listed with it (:func:`state_key`): steps of one group with the same key acted on the same state,
  which GiGPO's step-level advantage compares (``algo.gigpo_weight``).
* **Env failures.** An exception from ``reset``/``step`` ends that trajectory with ``failed=True`` (excluded from
  training) instead of crashing the whole rollout.
* **Remote envs.** When an env has a ``submit_step(action)`` hook (:class:`empg.rollout.workers.RemoteEnv`, an env
  hosted by a Ray actor), all steps of a turn are submitted before the first result is collected, so the workers
  step their envs in parallel; ``step`` then returns the submitted step's result. In-process envs have no such hook
  and are stepped one after the other, in env order.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from empg.envs import make
from empg.policy.constrain import ActionConstraint
from empg.policy.sampling import DEFAULT_SAMPLING, SamplingParams
from empg.rollout import prompts
from empg.rollout.prompts import DEFAULT_PROMPT
from empg.rollout.types import RolloutResult, StepRecord, TrajectorySummary

INVALID_ACTION = ""  # what the env receives for an unparsable response: no env carries out an empty command
HISTORY_ACTION_CHARS = 100  # an unparsable response appears in later prompts' history truncated to this many chars


@dataclass
class _Traj:
    env: Any
    seed: int
    group_id: int
    traj_id: int
    env_id: str
    obs: str = ""
    task: str = ""  # from the reset info (task and task type are fixed for the episode)
    task_type: str = "default"
    info: dict = field(default_factory=dict)
    past: list[tuple[str, str]] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    done: bool = False
    failed: bool = False


def collect(
    policy: Any,
    env_id: str,
    seeds: list[int],
    *,
    group_size: int,
    split: str = "train",
    sampling: SamplingParams = DEFAULT_SAMPLING,
    max_turns: int | None = None,
    prompt: prompts.PromptSpec = DEFAULT_PROMPT,
    record_behaviour: bool = True,
    generator: torch.Generator | None = None,
    env_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    constrain_actions: bool = False,
    constrain_scope: str = "action",
    thoughts: str = "verb",
) -> RolloutResult:
    """Roll out ``group_size`` copies of each task ``seeds[g]`` (group ``g``) in lock-step.

    Trajectory ids are ``g * group_size + k``. Evaluation uses the same function with ``group_size=1`` and the eval
    temperature (e.g. ``SamplingParams(temperature=0.4)``) or greedy decoding.

    Args:
        policy: an :class:`empg.policy.Policy` (or anything with ``chat_prompt_ids``, ``generate``, ``tokenizer``).
        env_id: registered env id (or ``"pkg.module:Class"``).
        seeds: one env seed per task group.
        group_size: copies per task (G).
        split: env split; seeds must belong to it.
        sampling: generation settings (:class:`empg.policy.SamplingParams`).
        max_turns: turn limit (default: the env's registered one).
        prompt: how each step's prompt shows the episode (:class:`empg.rollout.prompts.PromptSpec`: history window,
            admissible actions and their style, action memory, task reminder, format hint, done marks).
        record_behaviour: fill ``StepRecord.old_logprobs``/``token_entropies`` from generation.
        generator: torch generator for sampling.
        env_kwargs: extra env constructor arguments.
        progress: optional ``progress(turn, n_live)`` callback, called before each turn's generation.
        constrain_actions: decode each action span as one of the step's admissible actions (token trie,
            :mod:`empg.policy.constrain`); a step whose env lists none falls back to free text and is counted in
            ``stats["unconstrained_steps"]``.
        constrain_scope: ``"action"`` (the span after ``<action>``) or ``"response"`` (the whole response is one of
            the admissible actions' templated expert responses, thought included: :func:`action_constraint`).
        thoughts: style of the templated thoughts the ``"response"`` scope decodes
            (:func:`empg.rollout.prompts.thought_templates`).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    envs, env_seeds, group_ids = [], [], []
    try:
        for g, seed in enumerate(seeds):
            for _ in range(group_size):
                envs.append(make(env_id, split, max_turns=max_turns, **(env_kwargs or {})))
                env_seeds.append(seed)
                group_ids.append(g)
        return collect_with_envs(
            policy,
            envs,
            env_seeds,
            group_ids=group_ids,
            env_id=env_id,
            sampling=sampling,
            max_turns=max_turns,
            prompt=prompt,
            record_behaviour=record_behaviour,
            generator=generator,
            progress=progress,
            constrain_actions=constrain_actions,
            constrain_scope=constrain_scope,
            thoughts=thoughts,
        )
    finally:
        for env in envs:
            _close(env)


def collect_with_envs(
    policy: Any,
    envs: Sequence[Any],
    seeds: Sequence[int],
    *,
    group_ids: Sequence[int] | None = None,
    env_id: str | None = None,
    sampling: SamplingParams = DEFAULT_SAMPLING,
    max_turns: int | None = None,
    prompt: prompts.PromptSpec = DEFAULT_PROMPT,
    record_behaviour: bool = True,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    constrain_actions: bool = False,
    constrain_scope: str = "action",
    thoughts: str = "verb",
) -> RolloutResult:
    """Lock-step rollout over caller-built envs (one trajectory per env; ``envs[i]`` is reset with ``seeds[i]``).

    ``group_ids`` defaults to the index of each seed's first occurrence order (equal seeds share a group). Envs are
    not closed here. Other arguments as in :func:`collect`.
    """
    if len(envs) != len(seeds):
        raise ValueError(f"need one seed per env, got {len(envs)} envs and {len(seeds)} seeds")
    if group_ids is None:
        first: dict[int, int] = {}
        group_ids = [first.setdefault(s, len(first)) for s in seeds]
    trajs = [
        _Traj(env, int(s), int(g), i, env_id or str(getattr(env, "env_id", "env")))
        for i, (env, s, g) in enumerate(zip(envs, seeds, group_ids, strict=True))
    ]
    stats = {"time/generate": 0.0, "time/env": 0.0, "tokens": 0, "env_steps": 0, "turns": 0, "unconstrained_steps": 0}
    t0 = time.perf_counter()
    for tr in trajs:
        _reset(tr)
    stats["time/env"] += time.perf_counter() - t0
    turn = 0
    while live := [tr for tr in trajs if not tr.done]:
        if progress is not None:
            progress(turn, len(live))
        prompt_ids = [policy.chat_prompt_ids(_messages(tr, prompt)) for tr in live]
        t0 = time.perf_counter()
        gens = policy.generate(
            prompt_ids,
            sampling=sampling,
            generator=generator,
            stop=prompts.STOP_STRING,
            record=record_behaviour,
            **(
                {"constraints": [_constraint(tr, constrain_scope, thoughts) for tr in live]}
                if constrain_actions
                else {}
            ),
        )
        stats["unconstrained_steps"] += sum(getattr(g, "constrained", None) is False for g in gens)
        stats["time/generate"] += time.perf_counter() - t0
        stats["tokens"] += sum(len(g.response_ids) for g in gens)
        t0 = time.perf_counter()
        actions = [prompts.parse_action(gen.text) for gen in gens]
        _submit_steps(live, gens, actions)
        for tr, p_ids, gen, action in zip(live, prompt_ids, gens, actions, strict=True):
            _advance(tr, p_ids, gen, action, policy.tokenizer, _turn_cap(tr.env, max_turns))
        stats["time/env"] += time.perf_counter() - t0
        stats["env_steps"] += len(live)
        turn += 1
    stats["turns"] = turn
    stats["tokens_per_s"] = stats["tokens"] / max(stats["time/generate"], 1e-9)
    stats["env_steps_per_s"] = stats["env_steps"] / max(stats["time/generate"] + stats["time/env"], 1e-9)
    steps = [s for tr in trajs for s in tr.steps]
    return RolloutResult(steps=steps, trajectories=[_summary(tr) for tr in trajs], stats=stats)


# ----------------------------------------------------------------------------- per-trajectory steps
def _turn_cap(env: Any, max_turns: int | None) -> int:
    return int(max_turns or getattr(env, "max_turns", None) or 50)


def _reset(tr: _Traj) -> None:
    try:
        tr.obs, tr.info = tr.env.reset(seed=tr.seed)
        tr.task, tr.task_type = str(tr.info.get("task", "")), str(tr.info.get("task_type", "default"))
    except Exception as err:  # noqa: BLE001 - an env failure must not kill the other trajectories
        tr.done, tr.failed = True, True
        tr.info = {"error": repr(err)}


def _messages(tr: _Traj, prompt: prompts.PromptSpec) -> list[dict]:
    family = getattr(tr.env, "family", "generic")
    return prompt.messages(family, tr.task, tr.obs, tr.past, len(tr.steps), tr.info.get("admissible_actions"))


def _sent(gen: Any, action: str | None) -> str:
    """What the env receives: the parsed action, or :data:`INVALID_ACTION` when the response has none."""
    return action if action is not None else INVALID_ACTION


def _submit_steps(live: list[_Traj], gens: list, actions: list[str | None]) -> None:
    """Start the step of every env that offers ``submit_step`` (Ray-hosted envs) before any result is awaited."""
    for tr, gen, action in zip(live, gens, actions, strict=True):
        submit = getattr(tr.env, "submit_step", None)
        if submit is not None:
            submit(_sent(gen, action))


def _advance(tr: _Traj, prompt_ids: list[int], gen: Any, action: str | None, tokenizer: Any, cap: int) -> None:
    """Step the env with ``gen``'s parsed ``action``, append the StepRecord; mark the trajectory done when it ends."""
    sent = _sent(gen, action)
    try:
        obs, reward, terminated, truncated, info = tr.env.step(sent)
    except Exception as err:  # noqa: BLE001 - see module docstring: failed trajectory, not a crash
        tr.done, tr.failed = True, True
        tr.info = {**tr.info, "error": repr(err)}
        if tr.steps:
            tr.steps[-1].is_last = True
        return
    step_idx = len(tr.steps)
    if not (terminated or truncated) and step_idx + 1 >= cap:
        truncated = True
    is_last = bool(terminated or truncated)
    tr.steps.append(
        StepRecord(
            group_id=tr.group_id,
            traj_id=tr.traj_id,
            step_idx=step_idx,
            is_last=is_last,
            env_id=tr.env_id,
            seed=tr.seed,
            task_type=tr.task_type,
            prompt_ids=list(prompt_ids),
            response_ids=list(gen.response_ids),
            response_text=gen.text,
            action=action,
            valid=bool(action is not None and info.get("valid", True)),
            parsed=action is not None,
            env_reward=float(reward),
            won=bool(info.get("won", False)),
            terminated=bool(terminated),
            truncated=bool(truncated),
            old_logprobs=gen.logprobs,
            token_entropies=gen.entropies,
            action_token_mask=action_token_mask(tokenizer, gen.response_ids),
            state_key=state_key(tr.obs, tr.info.get("admissible_actions")),
            allowed_ids=getattr(gen, "allowed_ids", None),
            constrained=getattr(gen, "constrained", None),
            extra={"observation": tr.obs, "task": tr.task},  # what the step saw (for run_dir/trajectories.jsonl)
        )
    )
    history_action = action if action is not None else " ".join(gen.text.split())[:HISTORY_ACTION_CHARS]
    tr.past.append((tr.obs, history_action))
    tr.obs, tr.info = obs, info
    tr.done = is_last


CONSTRAIN_SCOPES = ("action", "response")
_PLACEHOLDER = re.compile(r"<[^<>]+>")  # an admissible "action" that is a template, e.g. shop's search[<query>]


def action_constraint(
    info: dict, scope: str = "action", family: str = "generic", thoughts: str = "verb"
) -> ActionConstraint:
    """The step's constraint.

    * ``scope="action"``: free thought, then after ``<action>`` one of the admissible actions and ``</action>``;
    * ``scope="response"``: the whole response is one of :func:`empg.rollout.prompts.expert_response` of the
      admissible actions — the templated thought the demonstrations use, then the action — so the thought always
      names the action that follows (a choice among admissible actions with their descriptions, as in GLAM/TWOSOME);
      ``thoughts`` is the templates' style (:func:`empg.rollout.prompts.thought_templates`).

    No choices (free text for this step, counted by the rollout) when the env lists no admissible action or lists a
    template with a placeholder (``search[<query>]``) that has to be filled in by the policy.
    """
    if scope not in CONSTRAIN_SCOPES:
        raise ValueError(f"constrain scope {scope!r} is not one of {CONSTRAIN_SCOPES}")
    admissible = list(info.get("admissible_actions") or ())
    if any(_PLACEHOLDER.search(a) for a in admissible):
        admissible = []
    if scope == "response":
        return ActionConstraint("", tuple(prompts.expert_response(family, a, thoughts) for a in admissible))
    return ActionConstraint(prompts.ACTION_OPEN, tuple(f"{a}{prompts.STOP_STRING}" for a in admissible))


def _constraint(tr: _Traj, scope: str, thoughts: str) -> ActionConstraint:
    return action_constraint(tr.info, scope, getattr(tr.env, "family", "generic"), thoughts)


def state_key(obs: str, admissible: Sequence[str] | None) -> int:
    """A 63-bit key of what the agent saw: the observation (whitespace-normalised) and the admissible actions.

    Stable across processes and runs (blake2b, not Python's salted ``hash``), so keys from Ray workers or ranks compare.
    """
    text = " ".join(obs.split()) + "\x00" + "\x00".join(admissible or ())
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def action_token_mask(tokenizer: Any, response_ids: list[int]) -> list[int]:
    """1 for each response token whose decoded characters overlap the content of the first ``<action>…</action>``.

    Character offsets come from decoding growing prefixes (exact for byte-level tokenizers, where one token may hold
    part of a multi-byte character). No well-formed action gives all zeros.
    """
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    span = prompts.action_char_span(text)
    if span is None:
        return [0] * len(response_ids)
    mask, prev = [], 0
    for i in range(len(response_ids)):
        end = len(tokenizer.decode(response_ids[: i + 1], skip_special_tokens=True))
        mask.append(int(prev < span[1] and end > span[0] and end > prev))
        prev = end
    return mask


def _summary(tr: _Traj) -> TrajectorySummary:
    last = tr.steps[-1] if tr.steps else None
    return TrajectorySummary(
        group_id=tr.group_id,
        traj_id=tr.traj_id,
        env_id=tr.env_id,
        seed=tr.seed,
        task_type=tr.task_type,
        length=len(tr.steps),
        outcome=float(last.env_reward) if last else 0.0,
        success=bool(last.won) if last else False,
        n_invalid=sum(not s.valid for s in tr.steps),
        truncated=bool(last.truncated) if last else False,
        failed=tr.failed,
        response_lengths=tuple(len(s.response_ids) for s in tr.steps),
    )


def _close(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001, S110 - closing is best effort
        pass
