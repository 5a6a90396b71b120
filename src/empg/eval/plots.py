"""Plots from run directories (PNG, matplotlib's Agg backend, no display needed).

* ``learning_curves.png``: eval success vs iteration with 95 % Wilson bands, one panel per split, several runs
  overlaid (plus train success); paired-difference panels (gain over iteration 0; runs vs the first run of the same
  seed) where evaluations recorded per-seed outcomes;
* ``step_entropy_hist.png``: step-entropy histograms split by trajectory outcome (success / failure), early vs late;
* ``empg_gf.png``: EMPG g and f statistics (mean with min-max band) vs iteration.

Inputs are ``run_dir/metrics.jsonl`` and ``run_dir/step_entropy.jsonl`` written by the trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from empg.eval.evaluate import EvalReport
from empg.eval.runlog import METRICS, STEP_ENTROPY, read_metrics  # noqa: E402
from empg.eval.stats import PairedDifference, paired_difference, wilson_interval  # noqa: E402


def _label(run_dir: Path) -> str:
    return run_dir.name or str(run_dir)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        if row.get(key) is not None:
            xs.append(row["iteration"])
            ys.append(row[key])
    return xs, ys


TITLES = {
    "eval_in": "held-out eval_in",
    "eval_out": "held-out eval_out",
    "eval_train": "RL task pool",
    "train": "training rollouts",
}


@dataclass
class EvalPoint:
    """One evaluation of a split: success rate with its 95 % Wilson interval, and per-seed outcomes when recorded."""

    iteration: int
    rate: float
    low: float
    high: float
    outcomes: dict[int, bool] | None = None


def read_evaluations(run_dir: Path, split: str) -> list[EvalPoint]:
    """Every evaluation of ``split`` in iteration order: from ``eval/<split>_iter_XXXX.json`` (per-seed outcomes,
    Wilson interval) where written, else from ``metrics.jsonl`` (rate and episode count; no outcomes)."""
    points: dict[int, EvalPoint] = {}
    for row in read_metrics(run_dir):
        rate, n = row.get(f"{split}/success"), row.get(f"{split}/episodes")
        if rate is not None:
            low, high = wilson_interval(round(rate * n), int(n)) if n else (rate, rate)
            points[row["iteration"]] = EvalPoint(row["iteration"], rate, low, high)
    for path in sorted((Path(run_dir) / "eval").glob(f"{split}_iter_*.json")):
        it = int(path.stem.rsplit("_", 1)[1])
        report = EvalReport.from_dict(json.loads(path.read_text()))
        row = report.table["all"]
        points[it] = EvalPoint(it, row.rate, row.low, row.high, report.outcomes)
    return [points[it] for it in sorted(points)]


def _run_seed(run_dir: Path) -> int | None:
    """The run's training seed (its evaluation sampling seed derives from it), from ``config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.load(path).get("seed")


def paired_gains(points: list[EvalPoint], base: list[EvalPoint] | None = None) -> list[tuple[int, PairedDifference]]:
    """``(iteration, difference)`` of each evaluation minus a paired baseline over the seeds both played: the
    run's own first evaluation (``base=None``; the first point is then 0 by construction) or ``base``'s evaluation
    at the same iteration."""
    ref = {p.iteration: p for p in base} if base is not None else None
    out = []
    for p in points:
        b = points[0] if ref is None else ref.get(p.iteration)
        if b is not None and p.outcomes and b.outcomes and set(p.outcomes) & set(b.outcomes):
            out.append((p.iteration, paired_difference(b.outcomes, p.outcomes, resamples=2_000)))
    return out


def plot_learning_curves(run_dirs: list[Path], out: Path, splits: tuple[str, ...] = ("eval_in", "eval_out")) -> Path:
    """Success vs iteration per split, runs overlaid, each evaluation with its 95 % Wilson band, and the training
    rollouts' success. Below, where evaluations recorded per-seed outcomes: each run's paired gain over its own
    first evaluation (95 % BCa bootstrap interval) and, for runs sharing the first run's seed (so the same
    evaluation seeds and sampling seed), the paired difference to the first run."""
    evals = {(d, s): read_evaluations(d, s) for d in run_dirs for s in (*splits, "eval_train")}
    pool = any(evals[d, "eval_train"] for d in run_dirs) and "eval_train" not in splits
    panels = [*(["eval_train"] if pool else []), *splits]
    gains = {(d, s): paired_gains(evals[d, s]) for d in run_dirs for s in panels}
    seed0 = _run_seed(run_dirs[0])
    peers = [d for d in run_dirs[1:] if seed0 is not None and _run_seed(d) == seed0]
    versus = {(d, s): paired_gains(evals[d, s], evals[run_dirs[0], s]) for d in peers for s in panels}
    rows = 1 + any(gains.values()) + any(versus.values())
    fig, axes = plt.subplots(rows, len(panels) + 1, figsize=(4.6 * (len(panels) + 1), 3.5 * rows), squeeze=False)
    for col, split in enumerate(panels):
        ax = axes[0][col]
        for d in run_dirs:
            pts = evals[d, split]
            if pts:
                xs = [p.iteration for p in pts]
                (line,) = ax.plot(
                    xs, [100 * p.rate for p in pts], "o-", ms=3, color=_color(run_dirs, d), label=_label(d)
                )
                ax.fill_between(
                    xs, [100 * p.low for p in pts], [100 * p.high for p in pts], alpha=0.18, color=line.get_color()
                )
        _axes(ax, f"{TITLES.get(split, split)} success (95 % Wilson band)", "success rate (%)", (-2, 102))
        row = 1
        for table, title in (
            (gains, "paired gain over iteration 0"),
            (versus, f"paired difference vs {_label(run_dirs[0])}"),
        ):
            if any(table.values()):
                _difference_panel(axes[row][col], table, split, run_dirs, f"{TITLES.get(split, split)}: {title}")
                row += 1
    ax = axes[0][-1]
    for d in run_dirs:
        xs, ys = _series(read_metrics(d), "train/success")
        if xs:
            ax.plot(xs, [100 * y for y in ys], alpha=0.3, lw=1, color=_color(run_dirs, d))
            window = min(5, len(ys))
            smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax.plot(xs[window - 1 :], 100 * smooth, color=_color(run_dirs, d), label=f"{_label(d)} ({window}-it. mean)")
    _axes(ax, "training rollouts success (fresh tasks)", "success rate (%)", (-2, 102))
    for extra in axes[1:, -1]:
        extra.axis("off")
    return _save(fig, out)


def _color(run_dirs: list[Path], d: Path) -> str:
    """One colour per run across every panel."""
    return f"C{run_dirs.index(d) % 10}"


def _difference_panel(ax: plt.Axes, table: dict, split: str, run_dirs: list[Path], title: str) -> None:
    """Paired differences (percentage points) with their 95 % intervals as error bars, one series per run (nudged
    sideways so that runs evaluated at the same iterations stay readable)."""
    span = max((it for diffs in table.values() for it, _ in diffs), default=1) or 1
    for (d, s), diffs in table.items():
        if s == split and diffs:
            nudge = 0.012 * span * (run_dirs.index(d) - (len(run_dirs) - 1) / 2)
            xs = [it + nudge for it, _ in diffs]
            ys = [100 * p.diff for _, p in diffs]
            err = [[100 * (p.diff - p.low) for _, p in diffs], [100 * (p.high - p.diff) for _, p in diffs]]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", ms=3, capsize=3, color=_color(run_dirs, d), label=_label(d))
    ax.axhline(0, color="gray", lw=0.8)
    _axes(ax, title, "difference (pp, 95 % CI)", None)


def _axes(ax: plt.Axes, title: str, ylabel: str, ylim: tuple[float, float] | None) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("RL iteration")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")


def read_step_entropies(run_dir: Path) -> list[dict]:
    """Rows ``{"iteration", "success": [H...], "failure": [H...]}`` of ``step_entropy.jsonl``."""
    path = Path(run_dir) / STEP_ENTROPY
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
        if not (d / METRICS).is_file():
            raise FileNotFoundError(f"{d / 'metrics.jsonl'} not found; pass run directories written by `empg train`")
    out = Path(out_dir) if out_dir is not None else dirs[0] / "plots"
    paths = [plot_learning_curves(dirs, out / "learning_curves.png"), plot_gf(dirs, out / "empg_gf.png")]
    for d in dirs:
        suffix = "" if len(dirs) == 1 else f"_{_label(d)}"
        paths.append(plot_entropy_hist(d, out / f"step_entropy_hist{suffix}.png"))
    return paths
