"""Shared fixtures: a tiny policy with a tokenizer trained on a handful of prompt/response texts."""

from pathlib import Path

import pytest
import torch

from empg.policy import Policy
from empg.rollout.prompts import build_messages, expert_response
from empg.train.config import preset_overrides

CORPUS = [
    build_messages(
        "household", "put a clean apple in fridge.", "You arrive at fridge 1.", [], 0, ["look", "open fridge 1"]
    ),
    build_messages("search", "Who wrote X?", "Passages: ...", [("obs", "search[x]")], 1, None),
]
TEXTS = [m[0]["content"] for m in CORPUS] + [
    expert_response("household", "go to countertop 1"),
    expert_response("household", "take apple 1 from countertop 1"),
    expert_response("search", "answer[Ada Lovelace]"),
    "Nothing happens. You arrive at cabinet 3. On the desk 1, you see a pen 2, and a lamp 1. é ü 中文",
]


@pytest.fixture(scope="session")
def tiny():
    torch.manual_seed(0)
    return Policy.tiny(TEXTS * 3, "tiny-1m", seed=0, vocab_size=600)


@pytest.fixture(scope="session")
def corpus_texts():
    return list(TEXTS)


def _micro_policy(tokenizer):
    """A 1-layer, hidden-32 Qwen2 (weights from seed 0) sized for ``tokenizer``; far cheaper per token than tiny-1m."""
    from empg.policy import Policy
    from empg.policy.tiny import build_tiny_model

    return Policy(build_tiny_model("micro", tokenizer, seed=0), tokenizer, "micro")


@pytest.fixture(scope="session")
def make_micro_policy():
    """``make_micro_policy(tokenizer)`` → the micro :class:`empg.policy.Policy` (used where tiny-1m is too slow)."""
    return _micro_policy


# ----------------------------------------------------------------------------- end-to-end runs of the trainer
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, make_micro_policy):
    """A micro Qwen2 (1 layer, hidden 32) with a BPE tokenizer trained here on household episodes, saved once.

    Runs load it as a local directory (``model.spec=<dir>``). It is far cheaper than ``tiny-1m`` per token, which keeps
    the end-to-end runs at about a second per iteration on 2 shared cores; the code path is the one of any HF model
    directory (``tiny-1m`` itself is built by the policy tests).
    """
    from empg.policy.tokenizer import train_tokenizer
    from empg.rollout.corpus import env_corpus

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(env_corpus(("household-v0",), episodes=8), vocab_size=1024)
    policy = make_micro_policy(tok)
    path = root / "model"
    policy.save(path)
    return path


@pytest.fixture(scope="session")
def fast():
    """``fast(run_dir, *extra)``: overrides for a fast run on the session's tiny model."""
    return _fast


SMOKE = Path(__file__).resolve().parent.parent / "configs" / "household-smoke.yaml"


def _fast(run_dir, model_dir, *extra: str) -> list[str]:
    """configs/household-smoke.yaml (2 tasks x group 2, 3 turns, 16 new tokens, eval on 2 eval_out episodes: an
    iteration in about a second) as overrides, on ``model_dir``, in ``run_dir``, without progress bars."""
    return [
        *preset_overrides(SMOKE),
        f"run_dir={run_dir}",
        f"model.spec={model_dir}",
        "log.progress=false",
        *extra,
    ]
