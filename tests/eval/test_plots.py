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
