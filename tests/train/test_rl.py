"""End-to-end RL runs through the CLI and the loop's guarantees (parameters move, resume is exact, NaN guard).

Every run uses a tiny Qwen2 model (``tiny-1m``) built once per session, 2 tasks x group 2, 3 turns.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from empg.cli import main
from empg.eval.runlog import read_metrics
from empg.train import advantage, rl
from empg.train.config import load_config
from empg.train.metrics import NonFiniteError

ALGOS = {
    "grpo": ["algo.base=grpo", "algo.empg=false"],
    "dapo": ["algo.base=dapo", "algo.empg=false"],
    "grpo+empg": ["algo.base=grpo", "algo.empg=true"],
    "dapo+empg": ["algo.base=dapo", "algo.empg=true"],
    "grpo+gigpo+empg": ["algo.base=grpo", "algo.empg=true", "algo.gigpo_weight=1"],
    # METHOD §6 / AEM variants together: per-group entropy scaling, bonus only where A >= 0, per-group centring
    "grpo+empg-group": [
        "algo.base=grpo",
        "algo.empg=true",
        "algo.entropy_norm=group",
        "algo.bonus_nonneg=true",
        "algo.final_norm=group_mean",
    ],
}
VOLATILE = ("time/", "perf/")  # wall-clock metrics: the only keys allowed to differ between identical runs


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.parametrize("algo", list(ALGOS))
def test_cli_runs_two_iterations(algo, tmp_path, tiny_model_dir, fast):
    run_dir = tmp_path / "run"
    assert main(["train", *fast(run_dir, tiny_model_dir, *ALGOS[algo])]) == 0
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    for key in (
        "train/success",
        "train/return",
        "train/ep_len",
        "train/invalid_rate",
        "time/rollout",
        "time/scoring",
        "time/update",
        "dapo/rounds",
        "perf/tokens_per_s",
        "eval_out/success",
    ):
        assert key in rows[-1], key
    assert "eval_out/success" not in rows[0]  # eval.every=2
    trained = [r for r in rows if "update/skipped" not in r]
    for r in trained:
        assert {"entropy/token_mean", "adv/mean", "actor/grad_norm", "loss/pg"} <= set(r)
        if "empg" in algo:
            assert r["empg/g_mean"] == pytest.approx(1.0, abs=1e-5)
            assert r["adv/mean"] == pytest.approx(0.0, abs=1e-5)  # final_norm="mean"
        else:
            assert "empg/g_mean" not in r
        assert ("gigpo/shared_state_frac" in r) == ("gigpo" in algo)
    if algo.startswith("grpo"):
        assert len(trained) == 2  # GRPO never skips an update
    ck = run_dir / "checkpoints" / "iter_0002"
    assert {"model.safetensors", "optimizer.safetensors", "state.json"} <= {p.name for p in ck.iterdir()}
    assert json.loads((ck / "state.json").read_text())["iteration"] == 2
    assert (run_dir / "checkpoints" / "latest").read_text() == "iter_0002"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "eval" / "eval_out_iter_0002.json").is_file()
    assert (run_dir / "step_entropy.jsonl").is_file() == bool(trained)


def test_every_trainable_parameter_changes(tmp_path, tiny_model_dir, fast):
    cfg = load_config(
        None,
        fast(tmp_path / "run", tiny_model_dir, "iterations=1", "algo.empg=true", "algo.kl_coef=0.0", "eval.every=0"),
    )
    rl.train(cfg)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "checkpoints" / "iter_0001" / "model.safetensors"))
    assert set(before) == set(after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_resume_after_a_crash_is_bit_identical(tmp_path, tiny_model_dir, monkeypatch, fast):
    extra = ("iterations=3", "algo.empg=true", "eval.every=1", "algo.kl_coef=0.01")
    full = load_config(None, fast(tmp_path / "full", tiny_model_dir, *extra))
    rl.train(full)

    crashed = load_config(None, fast(tmp_path / "crash", tiny_model_dir, *extra))
    real_update = rl.update_phase
    calls = {"n": 0}

    def dying_update(*args, **kwargs):  # the process "dies" in the middle of iteration 2's update
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(rl, "update_phase", dying_update)
    with pytest.raises(KeyboardInterrupt):
        rl.train(crashed)
    monkeypatch.setattr(rl, "update_phase", real_update)
    assert [r["iteration"] for r in read_metrics(tmp_path / "crash")] == [1]
    assert main(["train", "--resume", str(tmp_path / "crash")]) == 0

    assert _stable(read_metrics(tmp_path / "crash")) == _stable(read_metrics(tmp_path / "full"))
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "iter_0003" / name))
        b = load_file(str(tmp_path / "crash" / "checkpoints" / "iter_0003" / name))
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_nan_advantage_stops_before_any_optimizer_step(tmp_path, tiny_model_dir, monkeypatch, fast):
    import empg.algos

    real = empg.algos.empg_transform_with_stats

    def poisoned(*args, **kwargs):
        final, st = real(*args, **kwargs)
        final = final.clone()
        final[0] = float("nan")
        return final, st

    monkeypatch.setattr(advantage, "empg_transform_with_stats", poisoned)  # where the advantage phase calls it
    cfg = load_config(None, fast(tmp_path / "run", tiny_model_dir, "algo.empg=true"))
    with pytest.raises(NonFiniteError, match=r"iteration 0: .* in advantages"):
        rl.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert read_metrics(tmp_path / "run") == []


def test_nan_logits_are_caught_in_scoring(tmp_path, tiny_model_dir, monkeypatch, fast):
    import empg.train.rl as rl_mod

    real = rl_mod.response_logprobs

    def nan_logits(model, batch, **kwargs):
        logp, ent = real(model, batch, **kwargs)
        return torch.where(batch.response_mask != 0, torch.full_like(logp, float("nan")), logp), ent

    monkeypatch.setattr(rl_mod, "response_logprobs", nan_logits)
    cfg = load_config(None, fast(tmp_path / "run", tiny_model_dir, "rollout.rescore=true", "algo.kl_coef=0"))
    with pytest.raises(NonFiniteError, match=r"iteration 0: .* behaviour log-probs"):
        rl.train(cfg)


def test_nan_logits_are_caught_while_generating(tmp_path, tiny_model_dir, monkeypatch, fast):
    """Without a scoring pass (the default: behaviour log-probs recorded while sampling) NaN logits stop the run at
    the rollout, naming the iteration and the logits, before any update or checkpoint."""
    import empg.policy.hf as hf

    real = hf._pick
    monkeypatch.setattr(hf, "_pick", lambda logits, *a, **k: real(logits * float("nan"), *a, **k))
    cfg = load_config(None, fast(tmp_path / "run", tiny_model_dir, "eval.at_start=false"))
    with pytest.raises(NonFiniteError, match=r"iteration 0: .* logits while generating"):
        rl.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_reference_model_only_with_kl(tmp_path, tiny_model_dir, fast):
    off = rl.setup_run(load_config(None, fast(tmp_path / "a", tiny_model_dir, "algo.kl_coef=0")))
    on = rl.setup_run(load_config(None, fast(tmp_path / "b", tiny_model_dir, "algo.kl_coef=0.01")))
    assert off.ref_model is None
    assert on.ref_model is not None and not any(p.requires_grad for p in on.ref_model.parameters())


def test_config_error_is_reported_before_work(tmp_path, capsys, tiny_model_dir, fast):
    code = main(["train", *fast(tmp_path / "run", tiny_model_dir, "algo.zeta=-1")])
    err = capsys.readouterr().err
    assert code == 2 and "algo.zeta" in err and "Fix" in err
    assert not (tmp_path / "run").exists()
    assert main(["train", *fast(tmp_path / "run", tiny_model_dir, "algo.zetta=0.1")]) == 2
    assert "algo.zeta" in capsys.readouterr().err


def test_existing_run_dir_needs_resume(tmp_path, tiny_model_dir, capsys, fast):
    args = ["train", *fast(tmp_path / "run", tiny_model_dir, "iterations=1", "eval.every=0")]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # resuming a finished run with more iterations continues it
    assert main(["train", "--resume", str(tmp_path / "run"), "iterations=2"]) == 0
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_eval_cli_prints_confidence_intervals(tmp_path, tiny_model_dir, capsys, fast):
    run_dir = tmp_path / "run"
    run = fast(run_dir, tiny_model_dir, "iterations=1", "eval.every=1", "eval.episodes=3", "log.plots=true", "seed=2")
    assert main(["train", *run]) == 0
    assert (run_dir / "plots" / "learning_curves.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "eval_out", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "all" in out
    report = json.loads((run_dir / "eval" / "cli" / "eval_out_iter_0001_n2_s2000006.json").read_text())
    assert report["episodes"] == 2 and report["table"]["all"]["n"] == 2
    # the run's own sampling seed (seed x 1,000,003) and episode count reproduce its final evaluation seed for seed,
    # and the training loop's record is left as it was
    trained = (run_dir / "eval" / "eval_out_iter_0001.json").read_text()
    assert main(["eval", str(run_dir), "--split", "eval_out"]) == 0
    again = json.loads((run_dir / "eval" / "cli" / "eval_out_iter_0001_n3_s2000006.json").read_text())
    assert again["outcomes"] == json.loads(trained)["outcomes"] and len(again["outcomes"]) == 3
    assert (run_dir / "eval" / "eval_out_iter_0001.json").read_text() == trained
    assert main(["eval", str(run_dir), "--split", "eval_in", "--sampling-seed", "7", "--greedy"]) == 0
    assert (run_dir / "eval" / "cli" / "eval_in_iter_0001_n3_s7_greedy.json").is_file()
    # --temperature: the run's own value changes nothing (same file, same outcomes); another one gets its own file
    assert main(["eval", str(run_dir), "--split", "eval_out", "--temperature", "0.4"]) == 0
    assert json.loads((run_dir / "eval" / "cli" / "eval_out_iter_0001_n3_s2000006.json").read_text()) == again
    assert main(["eval", str(run_dir), "--split", "eval_out", "--temperature", "1.5"]) == 0
    assert (run_dir / "eval" / "cli" / "eval_out_iter_0001_n3_s2000006_t1.5.json").is_file()
    with pytest.raises(SystemExit):  # greedy and a temperature are two answers to one question
        main(["eval", str(run_dir), "--temperature", "1.0", "--greedy"])
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--temperature", "0"])


def test_dapo_keeps_informative_groups_and_updates(tmp_path, tiny_model_dir, fast):
    """On a coin-flip env DAPO finds groups with unequal returns, trains on exactly n_tasks of them, moves params."""
    cfg = load_config(
        None,
        fast(
            tmp_path / "run",
            tiny_model_dir,
            "env.id=parity_env:ParityEnv",
            "env.max_turns=2",
            "rollout.constrain_actions=true",
            "algo.base=dapo",
            "algo.empg=true",
            "algo.max_resample_rounds=5",
            "iterations=1",
            "rollout.group_size=4",
            "eval.every=0",
        ),
    )
    rows = rl.train(cfg)
    row = rows[-1]
    assert "update/skipped" not in row
    assert row["dapo/kept_groups"] == 2 and row["dapo/rounds"] >= 1
    assert row["train/n_steps"] == 2 * 4 * 2  # 2 groups x 4 trajectories x 2 steps
    assert 0 < row["train/success"] < 1
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "checkpoints" / "iter_0001" / "model.safetensors"))
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_sft_then_rl_reuses_the_sft_evaluation_as_iteration_zero(tmp_path, tiny_model_dir, fast, monkeypatch):
    calls = []
    real = rl.evaluate_phase
    monkeypatch.setattr(rl, "evaluate_phase", lambda run, it: calls.append(it) or real(run, it))
    cfg = load_config(
        None,
        fast(
            tmp_path / "run",
            tiny_model_dir,
            "iterations=1",
            "sft.enabled=true",
            "sft.episodes=1",
            "sft.steps=2",
            "sft.batch_size=2",
            "sft.eval_episodes=2",
            "eval.at_start=true",
            "eval.every=1",
        ),
    )
    rows = rl.train(cfg)
    sft = json.loads((tmp_path / "run" / "sft.json").read_text())
    assert rows[0]["iteration"] == 0 and rows[0]["eval_out/success"] == sft["eval_out/success"]
    assert calls == [1]  # iteration 0 came from the SFT evaluation, not a second pass
    assert (tmp_path / "run" / "base_model" / "model.safetensors").is_file()


def test_train_split_evaluation_plays_the_task_pool_under_its_own_keys(tmp_path, tiny_model_dir, fast):
    """eval.splits=[train] evaluates the RL task pool (cycled) as eval_train/*, next to the rollouts' train/*."""
    from empg.eval.plots import plot_runs

    run_dir = tmp_path / "run"
    extra = ("env.train_pool=2", "eval.episodes=3", "eval.splits=[train,eval_out]", "iterations=2")
    assert main(["train", *fast(run_dir, tiny_model_dir, *extra)]) == 0
    last = read_metrics(run_dir)[-1]
    assert {"train/success", "eval_train/success", "eval_train/ep_len", "eval_out/success"} <= set(last)
    report = json.loads((run_dir / "eval" / "train_iter_0002.json").read_text())
    assert report["episodes"] == 3 and report["split"] == "train"
    assert any(p.name == "learning_curves.png" for p in plot_runs([run_dir]))
