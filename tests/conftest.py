"""Shared fixtures: a tiny policy with a tokenizer trained on a handful of prompt/response texts."""

import pytest
import torch

from empg.policy.tiny import tiny_policy
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
    return tiny_policy(TEXTS * 3, "tiny-1m", seed=0, vocab_size=600)


@pytest.fixture(scope="session")
def corpus_texts():
    return list(TEXTS)
