"""evaluate_policy: fixed seeds, per-type table, deterministic for a given seed."""

from __future__ import annotations

import pytest

from empg.eval.evaluate import evaluate_policy, render_report


@pytest.fixture(scope="module")
def policy(make_micro_policy):
    """A micro Qwen2 (1 layer, hidden 32) with a BPE tokenizer trained on a few household episodes."""
    from empg.policy.tokenizer import env_corpus, train_tokenizer

    return make_micro_policy(train_tokenizer(env_corpus(("household-v0",), episodes=4), vocab_size=512))


def test_report_is_deterministic_and_complete(policy):
    kwargs = dict(max_turns=2, max_new_tokens=12, seed=3)
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
