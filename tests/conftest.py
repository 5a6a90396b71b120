"""Shared fixtures: a tiny policy with a tokenizer trained on a handful of prompt/response texts."""

import pytest
import torch

from empg.policy import Policy
from empg.rollout.prompts import build_messages, expert_response

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
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from empg.policy import Policy

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return Policy(Qwen2ForCausalLM(config).eval(), tokenizer, "micro")


@pytest.fixture(scope="session")
def make_micro_policy():
    """``make_micro_policy(tokenizer)`` → the micro :class:`empg.policy.Policy` (used where tiny-1m is too slow)."""
    return _micro_policy
