"""``empg sweep GRID.yaml``: a grid of trainings (methods × axes × seeds), one process per run, resumable.

Grid schema (a YAML mapping; ``experiments/README.md`` has the long form)::

    name: household-main                   # optional (default: the file's stem); OUT defaults to runs/sweeps/<name>
    config: configs/household-tiny.yaml    # required: base preset (relative to the current dir, else to the grid)
    common: [iterations=20, eval.every=5]  # optional: overrides for every run (and for the shared SFT run)
    sft:                                   # optional: ONE shared SFT run (`empg sft`) in OUT/sft; every run then
      overrides: [sft.steps=300]           #   starts from OUT/sft/base_model with sft.enabled=false
    methods:                               # required: method name -> overrides
      grpo: [algo.base=grpo, algo.empg=false]
      grpo+empg: [algo.base=grpo, algo.empg=true]
    axes: {algo.zeta: [0, 0.1]}            # optional: cartesian product applied to every method
    seeds: [0, 1, 2]                       # optional (default [0]); sets `seed=` of each run
    baseline: {grpo+empg: grpo}            # optional: what `empg report` compares each method against

Each run's overrides, later ones winning: ``common``, the shared-SFT pair (``model.spec=OUT/sft/base_model
sft.enabled=false``), the method's, one value per axis, ``seed=K``. ``seed`` and ``run_dir`` belong to the sweep and
may not be overridden. Names: a *variant* is the method plus ``/<axis>=<value>`` per axis (the axis is the last part
of its dotted key, e.g. ``grpo+empg/zeta=0.1``); a run is ``<variant>/seed<K>`` in ``OUT/<variant>/seed<K>``.
``baseline`` maps method or variant names; a method name stands for all its variants, each compared with the
baseline's variant at the same axis values.

Execution: the whole grid is validated first (schema, then every run's full config via
:func:`empg.train.config.load_config`; errors name the grid field and the fix). Then the shared SFT run (alone, all
threads), then the runs, ``--parallel N`` at a time, each ``python -m empg.cli train ...`` with stdout/stderr in
``RUN_DIR/log.txt`` and ``OMP_NUM_THREADS = MKL_NUM_THREADS = max(1, cpu_count // N)``. A run is **done** when its
marker ``RUN_DIR/sweep_done.json`` or its latest checkpoint reaches the planned ``iterations`` (done runs are
skipped); a run dir with a ``config.yaml`` is **continued** with ``empg train --resume`` (from its latest checkpoint,
or from the start with the saved base model when it has none). A run dir that holds a different configuration (any
field but ``iterations`` and ``log.*``) is an error, so a changed grid never mixes results silently. A failed run is
reported with its log and does not stop the others; the exit code is 1 when any run failed.

``OUT/sweep.json`` (rewritten as runs finish): the grid, the resolved baselines, and per run its name, variant,
method, axes, seed, run dir (relative to OUT), overrides, status (``done`` | ``skipped`` | ``failed`` |
``interrupted`` | ``pending``), return code, log path and ``wall_s`` (seconds of the sweep call that finished it).
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from empg.train.checkpoint import latest_checkpoint, load_state
from empg.train.config import ConfigError, load_config, load_run_config, to_dict

GRID_KEYS = ("name", "config", "common", "sft", "methods", "axes", "seeds", "baseline")
RESERVED = ("seed", "run_dir")
DONE_MARKER = "sweep_done.json"
SWEEP_FILE = "sweep.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.+=-]")
IGNORED_DIFF = ("iterations", "log.")  # fields a sweep may change in an existing run (more iterations, logging)


class GridError(ConfigError):
    """A grid problem: ``field`` of the grid, what is wrong and how to fix it."""

    def __init__(self, field_name: str, problem: str, fix: str):
        super().__init__(field_name, problem, fix)
        self.args = (f"grid error in `{field_name}`: {problem}. Fix: {fix}",)

    def __str__(self) -> str:
        return self.args[0]


# ============================================================================= the grid
@dataclass
class Grid:
    """A parsed, schema-checked grid (see the module docstring)."""

    name: str
    path: Path
    config: Path
    common: list[str]
    sft: list[str] | None
    methods: dict[str, list[str]]
    axes: dict[str, list[Any]]
    seeds: list[int]
    baseline: dict[str, str]
    raw: dict


@dataclass
class RunSpec:
    """One run of the grid: ``overrides`` are everything but ``run_dir`` (``--resume`` passes the dir itself)."""

    name: str
    variant: str
    method: str
    axes: dict[str, Any]
    seed: int
    run_dir: Path
    overrides: list[str]
    iterations: int = 0
    state: str = "new"  # new | resume | done (planning), then done | skipped | failed | interrupted
    start_iteration: int = 0
    returncode: int | None = None
    wall_s: float | None = None
    log: Path | None = None


@dataclass
class Plan:
    """What a sweep call will do: the optional shared SFT run and the grid's runs, in order."""

    grid: Grid
    out: Path
    sft: RunSpec | None
    runs: list[RunSpec]
    baselines: dict[str, str] = field(default_factory=dict)  # variant -> baseline variant


def _err(name: str, problem: str, fix: str) -> GridError:
    return GridError(name, problem, fix)


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(name, f"must be a list of key=value strings, got {value!r}", f"write e.g. {name}: [algo.zeta=0.1]")
    for item in value:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            raise _err(name, f"{item!r} is not a key=value override", "write e.g. algo.zeta=0.1")
        if key in RESERVED:
            fix = "list seeds under `seeds:`" if key == "seed" else "use --out DIR; run dirs are OUT/<variant>/seed<K>"
            raise _err(name, f"`{key}` is set by the sweep", fix)
    return list(value)


def _resolve_config(value: Any, grid_path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _err("config", "is missing or not a path", "add `config: configs/household-tiny.yaml` (a preset)")
    for candidate in (Path(value), grid_path.parent / value):
        if candidate.is_file():
            return candidate.resolve()
    raise _err("config", f"file {value!r} not found", "give a preset path relative to the current dir or the grid")


def _methods(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value:
        raise _err("methods", "is missing or empty", "add `methods: {grpo: [algo.base=grpo, algo.empg=false]}`")
    for name in value:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _err(f"methods.{name}", "method names use letters, digits and _ . + - only", "rename the method")
    return {name: _str_list(ov, f"methods.{name}") for name, ov in value.items()}


def _axes(value: Any) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(
            "axes", f"must be a mapping key -> list of values, got {value!r}", "write axes: {algo.zeta: [0, 0.1]}"
        )
    for key, values in value.items():
        if not isinstance(values, list) or not values:
            raise _err(f"axes.{key}", "must be a non-empty list of values", f"write {key}: [0, 0.1]")
        if key in RESERVED:
            raise _err(f"axes.{key}", f"`{key}` is set by the sweep", "use `seeds:` for seeds")
        if len({_fmt(v) for v in values}) != len(values):
            raise _err(f"axes.{key}", "has repeated values", "list each value once")
    return {str(k): list(v) for k, v in value.items()}


def _seeds(value: Any) -> list[int]:
    if value is None:
        return [0]
    ok = isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not ok or min(value) < 0 or len(set(value)) != len(value):
        raise _err(
            "seeds", f"must be a non-empty list of distinct integers >= 0, got {value!r}", "write seeds: [0, 1, 2]"
        )
    return list(value)


def _sft(value: Any) -> list[str] | None:
    if value is None or value is False:
        return None
    if value is True:
        return []
    if not isinstance(value, dict) or set(value) - {"overrides"}:
        raise _err("sft", f"must be a mapping with only `overrides`, got {value!r}", "write sft: {overrides: [...]}")
    return _str_list(value.get("overrides"), "sft.overrides")


def load_grid(path: str | Path) -> Grid:
    """Read and schema-check a grid file (overrides are checked later, by :func:`make_plan`).

    Raises:
        GridError: unknown or malformed field, naming the field and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise _err("GRID", f"file {str(path)!r} does not exist", "pass a grid YAML, e.g. experiments/example.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    if not isinstance(raw, dict):
        raise _err("GRID", f"{path} is not a YAML mapping", "write `key: value` lines (see experiments/README.md)")
    for key in raw:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(str(key), GRID_KEYS, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise _err(str(key), "unknown key in the grid", f"{hint}valid keys: {', '.join(GRID_KEYS)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _err("name", f"{name!r} is not a plain name", "use letters, digits and _ . + -")
    methods = _methods(raw.get("methods"))
    baseline = raw.get("baseline") or {}
    if not isinstance(baseline, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in baseline.items()
    ):
        raise _err("baseline", f"must map method names to method names, got {baseline!r}", "write {grpo+empg: grpo}")
    return Grid(
        name=name,
        path=path,
        config=_resolve_config(raw.get("config"), path),
        common=_str_list(raw.get("common"), "common"),
        sft=_sft(raw.get("sft")),
        methods=methods,
        axes=_axes(raw.get("axes")),
        seeds=_seeds(raw.get("seeds")),
        baseline=dict(baseline),
        raw=raw,
    )


def _fmt(value: Any) -> str:
    """An override value as OmegaConf's dotlist reads it (``True`` → ``true``, ``None`` → ``null``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _axis_labels(axes: dict[str, list[Any]]) -> dict[str, str]:
    """Short label per axis key: its last dotted part, or the whole key when two axes share that part."""
    short = {k: k.rsplit(".", 1)[-1] for k in axes}
    counts = {s: list(short.values()).count(s) for s in short.values()}
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


# ============================================================================= planning
def make_plan(grid: Grid, out: str | Path) -> Plan:
    """Expand the grid into runs, validate every run's config and find each run's state (new / resume / done).

    Raises:
        GridError: an override that the config loader rejects (naming the grid field it came from), a baseline that
            names no method, or a run dir that holds a run with a different configuration.
    """
    out = Path(out).resolve()
    sft_spec = _plan_sft(grid, out) if grid.sft is not None else None
    shared = [f"model.spec={out / 'sft' / 'base_model'}", "sft.enabled=false"] if sft_spec else []
    labels = _axis_labels(grid.axes)
    runs: list[RunSpec] = []
    for method in grid.methods:
        for point in itertools.product(*grid.axes.values()):
            axes = dict(zip(grid.axes, point, strict=True))
            variant = "/".join([method, *(f"{labels[k]}={UNSAFE_RE.sub('_', _fmt(v))}" for k, v in axes.items())])
            runs += [_plan_run(grid, out, method, variant, axes, seed, shared) for seed in grid.seeds]
    names = [r.name for r in runs]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise _err("axes", f"two runs share the name {twins[0]!r}", "use axis values that differ in letters/digits")
    return Plan(grid, out, sft_spec, runs, resolve_baselines(grid, runs))


def _plan_sft(grid: Grid, out: Path) -> RunSpec:
    """The shared SFT run in ``OUT/sft``: ``empg sft`` with ``common`` + ``sft.enabled=true`` + ``sft.overrides``."""
    sft_dir = out / "sft"
    extra = ["sft.enabled=true", *(grid.sft or [])]
    cfg = _load(grid, [("common", grid.common), ("sft.overrides", extra)], sft_dir)
    spec = RunSpec("sft", "sft", "sft", {}, cfg.seed, sft_dir, [*grid.common, *extra], log=sft_dir / "log.txt")
    _check_same_config(spec, cfg)
    spec.state = "done" if _sft_done(sft_dir) else "new"
    return spec


def _plan_run(grid: Grid, out: Path, method: str, variant: str, axes: dict, seed: int, shared: list[str]) -> RunSpec:
    """One run: its overrides (common, shared SFT, method, axes, seed), validated config and state."""
    run_dir = out / variant / f"seed{seed}"
    axis_ov = [f"{k}={_fmt(v)}" for k, v in axes.items()]
    parts = [("common", grid.common), ("sft", shared), (f"methods.{method}", grid.methods[method])]
    parts += [(f"axes.{k}", [o]) for k, o in zip(axes, axis_ov, strict=True)]
    parts.append(("seeds", [f"seed={seed}"]))
    cfg = _load(grid, parts, run_dir)
    overrides = [o for _, ov in parts for o in ov]
    spec = RunSpec(f"{variant}/seed{seed}", variant, method, axes, seed, run_dir, overrides, cfg.iterations)
    spec.log = run_dir / "log.txt"
    _set_state(spec, cfg)
    return spec


def _load(grid: Grid, parts: list[tuple[str, list[str]]], run_dir: Path) -> Any:
    """The run's validated config; on an error, re-load part by part to name the grid field that caused it."""
    every = [o for _, ov in parts for o in ov]
    try:
        return load_config(grid.config, [*every, f"run_dir={run_dir}"])
    except ConfigError:
        pass
    done: list[str] = []
    for name, ov in parts:
        done += ov
        try:
            load_config(grid.config, [*done, f"run_dir={run_dir}"])
        except ConfigError as e:
            raise _err(name, f"override {e.field!r}: {e.problem}", e.fix) from None
    raise AssertionError("unreachable: the full config failed but every prefix loaded")  # pragma: no cover


def _sft_done(sft_dir: Path) -> bool:
    return (sft_dir / "sft.json").is_file() and (sft_dir / "base_model" / "config.json").is_file()


def _progress_of(run_dir: Path) -> tuple[int, int]:
    """(iterations the done-marker records or -1, iteration of the latest checkpoint or 0)."""
    marker = run_dir / DONE_MARKER
    done = json.loads(marker.read_text()).get("iterations", -1) if marker.is_file() else -1
    latest = latest_checkpoint(run_dir)
    return done, (load_state(latest)["iteration"] if latest is not None else 0)


def _set_state(spec: RunSpec, cfg: Any) -> None:
    if not (spec.run_dir / "config.yaml").is_file():
        spec.state = "new"
        return
    _check_same_config(spec, cfg)
    done, ckpt = _progress_of(spec.run_dir)
    spec.start_iteration = ckpt
    spec.state = "done" if max(done, ckpt) >= cfg.iterations else "resume"


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _check_same_config(spec: RunSpec, planned: Any) -> None:
    """Raise when ``spec.run_dir`` already holds a run whose config differs from the planned one."""
    if not (spec.run_dir / "config.yaml").is_file():
        return
    saved = _flat(to_dict(load_run_config(spec.run_dir)))
    new = _flat(to_dict(planned))
    diff = [k for k in new if not k.startswith(IGNORED_DIFF) and k != "run_dir" and saved.get(k) != new[k]]
    if diff:
        what = ", ".join(f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in diff[:4])
        raise _err(
            spec.name,
            f"{spec.run_dir} holds a run with a different config ({what})",
            "delete that run dir to redo it, or pass another --out",
        )


def resolve_baselines(grid: Grid, runs: list[RunSpec]) -> dict[str, str]:
    """``{variant: baseline variant}`` from ``grid.baseline`` (method names apply at equal axis values).

    Raises:
        GridError: a name that is neither a method nor a variant, or a variant compared with itself.
    """
    variants = {r.variant: r for r in runs}
    by_method: dict[str, list[RunSpec]] = {}
    for r in runs:
        if r.variant not in [x.variant for x in by_method.get(r.method, [])]:
            by_method.setdefault(r.method, []).append(r)
    out: dict[str, str] = {}
    for key, base in grid.baseline.items():
        for name in (key, base):
            if name not in grid.methods and name not in variants:
                close = difflib.get_close_matches(name, [*grid.methods, *variants], n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise _err(f"baseline.{key}", f"{name!r} is not a method or variant", f"{hint}use a name from methods")
        targets = [variants[key]] if key in variants else by_method[key]
        for run in targets:
            if base in variants:
                out[run.variant] = base
                continue
            match = [r for r in by_method[base] if r.axes == run.axes]
            if match:
                out[run.variant] = match[0].variant
        if any(k == v for k, v in out.items()):
            raise _err(f"baseline.{key}", "a method cannot be its own baseline", "name another method")
    return out


# ============================================================================= running
def threads_per_run(parallel: int) -> int:
    """Threads each of ``parallel`` concurrent runs gets: ``max(1, cpu_count // parallel)``."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def command(spec: RunSpec, config: Path) -> list[str]:
    """The process a run is: ``empg train`` fresh, or ``--resume`` when the run dir holds a started run."""
    base = [sys.executable, "-m", "empg.cli"]
    if spec.name == "sft":
        return [*base, "sft", "--config", str(config), *spec.overrides, f"run_dir={spec.run_dir}"]
    if spec.state == "resume":
        return [*base, "train", "--resume", str(spec.run_dir), *spec.overrides]
    return [*base, "train", "--config", str(config), *spec.overrides, f"run_dir={spec.run_dir}"]


@dataclass
class _Job:
    spec: RunSpec
    proc: subprocess.Popen
    started: float
    task: Any = None


def _start(spec: RunSpec, config: Path, threads: int) -> _Job:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = command(spec, config)
    with spec.log.open("a") as log:  # the child keeps its own handle
        log.write(f"\n=== empg sweep {time.strftime('%Y-%m-%d %H:%M:%S')} ({spec.state}): {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return _Job(spec, proc, time.perf_counter())


def _last_iteration(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
        return int(json.loads(lines[-1])["iteration"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _finish(job: _Job, rc: int) -> None:
    spec = job.spec
    spec.returncode = rc
    spec.wall_s = round(time.perf_counter() - job.started, 3)
    spec.state = "done" if rc == 0 else "failed"
    if rc == 0 and spec.name != "sft":
        marker = {"iterations": spec.iterations, "wall_s": spec.wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (spec.run_dir / DONE_MARKER).write_text(json.dumps(marker, indent=2))


def execute(plan: Plan, specs: list[RunSpec], parallel: int, console: Any, threads: int) -> None:
    """Run ``specs`` ``parallel`` at a time with a rich progress display; update their states; keep sweep.json
    current. On Ctrl-C the running children are terminated (their checkpoints stay resumable) and it re-raises."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    queue, running = list(specs), []
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        total = progress.add_task("[bold]sweep", total=len(specs))
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    job = _start(queue.pop(0), plan.grid.config, threads)
                    job.task = progress.add_task(job.spec.name, total=max(job.spec.iterations, 1))
                    running.append(job)
                for job in list(running):
                    progress.update(job.task, completed=_last_iteration(job.spec.run_dir))
                    rc = job.proc.poll()
                    if rc is None:
                        continue
                    running.remove(job)
                    _finish(job, rc)
                    progress.remove_task(job.task)
                    progress.advance(total)
                    _announce(console, job.spec)
                    write_sweep_json(plan)
                time.sleep(0.2)
        except KeyboardInterrupt:
            for job in running:
                _stop(job)
            raise


def _stop(job: _Job) -> None:
    job.proc.terminate()
    try:
        job.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        job.proc.kill()
        job.proc.wait()
    job.spec.state = "interrupted"


def _announce(console: Any, spec: RunSpec) -> None:
    if spec.state == "done":
        console.print(f"[green]done[/] {spec.name} ({spec.wall_s:.1f} s)")
    else:
        console.print(f"[red]FAILED[/] {spec.name} (exit {spec.returncode}); log: {spec.log}", highlight=False)


# ============================================================================= sweep.json and the entry point
def _run_record(plan: Plan, spec: RunSpec, earlier_wall: float | None) -> dict:
    """The sweep.json entry of a run; a run finished by an earlier sweep call keeps that call's wall time."""
    rec = asdict(spec)
    rec["run_dir"] = str(spec.run_dir.relative_to(plan.out))
    rec["log"] = str(spec.log.relative_to(plan.out)) if spec.log else None
    rec["status"] = {"new": "pending", "resume": "pending"}.get(spec.state, spec.state)
    del rec["state"]
    if rec["status"] == "done" and spec.wall_s is None:
        marker = spec.run_dir / DONE_MARKER
        rec["wall_s"] = json.loads(marker.read_text()).get("wall_s") if marker.is_file() else earlier_wall
    return rec


def write_sweep_json(plan: Plan, extra: dict | None = None) -> Path:
    """Write ``OUT/sweep.json`` atomically (grid, baselines, runs with status and wall time)."""
    path = plan.out / SWEEP_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    earlier = [*previous.get("runs", []), previous.get("sft") or {}]
    walls = {r["name"]: r.get("wall_s") for r in earlier if "name" in r}
    data = {
        "name": plan.grid.name,
        "grid_file": str(plan.grid.path),
        "config": str(plan.grid.config),
        "grid": plan.grid.raw,
        "baselines": plan.baselines,
        "seeds": plan.grid.seeds,
        "sft": _run_record(plan, plan.sft, walls.get("sft")) if plan.sft else None,
        "runs": [_run_record(plan, r, walls.get(r.name)) for r in plan.runs],
        **{k: v for k, v in previous.items() if k in ("started", "parallel", "threads_per_run")},
        **(extra or {}),
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def render_plan(plan: Plan) -> Any:
    """A rich Table of the plan: run, seed, state, run dir."""
    from rich.table import Table

    table = Table(title=f"sweep {plan.grid.name}: {len(plan.runs)} runs -> {plan.out}")
    for col in ("#", "run", "seed", "state", "run dir"):
        table.add_column(col)
    rows = ([plan.sft] if plan.sft else []) + plan.runs
    for i, spec in enumerate(rows):
        state = f"resume from iteration {spec.start_iteration}" if spec.state == "resume" else spec.state
        seed = "" if spec.name == "sft" else str(spec.seed)
        table.add_row(str(i), spec.name, seed, state, str(spec.run_dir))
    return table


def run_sweep(
    grid_path: str | Path,
    *,
    out: str | Path | None = None,
    parallel: int = 1,
    dry_run: bool = False,
    console: Any = None,
) -> int:
    """``empg sweep``: validate, plan, (shared SFT,) run; return the exit code (0 ok, 1 when any run failed).

    Raises:
        GridError: the grid or one of its runs is invalid (nothing was started).
    """
    from rich.console import Console

    console = console or Console()
    if parallel < 1:
        raise _err("--parallel", f"must be >= 1, got {parallel}", "pass --parallel 1 or more")
    grid = load_grid(grid_path)
    plan = make_plan(grid, out if out is not None else Path("runs") / "sweeps" / grid.name)
    console.print(render_plan(plan))
    if dry_run:
        for spec in ([plan.sft] if plan.sft else []) + plan.runs[:1]:
            console.print(f"{spec.name}: {' '.join(command(spec, grid.config))}", highlight=False, soft_wrap=True)
        return 0
    threads = threads_per_run(parallel)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_sweep_json(plan, {"started": started, "parallel": parallel, "threads_per_run": threads})
    try:
        if plan.sft is not None and plan.sft.state != "done":
            execute(plan, [plan.sft], 1, console, threads_per_run(1))
            if plan.sft.state != "done":
                for spec in plan.runs:
                    spec.state = "skipped" if spec.state != "done" else spec.state
                write_sweep_json(plan)
                console.print(f"[red]shared SFT failed[/]; log: {plan.sft.log}; no run was started", highlight=False)
                return 1
        todo = [s for s in plan.runs if s.state in ("new", "resume")]
        execute(plan, todo, parallel, console, threads)
    except KeyboardInterrupt:
        write_sweep_json(plan, {"wall_s": round(time.perf_counter() - t0, 3)})
        console.print(f"interrupted; rerun `empg sweep {grid_path} --out {plan.out}` to continue")
        return 130
    write_sweep_json(
        plan, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(time.perf_counter() - t0, 3)}
    )
    return _summary(plan, console)


def _summary(plan: Plan, console: Any) -> int:
    failed = [s for s in plan.runs if s.state != "done"]
    console.print(f"{len(plan.runs) - len(failed)}/{len(plan.runs)} runs done; {plan.out / SWEEP_FILE}")
    for spec in failed:
        console.print(f"[red]{spec.state}[/] {spec.name}: log {spec.log}", highlight=False)
    if not failed:
        console.print(f"next: empg report {plan.out}")
    return 1 if failed else 0
