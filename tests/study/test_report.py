"""`empg report`: statistics pinned by hand computations on synthetic run directories.

Hand values used below: the two-sided 95 % Student-t quantile with 2 degrees of freedom is 4.302652729749462, so
values (0.2, 0.4, 0.6) (s = 0.2) give 0.4 ± 0.2/√3·4.3027 = 0.4 ± 0.49683, and (0.3, 0.6, 0.9) (s = 0.3) give
0.6 ± 0.74524. A percentile bootstrap of the mean of the per-seed differences (0.1, 0.2, 0.3) has the interval
[0.1, 0.3]: each extreme mean needs all three draws equal to it, probability 1/27 = 3.7 % > 2.5 %.
"""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import pytest
import yaml

from empg.cli import main
from empg.study.report import bootstrap_diff, count_env_steps, final_eval, make_report, t_interval

T2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)
CONFIG = {
    "env": {"max_turns": 5},
    "model": {"spec": "tiny-1m"},
    "rollout": {"n_tasks": 2, "group_size": 3},
    "eval": {"splits": ["eval_in", "eval_out"], "episodes": 10, "temperature": 0.4},
}


def _rows(final_in: float, final_out: float, empg: bool) -> list[dict]:
    """Iterations 0-5 (the sweep planned 4): eval_in at 0 and 4, eval_out at 0 and 2, a stray row at 5."""
    rows = [{"iteration": 0, "eval_in/success": 0.0, "eval_out/success": 0.0}]
    for it in range(1, 6):
        row = {"iteration": it, "train/ep_len": 4.0, "dapo/rounds": 1.0, "train/failed_episodes": 0.0}
        row |= {"time/total": 1.5, "actor/approx_kl": 0.01 * it, "loss/kl": 0.02 * it}
        if it == 3:
            row |= {"dapo/rounds": 2.0, "train/failed_episodes": 1.0}  # 4 * (2*2*3 - 1) = 44 env steps
        if empg:
            row |= {"empg/g_mean": 1.0, "empg/g_min": 0.5, "empg/g_max": 1.6, "empg/f_mean": 0.6}
            row |= {"empg/f_min": 0.4, "empg/f_max": 0.9}
        if it == 2:
            row |= {"eval_out/success": final_out, "eval_out/success/heat": final_out}
        if it == 4:
            row |= {"eval_in/success": final_in, "eval_in/success/heat": final_in}
            row |= {"eval_in/success/cool": 1.0 - final_in, "eval_in/ep_len": 3.5}
        if it == 5:
            row |= {"eval_in/success": 1.0}  # beyond the planned iterations: ignored with sweep.json
        rows.append(row)
    return rows


RUNS = {  # variant -> {seed: (final eval_in, final eval_out)}
    "grpo": {0: (0.2, 0.5), 1: (0.4, 0.5), 2: (0.6, 0.5)},
    "grpo+empg": {0: (0.3, 0.5), 1: (0.6, 0.5), 2: (0.9, 0.5)},
    "dapo": {0: (0.5, 0.5), 1: (0.7, 0.5)},
    "one": {0: (0.25, 0.5)},
}


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder as `empg sweep` leaves it, written by hand; plus one failed run without a folder."""
    records = []
    for variant, seeds in RUNS.items():
        for seed, (final_in, final_out) in seeds.items():
            run_dir = tmp_path / variant / f"seed{seed}"
            run_dir.mkdir(parents=True)
            rows = _rows(final_in, final_out, empg="empg" in variant)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
            ent = [{"iteration": it, "success": [0.1, 0.2], "failure": [0.5]} for it in range(1, 5)]
            (run_dir / "step_entropy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ent))
            rec = {"variant": variant, "method": variant, "axes": {}, "seed": seed, "status": "done", "iterations": 4}
            records.append({**rec, "run_dir": f"{variant}/seed{seed}", "wall_s": 10.0 + 2 * seed})
    records.append({**records[3], "seed": 3, "run_dir": "grpo+empg/seed3", "status": "failed", "wall_s": 1.0})
    baselines = {"grpo+empg": "grpo", "dapo": "grpo", "one": "grpo"}
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "synthetic", "baselines": baselines, "runs": records}))
    return tmp_path


# ----------------------------------------------------------------------------- statistics
def test_t_interval_golden():
    mean, half = t_interval([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(0.2 / math.sqrt(3) * T2, rel=1e-9)
    assert half == pytest.approx(0.496828, abs=1e-6)
    assert t_interval([0.7]) == (0.7, None)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_bootstrap_paired_golden_intervals():
    d = bootstrap_diff({0: 1.0, 1: 0.0}, {0: 0.0, 1: 0.0})  # differences (1, 0): resampled means 0, 0.5, 1
    assert (d.diff, d.low, d.high, d.paired, d.n) == (0.5, 0.0, 1.0, True, 2)
    d = bootstrap_diff({0: 0.3, 1: 0.6, 2: 0.9}, {0: 0.2, 1: 0.4, 2: 0.6})
    assert d.paired and d.diff == pytest.approx(0.2)
    assert d.low == pytest.approx(0.1) and d.high == pytest.approx(0.3)
    d = bootstrap_diff({0: 0.5, 1: 0.7}, {0: 0.4, 1: 0.6})  # constant difference: a zero-width interval
    assert (d.low, d.high) == pytest.approx((0.1, 0.1))


def test_bootstrap_unpaired_and_single_seed():
    a, b = {0: 0.5, 1: 0.7}, {0: 0.2, 1: 0.4, 2: 0.6}
    d = bootstrap_diff(a, b)
    assert not d.paired and d.diff == pytest.approx(0.2)
    assert -0.1 - 1e-9 <= d.low < d.diff < d.high <= 0.5 + 1e-9  # within min(a)-max(b) .. max(a)-min(b)
    assert bootstrap_diff(a, b) == d  # fixed bootstrap seed
    d = bootstrap_diff({0: 0.25}, b)
    assert d.diff == pytest.approx(-0.15) and d.low is None and d.high is None


def test_final_eval_and_env_steps_golden():
    rows = _rows(0.3, 0.7, empg=False)[:5]  # iterations 0-4
    final = final_eval(rows, ["eval_in", "eval_out"])
    assert final["eval_in/success"] == 0.3 and final["eval_in/iteration"] == 4 and final["eval_in/ep_len"] == 3.5
    assert final["eval_out/success"] == 0.7 and final["eval_out/iteration"] == 2
    assert final["eval_in/success/cool"] == pytest.approx(0.7)
    assert count_env_steps(rows, CONFIG) == 24 + 24 + 44 + 24
    assert count_env_steps(rows, {}) is None


# ----------------------------------------------------------------------------- the report
def test_report_table_matches_hand_computation(sweep):
    assert main(["report", str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    half_a, half_b = f"{100 * 0.2 / math.sqrt(3) * T2:.1f}", f"{100 * 0.3 / math.sqrt(3) * T2:.1f}"
    assert (half_a, half_b) == ("49.7", "74.5")
    assert "| `grpo` | – | 0,1,2 | 40.0 ± 49.7 | – | 50.0 ± 0.0 | – | 4 | 116 | 6.0 | 12.0 |" in text
    assert (
        "| `grpo+empg` | `grpo` | 0,1,2 | 60.0 ± 74.5 | +20.0 [+10.0, +30.0] paired | 50.0 ± 0.0 | "
        "+0.0 [+0.0, +0.0] paired | 4 | 116 | 6.0 | 12.0 |"
    ) in text
    assert "| `one` | `grpo` | 0 | 25.0 | -15.0 | 50.0 | +0.0 | 4 | 116 | 6.0 | 10.0 |" in text
    dapo = next(line for line in text.splitlines() if line.startswith("| `dapo`"))
    assert "60.0 ± 127.1" in dapo and "+20.0 [" in dapo and "paired" not in dapo  # t(0.975, 1) = 12.706
    assert "| method | cool | heat |" in text and "| `grpo` | 60.0 ± 49.7 | 40.0 ± 49.7 |" in text
    assert "## eval_out: success per task type (%)" in text and "| `grpo` | 50.0 ± 0.0 |" in text
    assert "4 RL iterations of 2 tasks × 3 rollouts (≤ 5 turns each), 116 training env steps" in text
    assert "- `grpo+empg/seed3`: failed" in text


def test_results_jsonl_one_row_per_run(sweep):
    make_report(sweep)
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    first = rows[0]
    assert (first["variant"], first["seed"], first["status"], first["iterations"]) == ("grpo", 0, "done", 4)
    assert (first["eval_in/success"], first["eval_in/iteration"], first["eval_out/iteration"]) == (0.2, 4, 2)
    assert (first["env_steps"], first["train_time_s"], first["wall_s"]) == (116, 6.0, 10.0)
    assert rows[-1]["status"] == "failed" and rows[-1]["iterations"] is None and "eval_in/success" not in rows[-1]


def test_plots_are_written_and_linked(tmp_path, sweep):
    out = tmp_path / "elsewhere" / "r.md"
    paths = make_report(sweep, out)
    names = sorted(p.name for p in paths if p.suffix == ".png")
    assert names == ["empg_gf.png", "kl.png", "learning_curves.png", "step_entropy.png"]
    text = out.read_text()
    for name in names:
        assert f"]({name})" in text
        img = mpimg.imread(out.parent / name)
        assert img.shape[0] > 100 and img[..., :3].std() > 0
    assert (out.parent / "results.jsonl").is_file()


def test_without_sweep_json_runs_are_discovered_uncapped(sweep):
    (sweep / "sweep.json").unlink()
    make_report(sweep)
    text = (sweep / "report.md").read_text()
    # no planned iteration count: the stray iteration-5 row (eval_in 1.0, 24 more env steps) now counts
    assert "| `grpo` | – | 0,1,2 | 100.0 ± 0.0 | – | 50.0 ± 0.0 | – | 5 | 140 |" in text
    assert "| `grpo+empg` | – |" in text and "| `one` | – | 0 |" in text


def test_a_train_split_reports_the_train_pool_evaluation_not_the_rollouts(tmp_path):
    """`eval.splits: [train, ...]` logs its evaluation as eval_train/*; the report must read those, never the
    training rollouts' own train/success (which every iteration logs, at the rollout temperature)."""
    run_dir = tmp_path / "grpo" / "seed0"
    run_dir.mkdir(parents=True)
    rows = [
        {"iteration": 0, "eval_train/success": 0.25, "eval_in/success": 0.125},
        {"iteration": 1, "train/success": 0.9, "train/ep_len": 4.0},
        {"iteration": 2, "train/success": 0.8, "train/ep_len": 4.0, "eval_train/success": 0.5, "eval_in/success": 0.25},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({**CONFIG, "eval": {**CONFIG["eval"], "splits": ["train", "eval_in"]}})
    )
    make_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert (
        "| method | baseline | seeds | eval_train success (%) | Δ eval_train (pp, 95 % CI) | eval_in success (%) |"
        in text
    )
    assert "| `grpo` | – | 0 | 50.0 | – | 25.0 | – | 2 |" in text
    row = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert (row["eval_train/success"], row["eval_train/iteration"], row["eval_in/success"]) == (0.5, 2, 0.25)
    assert "train/success" not in row


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a directory" in err and "no sweep.json" in err


def test_help_documents_every_option_and_the_metric_keys(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for item in ("SWEEP_DIR", "--out", "FILE.md", "results.jsonl", "<split>/success", "loss/kl", "empg/g_mean"):
        assert item in text
