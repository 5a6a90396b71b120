"""Plots from run directories (PNG, matplotlib's Agg backend, no display needed).

* ``learning_curves.png``: eval success vs iteration, one panel per split, several runs overlaid (plus train success);
* ``step_entropy_hist.png``: step-entropy histograms split by trajectory outcome (success / failure), early vs late;
* ``empg_gf.png``: EMPG g and f statistics (mean with min-max band) vs iteration.

Inputs are ``run_dir/metrics.jsonl`` and ``run_dir/step_entropy.jsonl`` written by the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from empg.train.metrics import read_metrics  # noqa: E402


def _label(run_dir: Path) -> str:
    return run_dir.name or str(run_dir)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        if row.get(key) is not None:
            xs.append(row["iteration"])
            ys.append(row[key])
    return xs, ys


TITLES = {"eval_train": "eval on the RL task pool", "train": "training rollouts"}


def plot_learning_curves(run_dirs: list[Path], out: Path, splits: tuple[str, ...] = ("eval_in", "eval_out")) -> Path:
    """Eval success vs iteration per split (one panel each; ``eval_train`` too when a run has it) and the training
    rollouts' success, runs overlaid."""
    rows = {run_dir: read_metrics(run_dir) for run_dir in run_dirs}
    pool = any("eval_train/success" in r for runs in rows.values() for r in runs)
    panels = [*(["eval_train"] if pool and "eval_train" not in splits else []), *splits, "train"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, split in zip(axes[0], panels, strict=True):
        for run_dir in run_dirs:
            xs, ys = _series(rows[run_dir], f"{split}/success")
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=_label(run_dir))
        ax.set_title(f"{TITLES.get(split, split)} success")
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success rate")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out)


def read_step_entropies(run_dir: Path) -> list[dict]:
    """Rows ``{"iteration", "success": [H...], "failure": [H...]}`` of ``step_entropy.jsonl``."""
    path = Path(run_dir) / "step_entropy.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_entropy_hist(run_dir: Path, out: Path) -> Path:
    """Step-entropy histograms by outcome, first half of the iterations vs second half."""
    rows = read_step_entropies(run_dir)
    half = len(rows) // 2
    parts = [("early", rows[: max(half, 1)]), ("late", rows[half:])] if len(rows) > 1 else [("all", rows)]
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 3.6), squeeze=False)
    for ax, (name, chunk) in zip(axes[0], parts, strict=True):
        every = [h for row in chunk for key in ("success", "failure") for h in row.get(key, [])]
        bins = np.linspace(min(every), max(every) + 1e-6, 31) if every else 30
        for outcome, color in (("success", "tab:green"), ("failure", "tab:red")):
            values = [h for row in chunk for h in row.get(outcome, [])]
            if values:
                ax.hist(values, bins=bins, alpha=0.55, color=color, density=True, label=f"{outcome} (n={len(values)})")
        first = chunk[0]["iteration"] if chunk else 0
        last = chunk[-1]["iteration"] if chunk else 0
        ax.set_title(f"step entropy, {name} (iter {first}-{last})")
        ax.set_xlabel("step entropy H (nats)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("density")
    fig.suptitle(_label(Path(run_dir)), fontsize=9)
    return _save(fig, out)


def plot_gf(run_dirs: list[Path], out: Path) -> Path:
    """EMPG g and f: mean line with a min-max band vs iteration, runs overlaid."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for ax, name in zip(axes[0], ("g", "f"), strict=True):
        for run_dir in run_dirs:
            rows = read_metrics(run_dir)
            xs, mean = _series(rows, f"empg/{name}_mean")
            if not xs:
                continue
            _, low = _series(rows, f"empg/{name}_min")
            _, high = _series(rows, f"empg/{name}_max")
            (line,) = ax.plot(xs, mean, label=_label(Path(run_dir)))
            if len(low) == len(xs) == len(high):
                ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
        ax.set_title(f"EMPG {name} (mean, min-max band)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """All plots for ``run_dirs``; written to ``out_dir`` (default: the first run's ``plots/``).

    Raises:
        FileNotFoundError: a run directory has no ``metrics.jsonl``.
    """
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not (d / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{d / 'metrics.jsonl'} not found; pass run directories written by `empg train`")
    out = Path(out_dir) if out_dir is not None else dirs[0] / "plots"
    paths = [plot_learning_curves(dirs, out / "learning_curves.png"), plot_gf(dirs, out / "empg_gf.png")]
    for d in dirs:
        suffix = "" if len(dirs) == 1 else f"_{_label(d)}"
        paths.append(plot_entropy_hist(d, out / f"step_entropy_hist{suffix}.png"))
    return paths
