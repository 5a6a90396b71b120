"""Plots from run directories: PNG files for learning curves, entropy histograms and g/f statistics."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from empg.cli import main
from empg.eval.plots import plot_runs


def _fake_run(path, offset):
    path.mkdir()
    rows = []
    for it in range(0, 6):
        row = {"iteration": it, "train/success": 0.1 * it}
        if it % 2 == 0:
            row.update({"eval_in/success": 0.1 * it + offset, "eval_out/success": 0.05 * it})
        if it:
            row.update(
                {
                    "empg/g_mean": 1.0,
                    "empg/g_min": 0.6,
                    "empg/g_max": 1.5,
                    "empg/f_mean": 0.5,
                    "empg/f_min": 0.3,
                    "empg/f_max": 0.9,
                }
            )
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ent = [{"iteration": it, "success": [0.1, 0.2, 0.15], "failure": [0.5, 0.7]} for it in range(1, 6)]
    (path / "step_entropy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ent))
    return path


def test_plot_runs_writes_pngs(tmp_path):
    a = _fake_run(tmp_path / "grpo", 0.0)
    b = _fake_run(tmp_path / "grpo-empg", 0.1)
    paths = plot_runs([a, b], tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == [
        "empg_gf.png",
        "learning_curves.png",
        "step_entropy_hist_grpo-empg.png",
        "step_entropy_hist_grpo.png",
    ]
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0  # something was drawn


def test_plot_cli_and_missing_run(tmp_path, capsys):
    a = _fake_run(tmp_path / "run", 0.0)
    assert main(["plot", str(a)]) == 0
    assert (a / "plots" / "learning_curves.png").is_file()
    assert (a / "plots" / "step_entropy_hist.png").is_file()
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        plot_runs([tmp_path / "nope"])


def _eval_file(run, split, iteration, outcomes):
    from empg.eval.evaluate import EvalReport
    from empg.eval.stats import success_table

    seeds = sorted(outcomes)
    table = success_table(["t"] * len(seeds), [outcomes[s] for s in seeds])
    report = EvalReport("household-v0", split, len(seeds), table, 10.0, 0.0, outcomes)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / f"{split}_iter_{iteration:04d}.json").write_text(json.dumps(report.to_dict()))


def test_read_evaluations_wilson_from_files_and_metrics(tmp_path):
    from empg.eval.plots import read_evaluations
    from empg.eval.stats import wilson_interval

    run = _fake_run(tmp_path / "run", 0.0)  # metrics rows carry eval_in/success at 0, 2, 4 but no episode count
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[2]["eval_in/episodes"] = 10.0  # iteration 2: 20 % of 10 episodes -> the Wilson interval of 2 / 10
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _eval_file(run, "eval_in", 4, {1: True, 2: False, 3: True, 4: False})  # the file wins over the metrics row
    points = {p.iteration: p for p in read_evaluations(run, "eval_in")}
    assert sorted(points) == [0, 2, 4]
    assert (points[2].low, points[2].high) == pytest.approx(wilson_interval(2, 10))
    assert points[0].low == points[0].high == 0.0  # no episode count: no interval is invented
    assert points[4].rate == 0.5 and points[4].outcomes == {1: True, 2: False, 3: True, 4: False}
    assert (points[4].low, points[4].high) == pytest.approx(wilson_interval(2, 4))


def test_paired_gains_and_difference_rows(tmp_path):
    from empg.eval.plots import paired_gains, read_evaluations

    runs = []
    for name, end in (("a", {1: True, 2: False, 3: True, 4: True}), ("b", {1: False, 2: False, 3: True, 4: False})):
        run = _fake_run(tmp_path / name, 0.0)
        (run / "config.yaml").write_text("seed: 3\n")
        _eval_file(run, "eval_in", 0, {1: False, 2: False, 3: True, 4: False})
        _eval_file(run, "eval_in", 4, end)
        runs.append(run)
    a, b = (read_evaluations(r, "eval_in") for r in runs)
    gains = dict(paired_gains(a))
    assert sorted(gains) == [0, 4]  # iterations 2 has no per-seed outcomes: it cannot be paired
    assert gains[0].diff == 0.0 and gains[4].diff == 0.5  # seeds 1 and 4 flipped to success: +2 of 4
    assert gains[4].low <= 0.5 <= gains[4].high
    versus = dict(paired_gains(b, a))
    assert versus[4].diff == -0.5 and versus[0].diff == 0.0
    one = mpimg.imread(plot_runs(runs[:1], tmp_path / "one")[0])
    two = mpimg.imread(plot_runs(runs, tmp_path / "two")[0])
    (tmp_path / "b" / "config.yaml").write_text("seed: 4\n")  # another training seed: another sampling seed
    unpaired = mpimg.imread(plot_runs(runs, tmp_path / "unpaired")[0])
    assert two.shape[0] > unpaired.shape[0] == one.shape[0] > 0  # rows: curves + gain (+ difference vs first run)
