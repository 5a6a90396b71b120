"""ReAct prompts per environment family, action parsing and templated expert responses.

The step prompt (one user message, in the spirit of verl-agent's templates) holds: the task, how many steps were
taken, the last ``history`` (observation, action) pairs, the current observation, the admissible actions when the env
lists them, and the required output format ``<think>…</think><action>…</action>``. :class:`PromptSpec` (the
``rollout.*`` prompt fields) says how: the history window, an action memory line, the task again as the last line,
the admissible actions quoted or grouped (:func:`render_admissible`), marks on those already taken, the format hint.

Admissible lists can be long (ALFWorld rooms list dozens of ``go to``/``take`` actions): at most ``max_admissible``
(default 50) are shown, in the env's order, followed by ``"… and K more"``; the env still accepts any valid action.

Parsing (:func:`parse_action`): the action is the stripped, whitespace-collapsed text of the **first**
``<action>…</action>`` span. The ``<think>`` part is not required. Missing/empty/unterminated/over-long actions, and
a span holding a second ``<action>`` (nested opening tag), give ``None``: the rollout counts the step invalid (see
:mod:`empg.rollout.collect`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL)
ACTION_OPEN = "<action>"
STOP_STRING = "</action>"
MAX_ACTION_CHARS = 300

INTRO = {
    "household": "You are an expert agent in a household environment.",
    "shop": "You are an expert shopping agent in an online store.",
    "search": "You are an expert research agent answering a question with a search engine.",
}
GENERIC_INTRO = "You are an expert agent in a text environment."
ACTION_HINT = {
    "search": "Actions: search[query] returns passages; answer[text] ends the episode with your answer.",
}
FORMAT = (
    "First reason briefly inside <think> </think>. Then give exactly one action inside <action> </action>, "
    "e.g. <think>...</think><action>...</action>"
)


ADMISSIBLE_STYLES = ("list", "grouped")
DONE_MARK = " (done)"


def render_admissible(
    actions: list[str], style: str = "list", *, max_shown: int = 50, done: Collection[str] = ()
) -> str:
    """The prompt's line of admissible actions.

    ``"list"``: each action quoted, comma-separated (the shipped warm starts read this). ``"grouped"``: actions that
    share a first word form one group, written once as their longest common leading words, ``":"``, then the rest of
    each (``go to: cabinet 1, drawer 2``); groups in order of first appearance, separated by ``"; "``; a group of one,
    or one with a one-word member, is written as its whole actions. Unambiguous for actions without ``", "``,
    ``"; "`` or ``": "`` (the household and shop envs' actions). About 30 % fewer household tokens than ``"list"``
    (70 vs 99 a step), with the same actions. Actions in ``done`` (taken earlier in the episode,
    :attr:`PromptSpec.mark_done`) carry :data:`DONE_MARK` in either style.

    >>> actions = ["go to desk 1", "go to bed 1", "take pen 1 from desk 1", "look"]
    >>> render_admissible(actions, "grouped", done={"go to bed 1"})
    'Admissible actions: go to: desk 1, bed 1 (done); take pen 1 from desk 1; look'
    >>> render_admissible(["go to desk 1", "look"], done={"look"})
    "Admissible actions: 'go to desk 1', 'look (done)'"
    """
    if style not in ADMISSIBLE_STYLES:
        raise ValueError(f"unknown admissible style {style!r}; use {' | '.join(ADMISSIBLE_STYLES)}")
    shown = actions[:max_shown]
    more = f" ... and {len(actions) - len(shown)} more" if len(actions) > len(shown) else ""

    def mark(text: str, action: str) -> str:
        return text + DONE_MARK if action in done else text

    if style == "list":
        return "Admissible actions: " + ", ".join(f"'{mark(a, a)}'" for a in shown) + more
    groups: dict[str, list[list[str]]] = {}
    for action in shown:
        words = action.split()
        groups.setdefault(words[0] if words else "", []).append(words)
    parts = []
    for group in groups.values():
        if len(group) == 1 or min(map(len, group)) == 1:  # a one-word member ('look') would leave an empty item
            parts.extend(mark(" ".join(w), " ".join(w)) for w in group)
            continue
        k = 1  # the group's common leading words, leaving every member at least one word of its own
        while all(len(w) > k + 1 and w[k] == group[0][k] for w in group):
            k += 1
        rest = ", ".join(mark(" ".join(w[k:]), " ".join(w)) for w in group)
        parts.append(f"{' '.join(group[0][:k])}: {rest}")
    return "Admissible actions: " + "; ".join(parts) + more


@dataclass(frozen=True)
class PromptSpec:
    """How a step's prompt shows its content (the ``rollout.*`` prompt fields); the env supplies the content.

    SFT demos, rollouts and evaluation render prompts from one spec, and a warm start records the spec it was trained
    on (``config._check_init`` refuses a run whose spec differs).

    Attributes:
        history: past (observation, action) pairs shown in full.
        show_admissible: list the step's admissible actions.
        action_memory: also list the actions of up to this many steps before the ``history`` window.
        task_reminder: repeat the task as the last line.
        admissible_style: ``"list"`` | ``"grouped"`` (:func:`render_admissible`).
        format_hint: end with the output-format instruction (:data:`FORMAT`); under constrained decoding of the
            whole response the format is forced and the hint is ~35 tokens of every household prompt.
        mark_done: mark the admissible actions already taken earlier in the episode (:data:`DONE_MARK`), so a
            policy with a short ``history`` can tell the places it has searched from the ones it has not.
    """

    history: int = 2
    show_admissible: bool = True
    action_memory: int = 0
    task_reminder: bool = False
    admissible_style: str = "list"
    format_hint: bool = True
    mark_done: bool = False

    @classmethod
    def from_config(cls, rollout: Any) -> PromptSpec:
        """The spec of a ``RolloutConfig`` (``cfg.rollout``)."""
        return cls(**{name: getattr(rollout, name) for name in cls.__dataclass_fields__})

    def messages(
        self, family: str, task: str, obs: str, past: list[tuple[str, str]], step: int, admissible: list[str] | None
    ) -> list[dict]:
        """:func:`build_messages` for a step whose episode so far is ``past`` (all its (observation, action)
        pairs, oldest first) and whose env lists ``admissible`` (None: it lists none)."""
        recent, memory = split_past(past, self.history, self.action_memory)
        return build_messages(
            family,
            task,
            obs,
            recent,
            step,
            admissible if self.show_admissible else None,
            memory=memory,
            task_reminder=self.task_reminder,
            admissible_style=self.admissible_style,
            format_hint=self.format_hint,
            done={a for _, a in past} if self.mark_done else (),
        )


DEFAULT_PROMPT = PromptSpec()


def build_messages(
    family: str,
    task: str,
    obs: str,
    history: list[tuple[str, str]],
    step: int,
    admissible: list[str] | None,
    *,
    max_admissible: int = 50,
    memory: list[str] | None = None,
    task_reminder: bool = False,
    admissible_style: str = "list",
    format_hint: bool = True,
    done: Collection[str] = (),
) -> list[dict]:
    """Chat messages of one ReAct step (a single user message).

    Args:
        family: template family (``env.family``: ``household`` | ``shop`` | ``search``; others get a generic intro).
        task: the instruction (``info["task"]``).
        obs: current observation.
        history: the most recent (observation, action) pairs, oldest first (the caller slices the window).
        step: number of steps already taken (0 at the first step).
        admissible: the env's admissible actions, or None when it does not list them.
        max_admissible: show at most this many admissible actions (then "… and K more").
        memory: the actions taken before the ``history`` window, oldest first (``rollout.action_memory``), listed on
            one line so the policy knows what it already did (visited, took, heated) after those steps leave the
            window; None or empty: no such line (the prompt is then exactly the one without this option).
        task_reminder: repeat the task as the last line (``rollout.task_reminder``), right where the response starts,
            so that a small model choosing an action has the task's object and receptacle words next to it rather
            than a few hundred tokens back; False: the prompt is exactly the one without this option.
        admissible_style: how the admissible actions are written (:func:`render_admissible`).
        format_hint: end with the output-format instruction :data:`FORMAT` (False: no such line).
        done: actions taken earlier in the episode, marked where admissible (:func:`render_admissible`).

    Returns:
        ``[{"role": "user", "content": text}]``.
    """
    lines = [INTRO.get(family, GENERIC_INTRO), f"Your task is to: {task.strip()}"]
    if family in ACTION_HINT:
        lines.append(ACTION_HINT[family])
    head = f"You have taken {step} step(s)."
    if memory:
        head += f" Your actions {f'before the last {len(history)}' if history else 'so far'}: {'; '.join(memory)}."
    if step == 0 or not history:
        lines.append(head)
    else:
        lines.append(f"{head} Your last {len(history)} observation(s) and action(s):")
        first = step - len(history) + 1
        for i, (past_obs, past_action) in enumerate(history):
            lines.append(f"[Observation {first + i}: {past_obs.strip()}]\n[Action {first + i}: {past_action.strip()}]")
    lines.append(f"Current observation (step {step + 1}): {obs.strip()}")
    if admissible is not None:
        lines.append(render_admissible(admissible, admissible_style, max_shown=max_admissible, done=done))
    if format_hint:
        lines.append(FORMAT)
    if task_reminder:
        lines.append(f"Your task is to: {task.strip()}")
    return [{"role": "user", "content": "\n".join(lines)}]


def split_past(
    past: list[tuple[str, str]], history: int, action_memory: int = 0
) -> tuple[list[tuple[str, str]], list[str]]:
    """The prompt's view of an episode's past (``(observation, action)`` pairs, oldest first): the last ``history``
    pairs, and the actions of up to ``action_memory`` steps before them (:func:`build_messages`'s ``memory``).

    >>> split_past([("o1", "a1"), ("o2", "a2"), ("o3", "a3"), ("o4", "a4")], history=2, action_memory=1)
    ([('o3', 'a3'), ('o4', 'a4')], ['a2'])
    """
    recent = past[-history:] if history > 0 else []
    earlier = past[: len(past) - len(recent)]
    return recent, [action for _, action in earlier[-action_memory:]] if action_memory > 0 else []


def parse_action(text: str) -> str | None:
    """The action inside the first ``<action>…</action>`` of ``text``; None when absent, empty, too long or nested.

    Whitespace inside the action is collapsed to single spaces. Never raises (any input, including non-str, is
    handled: non-str gives None).
    """
    if not isinstance(text, str):
        return None
    m = ACTION_RE.search(text)
    if m is None:
        return None
    action = " ".join(m.group(1).split())
    if not action or len(action) > MAX_ACTION_CHARS or "<action>" in action:
        return None
    return action


def action_char_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the content of the first ``<action>…</action>``, or None."""
    m = ACTION_RE.search(text) if isinstance(text, str) else None
    return (m.start(1), m.end(1)) if m else None


def format_response(thought: str, action: str) -> str:
    """The exact output format: ``<think>thought</think>\\n<action>action</action>``."""
    return f"<think>{thought}</think>\n<action>{action}</action>"


# ----------------------------------------------------------------------------- templated expert thoughts
_HOUSEHOLD = [
    (r"go to (.+)", "I should check {0} next."),
    (r"open (.+)", "{0} is closed; I will open it."),
    (r"close (.+)", "I am done with {0}; I will close it."),
    (r"take (.+) from (.+)", "I found {0}; I will take it."),
    (r"put (.+) in/on (.+)", "Now I can put {0} in/on {1}."),
    (r"put (.+) (?:in|on) (.+)", "Now I can put {0} in/on {1}."),
    (r"clean (.+) with (.+)", "{0} must be clean; I will clean it with {1}."),
    (r"heat (.+) with (.+)", "{0} must be hot; I will heat it with {1}."),
    (r"cool (.+) with (.+)", "{0} must be cool; I will cool it with {1}."),
    (r"use (.+)", "I will turn on {0} to look at the object."),
    (r"examine (.+)", "I will examine {0}."),
    (r"look", "I will look around."),
    (r"inventory", "I will check what I carry."),
]
_SHOP = [
    (r"search\[(.*)\]", "I will search the store for the product."),
    (r"click\[buy now\]", "This product matches the request; I will buy it."),
    (r"click\[(?:next >|< prev)\]", "I will look at other results."),
    (r"click\[back to search\]", "I will go back and search again."),
    (r"click\[(?:description|features|reviews|attributes)\]", "I will read more about this product."),
    (r"click\[(.*)\]", "I will select {0}."),
]
_SEARCH = [
    (r"search\[(.*)\]", "I need more facts; I will search for {0}."),
    (r"answer\[(.*)\]", "I have found the answer."),
]
THOUGHTS = {"household": _HOUSEHOLD, "shop": _SHOP, "search": _SEARCH}

THOUGHT_STYLES = ("verb", "take_first")
# rollout.thoughts="take_first": the take thought starts with the object, so under constrained decoding the first
# choice of a take is the object's name, which the model can copy from the task (only visible objects can be taken).
_TAKE_FIRST = {r"take (.+) from (.+)": "{0} is here; I will take it."}


def thought_templates(family: str, style: str = "verb") -> list[tuple[str, str]]:
    """The (action pattern, thought template) pairs of ``family`` in ``style`` (:data:`THOUGHT_STYLES`).

    ``"verb"``: the shipped templates ("I found pot 1; I will take it."). ``"take_first"``: the same, except that a
    take's thought starts with its object ("pot 1 is here; I will take it."); families without a take action are
    unchanged.
    """
    if style not in THOUGHT_STYLES:
        raise ValueError(f"thought style {style!r} is not one of {THOUGHT_STYLES}")
    templates = THOUGHTS.get(family, [])
    if style == "take_first":
        templates = [(pattern, _TAKE_FIRST.get(pattern, template)) for pattern, template in templates]
    return templates


def expert_thought(family: str, action: str, style: str = "verb") -> str:
    """A short templated thought for ``action``, chosen by the action's verb (a generic one when none matches)."""
    for pattern, template in thought_templates(family, style):
        m = re.fullmatch(pattern, action.strip(), flags=re.IGNORECASE)
        if m:
            return template.format(*m.groups())
    return "I will take the next step."


def expert_response(thought_family: str, action: str, style: str = "verb") -> str:
    """An SFT target in the exact output format: templated thought (in ``style``) + the expert ``action``.

    >>> expert_response("household", "go to countertop 1")
    '<think>I should check countertop 1 next.</think>\\n<action>go to countertop 1</action>'
    >>> expert_response("household", "take pot 1 from stoveburner 2", "take_first")
    '<think>pot 1 is here; I will take it.</think>\\n<action>take pot 1 from stoveburner 2</action>'
    """
    return format_response(expert_thought(thought_family, action, style), action)
