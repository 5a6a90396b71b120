"""Checkpoints: safetensors + JSON only, exact optimizer/RNG round trip, atomic latest pointer, pruning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from empg.train import checkpoint as ckpt


class FakePolicy:
    """Stands in for empg.policy.Policy: a module saved as model.safetensors + config.json."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def save(self, path):
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text("{}")

    def load_from(self, path):
        self.model.load_state_dict(load_file(str(path / "model.safetensors")))


def _train_steps(policy, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(5, 4, generator=g)
        loss = policy.model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_equals_uninterrupted_training(tmp_path):
    # uninterrupted: 6 steps
    a = FakePolicy()
    opt_a = torch.optim.AdamW(a.model.parameters(), lr=1e-2, weight_decay=0.1)
    _train_steps(a, opt_a, 3, seed=1)
    _train_steps(a, opt_a, 3, seed=2)
    # interrupted after 3 steps, checkpointed, restored into fresh objects
    b = FakePolicy()
    opt_b = torch.optim.AdamW(b.model.parameters(), lr=1e-2, weight_decay=0.1)
    _train_steps(b, opt_b, 3, seed=1)
    path = ckpt.save_checkpoint(tmp_path, 3, b, opt_b)
    c = FakePolicy(seed=99)
    opt_c = torch.optim.AdamW(c.model.parameters(), lr=1e-2, weight_decay=0.1)
    c.load_from(path)
    state = ckpt.restore_checkpoint(path, opt_c)
    assert state["iteration"] == 3
    _train_steps(c, opt_c, 3, seed=2)
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(pa, pc)


def test_layout_has_no_pickles(tmp_path):
    p = FakePolicy()
    opt = torch.optim.AdamW(p.model.parameters(), lr=1e-3)
    _train_steps(p, opt, 1, seed=0)
    path = ckpt.save_checkpoint(tmp_path, 1, p, opt, extra={"note": "x"})
    assert path == tmp_path / "checkpoints" / "iter_0001"
    names = sorted(f.name for f in path.iterdir())
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    state = json.loads((path / "state.json").read_text())
    assert state["iteration"] == 1 and state["extra"] == {"note": "x"}
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    tensors = load_file(str(path / "optimizer.safetensors"))
    assert {k.split("/")[-1] for k in tensors} == {"step", "exp_avg", "exp_avg_sq"}
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter_0001"


def test_rng_states_round_trip():
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = ckpt.get_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.set_rng_state(json.loads(json.dumps(state)))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_latest_ignores_half_written_and_prunes(tmp_path):
    p = FakePolicy()
    assert ckpt.latest_checkpoint(tmp_path) is None
    for it in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, it, p, None, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(d.name for d in root.iterdir() if d.is_dir()) == ["iter_0002", "iter_0003"]
    # a crash while writing iteration 4 leaves a temp dir that is never picked up
    (root / ".tmp-iter_0004").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == root / "iter_0003"
    ckpt.save_checkpoint(tmp_path, 4, p, None)
    assert ckpt.latest_checkpoint(tmp_path) == root / "iter_0004"
    assert not (root / ".tmp-iter_0004").exists()


def test_optimizer_tensors_round_trip_is_exact():
    p = FakePolicy()
    opt = torch.optim.AdamW(p.model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    _train_steps(p, opt, 2, seed=0)
    tensors, groups = ckpt.optimizer_tensors(opt)
    json.dumps(groups)  # JSON-serialisable
    opt2 = torch.optim.AdamW(p.model.parameters(), lr=5.0)
    ckpt.load_optimizer(opt2, tensors, json.loads(json.dumps(groups)))
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_missing_state_json_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "iter_0001").mkdir(parents=True)
    (root / "latest").write_text("iter_0001")
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        ckpt.load_state(root / "iter_0001")
