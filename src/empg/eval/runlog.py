"""The log files of a run directory: their names (the trainer writes them) and a reader (the plots, the inspector and
the reports read them).

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one JSON row per iteration, :class:`empg.train.metrics.
MetricsLogger`), ``step_entropy.jsonl``, ``trajectories.jsonl`` (a few episodes per iteration,
:mod:`empg.train.trajlog`), ``eval/`` (:mod:`empg.eval.evaluate` reports), ``checkpoints/`` and ``base_model/``.
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"
STEP_ENTROPY = "step_entropy.jsonl"
TRAJECTORIES = "trajectories.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a ``metrics.jsonl`` (a file or a run directory); [] when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
