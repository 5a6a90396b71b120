import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2ForCausalLM

from empg.policy.tiny import PRESETS, build_tiny_model, tiny_config
from empg.policy.tokenizer import EOS, PAD, corpus_hash, train_tokenizer
from empg.rollout.corpus import env_corpus


def test_training_is_deterministic_and_has_specials(corpus_texts):
    a = train_tokenizer(corpus_texts, vocab_size=400)
    b = train_tokenizer(corpus_texts, vocab_size=400)
    assert a.get_vocab() == b.get_vocab()
    assert a.eos_token == EOS and a.pad_token == PAD and a.pad_token_id != a.eos_token_id
    assert 256 + 3 < len(a) <= 400
    # merges learned from the corpus make frequent words short
    assert len(a.encode("countertop", add_special_tokens=False)) < len("countertop")


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_byte_level_roundtrip_any_text(text):
    tok = _TOK
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_golden(corpus_texts):
    tok = train_tokenizer(corpus_texts, vocab_size=400)
    msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok"}]
    assert (
        tok.apply_chat_template(msgs, tokenize=False)
        == "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
    )
    text = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n"


def test_env_corpus_is_deterministic_and_holds_expert_text():
    a = env_corpus(("household-v0",), episodes=2)
    assert a == env_corpus(("household-v0",), episodes=2)
    assert corpus_hash(a) == corpus_hash(list(a)) and corpus_hash(a) != corpus_hash(a[1:])
    assert any("<action>" in t for t in a) and any("Your task is to:" in t for t in a)


class _FakeTok:
    pad_token_id, eos_token_id = 0, 2

    def __len__(self):
        return 2048


def _count(h, layers, heads, kv, inter, vocab=2048):
    """Tied embeddings + per layer (q,k,v with bias, o without, SwiGLU mlp, 2 RMSNorms) + final norm."""
    kv_dim = kv * (h // heads)
    attn = (h * h + h) + 2 * (h * kv_dim + kv_dim) + h * h
    return vocab * h + layers * (attn + 3 * h * inter + 2 * h) + h


def test_preset_sizes():
    # tiny-1m: 2048*128 + 4*(16512 + 2*8256 + 16384 + 147456 + 256) + 128 = 262144 + 4*197120 + 128 = 1050752
    assert _count(128, 4, 4, 2, 384) == 1_050_752
    expected = {
        "tiny-1m": 1_050_752,
        "tiny-5m": _count(256, 6, 4, 2, 768),
        "tiny-25m": _count(512, 8, 8, 4, 1536),
        "micro": _count(32, 1, 2, 1, 64),
    }
    for name in PRESETS:
        with torch.device("meta"):
            n = sum(p.numel() for p in Qwen2ForCausalLM(tiny_config(name, _FakeTok())).parameters())
        assert n == expected[name], name
    assert 4.5e6 < expected["tiny-5m"] < 5.5e6 and 24e6 < expected["tiny-25m"] < 28e6


def test_model_init_is_seeded(corpus_texts):
    a = build_tiny_model("tiny-1m", _TOK, seed=5).state_dict()
    b = build_tiny_model("tiny-1m", _TOK, seed=5).state_dict()
    c = build_tiny_model("tiny-1m", _TOK, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


_TOK = train_tokenizer(["put a clean apple in fridge 1. <think>x</think><action>look</action>"] * 5, vocab_size=300)


def test_env_corpus_renders_the_thought_style_it_is_given():
    verb = env_corpus(("household-v0",), episodes=2)
    first = env_corpus(("household-v0",), episodes=2, thoughts="take_first")
    assert any("I found " in t for t in verb) and not any("is here; I will take it." in t for t in verb)
    assert any("is here; I will take it." in t for t in first) and not any("I found " in t for t in first)
    assert len(first) == len(verb) and corpus_hash(first) != corpus_hash(verb)  # another cached tiny build
