"""Shared fixtures for the trainer tests: one tiny model built once per session, fast run overrides."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, make_micro_policy):
    """A micro Qwen2 (1 layer, hidden 32) with a BPE tokenizer trained here on household episodes, saved once.

    Runs load it as a local directory (``model.spec=<dir>``). It is far cheaper than ``tiny-1m`` per token, which keeps
    the end-to-end runs at about a second per iteration on 2 shared cores; the code path is the one of any HF model
    directory (``tiny-1m`` itself is built by the policy tests).
    """
    from empg.policy.tokenizer import env_corpus, train_tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(env_corpus(("household-v0",), episodes=8), vocab_size=1024)
    policy = make_micro_policy(tok)
    path = root / "model"
    policy.save(path)
    return path


@pytest.fixture
def fast():
    """``fast(run_dir, *extra)``: overrides for a fast run on the session's tiny model."""
    return _fast


def _fast(run_dir, model_dir, *extra: str) -> list[str]:
    """2 tasks x group 2, 3 turns, 16 new tokens, eval on 2 eval_out episodes: an iteration in about a second."""
    return [
        f"run_dir={run_dir}",
        f"model.spec={model_dir}",
        "iterations=2",
        "env.id=household-v0",
        "env.max_turns=3",
        "rollout.history=1",
        "env.train_pool=50",
        "rollout.n_tasks=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "sft.enabled=false",
        "algo.max_resample_rounds=1",
        "optim.lr=1e-3",
        "optim.micro_batch_size=4",
        "eval.every=2",
        "eval.episodes=2",
        "eval.splits=[eval_out]",
        "eval.at_start=false",
        "log.progress=false",
        "log.plots=false",
        *extra,
    ]
