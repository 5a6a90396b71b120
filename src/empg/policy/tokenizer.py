"""A small byte-level BPE tokenizer trained offline on the environments' own text (for the ``tiny`` models).

The corpus is the caller's (the trainer's is :func:`empg.rollout.corpus.env_corpus`: the embedded envs' expert
episodes rendered with the rollout's prompt templates), so this module knows no env and no prompt. Training uses the
``tokenizers`` library (byte-level BPE, so any text encodes); the result is a ``PreTrainedTokenizerFast`` with a
ChatML chat template whose end-of-turn token is the EOS token.
"""

from __future__ import annotations

import hashlib

from transformers import PreTrainedTokenizerFast

EOS = "<|im_end|>"
BOS = "<|im_start|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_hash(texts: list[str]) -> str:
    """Short stable hash of a corpus (cache key)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:12]


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; deterministic for a given corpus.

    Args:
        texts: training corpus (non-empty).
        vocab_size: target vocabulary including the 256 byte symbols and the special tokens.

    Returns:
        A fast tokenizer with ``pad``/``eos`` set (``<|pad|>``, ``<|im_end|>``) and a ChatML chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not texts:
        raise ValueError("empty tokenizer corpus; pass at least one text (or register an embedded env)")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast
