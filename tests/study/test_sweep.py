"""`empg sweep`: grid validation, planning, and real sweeps of tiny runs (processes, resume, failures, report).

The real runs use a micro Qwen2 (1 layer, hidden 32) with the session's tiny tokenizer and the smallest settings of
``experiments/example.yaml`` (1 iteration, 2 tasks x group 2, 2 turns, 8 new tokens, 2 eval episodes). The tests of
the module share one sweep folder and run in file order: sweep -> rerun -> report -> failure + resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from empg.cli import main
from empg.study.sweep import DONE_MARKER, GridError, _axis_labels, load_grid, make_plan, threads_per_run

EXAMPLE = Path(__file__).resolve().parents[2] / "experiments" / "example.yaml"


@pytest.fixture(scope="module")
def micro_dir(tiny, tmp_path_factory, make_micro_policy):
    """A 1-layer, hidden-32 Qwen2 with the session's tiny tokenizer, saved as a model directory."""
    path = tmp_path_factory.mktemp("micro") / "model"
    make_micro_policy(tiny.tokenizer).save(path)
    return path


def write_grid(path: Path, micro_dir: Path | None = None, **changes) -> Path:
    """experiments/example.yaml with ``changes`` applied (and the micro model in ``common``)."""
    grid = yaml.safe_load(EXAMPLE.read_text())
    grid["config"] = str(EXAMPLE.parents[1] / grid["config"])
    if micro_dir is not None:
        grid["common"] = [*grid["common"], f"model.spec={micro_dir}"]
    for key, value in changes.items():
        if value is None:
            grid.pop(key, None)
        else:
            grid[key] = value
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep") / "out"


# ----------------------------------------------------------------------------- validation and planning (no process)
def test_dry_run_lists_every_run_and_writes_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml", axes={"algo.zeta": [0, 0.1]}, seeds=[0, 1])
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    names = [f"{m}/zeta={z}/seed{s}" for m in ("grpo", "grpo+empg") for z in ("0", "0.1") for s in (0, 1)]
    for name in ["sft", *names]:
        assert name in text
    assert "8 runs" in text and "empg.cli sft" in text and "empg.cli train --config" in text
    assert not out.exists()


def test_example_grid_dry_run(capsys, tmp_path):
    assert main(["sweep", str(EXAMPLE), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 runs" in text and "grpo/seed0" in text and "grpo+empg/seed0" in text


@pytest.mark.parametrize("grid", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_grid_plans_and_its_configs_validate(grid, tmp_path):
    """Each experiments/*.yaml loads, every run's config (preset + common + method + seed) validates, and every
    baseline names a method of the grid: a grid is checked before its hours of compute, not during them."""
    plan = make_plan(load_grid(grid), tmp_path / "out")
    assert plan.runs and all(r.state == "new" for r in plan.runs)
    names = {r.name.split("/")[0] for r in plan.runs}
    assert set(plan.baselines) <= {r.name.rsplit("/", 1)[0] for r in plan.runs}
    assert names


def test_plan_overrides_names_and_baselines(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml", axes={"algo.zeta": [0, 0.1], "algo.k": [1.0]}, seeds=[3]))
    plan = make_plan(grid, tmp_path / "out")
    out = (tmp_path / "out").resolve()
    run = {r.name: r for r in plan.runs}["grpo+empg/zeta=0.1/k=1.0/seed3"]
    assert run.run_dir == out / "grpo+empg" / "zeta=0.1" / "k=1.0" / "seed3"
    common = yaml.safe_load(EXAMPLE.read_text())["common"]
    shared = [f"model.spec={out / 'sft' / 'base_model'}", "sft.enabled=false"]
    method = ["algo.base=grpo", "algo.empg=true"]
    assert run.overrides == [*common, *shared, *method, "algo.zeta=0.1", "algo.k=1.0", "seed=3"]
    assert run.state == "new" and run.iterations == 1
    assert plan.sft.overrides[-3:] == ["sft.steps=2", "sft.episodes=2", "sft.eval_episodes=0"]
    assert plan.baselines == {
        "grpo+empg/zeta=0/k=1.0": "grpo/zeta=0/k=1.0",
        "grpo+empg/zeta=0.1/k=1.0": "grpo/zeta=0.1/k=1.0",
    }
    assert threads_per_run(2) == max(1, (os.cpu_count() or 1) // 2)
    assert threads_per_run(10_000) == 1


def test_axis_values_are_written_as_overrides(tmp_path):
    """Booleans, null and floats become valid dotlist values; same-named axes keep their full key."""
    axes = {"algo.use_bonus": [True, False], "algo.dual_clip": [None, 3.0], "algo.k": [0.5], "sft.k": [1]}
    with pytest.raises(GridError, match=r"grid error in `axes\.sft\.k`"):  # not a config field
        make_plan(load_grid(write_grid(tmp_path / "g.yaml", axes=axes)), tmp_path / "out")
    del axes["sft.k"]
    plan = make_plan(load_grid(write_grid(tmp_path / "g.yaml", axes=axes)), tmp_path / "out")
    names = [r.variant for r in plan.runs if r.method == "grpo"]
    assert names == [
        "grpo/use_bonus=true/dual_clip=null/k=0.5",
        "grpo/use_bonus=true/dual_clip=3.0/k=0.5",
        "grpo/use_bonus=false/dual_clip=null/k=0.5",
        "grpo/use_bonus=false/dual_clip=3.0/k=0.5",
    ]
    assert plan.runs[1].overrides[-4:] == ["algo.use_bonus=true", "algo.dual_clip=3.0", "algo.k=0.5", "seed=0"]
    axes = {"algo.k": [1.0], "optim.k": [2]}  # hypothetical twin names: the labels fall back to the full keys
    assert _axis_labels(axes) == {"algo.k": "algo.k", "optim.k": "optim.k"}
    assert _axis_labels({"algo.k": [1.0], "algo.zeta": [0]}) == {"algo.k": "k", "algo.zeta": "zeta"}


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"method": {"a": []}}, "`method`", "did you mean `methods`"),
        ({"methods": {"grpo": ["algo.zta=0.1"]}}, "`methods.grpo`", "algo.zeta"),
        ({"methods": {"grpo": ["algo.base=ppo"]}}, "`methods.grpo`", "grpo, dapo"),
        ({"common": ["seed=1"]}, "`common`", "seeds"),
        ({"common": ["rollout.n_tasks=many"]}, "`common`", "type"),
        ({"sft": {"overrides": ["sft.stepz=3"]}}, "`sft.overrides`", "sft.steps"),
        ({"axes": {"algo.final_norm": ["mean", "median"]}}, "`axes.algo.final_norm`", "traj_mean"),
        ({"baseline": {"grpo+empg": "grpo+emgp"}}, "`baseline.grpo+empg`", "did you mean 'grpo+empg'"),
        ({"baseline": {"grpo": "grpo"}}, "`baseline.grpo`", "another method"),
        ({"seeds": [0, 0]}, "`seeds`", "seeds: [0, 1, 2]"),
        ({"config": "configs/nope.yaml"}, "`config`", "preset path"),
        ({"methods": {"a/b": []}}, "`methods.a/b`", "rename"),
        ({"methods": None}, "`methods`", "add `methods:"),
    ],
)
def test_bad_grid_is_a_clear_error_before_any_run(tmp_path, capsys, changes, field, hint):
    grid = write_grid(tmp_path / "g.yaml", **changes)
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"grid error in {field}" in err and "Fix:" in err and hint in err
    assert not out.exists()


def test_bad_parallel_and_missing_grid(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(EXAMPLE), "--parallel", "0", "--dry-run"])
    assert e.value.code == 2
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--parallel: must be >= 1, got 0" in err and "grid error in `GRID`" in err and "does not exist" in err


# ----------------------------------------------------------------------------- real sweeps (processes)
@pytest.mark.slow
def test_real_sweep_runs_shared_sft_then_two_runs_in_parallel(tmp_path, micro_dir, sweep_out, capsys):
    grid = write_grid(tmp_path / "g.yaml", micro_dir)
    assert main(["sweep", str(grid), "--out", str(sweep_out), "--parallel", "2"]) == 0
    assert "2/2 runs done" in capsys.readouterr().out
    data = json.loads((sweep_out / "sweep.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["grpo/seed0", "grpo+empg/seed0"]
    assert [r["status"] for r in data["runs"]] == ["done", "done"] and data["sft"]["status"] == "done"
    assert data["parallel"] == 2 and data["threads_per_run"] == threads_per_run(2)
    assert data["baselines"] == {"grpo+empg": "grpo"}
    sft_weights = load_file(str(sweep_out / "sft" / "base_model" / "model.safetensors"))
    for rec in data["runs"]:
        run_dir = sweep_out / rec["run_dir"]
        assert json.loads((run_dir / DONE_MARKER).read_text())["iterations"] == 1
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows] == [1] and "eval_out/success" in rows[0]
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["model"]["spec"] == str(sweep_out.resolve() / "sft" / "base_model")
        assert cfg["sft"]["enabled"] is False and cfg["seed"] == 0
        weights = load_file(str(run_dir / "base_model" / "model.safetensors"))  # RL started from the shared SFT
        assert all(torch.equal(weights[k], sft_weights[k]) for k in sft_weights)
        assert (run_dir / "log.txt").read_text().count("=== empg sweep") == 1
    # parallel: the whole sweep took clearly less than SFT + run + run one after the other
    walls = [r["wall_s"] for r in data["runs"]]
    assert data["wall_s"] < data["sft"]["wall_s"] + sum(walls) - 0.5 * min(walls)


def test_rerun_skips_finished_runs(tmp_path, micro_dir, sweep_out, capsys):
    grid = write_grid(tmp_path / "g.yaml", micro_dir)
    plan = make_plan(load_grid(grid), sweep_out)
    assert plan.sft.state == "done" and [r.state for r in plan.runs] == ["done", "done"]
    assert main(["sweep", str(grid), "--out", str(sweep_out), "--parallel", "2"]) == 0
    assert "2/2 runs done" in capsys.readouterr().out
    data = json.loads((sweep_out / "sweep.json").read_text())
    assert [r["status"] for r in data["runs"]] == ["done", "done"]
    assert all(r["returncode"] is None and r["wall_s"] > 0 for r in data["runs"])  # wall time kept from the marker
    assert data["sft"]["status"] == "done" and data["sft"]["wall_s"] > 0  # and from the previous sweep.json
    for run in ("grpo", "grpo+empg"):
        assert (sweep_out / run / "seed0" / "log.txt").read_text().count("=== empg sweep") == 1  # not started again


def test_changed_grid_on_existing_runs_is_an_error(tmp_path, micro_dir, sweep_out, capsys):
    grid = write_grid(tmp_path / "g.yaml", micro_dir, methods={"grpo": ["algo.base=grpo", "algo.zeta=0.3"]})
    assert main(["sweep", str(grid), "--out", str(sweep_out), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "grid error in `grpo/seed0`" in err and "algo.zeta: 0.1 -> 0.3" in err and "another --out" in err


def test_report_on_the_real_sweep(sweep_out, tmp_path):
    out = tmp_path / "rep" / "report.md"
    assert main(["report", str(sweep_out), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| `grpo+empg` | `grpo` | 0 |" in text and "| `grpo` | – | 0 |" in text
    assert "![learning_curves](learning_curves.png)" in text and (out.parent / "kl.png").is_file()
    rows = [json.loads(line) for line in (out.parent / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [("grpo", 0, "done"), ("grpo+empg", 0, "done")]
    for r in rows:
        assert 0.0 <= r["eval_in/success"] <= 1.0 and r["eval_in/iteration"] == 1 and r["iterations"] == 1
        assert 4 <= r["env_steps"] <= 8  # 2 tasks x 2 rollouts x at most 2 turns
        assert r["wall_s"] > 0 and r["train_time_s"] > 0


@pytest.mark.slow
def test_failed_run_is_reported_and_interrupted_run_resumes(tmp_path, micro_dir, sweep_out, capsys):
    """iterations 1 -> 2: grpo/seed0 (checkpoint at 1) is continued with --resume while a broken method fails."""
    before = (sweep_out / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()
    methods = {"bad": ["algo.base=grpo", "env.kwargs.bogus=1"], "grpo": ["algo.base=grpo", "algo.empg=false"]}
    common = [c if c != "iterations=1" else "iterations=2" for c in yaml.safe_load(EXAMPLE.read_text())["common"]]
    common.append(f"model.spec={micro_dir}")
    grid = write_grid(tmp_path / "g.yaml", methods=methods, common=common, baseline=None)
    assert main(["sweep", str(grid), "--out", str(sweep_out), "--parallel", "2"]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "FAILED bad/seed0" in text and str(sweep_out / "bad" / "seed0" / "log.txt") in text
    assert "1/2 runs done" in text
    data = {r["name"]: r for r in json.loads((sweep_out / "sweep.json").read_text())["runs"]}
    assert data["bad/seed0"]["status"] == "failed" and data["bad/seed0"]["returncode"] not in (0, None)
    assert "bogus" in (sweep_out / "bad" / "seed0" / "log.txt").read_text()
    assert data["grpo/seed0"]["status"] == "done" and data["grpo/seed0"]["start_iteration"] == 1
    run = sweep_out / "grpo" / "seed0"
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[0] == before[0] and [json.loads(x)["iteration"] for x in after] == [1, 2]  # continued, not redone
    log = run / "log.txt"
    assert "(resume): " in log.read_text() and "train --resume" in log.read_text()
    assert json.loads((run / DONE_MARKER).read_text())["iterations"] == 2


def test_help_documents_every_option_and_the_schema(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("GRID.yaml", "--out", "--parallel", "--dry-run", "cpu_count//N"):
        assert option in text
    for key in ("name:", "config:", "common:", "sft:", "methods:", "axes:", "seeds:", "baseline:", "sweep.json"):
        assert key in text
