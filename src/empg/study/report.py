"""``empg report SWEEP_DIR``: a Markdown report of a sweep, with plots and a results JSONL.

What it reads (per run dir ``SWEEP_DIR/<variant>/seed<K>``; the runs come from ``SWEEP_DIR/sweep.json`` written by
``empg sweep``, or, without it, from every ``*/seed<K>/metrics.jsonl`` below SWEEP_DIR):

* ``metrics.jsonl``: the **final evaluation** of each split is the last row (up to the sweep's planned
  ``iterations``) that has ``<split>/success``; with it ``<split>/success/<task type>``, ``<split>/ep_len`` and
  ``<split>/invalid_rate`` (``<split>`` is the metric prefix: ``eval_in``, ``eval_out``, ``eval_train`` for a
  ``train`` evaluation of the RL task pool; ``train/*`` are the training rollouts' and never read as one).
  Budget: ``iteration`` (iterations done), env steps = Σ over iterations of
  ``train/ep_len`` × (``dapo/rounds`` × ``rollout.n_tasks`` × ``rollout.group_size`` − ``train/failed_episodes``)
  (training rollouts only, the config from ``config.yaml``), training-loop time = Σ ``time/total``.
  Curves: ``<split>/success``, ``loss/kl`` (only when ``algo.kl_coef > 0``), ``actor/approx_kl``,
  ``empg/g_mean|min|max``, ``empg/f_mean|min|max``.
* ``step_entropy.jsonl``: step entropies of successful / failed trajectories per iteration.
* ``sweep.json``: variants, seeds, baselines, planned iterations and each run's wall time.

Statistics, per variant and metric, over seeds: the mean ± the half-width of the 95 % Student-t interval
(``t.ppf(0.975, n−1) · s / √n``, s with n−1; one seed: the value alone). The difference to the baseline variant is
the difference of means with a 95 % percentile bootstrap interval (``scipy.stats.bootstrap``, 9,999 resamples, fixed
seed), on the per-seed differences when both variants have the same seeds (paired), else on the two samples.

Outputs (``--out FILE.md``, default ``SWEEP_DIR/report.md``; the rest next to it): the Markdown,
``learning_curves.png`` (eval success vs iteration, mean over seeds with a min-max band), ``kl.png``,
``step_entropy.png`` (step entropy by outcome, second half of training, seeds pooled), ``empg_gf.png`` and
``results.jsonl`` (one row per run: variant, method, axes, seed, status, budget and the final metrics).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from empg.eval.evaluate import metric_key
from empg.eval.plots import _save, read_step_entropies
from empg.eval.runlog import read_metrics

DEFAULT_SPLITS = ("eval_in", "eval_out")
CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class RunResult:
    """One run of the sweep: identity, status, final metrics and budget (None when unknown)."""

    variant: str
    method: str
    seed: int
    run_dir: Path
    status: str
    rel_dir: str = ""  # run dir relative to the sweep folder
    axes: dict[str, Any] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)  # "<split>/success", ".../<type>", "<split>/iteration"
    iterations: int | None = None
    env_steps: int | None = None
    train_time_s: float | None = None
    wall_s: float | None = None
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl rows up to the planned iterations
    config: dict = field(default_factory=dict)


@dataclass
class Diff:
    """Difference of means to a baseline with its bootstrap interval (``low``/``high`` None when not computable)."""

    diff: float
    low: float | None
    high: float | None
    paired: bool
    n: int


# ============================================================================= reading runs
def _load_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}  # type: ignore[return-value]


def discover_runs(sweep_dir: Path) -> tuple[dict, list[dict]]:
    """``(meta, run records)`` from ``sweep.json``, or synthesised from ``*/seed<K>/metrics.jsonl`` without it."""
    path = sweep_dir / "sweep.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        return meta, list(meta.get("runs", []))
    records = []
    for metrics in sorted(sweep_dir.rglob("metrics.jsonl")):
        run_dir = metrics.parent
        match = SEED_DIR.match(run_dir.name)
        if match is None:
            continue
        variant = str(run_dir.parent.relative_to(sweep_dir))
        rec = {"variant": variant, "method": variant.split("/")[0], "seed": int(match.group(1)), "status": "done"}
        records.append({**rec, "run_dir": str(run_dir.relative_to(sweep_dir)), "axes": {}})
    if not records:
        raise FileNotFoundError(f"no sweep.json and no */seed<K>/metrics.jsonl under {sweep_dir}; run `empg sweep`")
    return {"name": sweep_dir.name, "baselines": {}}, records


def final_eval(rows: list[dict], splits: list[str]) -> dict[str, float]:
    """Keys of the last row that evaluated each split: ``<split>/...`` plus ``<split>/iteration``.

    Args:
        rows: metrics.jsonl rows in iteration order.
        splits: e.g. ``["eval_in", "eval_out"]``.
    """
    out: dict[str, float] = {}
    for split in splits:
        last = [r for r in rows if r.get(f"{split}/success") is not None]
        if not last:
            continue
        row = last[-1]
        out.update({k: v for k, v in row.items() if k.startswith(f"{split}/") and isinstance(v, int | float)})
        out[f"{split}/iteration"] = row["iteration"]
    return out


def count_env_steps(rows: list[dict], config: dict) -> int | None:
    """Training env steps: Σ ``train/env_steps`` where logged, else Σ ep_len × (rounds × n_tasks × group_size −
    failed); None without a config."""
    rollout = config.get("rollout", {})
    if "n_tasks" not in rollout or "group_size" not in rollout:
        return None
    total = 0.0
    for row in rows:
        if row.get("train/env_steps") is not None:  # logged by the trainer since it existed; exact
            total += row["train/env_steps"]
            continue
        if row.get("train/ep_len") is None:
            continue
        episodes = row.get("dapo/rounds", 1) * rollout["n_tasks"] * rollout["group_size"]
        total += row["train/ep_len"] * (episodes - (row.get("train/failed_episodes") or 0))
    return int(round(total))


def load_run(sweep_dir: Path, record: dict, splits: list[str] | None = None) -> RunResult:
    """A :class:`RunResult` from a run record of sweep.json (metrics read up to its planned iterations)."""
    run_dir = sweep_dir / record["run_dir"]
    result = RunResult(
        variant=record["variant"],
        method=record.get("method", record["variant"].split("/")[0]),
        seed=int(record["seed"]),
        run_dir=run_dir,
        status=record.get("status", "done"),
        rel_dir=record["run_dir"],
        axes=record.get("axes") or {},
        wall_s=record.get("wall_s"),
        config=_load_config(run_dir),
    )
    cap = record.get("iterations") or math.inf
    result.rows = [r for r in read_metrics(run_dir) if r.get("iteration", 0) <= cap]
    if not result.rows:
        return result
    splits = splits or _config_splits(result.config)
    result.final = final_eval(result.rows, splits)
    result.iterations = max(r["iteration"] for r in result.rows)
    result.env_steps = count_env_steps(result.rows, result.config)
    times = [r["time/total"] for r in result.rows if r.get("time/total") is not None]
    result.train_time_s = float(sum(times)) if times else None
    return result


# ============================================================================= statistics
def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """(mean, half-width of the Student-t interval); half-width None for fewer than 2 values.

    >>> m, h = t_interval([0.2, 0.4, 0.6])
    >>> round(m, 6), round(h, 4)
    (0.4, 0.4968)
    """
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), None
    if x.size == 1:
        return float(x[0]), None
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(t.ppf(0.5 + confidence / 2, x.size - 1) * sem)


def _bootstrap(data: tuple, statistic: Any, seed: int) -> tuple[float, float]:
    import inspect
    import warnings

    from scipy.stats import bootstrap

    rng = np.random.default_rng(seed)
    key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"  # scipy < 1.15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            data,
            statistic,
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            **{key: rng},
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_diff(values: dict[int, float], base: dict[int, float], *, seed: int = 0) -> Diff:
    """Difference of means ``values − base`` (seed → value) with a 95 % percentile bootstrap interval.

    Paired (on per-seed differences) when both have the same seeds and at least 2 of them; otherwise a two-sample
    bootstrap, which needs at least 2 values on each side (else only the difference, no interval).
    """
    paired = set(values) == set(base) and len(values) >= 2
    if paired:
        d = np.array([values[s] - base[s] for s in sorted(values)], dtype=np.float64)  # (n,)
        diff = float(d.mean())
        if np.ptp(d) == 0:
            return Diff(diff, diff, diff, True, d.size)
        low, high = _bootstrap((d,), lambda x, axis: x.mean(axis=axis), seed)
        return Diff(diff, low, high, True, d.size)
    a = np.array(list(values.values()), dtype=np.float64)
    b = np.array(list(base.values()), dtype=np.float64)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Diff(diff, None, None, False, min(a.size, b.size))
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return Diff(diff, diff, diff, False, min(a.size, b.size))
    low, high = _bootstrap((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), seed)
    return Diff(diff, low, high, False, min(a.size, b.size))


def by_variant(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs with metrics grouped by variant (sweep order kept)."""
    out: dict[str, list[RunResult]] = {}
    for r in results:
        if r.rows:
            out.setdefault(r.variant, []).append(r)
    return out


def per_seed(runs: list[RunResult], key: str) -> dict[int, float]:
    """``{seed: final[key]}`` for the runs that have ``key``."""
    return {r.seed: float(r.final[key]) for r in runs if r.final.get(key) is not None}


# ============================================================================= Markdown
def _pct(mean: float, half: float | None) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" if half is None else f"{100 * mean:.1f} ± {100 * half:.1f}"


def _pct_diff(d: Diff | None) -> str:
    if d is None:
        return "–"
    if d.low is None or d.high is None:
        return f"{100 * d.diff:+.1f}"
    return f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" + (" paired" if d.paired else "")


def _mean_of(runs: list[RunResult], attr: str, digits: int = 0) -> str:
    vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
    if not vals:
        return "–"
    return f"{np.mean(vals):,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def main_table(groups: dict[str, list[RunResult]], baselines: dict[str, str], splits: list[str]) -> list[str]:
    """Rows: variant, baseline, seeds, per split success (mean ± t half-width, %) and Δ to the baseline, budget."""
    header = ["method", "baseline", "seeds"]
    for split in splits:
        header += [f"{split} success (%)", f"Δ {split} (pp, 95 % CI)"]
    header += ["iterations", "env steps", "train time (s)", "wall (s)"]
    rows = []
    for variant, runs in groups.items():
        base = baselines.get(variant)
        row = [f"`{variant}`", f"`{base}`" if base else "–", ",".join(str(r.seed) for r in runs)]
        for split in splits:
            values = per_seed(runs, f"{split}/success")
            row.append(_pct(*t_interval(list(values.values()))))
            base_values = per_seed(groups.get(base, []), f"{split}/success") if base else {}
            row.append(_pct_diff(bootstrap_diff(values, base_values) if values and base_values else None))
        row += [_mean_of(runs, "iterations"), _mean_of(runs, "env_steps"), _mean_of(runs, "train_time_s", 1)]
        row.append(_mean_of(runs, "wall_s", 1))
        rows.append(row)
    return _table(header, rows)


def type_table(groups: dict[str, list[RunResult]], split: str) -> list[str]:
    """Success per task type of one split (mean ± t half-width over seeds, %)."""
    prefix = f"{split}/success/"
    types = sorted(
        {k[len(prefix) :] for runs in groups.values() for r in runs for k in r.final if k.startswith(prefix)}
    )
    if not types:
        return []
    rows = []
    for variant, runs in groups.items():
        rows.append([f"`{variant}`"] + [_pct(*t_interval(list(per_seed(runs, prefix + t).values()))) for t in types])
    return _table(["method", *types], rows)


def budget_line(results: list[RunResult]) -> str:
    """One sentence stating the compute budget of the runs (from the first run's config and all runs' metrics)."""
    done = [r for r in results if r.rows]
    if not done:
        return "No run has metrics yet."
    cfg = done[0].config
    ro, ev = cfg.get("rollout", {}), cfg.get("eval", {})
    iters = sorted({r.iterations for r in done})
    steps = [r.env_steps for r in done if r.env_steps is not None]
    text = f"**Budget per run**: {'/'.join(str(i) for i in iters)} RL iterations"
    if ro:
        turns = cfg.get("env", {}).get("max_turns")
        text += f" of {ro.get('n_tasks')} tasks × {ro.get('group_size')} rollouts (≤ {turns} turns each)"
    if steps:
        span = f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}–{max(steps):,}"
        text += f", {span} training env steps"
    if ev:
        text += f"; evaluation on {ev.get('episodes')} fixed episodes per split at temperature {ev.get('temperature')}"
    return text + f"; model `{cfg.get('model', {}).get('spec', '?')}`."


def render_markdown(meta: dict, results: list[RunResult], splits: list[str], plots: list[Path]) -> str:
    """The whole report as Markdown text."""
    groups = by_variant(results)
    baselines = meta.get("baselines") or {}
    lines = [f"# Sweep report: {meta.get('name', '?')}", "", budget_line(results), ""]
    lines += [
        "Success is the final evaluation of each run (its last evaluated iteration), as mean ± half-width of the "
        "95 % Student-t interval over seeds (one seed: the value). Δ is the difference to the baseline method in "
        "percentage points with a 95 % percentile bootstrap interval (9,999 resamples; *paired* = on per-seed "
        "differences). Env steps count training rollouts only; train time is the RL loop's Σ `time/total`; wall is "
        "the sweep's time for the run.",
        "",
        "## Final success",
        "",
        *main_table(groups, baselines, splits),
    ]
    for split in splits:
        table = type_table(groups, split)
        if table:
            lines += ["", f"## {split}: success per task type (%)", "", *table]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    missing = [r for r in results if not r.rows or r.status != "done"]
    if missing:
        lines += ["", "## Runs not finished", ""]
        lines += [f"- `{r.variant}/seed{r.seed}`: {r.status}, log `{r.rel_dir}/log.txt`" for r in missing]
    return "\n".join(lines) + "\n"


# ============================================================================= results.jsonl
def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(meta: dict, results: list[RunResult], path: Path) -> Path:
    """One JSON row per run: identity, status, budget and the final metrics."""
    lines = []
    for r in results:
        row = {
            "sweep": meta.get("name"),
            "variant": r.variant,
            "method": r.method,
            "axes": r.axes,
            "seed": r.seed,
            "run_dir": r.rel_dir,
            "status": r.status,
            "iterations": r.iterations,
            "env_steps": r.env_steps,
            "train_time_s": r.train_time_s,
            "wall_s": r.wall_s,
        }
        row.update({k: _clean(v) for k, v in sorted(r.final.items())})
        lines.append(json.dumps(row))
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ============================================================================= plots
def curve(runs: list[RunResult], key: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(iterations, mean, min, max) of ``key`` over the seeds that logged it at each iteration."""
    values: dict[int, list[float]] = {}
    for r in runs:
        for row in r.rows:
            if row.get(key) is not None:
                values.setdefault(row["iteration"], []).append(float(row[key]))
    xs = sorted(values)
    return (
        xs,
        np.array([np.mean(values[x]) for x in xs]),
        np.array([min(values[x]) for x in xs]),
        np.array([max(values[x]) for x in xs]),
    )


def _panels(
    groups: dict[str, list[RunResult]], keys: list[tuple[str, str]], out: Path, ylim: tuple | None = None
) -> Path:
    """One panel per ``(key, title)``: per variant the mean over seeds with a min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for variant, runs in groups.items():
            xs, mean, low, high = curve(runs, key)
            if not xs:
                continue
            (line,) = ax.plot(xs, mean, marker="o", ms=3, label=variant)
            if len(runs) > 1:
                ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("mean over seeds, min-max band over seeds", fontsize=8)
    return _save(fig, out)


def _gf_panels(groups: dict[str, list[RunResult]], out: Path) -> Path | None:
    """EMPG g and f: mean over seeds of the batch mean, band from the batch min to the batch max (all seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    drawn = False
    for ax, name in zip(axes[0], ("g", "f"), strict=True):
        for variant, runs in groups.items():
            xs, mean, _, _ = curve(runs, f"empg/{name}_mean")
            lx, _, low, _ = curve(runs, f"empg/{name}_min")
            hx, _, _, high = curve(runs, f"empg/{name}_max")
            if not xs:
                continue
            drawn = True
            (line,) = ax.plot(xs, mean, label=variant)
            if lx == xs == hx:
                ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
        ax.set_title(f"EMPG {name}: batch mean (line), batch min-max over seeds (band)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    return _save(fig, out)


def _entropy_panels(groups: dict[str, list[RunResult]], out: Path) -> Path | None:
    """Per variant: step-entropy histograms of successful vs failed trajectories, second half of training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {}
    for variant, runs in groups.items():
        pooled: dict[str, list[float]] = {"success": [], "failure": []}
        for r in runs:
            rows = read_step_entropies(r.run_dir)
            for row in rows[len(rows) // 2 :]:
                for outcome in pooled:
                    pooled[outcome] += row.get(outcome, [])
        if pooled["success"] or pooled["failure"]:
            data[variant] = pooled
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data), 3.4), squeeze=False)
    for ax, (variant, pooled) in zip(axes[0], data.items(), strict=True):
        every = pooled["success"] + pooled["failure"]
        bins = np.linspace(min(every), max(every) + 1e-6, 31)
        for outcome, color in (("success", "tab:green"), ("failure", "tab:red")):
            if pooled[outcome]:
                ax.hist(
                    pooled[outcome],
                    bins=bins,
                    density=True,
                    alpha=0.55,
                    color=color,
                    label=f"{outcome} (n={len(pooled[outcome])})",
                )
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("step entropy H (nats)")
        ax.legend(fontsize=7)
    fig.suptitle("step entropy by trajectory outcome (second half of training, seeds pooled)", fontsize=8)
    return _save(fig, out)


def make_plots(groups: dict[str, list[RunResult]], splits: list[str], out_dir: Path) -> list[Path]:
    """learning_curves.png, kl.png, and when their data exist step_entropy.png and empg_gf.png."""
    keys = [(f"{s}/success", f"{s} success") for s in splits]
    paths = [_panels(groups, keys, out_dir / "learning_curves.png", ylim=(-0.02, 1.02))]
    has_kl = any(curve(runs, "loss/kl")[0] for runs in groups.values())
    kl_keys = [("loss/kl", "KL loss to the reference (k3)")] if has_kl else []
    paths.append(
        _panels(groups, [*kl_keys, ("actor/approx_kl", "approx. KL to the behaviour policy")], out_dir / "kl.png")
    )
    extra = [_entropy_panels(groups, out_dir / "step_entropy.png"), _gf_panels(groups, out_dir / "empg_gf.png")]
    return paths + [p for p in extra if p is not None]


# ============================================================================= entry point
def make_report(sweep_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """``empg report``: write the Markdown, the PNGs and ``results.jsonl``; return their paths.

    Raises:
        FileNotFoundError: SWEEP_DIR has neither sweep.json nor run dirs with metrics.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory; pass the --out folder of `empg sweep`")
    out = Path(out) if out is not None else sweep_dir / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta, records = discover_runs(sweep_dir)
    results = [load_run(sweep_dir, rec) for rec in records]
    splits = _splits(results)
    plots = make_plots(by_variant(results), splits, out.parent) if by_variant(results) else []
    out.write_text(render_markdown(meta, results, splits, plots))
    jsonl = write_results(meta, results, out.parent / "results.jsonl")
    return [out, jsonl, *plots]


def _config_splits(config: dict) -> list[str]:
    """The metric prefixes of a run's ``eval.splits``: ``eval_in``, ``eval_out``, and ``eval_train`` for its ``train``
    split (``train/*`` are the training rollouts' metrics, not an evaluation)."""
    return [metric_key(s) for s in config.get("eval", {}).get("splits", DEFAULT_SPLITS)]


def _splits(results: list[RunResult]) -> list[str]:
    """Evaluated splits (metric prefixes, :func:`_config_splits`) present in any run's final metrics, in the configs'
    order (default eval_in, eval_out)."""
    order: list[str] = []
    for r in results:
        for split in _config_splits(r.config):
            if split not in order and f"{split}/success" in r.final:
                order.append(split)
    return order or list(DEFAULT_SPLITS)
