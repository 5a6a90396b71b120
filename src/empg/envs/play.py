"""Play an env in a terminal (``empg envs play household-v0 --seed 3``) and list envs (``empg envs list``).

The player reads lines from an ``input_fn`` and writes text to an ``output_fn`` (``input``/``print`` by default), so
the CLI wires it to the terminal and tests drive it with lists of lines. Besides env actions it understands
``expert`` (take the expert's action), ``help`` (commands and the admissible actions) and ``quit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from empg.envs.core import list_envs, make, spec, split_of_seed, split_seeds

HELP = (
    "Type an action and press enter. Player commands:\n"
    "  expert  take the expert's (oracle) next action\n"
    "  help    show this text and the admissible actions\n"
    "  quit    stop playing"
)


@dataclass(frozen=True)
class PlayResult:
    """Outcome of one :func:`play` session."""

    env_id: str
    seed: int
    split: str
    turns: int  # env steps taken
    won: bool
    reward: float  # sum of rewards
    quit: bool  # the player quit (or input ended) before the episode ended


def play(
    env_id: str,
    *,
    seed: int | None = None,
    split: str | None = None,
    max_turns: int | None = None,
    input_fn: Callable[[str], str] = input,
    output_fn: Callable[[str], Any] = print,
) -> PlayResult:
    """Play one episode of ``env_id`` interactively.

    Args:
        env_id: a registered id (see :func:`list_envs_table`).
        seed: episode seed; its split is inferred (``split_of_seed``). Default: the first seed of ``split``.
        split: the split, when ``seed`` is not given (default ``train``).
        max_turns: turn limit (default the env's).
        input_fn: called with the prompt ``"> "``, returns one line; ``EOFError``/``KeyboardInterrupt`` quit.
        output_fn: receives each block of text to show.

    Returns:
        A :class:`PlayResult`.
    """
    if seed is None:
        split = split or "train"
        seed = split_seeds(split, 1)[0]
    elif split is not None and split != split_of_seed(seed):
        raise ValueError(f"seed {seed} belongs to split {split_of_seed(seed)!r}, not {split!r}; drop --split")
    split = split_of_seed(seed)
    env = make(env_id, split=split, max_turns=max_turns)
    try:
        obs, info = env.reset(seed=seed)
        output_fn(f"[{env_id} seed={seed} split={split}] type `help` for commands\n\n{obs}")
        return _loop(env, env_id, seed, split, info, input_fn, output_fn)
    finally:
        env.close()


def _loop(
    env: Any,
    env_id: str,
    seed: int,
    split: str,
    info: dict,
    input_fn: Callable[[str], str],
    output_fn: Callable[[str], Any],
) -> PlayResult:
    turns, total = 0, 0.0
    while True:
        try:
            line = input_fn("> ").strip()
        except (EOFError, KeyboardInterrupt):
            line = "quit"
        command = line.lower()
        if command in ("quit", "exit", "q"):
            output_fn("Bye.")
            return PlayResult(env_id, seed, split, turns, bool(info.get("won")), total, quit=True)
        if command in ("help", "?"):
            output_fn(_help_text(info))
            continue
        if command == "expert":
            line = env.expert_action()
            output_fn(f"[expert] {line}")
        obs, reward, terminated, truncated, info = env.step(line)
        turns += 1
        total += reward
        output_fn(obs)
        if terminated or truncated:
            verdict = "You won!" if info.get("won") else "Episode over (turn limit)." if truncated else "Episode over."
            output_fn(f"*** {verdict} reward={total:g} turns={turns} ***")
            return PlayResult(env_id, seed, split, turns, bool(info.get("won")), total, quit=False)


def _help_text(info: dict) -> str:
    text = f"{HELP}\nTask: {info.get('task', '')}"
    actions = info.get("admissible_actions")
    if actions:
        text += "\nAdmissible actions:\n" + "\n".join(f"  {a}" for a in actions)
    return text


def list_envs_table() -> str:
    """A plain-text table of the registered envs: id, turn limit, description (for ``empg envs list``)."""
    rows = [(env_id, str(spec(env_id).max_turns), spec(env_id).description) for env_id in list_envs()]
    header = ("id", "max_turns", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in [header, *rows]]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
