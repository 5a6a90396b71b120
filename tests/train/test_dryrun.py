"""`empg train --dry-run`: validation, the resolved plan, the parameter count and the memory formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from empg.cli import main
from empg.train import dryrun
from empg.train.config import load_config
from empg.train.dryrun import Arch, batch_shapes, memory_estimate, param_count

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QWEN_1_5B = 1_543_714_304  # Qwen2.5-1.5B-Instruct, from its safetensors (published as 1.54B)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty model cache, outside the working directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EMPG_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_paper_preset_dry_run_prints_the_plan(offline, capsys):
    code = main(["train", "--config", str(CONFIGS / "alfworld-qwen1.5b.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "1,543,714,304 (1.54e9)" in out
    assert "hidden 1536, layers 28, heads 12, kv heads 2, intermediate 8960, vocab 151936, tied" in out
    assert "16 tasks x 8 = 128" in out and "128 episodes x 50 turns" in out
    assert "estimated GPU memory" in out and "AdamW state" in out and "total" in out
    assert "bfloat16" in out and "reference" in out
    assert not any((offline / "work").iterdir()), "a dry run must not create a run directory"


def test_tiny_preset_dry_run_creates_nothing(offline, capsys):
    run_dir = offline / "work" / "runs" / "tiny"
    code = main(
        [
            "train",
            "--config",
            str(CONFIGS / "household-tiny.yaml"),
            "--dry-run",
            "model.init=null",
            f"run_dir={run_dir}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tiny-1m" in out and "parameters" in out and "characters / 4" in out
    assert not run_dir.exists()
    assert not any((offline / "work").iterdir())
    assert not (offline / "cache").exists(), "the dry run must not build the tiny model into the cache"


def test_bad_config_fails_before_anything(offline, monkeypatch, capsys):
    def boom(cfg):
        raise AssertionError("the plan was built for an invalid config")

    monkeypatch.setattr(dryrun, "build_plan", boom)
    code = main(["train", "--config", str(CONFIGS / "household-tiny.yaml"), "--dry-run", "algo.base=nope"])
    assert code == 2
    assert "algo.base" in capsys.readouterr().err


def test_train_help_explains_dry_run(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--dry-run" in out and "estimated GPU memory" in out


def test_param_count_qwen_1_5b_and_table():
    arch = dryrun.known_arch("Qwen/Qwen2.5-1.5B-Instruct")
    assert arch is not None and param_count(arch) == QWEN_1_5B
    assert param_count(dryrun.known_arch("smollm2-135m")) == 134_515_008  # SmolLM2-135M's safetensors


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_transformers(model_type, tied):
    """The formula counts exactly the parameters transformers builds (on the meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        tie_word_embeddings=tied,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert param_count(dryrun.arch_from_config(config, "test")) == sum(p.numel() for p in model.parameters())


def test_memory_formula_golden():
    """Hand-computed: P = 1000 bf16 parameters, L = 2, h = 4, V = 7, micro 3, seq 10, response 5."""
    arch = Arch(hidden=4, layers=2, heads=2, kv_heads=1, intermediate=8, vocab=7, tied=True)
    mem = memory_estimate(1000, "bfloat16", arch, micro_batch=3, seq_len=10, response_len=5, reference=True)
    assert mem == {
        "weights": 2000,  # 1000 x 2 B
        "gradients": 2000,  # 1000 x 2 B
        "optimizer": 16000,  # 1000 x (4 master + 4 master grad + 8 moments)
        "reference": 2000,
        "activations": 8160,  # 2 layers x 3 x 10 x 4 x 34 B
        "logits": 630,  # 3 x 5 x 7 x (2 + 4)
        "total": 30790,
    }
    fp32 = memory_estimate(1000, "float32", arch, micro_batch=3, seq_len=10, response_len=5, reference=False)
    assert (fp32["weights"], fp32["optimizer"], fp32["reference"], fp32["activations"]) == (4000, 8000, 0, 16320)
    fsdp = memory_estimate(
        1000, "bfloat16", arch, micro_batch=3, seq_len=10, response_len=5, reference=False, processes=4, fsdp=True
    )
    assert (fsdp["weights"], fsdp["gradients"], fsdp["optimizer"]) == (500 + 2000, 500, 4000)


def test_batch_shapes_upper_bounds():
    cfg = load_config(CONFIGS / "alfworld-qwen1.5b.yaml", ["algo.base=dapo", "algo.max_resample_rounds=2"])
    s = batch_shapes(cfg, max_turns=50, prompt_tokens=600)
    assert s["episodes"] == 128 and s["max_steps"] == 6400 and s["rollout_rounds"] == 3
    assert s["seq_len"] == 1112 and s["generated_tokens"] == 3 * 6400 * 512 and s["micro_batches"] == 800
