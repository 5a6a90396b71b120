"""The env contract over EVERY registered env (``list_envs()``), and ``check_env`` catching broken envs.

An env whose module or engine is not importable yet (``ImportError`` when it is built, e.g. ``shop-v0`` before its
module lands, or a real adapter whose package is not installed) is skipped with the reason. Real-engine adapters
(``empg.envs.adapters.*``) are marked ``real_envs`` and checked on one train seed only; a missing engine runtime
(e.g. no Java for ScienceWorld, a ``RuntimeError`` at construction) also skips them.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from empg.envs import EnvCheckError, EpisodeOverError, check_env, list_envs, make, spec, split_of_seed, split_seeds
from empg.envs.checks import BAD_ACTIONS, CHECKS
from empg.envs.household import HouseholdEnv


def _is_adapter(env_id: str) -> bool:
    entry = spec(env_id).entry_point
    return isinstance(entry, str) and entry.startswith("empg.envs.adapters.")


def _params(splits: tuple[str, ...]) -> list:
    out = []
    for env_id in list_envs():
        if _is_adapter(env_id):
            out.append(pytest.param(env_id, "train", id=f"{env_id}-train", marks=[pytest.mark.real_envs]))
        else:
            out += [pytest.param(env_id, split, id=f"{env_id}-{split}") for split in splits]
    return out


_ENVS: dict[tuple[str, str], object] = {}


def _env(env_id: str, split: str):
    """Build (once per session) or skip when the env's module / engine is not available."""
    key = (env_id, split)
    if key not in _ENVS:
        try:
            _ENVS[key] = make(env_id, split)
        except ImportError as exc:
            pytest.skip(f"{env_id} not available yet: {str(exc).splitlines()[0]}")
        except RuntimeError as exc:
            if not _is_adapter(env_id):
                raise
            pytest.skip(f"{env_id} engine unavailable: {str(exc).splitlines()[0]}")
    return _ENVS[key]


@pytest.fixture(scope="module", autouse=True)
def _close_envs():
    yield
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


@pytest.mark.parametrize("env_id,split", _params(("train", "eval_in", "eval_out")))
def test_check_env(env_id, split):
    env = _env(env_id, split)
    seeds = split_seeds(split, 1 if _is_adapter(env_id) else 2)
    assert check_env(env, seeds=seeds) == list(CHECKS)


@pytest.mark.parametrize("env_id,split", _params(("train",)))
def test_reset_rejects_seeds_of_other_splits(env_id, split):
    env = _env(env_id, split)
    foreign = split_seeds("eval_out", 1)[0]
    assert split_of_seed(foreign) != split
    with pytest.raises(ValueError, match="split"):
        env.reset(seed=foreign)


@pytest.mark.parametrize("env_id,split", [p for p in _params(("train",)) if not _is_adapter(p.values[0])])
def test_fuzzed_text_never_crashes(env_id, split):
    env = _env(env_id, split)
    seed = split_seeds(split, 1)[0]

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.text(max_size=200), st.sampled_from(BAD_ACTIONS)))
    def run(text):
        _, info0 = env.reset(seed=seed)
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and obs
        assert isinstance(info["valid"], bool)
        if not info["valid"]:
            assert not terminated and reward == 0.0
            assert info["admissible_actions"] == info0["admissible_actions"]

    run()


def test_splits_are_disjoint_and_pure():
    seeds = {s: set(split_seeds(s, 300)) for s in ("train", "eval_in", "eval_out")}
    assert not seeds["train"] & seeds["eval_in"] and not seeds["train"] & seeds["eval_out"]
    assert not seeds["eval_in"] & seeds["eval_out"]
    assert all(split_of_seed(x) == s for s, xs in seeds.items() for x in xs)
    assert split_seeds("eval_in", 3) == [8, 18, 28] and split_seeds("eval_out", 2) == [9, 19]


# ----------------------------------------------------------------------------- check_env must catch broken envs
class _Nondeterministic(HouseholdEnv):
    resets = 0

    def _reset(self, seed, options):
        obs, info = super()._reset(seed, options)
        self.resets += 1
        return f"{obs} ({self.resets})", info


class _InvalidMovesAgent(HouseholdEnv):
    def _apply(self, action):
        out = super()._apply(action)
        if out is None:
            self._loc = next(iter(self._recs))
        return out


class _CrashesOnEmpty(HouseholdEnv):
    def _step(self, action):
        if not action:
            raise IndexError("empty action")
        return super()._step(action)


class _LazyExpert(HouseholdEnv):
    def expert_action(self):
        return "look"


class _BadInfoType(HouseholdEnv):
    def _info(self, valid):
        return {**super()._info(valid), "valid": "yes"}


class _NoRewardOnWin(HouseholdEnv):
    def _step(self, action):
        obs, _, terminated, info = super()._step(action)
        return obs, 0.0, terminated, info


class _StepsAfterEnd(HouseholdEnv):
    def step(self, action):
        self._done = False
        return super().step(action)


@pytest.mark.parametrize(
    "cls,check",
    [
        (_Nondeterministic, "seed_determinism"),
        (_InvalidMovesAgent, "invalid_actions"),
        (_CrashesOnEmpty, "invalid_actions"),
        (_LazyExpert, "expert_succeeds"),
        (_BadInfoType, "reset_types"),
        (_NoRewardOnWin, "expert_succeeds"),
        (_StepsAfterEnd, "step_after_end"),
    ],
)
def test_check_env_catches_broken_envs(cls, check):
    with pytest.raises(EnvCheckError, match=rf"^check_env\[{check}\]"):
        check_env(cls("train"), seeds=[0])


def test_check_env_accepts_raw_and_wrapped_envs_and_rejects_unknown_checks():
    assert check_env(HouseholdEnv("train"), seeds=[0]) == list(CHECKS)
    assert check_env(make("household-v0"), seeds=[1], checks=["reset_types"]) == ["reset_types"]
    with pytest.raises(ValueError, match="unknown checks"):
        check_env(HouseholdEnv("train"), checks=["flies"])


def test_timelimit_truncates_and_then_refuses_steps():
    env = make("household-v0", max_turns=2)
    env.reset(seed=0)
    assert env.step("look")[3] is False
    _, _, terminated, truncated, info = env.step("look")
    assert (terminated, truncated, info["turn"]) == (False, True, 2)
    with pytest.raises(EpisodeOverError):
        env.step("look")
