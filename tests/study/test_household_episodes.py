"""experiments/household_episodes.py and experiments/failures.py: the household diagnostics' shared helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _load(name: str):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a dataclass resolves its annotations through sys.modules
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def he():
    return _load("household_episodes")


def _expert_actions(he, seed: int, split: str) -> list[str]:
    from empg.envs import make
    from empg.envs.checks import expert_episode

    return [step[0] for step in expert_episode(make(he.ENV_ID, split, max_turns=50, **he.ENV_KWARGS), seed)[1:]]


def test_take_and_op_kinds(he):
    assert he.take_kind("take pen 2 from shelf 1", "put some pen on desk.") == "right"
    assert he.take_kind("take mug 1 from desk 1", "put some pen on desk.") == "wrong"
    assert he.take_kind("go to desk 1", "put some pen on desk.") is None
    assert he.take_kind(None, "x") is None
    assert he.op_kind("heat apple 1 with microwave 1", "cool some apple and put it in fridge.") == "wrong"
    assert he.op_kind("put apple 1 in/on fridge 1", "cool some apple") is None


def test_replaying_the_expert_agrees_at_every_step(he):
    from empg.eval.evaluate import eval_seeds

    seed = eval_seeds("eval_in", 3)[2]
    actions = _expert_actions(he, seed, "eval_in")
    r = he.replay(actions, seed, "eval_in")
    assert (r.agree, r.steps, r.first_divergence) == (len(actions), len(actions), None)
    assert r.expert_length == len(actions) == he.expert_length(seed, "eval_in")
    assert r.revisits == sum(a.startswith("go to ") for a in actions) - len(
        {a for a in actions if a.startswith("go to ")}
    )


def test_replay_counts_revisits_and_names_the_first_divergence(he):
    from empg.eval.evaluate import eval_seeds

    seed = eval_seeds("eval_in", 1)[0]
    expert = _expert_actions(he, seed, "eval_in")
    go = [a for a in expert if a.startswith("go to ")][0]
    from empg.envs import make

    env = make(he.ENV_ID, "eval_in", max_turns=50, **he.ENV_KWARGS)
    env.reset(seed=seed)
    other = next(a for a in env.unwrapped.admissible_actions() if a.startswith("go to ") and a != expert[0])
    loop = [other, go, other, go, None]  # two receptacles, back and forth, then an unparsed response
    r = he.replay(loop, seed, "eval_in")
    assert r.revisits == 2 and r.steps == 5
    assert r.first_divergence == ("go", "go", 0)
    assert r.agree <= 2


def test_failures_cli_prints_the_taxonomy(tiny_model_dir, capsys):
    failures = _load("failures")
    failures.main([str(tiny_model_dir), "--episodes", "2", "--thoughts", "verb", "--task-reminder", "0"])
    out = capsys.readouterr().out
    assert "eval_in, 2 episodes, sampling seed 0" in out
    assert "the expert alone:" in out and "| episodes | count |" in out
    rows = [line for line in out.splitlines() if line.startswith("| success") or line.startswith("| failure")]
    assert sum(int(line.rsplit("|", 2)[1]) for line in rows) == 2  # every episode is counted once
