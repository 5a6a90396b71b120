"""scienceworld-v0: the real ScienceWorld simulator (needs the `scienceworld` package and Java 17).

One JVM is shared by the module (starting one takes ~2 s); the resource tests start two more on purpose.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import time
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from empg.envs import INFO_KEYS, EpisodeOverError, make, split_seeds

pytestmark = pytest.mark.real_envs
scienceworld = pytest.importorskip("scienceworld", reason="scienceworld not installed (pip install 'empg[real-envs]')")
if shutil.which("java") is None:
    pytest.skip("ScienceWorld needs Java 17 on PATH", allow_module_level=True)

from empg.envs.adapters.scienceworld import (  # noqa: E402
    INVALID_OBSERVATION,
    ScienceWorldEnv,
    ScienceWorldError,
    split_index,
)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read().lower()
    except FileNotFoundError:
        return False


def _status(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(f.read().splitlines()[:3])
    except FileNotFoundError:
        return "gone"


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def env():
    e = ScienceWorldEnv("train", strict_split=False)
    yield e
    pid = e.jvm_pid
    e.close()
    assert _wait_dead(pid), "close() must stop the JVM"


# ----------------------------------------------------------------------------- seed → task mapping (no JVM)
def test_split_index_golden():
    # train seeds skip 8 and 9 in every decade: 0..7 → 0..7, 10 → 8, 17 → 15, 20 → 16.
    assert [split_index(s) for s in (0, 7, 10, 17, 20)] == [0, 7, 8, 15, 16]
    # eval seeds are one per decade: 8, 18, 28 → 0, 1, 2 and 9, 19 → 0, 1.
    assert [split_index(s) for s in (8, 18, 28, 9, 19)] == [0, 1, 2, 0, 1]


@given(st.sampled_from(["train", "eval_in", "eval_out"]), st.integers(1, 60))
def test_split_index_enumerates_each_split(split, n):
    assert [split_index(s) for s in split_seeds(split, n)] == list(range(n))


def test_missing_java_is_a_clear_error(monkeypatch):
    import empg.envs.adapters.scienceworld as mod

    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(ScienceWorldError, match=r"Java was not found on PATH.*openjdk-17"):
        ScienceWorldEnv("train")


def test_unknown_task_type_fails_before_the_jvm_starts():
    with pytest.raises(ValueError, match="unknown ScienceWorld task 'juggle'"):
        ScienceWorldEnv("train", task_types=["juggle"])


# ----------------------------------------------------------------------------- with the shared JVM
def test_splits_are_scienceworlds_variation_splits(env):
    # ScienceWorld 1.2.3's "boil" task: 30 variations split 14 train / 7 dev / 9 test.
    assert env.variations("boil", "train") == list(range(0, 14))
    assert env.variations("boil", "eval_in") == list(range(14, 21))
    assert env.variations("boil", "eval_out") == list(range(21, 30))
    assert len(env.task_types) == 30 and env.task_types[0] == "boil"
    # k = split_index(seed); task = types[k % 30]; variation = split_variations[k // 30 % len].
    assert env.task_of_seed(0) == ("boil", 0)  # k = 0
    assert env.task_of_seed(8) == ("boil", 14)  # eval_in k = 0 → first dev variation
    assert env.task_of_seed(9) == ("boil", 21)  # eval_out k = 0 → first test variation
    assert env.task_of_seed(36) == ("boil", 1)  # train k = 3*8 + 6 = 30 → types[0], train[1]
    assert env.task_of_seed(1)[0] == "change-the-state-of-matter-of"


@pytest.mark.parametrize("seed", [0, 1, 8])
def test_expert_gold_path_succeeds(env, seed):
    obs, info = env.reset(seed=seed)
    assert set(INFO_KEYS) <= set(info) and info["valid"] and not info["won"]
    assert info["task"] and info["task"] in obs and info["task_type"] == env.task_of_seed(seed)[0]
    assert info["admissible_actions"] is None  # off by default: hundreds of combinations, 0.1 s per step
    total, steps, terminated = 0.0, 0, False
    while not terminated and steps < 100:
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
        total += reward
        steps += 1
        assert not truncated
    assert terminated and info["won"] and info["score"] == 1.0
    assert total == pytest.approx(1.0)  # rewards are score deltas / 100: they sum to the final score / 100
    assert steps <= len(env.gold_path)
    with pytest.raises(EpisodeOverError):
        env.step("look around")


def test_bad_actions_are_invalid_not_crashes(env):
    obs0, _ = env.reset(seed=0)
    for bad in ("fly to the moon", "", "   ", "open", "\x00\x01 ~~~", "x" * 5000):
        obs, reward, terminated, truncated, info = env.step(bad)
        assert obs == INVALID_OBSERVATION and not info["valid"]
        assert reward == 0.0 and not terminated and info["score"] == 0.0
    _, _, _, _, info = env.step("look around")
    assert info["valid"]


def test_reset_is_deterministic(env):
    # The initial state is a pure function of the seed. ScienceWorld's gold-path generator is not (it may pick another
    # of several equivalent cups), so the adapter caches the first gold path per (task, variation).
    a, info_a = env.reset(seed=2)
    gold = env.gold_path
    env.step("look around")
    b, info_b = env.reset(seed=2)
    assert a == b and info_a == info_b and env.gold_path == gold and len(gold) > 0


def test_expert_pointer_skips_invalid_and_side_actions(env):
    env.reset(seed=0)
    first = env.expert_action()
    for side in ("fly to the moon", "look around", "inventory"):
        env.step(side)
        assert env.expert_action() == first  # only taking the gold action advances the plan
    env.step(first)
    assert env.expert_action() == env.gold_path[1]


def test_check_env_passes(env):
    checks = pytest.importorskip("empg.envs.checks")
    from empg.envs.core import TimeLimit

    assert checks.check_env(TimeLimit(env, 50), seeds=[0]) == list(checks.CHECKS)


def test_admissible_actions_on_request(env):
    env.with_admissible = True
    try:
        _, info = env.reset(seed=0)
        assert "look around" in info["admissible_actions"] and "open door to kitchen" in info["admissible_actions"]
    finally:
        env.with_admissible = False


# ----------------------------------------------------------------------------- resources
def test_crashed_jvm_gives_clear_error_and_gc_stops_the_jvm():
    crashed = make("scienceworld-v0", "train", expert=False, task_types=["boil"])
    crashed.reset(seed=0)
    pid = crashed.jvm_pid
    os.kill(pid, signal.SIGKILL)
    assert _wait_dead(pid), f"SIGKILL must stop the JVM: {_status(pid)}"  # crashed, not merely dying
    with pytest.raises(ScienceWorldError, match="JVM crashed"):
        crashed.step("look around")
    assert crashed.jvm_pid is None  # closed after the crash
    with pytest.raises(ScienceWorldError, match="closed"):
        crashed.unwrapped.variations("boil", "eval_in")

    dropped = ScienceWorldEnv("train", expert=False, task_types=["boil"])
    pid, finalizer = dropped.jvm_pid, dropped._finalizer
    alive = weakref.ref(dropped)
    assert _pid_alive(pid) and finalizer.alive
    del dropped
    gc.collect()
    assert alive() is None and not finalizer.alive, "the env must be collected and its finalizer run"
    assert _wait_dead(pid, timeout=30), f"garbage collection must stop the JVM: {_status(pid)}"
