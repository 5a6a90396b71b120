"""Metrics logging, NaN guard and helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from empg.eval.runlog import read_metrics
from empg.train.metrics import (
    MetricsLogger,
    NonFiniteError,
    check_finite,
    masked_mean,
    stats,
    truncate_jsonl,
)


def test_check_finite_names_iteration_and_tensor():
    check_finite("advantages", torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(NonFiniteError, match=r"iteration 3: 1 non-finite .* in advantages"):
        check_finite("advantages", torch.tensor([1.0, float("nan")]), 3)
    with pytest.raises(NonFiniteError, match="2 non-finite"):
        check_finite("loss", torch.tensor([float("inf"), -float("inf")]), 0)


def test_check_finite_ignores_masked_positions():
    x = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    check_finite("logp", x, 0, mask=torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(NonFiniteError):
        check_finite("logp", x, 0, mask=torch.ones(2, 2))


def test_stats_and_masked_mean():
    assert stats("empg/g", torch.tensor([0.5, 1.0, 1.5])) == {"empg/g_mean": 1.0, "empg/g_min": 0.5, "empg/g_max": 1.5}
    assert stats("x", []) == {}
    # (1 + 3) / 2 = 2, the NaN at the masked position is ignored
    assert masked_mean(torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([1, 0, 1])) == 2.0
    assert math.isnan(masked_mean(torch.tensor([1.0]), torch.tensor([0])))


def test_logger_writes_jsonl_and_truncate(tmp_path):
    log = MetricsLogger(tmp_path)
    for it in range(4):
        log.log({"train/success": it / 4, "bad": float("nan"), "t": torch.tensor(1.5)}, step=it)
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert rows[2] == {"iteration": 2, "train/success": 0.5, "bad": None, "t": 1.5}
    truncate_jsonl(tmp_path / "metrics.jsonl", 1)
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    truncate_jsonl(tmp_path / "metrics.jsonl", -1)
    assert read_metrics(tmp_path) == []


def test_truncate_drops_a_row_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    rows = [json.dumps({"iteration": i, "text": "x" * 50}) for i in (1, 2)]
    path.write_text(rows[0] + "\n" + rows[1][:30])  # killed in the middle of iteration 2's write
    truncate_jsonl(path, 2)
    assert path.read_text() == rows[0] + "\n"
    path.write_text(rows[0][:30] + "\n" + rows[1] + "\n")  # damage elsewhere is not a crash's: it still raises
    with pytest.raises(ValueError):
        truncate_jsonl(path, 2)
