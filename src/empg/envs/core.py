"""The text-environment contract, the registry, the turn-limit wrapper and ``check_env``.

Every environment in empg is Gymnasium-shaped but speaks text:

* ``reset(*, seed=None, options=None) -> (obs: str, info: dict)``
* ``step(action: str) -> (obs: str, reward: float, terminated: bool, truncated: bool, info: dict)``
* ``expert_action() -> str``: an oracle next action from the current (hidden) state.

``info`` always carries the keys in :data:`INFO_KEYS`: ``task`` (instruction text), ``task_type``,
``admissible_actions`` (``list[str]`` when the state has a finite action set, else ``None``), ``valid`` (was the last
action understood and applicable; ``True`` after reset) and ``won``.

A turn limit is *truncation* and lives in :class:`TimeLimit`, which :func:`make` applies.

Splits. Each env has three splits: ``train``, ``eval_in`` (same distribution, disjoint seeds) and ``eval_out`` (out of
distribution, described in each env's docstring). Split membership is a pure function of the seed
(:func:`split_of_seed`): seeds ``≡ 8 (mod 10)`` are ``eval_in``, ``≡ 9 (mod 10)`` are ``eval_out``, the rest ``train``.
:func:`split_seeds` enumerates a split's seeds in order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "eval_in", "eval_out")
INFO_KEYS = ("task", "task_type", "admissible_actions", "valid", "won")


class EpisodeOverError(RuntimeError):
    """Raised by ``step`` after the episode has ended (terminated or truncated): call ``reset()`` first."""


def split_of_seed(seed: int) -> str:
    """Return the split a seed belongs to. Pure and stable: ``8 (mod 10)`` → eval_in, ``9`` → eval_out, else train."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    r = seed % 10
    return "eval_in" if r == 8 else "eval_out" if r == 9 else "train"


def split_index(seed: int) -> int:
    """Index of ``seed`` within its split: the number of smaller seeds of the same split.

    >>> [split_index(s) for s in (0, 7, 10, 8, 18, 9, 19)]
    [0, 7, 8, 0, 1, 0, 1]
    """
    if split_of_seed(seed) == "train":
        return (seed // 10) * 8 + seed % 10
    return seed // 10


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """The ``n`` smallest seeds ``>= start`` that belong to ``split`` (deterministic, disjoint across splits)."""
    check_split(split)
    out: list[int] = []
    s = start
    while len(out) < n:
        if split_of_seed(s) == split:
            out.append(s)
        s += 1
    return out


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return split


class TextEnv:
    """Base class for empg text environments (subclass it or duck-type it).

    Subclasses implement ``_reset(seed, options) -> (obs, info)``, ``_step(action) -> (obs, reward, terminated, info)``
    and ``expert_action()``. The base class handles seeding, split checks, the "step after the end" error and fills
    missing ``info`` keys with safe defaults.

    Attributes:
        env_id: registry id, e.g. ``"household-v0"`` (set by :func:`make`).
        family: prompt-template family (``"household"``, ``"shop"``, ``"search"`` …).
        split: which split ``reset(seed=None)`` samples from, and which seeds ``reset(seed=...)`` accepts.
        max_turns: default turn limit used by :func:`make` (truncation via :class:`TimeLimit`).
    """

    env_id: str = "unregistered"
    family: str = "generic"
    max_turns: int = 50

    def __init__(self, split: str = "train", *, strict_split: bool = True):
        self.split = check_split(split)
        self.strict_split = strict_split
        self._done = True
        self._next_seed_index = 0
        self.seed: int | None = None

    # ----------------------------------------------------------------- public API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        if seed is None:
            seed = split_seeds(self.split, 1, start=self._next_seed_index * 10)[0]
            self._next_seed_index += 1
        elif self.strict_split and split_of_seed(seed) != self.split:
            raise ValueError(
                f"seed {seed} belongs to split {split_of_seed(seed)!r}, not {self.split!r}; "
                f"use empg.envs.split_seeds({self.split!r}, n) or pass strict_split=False"
            )
        self.seed = seed
        obs, info = self._reset(seed, options or {})
        self._done = False
        return obs, self._complete_info(info, valid=True)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._done:
            raise EpisodeOverError(f"{self.env_id}: step() called after the episode ended; call reset() first")
        if not isinstance(action, str):
            action = "" if action is None else str(action)
        obs, reward, terminated, info = self._step(action)
        self._done = bool(terminated)
        return obs, float(reward), bool(terminated), False, self._complete_info(info)

    def expert_action(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (processes, files). Idempotent."""

    # ----------------------------------------------------------------- for subclasses
    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        raise NotImplementedError

    def _complete_info(self, info: dict, valid: bool | None = None) -> dict:
        info = dict(info)
        info.setdefault("task", "")
        info.setdefault("task_type", "default")
        info.setdefault("admissible_actions", None)
        if valid is not None:
            info.setdefault("valid", valid)
        info.setdefault("valid", True)
        info.setdefault("won", False)
        return info

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TimeLimit:
    """Truncate an episode after ``max_turns`` steps (Gymnasium's ``TimeLimit`` for text envs).

    Delegates every other attribute to the wrapped env. ``info["turn"]`` counts steps taken so far.
    """

    def __init__(self, env: Any, max_turns: int):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.env = env
        self.max_turns = max_turns
        self._turn = 0
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._turn = 0
        self._done = False
        info["turn"] = 0
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._done:
            raise EpisodeOverError(
                f"{getattr(self.env, 'env_id', 'env')}: step() called after the episode ended; call reset() first"
            )
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._turn += 1
        info["turn"] = self._turn
        if not terminated and self._turn >= self.max_turns:
            truncated = True
        self._done = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)

    def __getattr__(self, name: str) -> Any:  # delegate expert_action, close, split, family, ...
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: versioned id, lazy ``"module:Class"`` entry point, default turn limit, kwargs."""

    id: str
    entry_point: str | Callable[..., Any]
    max_turns: int
    description: str = ""
    kwargs: dict = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        if callable(self.entry_point):
            return self.entry_point
        module, _, attr = self.entry_point.partition(":")
        if not attr:
            raise ValueError(f"entry point {self.entry_point!r} must look like 'package.module:ClassName'")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, EnvSpec] = {}


def register(
    id: str,
    entry_point: str | Callable[..., Any],
    *,
    max_turns: int,
    description: str = "",
    **kwargs: Any,
) -> None:
    """Register an environment under a versioned id like ``"household-v0"``. Registering a taken id fails."""
    if id in _REGISTRY:
        raise ValueError(f"environment id {id!r} is already registered")
    name, _, version = id.rpartition("-v")
    if not name or not version.isdigit():
        raise ValueError(f"environment ids are versioned like 'name-v0', got {id!r}")
    _REGISTRY[id] = EnvSpec(id, entry_point, max_turns, description, dict(kwargs))


def list_envs() -> list[str]:
    """Ids of all registered environments, sorted."""
    return sorted(_REGISTRY)


def spec(id: str) -> EnvSpec:
    try:
        return _REGISTRY[id]
    except KeyError:
        raise KeyError(f"unknown environment {id!r}; registered: {', '.join(list_envs())}") from None


def make(id: str, split: str = "train", *, max_turns: int | None = None, **kwargs: Any) -> TimeLimit:
    """Build a registered env for ``split``, wrapped in :class:`TimeLimit` (``max_turns`` or the spec's default).

    ``id`` may also be ``"package.module:Class"`` for user envs that are not registered.
    """
    check_split(split)
    if ":" in id and id not in _REGISTRY:
        env_spec = EnvSpec(id, id, max_turns or 50)
    else:
        env_spec = spec(id)
    env = env_spec.load()(split=split, **{**env_spec.kwargs, **kwargs})
    try:
        env.env_id = env_spec.id
    except AttributeError:
        pass
    return TimeLimit(env, max_turns or env_spec.max_turns)
