"""evaluate_policy: fixed seeds, per-type table, deterministic for a given seed."""

from __future__ import annotations

import pytest

from empg.eval.evaluate import evaluate_policy, render_report
from empg.policy import SamplingParams
from empg.rollout.prompts import PromptSpec


@pytest.fixture(scope="module")
def policy(make_micro_policy):
    """A micro Qwen2 (1 layer, hidden 32) with a BPE tokenizer trained on a few household episodes."""
    from empg.policy.tokenizer import train_tokenizer
    from empg.rollout.corpus import env_corpus

    return make_micro_policy(train_tokenizer(env_corpus(("household-v0",), episodes=4), vocab_size=512))


def test_report_is_deterministic_and_complete(policy):
    kwargs = dict(max_turns=2, sampling=SamplingParams(temperature=0.4, max_new_tokens=12), seed=3)
    a = evaluate_policy(policy, "household-v0", "eval_out", 3, **kwargs)
    b = evaluate_policy(policy, "household-v0", "eval_out", 3, **kwargs)
    assert a.to_dict() == b.to_dict()
    assert a.episodes == 3 and a.table["all"].n == 3
    assert sum(row.n for name, row in a.table.items() if name != "all") == 3
    assert 1 <= a.mean_length <= 2 and 0 <= a.invalid_rate <= 1
    m = a.metrics()
    assert m["eval_out/success"] == a.success
    assert all(k.startswith("eval_out/") for k in m)
    assert render_report(a).row_count == len(a.table)
    # per-episode outcomes, keyed by the split's seeds, for paired comparisons; they survive the JSON round trip
    from empg.envs import split_seeds
    from empg.eval.evaluate import EvalReport

    assert sorted(a.outcomes) == sorted(split_seeds("eval_out", 3))
    assert sum(a.outcomes.values()) == round(a.success * 3)
    assert EvalReport.from_dict(a.to_dict()) == a


def test_train_evaluation_plays_only_the_rl_task_pool():
    from empg.envs import split_seeds
    from empg.eval.evaluate import eval_seeds, metric_key

    pool = split_seeds("train", 3)
    assert eval_seeds("train", 7, train_pool=3) == pool * 2 + pool[:1]  # cycled: each pool task 2-3 times
    assert eval_seeds("train", 2, train_pool=3) == pool[:2]  # a pool at least as large: its first seeds
    assert eval_seeds("train", 5) == split_seeds("train", 5)
    assert eval_seeds("eval_in", 5, train_pool=3) == split_seeds("eval_in", 5)  # other splits are never the pool
    # its metrics are eval_train/*: train/* are the training rollouts' own
    assert [metric_key(s) for s in ("train", "eval_in", "eval_out")] == ["eval_train", "eval_in", "eval_out"]


def test_evaluate_with_config_passes_every_run_setting(monkeypatch):
    """The RL loop, SFT and `empg eval` evaluate through one helper: it passes the config's env, turn limit, env
    kwargs, task pool, history, token budget and evaluation temperature (greedy when asked or configured)."""
    import empg.eval.evaluate as ev
    from empg.train.config import load_config

    calls = []
    monkeypatch.setattr(ev, "evaluate_policy", lambda *a, **kw: calls.append((a, kw)))
    cfg = load_config(
        None,
        [
            "env.id=household-v0", "env.max_turns=7", "env.train_pool=2", "env.kwargs={scene_size: small}",
            "rollout.max_new_tokens=12", "rollout.history=1", "eval.temperature=0.7", "rollout.constrain_actions=true",
            "rollout.constrain_scope=response",
        ],
    )  # fmt: skip
    ev.evaluate_with_config("P", cfg, "train", 3, seed=5)
    ev.evaluate_with_config("P", cfg, "eval_in", 4, seed=6, greedy=True)
    settings = dict(max_turns=7, prompt=PromptSpec(history=1), env_kwargs={"scene_size": "small"}, train_pool=2,
                    constrain_actions=True, constrain_scope="response", thoughts="verb")  # fmt: skip
    sampled = SamplingParams(temperature=0.7, max_new_tokens=12, greedy=False)
    greedy = SamplingParams(temperature=0.7, max_new_tokens=12, greedy=True)
    assert calls == [
        (("P", "household-v0", "train", 3), dict(settings, sampling=sampled, seed=5)),
        (("P", "household-v0", "eval_in", 4), dict(settings, sampling=greedy, seed=6)),
    ]
    cfg.eval.greedy = True
    ev.evaluate_with_config("P", cfg, "eval_in", 4, seed=6)
    assert calls[-1][1]["sampling"].greedy is True
