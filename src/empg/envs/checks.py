"""``check_env``: small named checks that every empg text env must pass (the suite runs them over the registry).

>>> from empg.envs import make
>>> from empg.envs.checks import check_env
>>> check_env(make("household-v0"))  # doctest: +ELLIPSIS
['reset_types', 'step_types', 'seed_determinism', ...]

Each check takes ``(env, seed)`` and raises :class:`EnvCheckError` naming the check and what is wrong. ``env`` may
be a raw :class:`~empg.envs.core.TextEnv` or wrapped in :class:`~empg.envs.core.TimeLimit` (what ``make`` returns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from empg.envs.core import INFO_KEYS, EpisodeOverError, split_seeds

# Inputs that no env grammar accepts: each must give valid=False, no termination, no state change.
BAD_ACTIONS = (
    "",
    "   ",
    "\x00\x07 garbage \t\n",
    "a" * 10_000,
    "🤖 ünïcödé ✓ 日本語",
    "take unicorn 99 from nowhere 7",
    "go to the moon 42",
)


class EnvCheckError(AssertionError):
    """A named env check failed; the message starts with the check's name."""


def _fail(check: str, detail: str) -> EnvCheckError:
    return EnvCheckError(f"check_env[{check}]: {detail}")


def _check_info(check: str, info: Any) -> None:
    if not isinstance(info, dict):
        raise _fail(check, f"info must be a dict, got {type(info).__name__}")
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise _fail(check, f"info lacks keys {missing}; every info needs {list(INFO_KEYS)}")
    if not isinstance(info["task"], str) or not isinstance(info["task_type"], str):
        raise _fail(check, "info['task'] and info['task_type'] must be str")
    adm = info["admissible_actions"]
    if adm is not None and not (isinstance(adm, list) and all(isinstance(a, str) for a in adm)):
        raise _fail(check, f"info['admissible_actions'] must be list[str] or None, got {type(adm).__name__}")
    if not isinstance(info["valid"], bool) or not isinstance(info["won"], bool):
        raise _fail(check, "info['valid'] and info['won'] must be bool")


def _max_steps(env: Any) -> int:
    return int(getattr(env, "max_turns", 50))


def expert_episode(env: Any, seed: int) -> list[tuple]:
    """Reset with ``seed`` and follow the expert to the end (at most max_turns steps); return the transitions:
    ``(obs, info)`` of the reset, then one ``(action, obs, reward, terminated, truncated, info)`` per step."""
    obs, info = env.reset(seed=seed)
    out: list[tuple] = [(obs, info)]
    for _ in range(_max_steps(env)):
        action = env.expert_action()
        step = env.step(action)
        out.append((action, *step))
        if step[2] or step[3]:
            break
    return out


# ----------------------------------------------------------------------------- the checks
def check_reset_types(env: Any, seed: int) -> None:
    """``reset(seed=...)`` returns ``(str, dict)`` with the contract's info keys, ``valid=True`` and ``won=False``."""
    result = env.reset(seed=seed)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise _fail("reset_types", f"reset must return (obs, info), got {type(result).__name__}")
    obs, info = result
    if not isinstance(obs, str) or not obs:
        raise _fail("reset_types", "the first observation must be a non-empty str")
    _check_info("reset_types", info)
    if info["won"] or not info["valid"]:
        raise _fail("reset_types", "after reset, info['won'] must be False and info['valid'] True")


def check_step_types(env: Any, seed: int) -> None:
    """``step`` returns ``(str, float, bool, bool, dict)`` with the contract's info keys."""
    env.reset(seed=seed)
    result = env.step(env.expert_action())
    if not (isinstance(result, tuple) and len(result) == 5):
        raise _fail("step_types", "step must return (obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    if not isinstance(obs, str):
        raise _fail("step_types", f"obs must be str, got {type(obs).__name__}")
    if not isinstance(reward, float):
        raise _fail("step_types", f"reward must be float, got {type(reward).__name__}")
    if not isinstance(terminated, bool) or not isinstance(truncated, bool):
        raise _fail("step_types", "terminated and truncated must be bool")
    _check_info("step_types", info)


def check_seed_determinism(env: Any, seed: int) -> None:
    """Two expert episodes from the same seed are identical (observations, rewards, flags, info)."""
    first, second = expert_episode(env, seed), expert_episode(env, seed)
    if first != second:
        diff = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b) if first else 0
        raise _fail("seed_determinism", f"seed {seed} gave different episodes (first difference at step {diff})")


def check_invalid_actions(env: Any, seed: int) -> None:
    """Bad inputs (empty, garbage, 10 kB, unicode, unknown objects) give ``valid=False`` and change nothing."""
    for bad in BAD_ACTIONS:
        _, info0 = env.reset(seed=seed)
        expert0 = env.expert_action()
        try:
            obs, reward, terminated, _, info = env.step(bad)
        except Exception as exc:
            raise _fail("invalid_actions", f"step({bad[:30]!r}) raised {type(exc).__name__}: {exc}") from exc
        _check_info("invalid_actions", info)
        if not isinstance(obs, str) or info["valid"] or terminated or reward != 0.0:
            raise _fail("invalid_actions", f"step({bad[:30]!r}) must give valid=False, reward 0, not terminated")
        if info["admissible_actions"] != info0["admissible_actions"] or env.expert_action() != expert0:
            raise _fail("invalid_actions", f"step({bad[:30]!r}) changed the state")


def check_expert_succeeds(env: Any, seed: int) -> None:
    """Following ``expert_action()`` wins within the turn limit, with a positive final reward."""
    episode = expert_episode(env, seed)
    _, _, reward, terminated, _, info = episode[-1]
    if not (terminated and info["won"] and reward > 0):
        raise _fail("expert_succeeds", f"the expert did not win seed {seed} in {len(episode) - 1} steps")


def check_step_after_end(env: Any, seed: int) -> None:
    """``step`` after the episode ended raises :class:`EpisodeOverError` (a clear error, not a silent step)."""
    expert_episode(env, seed)
    try:
        env.step("look")
    except EpisodeOverError:
        return
    except Exception as exc:
        raise _fail("step_after_end", f"expected EpisodeOverError, got {type(exc).__name__}: {exc}") from exc
    raise _fail("step_after_end", "step() after the end must raise EpisodeOverError; call reset() first")


CHECKS: dict[str, Callable[[Any, int], None]] = {
    "reset_types": check_reset_types,
    "step_types": check_step_types,
    "seed_determinism": check_seed_determinism,
    "invalid_actions": check_invalid_actions,
    "expert_succeeds": check_expert_succeeds,
    "step_after_end": check_step_after_end,
}


def check_env(env: Any, *, seeds: list[int] | None = None, checks: list[str] | None = None) -> list[str]:
    """Run the named checks (all of :data:`CHECKS` by default) on ``env`` for each seed.

    Args:
        env: a text env (raw or wrapped in ``TimeLimit``) with ``reset``, ``step`` and ``expert_action``.
        seeds: seeds to check; default the first two seeds of ``env.split``.
        checks: names from :data:`CHECKS`; default all.

    Returns:
        The names of the checks that passed (all of them; the first failure raises).

    Raises:
        EnvCheckError: ``"check_env[<name>]: <what is wrong>"`` for the first failing check.
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    if seeds is None:
        seeds = split_seeds(getattr(env, "split", "train"), 2)
    for seed in seeds:
        for name in names:
            CHECKS[name](env, seed)
    return names
