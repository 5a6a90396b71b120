"""Constrained decoding in the trainer (rollout.constrain_actions): valid actions only, exact behaviour log-probs,
fallback and counting where the env lists no admissible action, and the config check before any work."""

from __future__ import annotations

import pytest
import torch

from empg.cli import main
from empg.eval.runlog import read_metrics
from empg.train import rl
from empg.train.config import ConfigError, load_config


@pytest.mark.parametrize(
    "extra",
    [(), ("rollout.jump_forward=true",), ("rollout.jump_forward=true", "rollout.constrain_scope=response")],
    ids=["one-token-steps", "jump-forward", "jump-forward-whole-response"],
)
def test_constrained_rollouts_are_valid_and_recorded_logprobs_are_the_trainers(tmp_path, tiny_model_dir, fast, extra):
    """An untrained model under the trie never sends an invalid action; what generation recorded equals the
    trainer's recomputation under the same masks (to 1e-5), so using the recorded values (no scoring pass) is exact.
    Also when jump-forward decoding feeds the forced tokens several at a time (right-padded in the cache)."""
    cfg = load_config(
        None, fast(tmp_path / "run", tiny_model_dir, "rollout.constrain_actions=true", "env.max_turns=4", *extra)
    )
    run = rl.setup_run(cfg)
    steps, trajs, metrics = rl.rollout_phase(run, 0)
    assert steps and metrics["train/invalid_rate"] == 0.0 and metrics["train/unconstrained_steps"] == 0.0
    assert all(s.valid and s.constrained for s in steps)
    batch = rl.pack_steps(run.policy, steps)
    assert batch.allowed is not None
    recorded_lp, recorded_ent = batch.old_logprobs.clone(), batch.token_entropy.clone()
    rescore = load_config(
        None, fast(tmp_path / "run2", tiny_model_dir, "rollout.constrain_actions=true", "rollout.rescore=true", *extra)
    )
    run.cfg = rescore
    rl.score_phase(run, batch, 0)  # recomputes into batch.old_logprobs / token_entropy
    m = batch.response_mask != 0
    torch.testing.assert_close(batch.old_logprobs[m], recorded_lp[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.token_entropy[m], recorded_ent[m], atol=1e-5, rtol=0)
    forced = (batch.allowed >= 0).sum(-1) == 1  # (B, L): one allowed token
    assert bool(forced.any()) and float(recorded_lp[forced].abs().max()) < 1e-6


def test_empty_admissible_list_falls_back_to_free_text_and_is_counted(tmp_path, tiny_model_dir, fast):
    cfg = load_config(
        None,
        fast(
            tmp_path / "run",
            tiny_model_dir,
            "env.id=sparse_env:SparseEnv",
            "rollout.constrain_actions=true",
            "iterations=1",
            "eval.every=0",
        ),  # fmt: skip
    )
    run = rl.setup_run(cfg)
    steps, _, metrics = rl.rollout_phase(run, 0)
    first = [s for s in steps if s.step_idx == 0]
    second = [s for s in steps if s.step_idx == 1]
    assert all(s.constrained and s.action in ("left", "right") for s in first)
    assert all(s.constrained is False and all(a == [] for a in s.allowed_ids) for s in second)
    assert metrics["train/unconstrained_steps"] == float(len(second)) > 0
    again = fast(tmp_path / "run3", tiny_model_dir, "env.id=sparse_env:SparseEnv", "rollout.constrain_actions=true")
    rows = rl.train(load_config(None, [*again, "iterations=1", "eval.every=0"]))
    assert rows[-1]["train/unconstrained_steps"] > 0


def test_constrain_actions_needs_an_env_that_lists_them(tmp_path, tiny_model_dir, fast, capsys):
    with pytest.raises(ConfigError) as e:
        load_config(None, fast(tmp_path / "run", tiny_model_dir, "env.id=search-v0", "rollout.constrain_actions=true"))
    assert e.value.field == "rollout.constrain_actions" and "search-v0" in str(e.value)
    code = main(
        ["train", *fast(tmp_path / "run", tiny_model_dir, "env.id=search-v0", "rollout.constrain_actions=true")]
    )
    assert code == 2 and "admissible" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("extra", [(), ("rollout.jump_forward=true",)], ids=["one-token-steps", "jump-forward"])
def test_constrained_run_trains_and_evaluates_without_invalid_actions(tmp_path, tiny_model_dir, fast, extra):
    run_dir = tmp_path / "run"
    args = fast(run_dir, tiny_model_dir, "rollout.constrain_actions=true", "algo.empg=true", *extra)
    assert main(["train", *args]) == 0
    rows = read_metrics(run_dir)
    assert rows[-1]["eval_out/invalid_rate"] == 0.0
    assert all(r["train/invalid_rate"] == 0.0 for r in rows)
    assert "time/scoring" in rows[-1]


def test_take_first_rollouts_decode_the_take_first_responses(tmp_path, tiny_model_dir, fast):
    """With rollout.thoughts=take_first the whole-response trie holds the take_first templates: every step's response
    is exactly the take_first expert response of the action it sent."""
    from empg.rollout.prompts import expert_response

    extra = ("rollout.constrain_actions=true", "rollout.constrain_scope=response", "rollout.thoughts=take_first")
    cfg = load_config(
        None, fast(tmp_path / "run", tiny_model_dir, "env.max_turns=6", "rollout.temperature=3.0", *extra)
    )
    run = rl.setup_run(cfg)
    steps, _, _ = rl.rollout_phase(run, 0)
    assert steps and all(s.constrained for s in steps)
    for s in steps:
        assert run.policy.tokenizer.decode(s.response_ids) == expert_response("household", s.action, "take_first")
    with pytest.raises(ConfigError) as e:
        load_config(None, fast(tmp_path / "bad", tiny_model_dir, "rollout.thoughts=object"))
    assert e.value.field == "rollout.thoughts" and "take_first" in str(e.value)
