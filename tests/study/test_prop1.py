"""Proposition 1: E_{a~π}‖∇_z log π(a)‖² = 1 − Σπ² = 1 − exp(−H₂), the analytic score norm, and `empg prop1`."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from empg.algos.entropy import token_renyi2
from empg.cli import main
from empg.study.prop1 import StepValues, correlations, restrict_to_allowed, score_norms, step_means


def _logits(rows: int = 16, vocab: int = 11, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale  # (N, V), peaked and flat rows


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_enumerated_expectation_is_one_minus_exp_neg_renyi2(temperature):
    logits = _logits()
    out = score_norms(logits, torch.zeros(16, dtype=torch.long), temperature=temperature)
    pi = torch.softmax(logits / temperature, dim=-1)  # (N, V)
    eye = torch.eye(pi.shape[-1], dtype=torch.float64)
    for n in range(pi.shape[0]):
        enumerated = sum(pi[n, a] * (eye[a] - pi[n]).square().sum() for a in range(pi.shape[-1]))
        h2 = -torch.log(pi[n].square().sum())
        assert float(enumerated) == pytest.approx(1 - math.exp(-float(h2)), abs=1e-6)
        assert float(out["expected"][n]) == pytest.approx(float(enumerated), abs=1e-6)
        assert float(out["renyi2"][n]) == pytest.approx(float(h2), abs=1e-6)
    # H₂ agrees with the trainer's chunked Rényi-2 (float32)
    ref = token_renyi2(logits.float(), temperature=temperature).double()
    torch.testing.assert_close(out["renyi2"], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_analytic_score_norm_equals_autograd(temperature):
    logits = _logits(rows=6, vocab=9, seed=1)
    tokens = torch.tensor([0, 3, 8, 5, 5, 1])
    out = score_norms(logits, tokens, temperature=temperature)
    for n, a in enumerate(tokens.tolist()):
        z = (logits[n] / temperature).clone().requires_grad_(True)  # the scaled logits
        (grad,) = torch.autograd.grad(torch.log_softmax(z, dim=-1)[a], z)
        assert float(grad.square().sum()) == pytest.approx(float(out["realised"][n]), abs=1e-10)
        raw = logits[n].clone().requires_grad_(True)  # w.r.t. the raw logits: divided by the temperature
        (grad_raw,) = torch.autograd.grad(torch.log_softmax(raw / temperature, dim=-1)[a], raw)
        assert float(grad_raw.square().sum()) == pytest.approx(float(out["realised"][n]) / temperature**2, abs=1e-10)


def test_golden_uniform_and_peaked():
    out = score_norms(torch.zeros(1, 4, dtype=torch.float64), torch.tensor([2]))
    # uniform over 4: Σπ² = 1/4, so expected = realised = 3/4 and H₂ = log 4
    assert float(out["expected"][0]) == pytest.approx(0.75, abs=1e-12)
    assert float(out["realised"][0]) == pytest.approx(1 - 2 / 4 + 1 / 4, abs=1e-12)
    assert float(out["renyi2"][0]) == pytest.approx(math.log(4), abs=1e-12)
    peaked = torch.tensor([[30.0, 0.0, 0.0], [30.0, 0.0, 0.0]], dtype=torch.float64)
    out = score_norms(peaked, torch.tensor([0, 1]))
    assert float(out["expected"][0]) == pytest.approx(0.0, abs=1e-12)  # a confident step: no gradient
    assert float(out["realised"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(out["realised"][1]) == pytest.approx(2.0, abs=1e-12)  # ‖e_1 − e_0‖² for the unlikely token
    assert score_norms(peaked.float(), torch.tensor([0, 1]), chunk_size=1)["realised"].dtype == torch.float32


def test_unbiased_on_samples():
    """Tokens drawn from π: the mean realised norm converges to the mean of 1 − Σπ²."""
    logits = _logits(rows=4, vocab=7, seed=2).repeat_interleave(5000, dim=0)  # (20000, 7)
    tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    out = score_norms(logits, tokens)
    assert float(out["realised"].mean()) == pytest.approx(float(out["expected"].mean()), abs=0.01)


def test_step_means_and_correlations():
    values = StepValues(
        row=np.array([0, 0, 1, 2, 2, 2]),
        expected=np.array([0.2, 0.4, 0.9, 0.1, 0.2, 0.3]),
        realised=np.array([0.2, 1.0, 1.8, 0.1, 0.5, 0.6]),
        renyi2=np.array([0.5, 1.0, 3.0, 0.2, 0.3, 0.4]),
        steps=[{}, {}, {}],
    )
    means = step_means(values)
    np.testing.assert_allclose(means["expected"], [0.3, 0.9, 0.2])
    np.testing.assert_allclose(means["realised"], [0.6, 1.8, 0.4])  # = 2 x expected
    np.testing.assert_allclose(means["renyi2"], [0.75, 3.0, 0.3])
    corr = correlations(means["realised"], means["expected"])
    assert corr == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    golden = correlations(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))  # cov 0.5, var 1: r = 0.5
    assert golden == {"pearson": pytest.approx(0.5), "spearman": pytest.approx(0.5)}
    assert correlations(np.ones(5), np.arange(5.0)) == {"pearson": None, "spearman": None}
    assert correlations(np.arange(2.0), np.arange(2.0)) == {"pearson": None, "spearman": None}


def test_restricted_score_norms_are_those_of_the_allowed_softmax():
    """Golden rows: two allowed tokens give the two-way softmax's values, one allowed token is certain (norms 0,
    H2 0), an all -1 row keeps the full softmax; id 0 counts only when listed (-1 padding is not id 0)."""
    z = _logits(rows=4, vocab=5, seed=3)
    allowed = torch.tensor([[1, 3, -1], [2, -1, -1], [-1, -1, -1], [0, 4, -1]])
    tokens = torch.tensor([3, 2, 1, 0])
    got = score_norms(restrict_to_allowed(z, allowed), tokens)
    for row, ids, a in ((0, [1, 3], 1), (3, [0, 4], 0)):
        p = torch.softmax(z[row, ids], -1)
        s2 = float((p * p).sum())
        assert float(got["expected"][row]) == pytest.approx(1 - s2, abs=1e-12)
        assert float(got["realised"][row]) == pytest.approx(1 - 2 * float(p[a]) + s2, abs=1e-12)
    assert float(got["expected"][1]) == 0.0 and float(got["realised"][1]) == 0.0
    assert float(got["renyi2"][1]) == pytest.approx(0.0, abs=1e-12)
    full = score_norms(z[2:3], tokens[2:3])
    assert float(got["expected"][2]) == pytest.approx(float(full["expected"][0]), abs=1e-12)
    assert torch.isinf(restrict_to_allowed(z, allowed)[1, 0]) and torch.isinf(restrict_to_allowed(z, allowed)[0, 0])


# ----------------------------------------------------------------------------- the command on a tiny run
@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    """A run folder with config.yaml and base_model (iterations=0: no RL), from the session's tiny policy."""
    root = tmp_path_factory.mktemp("prop1")
    tiny.save(root / "model")
    run_dir = root / "run"
    overrides = [f"run_dir={run_dir}", f"model.spec={root / 'model'}", "iterations=0", "sft.enabled=false"]
    overrides += [
        "env.max_turns=3",
        "rollout.max_new_tokens=12",
        "rollout.constrain_actions=false",
        "log.plots=false",
        "log.progress=false",
    ]
    assert main(["train", "--config", "configs/household-tiny.yaml", "model.init=null", *overrides]) == 0
    return run_dir


def test_prop1_cli_end_to_end(tiny, tiny_run, tmp_path, capsys):
    out = tmp_path / "p1"
    assert main(["prop1", str(tiny_run), "--episodes", "2", "--out", str(out)]) == 0
    assert "Proposition 1" in capsys.readouterr().out
    data = json.loads((out / "prop1.json").read_text())
    assert data["model"].endswith("base_model") and data["episodes"] == 2 and data["temperature"] == 1.0
    tok = {k: np.array(v) for k, v in data["tokens"].items()}
    n_tokens = sum(s["n_tokens"] for s in data["steps"])
    assert data["token"]["n"] == n_tokens == tok["realised"].size > 0 and data["step"]["n"] == len(data["steps"])
    assert {s["traj_id"] for s in data["steps"]} <= {0, 1} and all(s["n_tokens"] <= 12 for s in data["steps"])
    vocab = tiny.model.config.vocab_size  # 0 <= 1 − Σπ² <= 1 − 1/V; 0 <= realised < 2
    assert (tok["expected"] >= 0).all() and (tok["expected"] <= 1 - 1 / vocab + 1e-6).all()
    assert (tok["realised"] >= -1e-6).all() and (tok["realised"] < 2).all()
    np.testing.assert_allclose(tok["expected"], 1 - np.exp(-tok["renyi2"]), atol=1e-6)  # Proposition 1's identity
    for i, step in enumerate(data["steps"]):
        mine = tok["step"] == i
        assert step["expected"] == pytest.approx(tok["expected"][mine].mean(), abs=1e-6)
        assert step["realised"] == pytest.approx(tok["realised"][mine].mean(), abs=1e-6)
        assert mine.sum() == step["n_tokens"]
    assert data["token"]["mean_expected"] == pytest.approx(tok["expected"].mean(), abs=1e-6)
    for level in ("token", "step"):
        for corr in data[level]["realised_vs_expected"].values():
            assert corr is None or -1 <= corr <= 1
    img = mpimg.imread(out / "prop1.png")
    assert img.shape[0] > 100 and img[..., :3].std() > 0


def test_prop1_without_model_or_bad_episodes(tmp_path, tiny_run, capsys):
    (tmp_path / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    assert main(["prop1", str(tmp_path)]) == 2
    assert "no saved model" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as e:
        main(["prop1", str(tiny_run), "--episodes", "0"])
    assert e.value.code == 2


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prop1", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for item in ("RUN_DIR", "--episodes", "--out", "--split", "--checkpoint", "--seed", "1 − exp(−H₂)"):
        assert item in text


def test_prop1_under_constrained_decoding_uses_the_restricted_policy(tiny, tmp_path):
    """With rollout.constrain_actions the behaviour policy is the softmax restricted to the admissible actions'
    tokens: forced tokens (one allowed id) have score norm 0 and H2 0, which the untrained model's full softmax
    (near uniform over the vocabulary) never gives."""
    tiny.save(tmp_path / "model")
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", f"model.spec={tmp_path / 'model'}", "iterations=0", "sft.enabled=false"]
    overrides += ["env.max_turns=2", "rollout.max_new_tokens=8", "log.plots=false", "log.progress=false"]
    assert main(["train", "--config", "configs/household-tiny.yaml", "model.init=null", *overrides]) == 0
    assert main(["prop1", str(run_dir), "--episodes", "2", "--out", str(tmp_path / "p1")]) == 0
    tok = {k: np.array(v) for k, v in json.loads((tmp_path / "p1" / "prop1.json").read_text())["tokens"].items()}
    forced = tok["expected"] < 1e-9
    assert forced.mean() > 0.5  # constrain_scope=response: most tokens of a templated response are forced
    assert np.abs(tok["realised"][forced]).max() < 1e-6 and np.abs(tok["renyi2"][forced]).max() < 1e-6
    assert tok["expected"].max() < 0.95  # a branch offers a few admissible tokens, not the near-uniform vocabulary
