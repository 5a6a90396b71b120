"""model.dtype is carried through every load; bf16 weights train with fp32 AdamW master copies."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from empg.train import rl
from empg.train.config import ConfigError, load_config
from empg.train.optim import MasterAdamW, make_optimizer


def test_a_bf16_run_keeps_bf16_parameters_and_writes_bf16_safetensors(tmp_path, tiny_model_dir, fast):
    coin = [
        "env.id=parity_env:ParityEnv",
        "env.max_turns=2",
        "rollout.group_size=4",
        "rollout.constrain_actions=true",
    ]  # groups with mixed outcomes
    cfg = load_config(
        None, fast(tmp_path / "run", tiny_model_dir, "model.dtype=bfloat16", "iterations=1", "algo.kl_coef=0.01", *coin)
    )
    run = rl.setup_run(cfg)
    assert {p.dtype for p in run.policy.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in run.ref_model.parameters()} == {torch.bfloat16}
    assert isinstance(run.optimizer, MasterAdamW)
    before = {n: p.detach().clone() for n, p in run.policy.model.named_parameters()}
    rl.train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0001"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    opt_state = load_file(str(ckpt / "optimizer.safetensors"))
    assert all(
        t.dtype == torch.float32 for k, t in opt_state.items() if k.endswith(("exp_avg", "exp_avg_sq", "master"))
    )
    moved = [n for n, t in weights.items() if n in before and not torch.equal(t, before[n])]
    assert moved  # the update reached the bf16 weights
    resumed = rl.setup_run(
        load_config(None, fast(tmp_path / "run", tiny_model_dir, "model.dtype=bfloat16", *coin)), resume=True
    )
    assert {p.dtype for p in resumed.policy.model.parameters()} == {torch.bfloat16}


def test_float16_on_cpu_is_refused_before_any_work(tmp_path, tiny_model_dir, fast):
    with pytest.raises(ConfigError) as e:
        load_config(None, fast(tmp_path / "run", tiny_model_dir, "model.dtype=float16"))
    assert e.value.field == "model.dtype" and "bfloat16" in e.value.fix


def test_master_weights_keep_updates_that_bf16_would_round_away():
    """lr 1e-4 on weights of 1.0: each step changes fp32 masters by ~1e-4, which bf16 (8-bit mantissa, spacing
    2^-7 near 1) cannot hold; over 50 steps the masters move by ~5e-3 and the bf16 weights follow them, where plain
    bf16 AdamW would not move at all."""
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = MasterAdamW([w], lr=1e-4)
    plain_w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    plain = torch.optim.AdamW([plain_w], lr=1e-4, weight_decay=0.0)
    opt.param_groups[0]["weight_decay"] = 0.0
    for _ in range(50):
        for p, o in ((w, opt), (plain_w, plain)):
            o.zero_grad()
            (p.float().sum()).backward()
            o.step()
    assert torch.allclose(opt.masters[0], torch.full((4,), 1 - 50e-4), atol=1e-6)
    assert float(w.detach()[0]) < 1.0 and float(plain_w.detach()[0]) == 1.0
    assert w.dtype == torch.bfloat16 and opt.masters[0].dtype == torch.float32


def test_master_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2).to(torch.bfloat16)
    opt = make_optimizer(a, 1e-3, 0.0)
    x = torch.randn(5, 3, dtype=torch.bfloat16)
    for _ in range(3):
        opt.zero_grad()
        a(x).float().pow(2).sum().backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())  # as a checkpoint would: no tensor shared with the live optimizer
    assert "master" in sd["state"][0]
    b = torch.nn.Linear(3, 2).to(torch.bfloat16)
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer(b, 1e-3, 0.0)
    opt_b.load_state_dict(sd)
    for model, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        model(x).float().pow(2).sum().backward()
        o.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(torch.equal(m, n) for m, n in zip(opt.masters, opt_b.masters, strict=True))


def test_fp32_models_get_plain_adamw():
    assert type(make_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0)) is torch.optim.AdamW
