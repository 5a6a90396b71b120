"""Constrained decoding of an action span: after an opening tag, only token sequences of the admissible choices.

A ReAct response is free text (the thought) until it emits the opening tag (``<action>``); from there the policy may
only continue with one of the step's admissible choices (each ending with the closing tag, ``…</action>``). The
choices are tokenized and stored in a :class:`TokenTrie`; at every constrained position the next-token distribution
is the policy's softmax **restricted to the trie's children and renormalised** — that is the distribution sampled
from, and the one whose log-probs and entropies are recorded and recomputed by the trainer (with the same allowed
sets, :func:`empg.algos.entropy.masked_logprobs_and_entropy`), so the PPO ratio and EMPG's entropies describe what
was actually sampled. A position with one child is forced (log-prob 0, entropy 0). A row whose free text ends
(``max_new_tokens``, EOS or the closing tag) without the opening tag gets the tag forced the same way (one allowed
token at a time), then chooses, so every constrained step ends with an admissible action.

Precedent: invalid-action masking in RL (Huang & Ontañón 2020) and LLM agents that act by choosing among admissible
actions (GLAM, Carta et al. 2023; TWOSOME, Tan et al. 2024).

Tokenization: a choice is encoded on its own (``tokenizer.encode(choice, add_special_tokens=False)``). That equals
its tokens inside the whole response when the opening tag ends at a pre-token boundary, as with byte-level BPE
(``<action>`` ends with ``>``, and the choices start with a letter); ``tests/policy/test_constrain.py`` checks it
on the household demonstrations for the tiny tokenizer.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActionConstraint:
    """What one row of a generation may emit after ``open_tag``: exactly one of ``choices``.

    Attributes:
        open_tag: the text that starts the constrained span (``"<action>"``).
        choices: every allowed continuation, each including the closing tag (``"go to fridge 1</action>"``).
            An empty tuple means "no constraint for this row" (free text; the caller counts it).
    """

    open_tag: str
    choices: tuple[str, ...]


class TokenTrie:
    """Token sequences of a set of choices as a trie of ``{token_id: child}`` dicts; a leaf (``{}``) ends a choice.

    Args:
        sequences: one token list per choice, each non-empty, none a prefix of another (so every leaf is the end of
            exactly one choice and every inner node continues).

    Raises:
        ValueError: an empty sequence, or one choice's tokens are a prefix of another's (end each choice with a
            closing tag).
    """

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root: dict[int, dict] = {}
        self.depth = 0
        for seq in sequences:
            if len(seq) == 0:
                raise ValueError("a choice has no tokens; every admissible choice must be a non-empty string")
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            self.depth = max(self.depth, len(seq))
        for seq in sequences:  # a choice that ends on a node another choice continues from is a prefix of it
            node = self.root
            for token in seq:
                node = node[int(token)]
            if node:
                raise ValueError(_PREFIX_ERROR)

    @classmethod
    def build(cls, tokenizer: Any, choices: Sequence[str]) -> TokenTrie:
        """Tokenize ``choices`` (no special tokens; one batch call for those not seen before with this tokenizer:
        a rollout meets the same templated choices at step after step) and build the trie; duplicates count once."""
        unique = list(dict.fromkeys(choices))
        if not unique:
            return cls([])
        return cls(encode_cached(tokenizer, unique))

    def __bool__(self) -> bool:
        return bool(self.root)


_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {text: token ids}
_ENCODED_MAX = 200_000  # texts remembered per tokenizer before the memo starts over


def encode_cached(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, remembering each text's ids per tokenizer (a
    pure function of the text), so only texts not seen before are encoded."""
    memo = _ENCODED.setdefault(tokenizer, {})
    new = [t for t in texts if t not in memo]
    if new:
        if len(memo) + len(new) > _ENCODED_MAX:
            memo.clear()
        memo.update(zip(new, tokenizer(new, add_special_tokens=False)["input_ids"], strict=True))
    return [list(memo[t]) for t in texts]


_PREFIX_ERROR = (
    "one admissible choice's tokens are a prefix of another's, so the trie cannot tell where the first ends; "
    "end every choice with the closing tag (e.g. '</action>')"
)


__all__ = ["ActionConstraint", "TokenTrie"]
