"""A small byte-level BPE tokenizer trained offline on the environments' own text (for the ``tiny`` models).

The corpus (:func:`env_corpus`) is deterministic: expert episodes of every registered embedded env on its first train
seeds (instructions, observations, admissible and expert actions), rendered with the rollout's own prompt templates
and templated expert responses. Training uses the ``tokenizers`` library (byte-level BPE, so any text encodes); the
result is a ``PreTrainedTokenizerFast`` with a ChatML chat template whose end-of-turn token is the EOS token.
"""

from __future__ import annotations

import hashlib
import warnings

from transformers import PreTrainedTokenizerFast

EMBEDDED_ENVS = ("household-v0", "shop-v0", "search-v0")
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


def env_corpus(env_ids: tuple[str, ...] = EMBEDDED_ENVS, *, episodes: int = 40, history: int = 2) -> list[str]:
    """Text of expert episodes on the first ``episodes`` train seeds of each env that can be built.

    Envs that are not importable yet, or whose expert episodes fail, are skipped with a warning (the corpus hash then
    changes when they appear, so cached tiny models are rebuilt rather than silently reused).
    """
    from empg.envs import make, split_seeds
    from empg.rollout import prompts

    texts: list[str] = []
    for env_id in env_ids:
        try:
            env = make(env_id, "train")
        except (ImportError, ModuleNotFoundError, KeyError) as err:
            warnings.warn(f"tokenizer corpus: skipping {env_id} ({err})", stacklevel=2)
            continue
        try:
            env_texts = [
                t for seed in split_seeds("train", episodes) for t in _episode_texts(env, seed, history, prompts)
            ]
        except Exception as err:  # noqa: BLE001 - a broken env must not block building a model for the others
            warnings.warn(f"tokenizer corpus: skipping {env_id}, its expert episodes failed ({err!r})", stacklevel=2)
            env_texts = []
        finally:
            env.close()
        texts.extend(env_texts)
    return texts


def _episode_texts(env, seed: int, history: int, prompts) -> list[str]:
    obs, info = env.reset(seed=seed)
    texts = [info["task"]]
    past: list[tuple[str, str]] = []
    done, step = False, 0
    while not done:
        action = env.expert_action()
        msgs = prompts.build_messages(
            env.family, info["task"], obs, past[-history:] if history else [], step, info["admissible_actions"]
        )
        texts.append(msgs[0]["content"])
        texts.append(prompts.expert_response(env.family, action))
        past.append((obs, action))
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        step += 1
    texts.append(obs)
    return texts


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
