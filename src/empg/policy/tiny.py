"""Tiny from-scratch Qwen2 models (random init from a seed) for CPU runs and tests.

Presets (parameter counts with the default 2048-token vocabulary, tied embeddings):

============ ====== ====== ===== ======== ============ ==========
preset       hidden layers heads kv heads intermediate parameters
============ ====== ====== ===== ======== ============ ==========
``tiny-1m``  128    4      4     2        384          ~1.0M
``tiny-5m``  256    6      4     2        768          ~5.2M
``tiny-25m`` 512    8      8     4        1536         ~26M
============ ====== ====== ===== ======== ============ ==========
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

PRESETS: dict[str, dict[str, int]] = {
    "tiny-1m": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=384),
    "tiny-5m": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=768),
    "tiny-25m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                     intermediate_size=1536),
    # not a model spec: the tests' and the chaos benchmark's 1-layer model, far cheaper per token than tiny-1m
    "micro": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64),
}  # fmt: skip


def tiny_config(preset: str, tokenizer, *, max_position_embeddings: int = 4096) -> Qwen2Config:
    """Qwen2 config of a preset sized for ``tokenizer`` (vocab, pad/eos ids)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {sorted(PRESETS)}")
    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
        **PRESETS[preset],
    )


def build_tiny_model(preset: str, tokenizer, *, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM; the same (preset, tokenizer, seed) gives identical weights."""
    config = tiny_config(preset, tokenizer)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
