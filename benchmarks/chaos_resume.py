"""Kill anywhere: SIGKILL a tiny `empg train` (SFT, then RL) at random moments, resume it, compare bit for bit.

Issue 25, part 1. The script

1. builds a micro model once (a BPE tokenizer trained on 8 household episodes, a 1-layer hidden-32 Qwen2, seed 0, as
   the tests' ``tiny_model_dir``) and runs the tiny config once uninterrupted: the reference;
2. ``--runs N`` times starts the same config as a subprocess (``empg.cli.main``), sends it SIGKILL at a random
   moment, and resumes it with ``empg train --resume RUN_DIR`` until it finishes; 1 to ``--kills-per-run`` kills a
   run (a later kill hits the resumed process). A process killed before it wrote ``config.yaml`` is started again
   (there is nothing to resume);
3. compares with the reference, bit for bit: ``metrics.jsonl`` (every key but ``time/*`` and ``perf/*``), the final
   checkpoint's ``model.safetensors`` and ``optimizer.safetensors`` (every tensor's bytes), ``base_model`` (the SFT
   result), ``sft.json``, ``eval/*.json``, ``step_entropy.jsonl`` and ``trajectories.jsonl`` (``time/*`` left out);
4. prints the kills per phase hit and the mismatches, and writes a JSON report (``--out``).

Where a kill lands: each kill aims at a phase taken in turn from SFT training, rollout, update, evaluation,
checkpoint writing and a uniformly random moment, at a random occurrence of it that the (resumed) process still has
ahead, after a random delay within that occurrence's duration in the reference run; checkpoint kills alternate
between that and "as soon as ``checkpoints/.tmp-iter_XXXX`` appears" (mid-write). The phase actually hit is read
from a trace each process writes: the child is ``empg.cli.main`` with pass-through wrappers around the trainer's
phase functions (rollout, scoring, update, evaluation, checkpoint, SFT demos / steps / evaluation), each appending a
line to a file on entry and exit; they change no computation. Nothing in the package is patched on disk.

A kill during SFT must resume SFT: ``sft.checkpoint_every`` saves SFT's state every few steps, and the process after
such a kill must restart at the step of the last SFT checkpoint (reported as "SFT resumed at step k"). Every process
runs with ``OMP_NUM_THREADS=1`` on CPU; Python's hash seed is left random, as for a user.

    python benchmarks/chaos_resume.py --runs 20 --seed 0 --out chaos.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

TARGETS = ("sft-train", "rollout", "update", "eval", "checkpoint", "random")
GROUP = {  # trace event -> the phase reported
    "sft": "sft",
    "sft-demos": "sft-demos",
    "sft-train": "sft-train",
    "sft-step": "sft-train",
    "sft-start": "sft-train",
    "sft-checkpoint": "sft-checkpoint",
    "sft-eval": "sft-eval",
    "rollout": "rollout",
    "scoring": "scoring",
    "update": "update",
    "eval": "eval",
    "checkpoint": "checkpoint",
}
AFTER = {  # the code between the end of an event and the next traced one
    "sft": "setup (base model save, reload)",
    "sft-demos": "sft-train",
    "sft-train": "sft (after training)",
    "sft-checkpoint": "sft-train",
    "sft-eval": "sft (writing sft.json)",
    "rollout": "scoring",
    "scoring": "advantages / logging",
    "update": "logging",
    "eval": "logging",
    "checkpoint": "between iterations",
}
SKIP_PREFIXES = ("time/", "perf/")


# ============================================================================= the child: empg.cli.main, traced
def child(trace: str, argv: list[str]) -> int:
    """``empg <argv>`` with every trainer phase appending ``<time> <event> <n>`` lines to ``trace`` (on exit:
    ``<event>:end``). The wrappers pass arguments and results through unchanged."""
    fh = open(trace, "a", buffering=1)  # noqa: SIM115 - open for the whole process; a line is one write()
    fh.write(f"{time.time():.6f} ready -\n")

    import empg.train.checkpoint as ckpt
    import empg.train.rl as rl
    import empg.train.sft as sft
    from empg.cli import main

    in_sft = [False]

    def emit(event: str, n: Any = "-") -> None:
        fh.write(f"{time.time():.6f} {event} {n}\n")

    def wrap(module: Any, name: str, event: str, n_of: Any = None, sft_only: bool = False, flag: bool = False):
        real = getattr(module, name)

        def traced(*args: Any, **kwargs: Any) -> Any:
            if sft_only and not in_sft[0]:
                return real(*args, **kwargs)
            label = ("sft-" + event) if (in_sft[0] and event == "checkpoint") else event
            n = n_of(args) if n_of is not None else "-"
            emit(label, n)
            if flag:
                in_sft[0] = True
            try:
                return real(*args, **kwargs)
            finally:
                if flag:
                    in_sft[0] = False
                emit(label + ":end", n)

        setattr(module, name, traced)

    real_sft_train = sft.sft_train

    def sft_train(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        first = [True]
        steps = kwargs.get("steps", 0)

        def traced_progress(step: int, loss: float) -> None:
            if first[0]:  # the first step this process ran: > 0 when SFT resumed from a checkpoint
                emit("sft-start", step)
                first[0] = False
            if step + 1 < steps:
                emit("sft-step", step + 1)  # step + 1 begins
            if progress is not None:
                progress(step, loss)

        emit("sft-train", "-")
        try:
            losses = real_sft_train(*args, progress=traced_progress, **kwargs)
            if first[0]:  # restored a checkpoint of the last step: no step left to run
                emit("sft-start", steps)
            return losses
        finally:
            emit("sft-train:end", "-")

    sft.sft_train = sft_train
    wrap(rl, "build_base_policy", "sft", flag=True)
    wrap(sft, "collect_demos", "sft-demos")
    wrap(sft, "evaluate_with_config", "sft-eval", sft_only=True)
    wrap(rl, "rollout_phase", "rollout", lambda a: a[1])
    wrap(rl, "score_phase", "scoring", lambda a: a[2])
    wrap(rl, "update_phase", "update", lambda a: a[3])
    wrap(rl, "evaluate_phase", "eval", lambda a: a[1] - 1)
    wrap(ckpt, "save_checkpoint", "checkpoint", lambda a: a[1] - (0 if in_sft[0] else 1))
    return main(argv)


# ============================================================================= setup: micro model, config
def build_model(path: Path) -> Path:
    """The tests' micro model: BPE tokenizer (1024) on 8 household episodes, 1-layer hidden-32 Qwen2 (seed 0)."""
    import torch

    from empg.policy import Policy
    from empg.policy.tiny import build_tiny_model
    from empg.policy.tokenizer import train_tokenizer
    from empg.rollout.corpus import env_corpus

    torch.set_num_threads(1)
    tok = train_tokenizer(env_corpus(("household-v0",), episodes=8), vocab_size=1024)
    Policy(build_tiny_model("micro", tok, seed=0), tok, "micro").save(path)
    return path


SMOKE = Path(__file__).resolve().parent.parent / "configs" / "household-smoke.yaml"


def overrides(run_dir: Path, model_dir: Path, args: argparse.Namespace) -> list[str]:
    """configs/household-smoke.yaml (the tests' fast run: 2 tasks x group 2, 3 turns, 16 new tokens, eval every 2 on
    2 episodes) with a short SFT, EMPG and a KL reference, a checkpoint every iteration, plain progress lines."""
    from empg.train.config import preset_overrides

    return [
        *preset_overrides(SMOKE),
        f"run_dir={run_dir}",
        f"model.spec={model_dir}",
        "model.device=cpu",
        f"iterations={args.iterations}",
        "sft.enabled=true",
        f"sft.steps={args.sft_steps}",
        "sft.episodes=4",
        "sft.batch_size=4",
        "sft.eval_episodes=2",
        f"sft.checkpoint_every={args.sft_checkpoint_every}",
        "algo.empg=true",
        "algo.kl_coef=0.01",
        "log.progress=true",
        "log.every=1",
        "log.checkpoint_every=1",
        "log.keep_checkpoints=2",
    ]


# ============================================================================= traces
def read_trace(path: Path) -> list[tuple[float, str, str]]:
    """(time, event, n) of every complete line of a trace."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((float(parts[0]), parts[1], parts[2]))
    return out


def hit_of(events: list[tuple[float, str, str]]) -> tuple[str, str]:
    """(phase, detail) a process was in when it died: the innermost open event, or the code after the last one."""
    if not events:
        return "startup", "before the trainer's first line (interpreter, imports)"
    stack: list[tuple[str, str]] = []
    for _, event, n in events:
        if event.endswith(":end"):
            if stack:
                stack.pop()
        elif event not in ("ready", "sft-step", "sft-start"):
            stack.append((event, n))
    _, last, n = events[-1]
    if last == "ready":
        return "setup", "imports, config, resume validation, model load"
    inside = f" (inside {stack[-1][0]})" if stack else ""
    if last.endswith(":end"):
        name = last[: -len(":end")]
        return AFTER.get(name, "other"), f"after {name} {n}{inside}"
    return GROUP.get(last, last), f"in {last} {n}"


class Tail:
    """Incremental reader of a trace file that the child is appending to."""

    def __init__(self, path: Path):
        self.path, self.offset, self.buf, self.events = path, 0, "", []

    def poll(self) -> list[tuple[float, str, str]]:
        try:
            with self.path.open() as fh:
                fh.seek(self.offset)
                data = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        self.buf += data
        lines = self.buf.split("\n")
        self.buf = lines.pop()
        new = [(float(t), e, n) for t, e, n in (ln.split() for ln in lines if len(ln.split()) == 3)]
        self.events.extend(new)
        return new


# ============================================================================= where a resumed process starts
def pointer_iteration(root: Path) -> int:
    """Iteration of ``root/latest`` (``iter_XXXX``), 0 without one."""
    try:
        return int((root / "latest").read_text().strip().removeprefix("iter_"))
    except (OSError, ValueError):
        return 0


def resume_point(run_dir: Path) -> dict:
    """What the next process will redo: SFT (from which step) or not, RL from which iteration."""
    base = (run_dir / "base_model" / "config.json").is_file()
    return {
        "sft_done": base,
        "sft_step": 0 if base else pointer_iteration(run_dir / "checkpoints" / "sft" / "bc" / "checkpoints"),
        "rl_iteration": pointer_iteration(run_dir / "checkpoints"),
    }


def future_events(ref: list[dict], point: dict) -> list[dict]:
    """The reference's events (entries only) that a process started at ``point`` will go through."""
    out = []
    for e in ref:
        name = e["event"]
        if name.startswith("sft"):
            if point["sft_done"]:
                continue
            if name == "sft-step" and int(e["n"]) <= point["sft_step"]:  # a resumed SFT's first line is step k + 1
                continue
            if name == "sft-checkpoint" and int(e["n"]) <= point["sft_step"]:
                continue
        elif name in ("rollout", "scoring", "update", "eval", "checkpoint") and int(e["n"]) < point["rl_iteration"]:
            continue
        out.append(e)
    return out


def reference_events(events: list[tuple[float, str, str]]) -> list[dict]:
    """Entry / point events of the reference trace with the time to the next line (their duration in the reference)."""
    out = []
    for i, (t, event, n) in enumerate(events):
        if event.endswith(":end") or event in ("ready", "sft-start", "sft"):
            continue
        nxt = events[i + 1][0] if i + 1 < len(events) else t
        out.append({"event": event, "n": n, "t": t, "dur": max(0.0, nxt - t)})
    return out


# ============================================================================= one process, maybe killed
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(CUDA_VISIBLE_DEVICES="", COLUMNS="160")
    return env


def launch(argv: list[str], trace: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(trace), *argv]
    with log.open("a") as out:
        out.write(f"$ empg {' '.join(argv)}\n")
        out.flush()
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def run_and_maybe_kill(proc: subprocess.Popen, trace: Path, plan: dict | None, run_dir: Path, timeout: float) -> dict:
    """Wait for ``proc``; with a ``plan``, SIGKILL it when it reaches the planned moment. Returns what happened."""
    tail = Tail(trace)
    t0 = time.monotonic()
    kill_at: float | None = None
    if plan is not None and plan["target"] == "random":
        kill_at = t0 + plan["delay"]
    armed = plan is not None and kill_at is None
    tmp = None
    if plan is not None and plan.get("tmp_dir"):
        tmp = run_dir / "checkpoints" / f".tmp-iter_{int(plan['event']['n']) + 1:04d}"
    try:
        return _watch(proc, tail, plan, tmp, t0, kill_at, armed, timeout)
    except BaseException:  # Ctrl-C of the benchmark: leave no trainer behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _watch(proc: subprocess.Popen, tail: Tail, plan: dict | None, tmp: Path | None, t0: float,
           kill_at: float | None, armed: bool, timeout: float) -> dict:  # fmt: skip
    while proc.poll() is None:
        now = time.monotonic()
        if now - t0 > timeout:
            proc.kill()
            proc.wait()
            return {"killed": False, "timeout": True, "rc": None}
        if armed:
            tail.poll()
            want = (plan["event"]["event"], plan["event"]["n"])
            entered = next((t for t, e, n in tail.events if (e, n) == want), None)
            if entered is not None and tmp is None:  # the delay counts from the child's own timestamp
                kill_at, armed = now + max(0.0, entered + plan["delay"] - time.time()), False
            elif entered is not None and _mtime(tmp) > entered - 0.05:
                kill_at, armed = now, False  # this save's temp dir (a crash's leftover is seconds older)
        if kill_at is not None and now >= kill_at:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                phase, detail = hit_of(read_trace(tail.path))
                return {"killed": True, "rc": proc.returncode, "phase": phase, "detail": detail,
                        "after_s": round(time.monotonic() - t0, 3)}  # fmt: skip
            break
        time.sleep(0.0005 if (armed or kill_at is not None) else 0.01)
    proc.wait()
    return {"killed": False, "rc": proc.returncode}


def plan_kill(rng: random.Random, target: str, ref: list[dict], point: dict, startup: float, kill_no: int) -> dict:
    """A kill aimed at ``target``: a random future occurrence of it and a delay within its reference duration."""
    future = future_events(ref, point)
    if target == "random" or not future:
        span = startup + (ref[-1]["t"] + ref[-1]["dur"] - future[0]["t"] if future else 0.0)
        return {"target": "random", "delay": rng.uniform(0.0, span)}
    names = {"sft-train": ("sft-train", "sft-step", "sft-checkpoint"), "eval": ("eval", "sft-eval")}.get(
        target, (target,)
    )
    candidates = [e for e in future if e["event"] in names]
    aimed = target
    if not candidates:  # nothing of it left (SFT is done): any future moment
        candidates, aimed = future, "any"
    event = rng.choice(candidates)
    tmp_dir = target == "checkpoint" and kill_no % 2 == 1
    return {"target": aimed, "event": {"event": event["event"], "n": event["n"]}, "tmp_dir": tmp_dir,
            "delay": 0.0 if tmp_dir else rng.uniform(0.0, 0.95 * event["dur"])}  # fmt: skip


# ============================================================================= comparison
def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith(SKIP_PREFIXES)}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _canon_lines(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [json.dumps(_clean(json.loads(ln)), sort_keys=True) for ln in path.read_text().splitlines() if ln.strip()]


def _canon_json(path: Path) -> str | None:
    return json.dumps(_clean(json.loads(path.read_text())), sort_keys=True) if path.is_file() else None


def _tensors(path: Path) -> dict[str, tuple[str, tuple, bytes]] | None:
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    return {
        k: (str(t.dtype), tuple(t.shape), t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for k, t in load_file(str(path)).items()
    }


def fingerprint(run_dir: Path, iterations: int) -> dict[str, Any]:
    """Everything compared, per artefact (JSON rows without time/ and perf/ keys; tensors as raw bytes)."""
    final = run_dir / "checkpoints" / f"iter_{iterations:04d}"
    out: dict[str, Any] = {
        "metrics.jsonl": _canon_lines(run_dir / "metrics.jsonl"),
        "step_entropy.jsonl": _canon_lines(run_dir / "step_entropy.jsonl"),
        "trajectories.jsonl": _canon_lines(run_dir / "trajectories.jsonl"),
        "sft.json": _canon_json(run_dir / "sft.json"),
        "final model.safetensors": _tensors(final / "model.safetensors"),
        "final optimizer.safetensors": _tensors(final / "optimizer.safetensors"),
        "base_model/model.safetensors": _tensors(run_dir / "base_model" / "model.safetensors"),
    }
    for f in sorted((run_dir / "eval").glob("*.json")):
        out[f"eval/{f.name}"] = _canon_json(f)
    return out


def differences(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(ref) | set(got)):
        a, b = ref.get(key), got.get(key)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{key}: {'missing' if b is None else 'unexpected'}")
        elif isinstance(a, list):
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            out.append(f"{key}: {len(b)} rows vs {len(a)}, first difference at row {first}")
        elif isinstance(a, dict):
            bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"{key}: {len(bad)} tensors differ ({', '.join(bad[:3])})")
        else:
            out.append(f"{key}: differs")
    return out


# ============================================================================= the benchmark
def sft_after(point: dict, events: list[tuple[float, str, str]], *, killed_again: bool, steps: int) -> str:
    """What the process after a kill did with SFT, given the disk state the kill left (``point``)."""
    starts = [int(n) for _, e, n in events if e == "sft-start"]
    if point["sft_done"]:
        return "REDONE although base_model was saved" if starts else "not redone (finished before the kill)"
    if not starts:
        return "not reached (that process was killed first)" if killed_again else "SKIPPED"
    k = point["sft_step"]
    if starts[0] != k:
        return f"WRONG: started at step {starts[0]}, the SFT checkpoint was at step {k}"
    if k == 0:
        return "started at step 0 (no SFT checkpoint yet)"
    return f"resumed at step {k}" + (" (training done, evaluation redone)" if k == steps else "")


def one_run(i: int, args: argparse.Namespace, work: Path, model: Path, ref: dict, rng: random.Random,
            kill_counter: list[int]) -> dict:  # fmt: skip
    """Run ``i``: start, kill 1..K times, resume until done; compare with the reference."""
    run_dir = work / f"run_{i:02d}"
    log = work / f"run_{i:02d}.log"
    base_argv = ["train", *overrides(run_dir, model, args)]
    n_kills = rng.randint(1, args.kills_per_run)
    kills: list[dict] = []
    processes, resume = 0, False
    t0 = time.monotonic()
    while True:
        if processes > n_kills + 3:
            return {"run": i, "error": "did not finish after its kills", "kills": kills}
        point = resume_point(run_dir)
        plan = None
        if len(kills) < n_kills:
            target = TARGETS[kill_counter[0] % len(TARGETS)]
            plan = plan_kill(rng, target, ref["events"], point, ref["startup"], kill_counter[0] // len(TARGETS))
        trace = work / f"run_{i:02d}.trace{processes}"
        argv = ["train", "--resume", str(run_dir)] if resume else base_argv
        proc = launch(argv, trace, log)
        processes += 1
        res = run_and_maybe_kill(proc, trace, plan, run_dir, args.timeout)
        if res.get("timeout"):
            return {"run": i, "error": f"process {processes} ran past {args.timeout} s (see {log})", "kills": kills}
        if res["killed"]:
            kill_counter[0] += 1
            aimed = plan["target"] + (" (tmp dir)" if plan.get("tmp_dir") else "")
            kill = {"aimed": aimed, **res, "restart_point": resume_point(run_dir)}
            kills.append(kill)
            resume = (run_dir / "config.yaml").is_file()  # else: killed before the run existed, start it again
            continue
        if res["rc"] != 0:
            return {"run": i, "error": f"process {processes} exited with {res['rc']} (see {log})", "kills": kills}
        break  # finished (possibly before a planned kill came)
    for k, kill in enumerate(kills):  # SFT in the process after each kill: resumed, restarted or skipped?
        kill["sft_after"] = sft_after(kill["restart_point"], read_trace(work / f"run_{i:02d}.trace{k + 1}"),
                                      killed_again=k + 1 < len(kills), steps=args.sft_steps)  # fmt: skip
    diffs = differences(ref["fingerprint"], fingerprint(run_dir, args.iterations))
    out = {"run": i, "kills": kills, "processes": processes, "mismatches": diffs, "seconds": time.monotonic() - t0}
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def summarise(report: dict) -> str:
    runs = report["runs"]
    kills = [k for r in runs for k in r.get("kills", [])]
    phases = Counter(k["phase"] for k in kills)
    aimed = Counter(k["aimed"] for k in kills)
    sft = Counter(k.get("sft_after", "?") for k in kills if not k["restart_point"]["sft_done"])
    bad = [r for r in runs if r.get("mismatches") or r.get("error")]
    lines = [
        f"runs: {len(runs)}   kills: {len(kills)}   processes: {sum(r.get('processes', 0) for r in runs)}   "
        f"runs that differ from the reference: {len(bad)}   total {report['seconds']:.0f} s "
        f"(reference run {report['reference_seconds']:.1f} s)",
        "kills by phase hit: " + ", ".join(f"{p} {c}" for p, c in phases.most_common()),
        "kills by phase aimed at: " + ", ".join(f"{p} {c}" for p, c in aimed.most_common()),
        "SFT after a kill before base_model was saved: "
        + (", ".join(f"{p} {c}" for p, c in sft.most_common()) or "none"),
    ]
    for r in bad:
        lines.append(f"run {r['run']}: {r.get('error') or '; '.join(r['mismatches'])}")
    return "\n".join(lines)


def print_table(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a core dependency
        print(summarise(report))
        return
    table = Table(title="chaos_resume: SIGKILL, resume, compare with an uninterrupted run")
    for col in ("run", "kills: phase hit (aimed at)", "SFT after the kill", "processes", "s", "result"):
        table.add_column(col)
    for r in report["runs"]:
        hits = "; ".join(f"{k['phase']} ({k['aimed']}, {k['detail']})" for k in r.get("kills", []))
        sft = "; ".join(k.get("sft_after", "") for k in r.get("kills", []) if not k["restart_point"]["sft_done"])
        result = r.get("error") or ("; ".join(r["mismatches"]) if r["mismatches"] else "identical")
        table.add_row(str(r["run"]), hits, sft, str(r.get("processes", "")), f"{r.get('seconds', 0):.0f}", result)
    console = Console(width=200)
    console.print(table)
    console.print(summarise(report), highlight=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="killed-and-resumed runs (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (the training seed is fixed: 0)")
    ap.add_argument("--kills-per-run", type=int, default=2, help="each run is killed 1..K times (default 2)")
    ap.add_argument("--iterations", type=int, default=6, help="RL iterations of the tiny config (default 6)")
    ap.add_argument("--sft-steps", type=int, default=40, help="SFT steps of the tiny config (default 40)")
    ap.add_argument("--sft-checkpoint-every", type=int, default=8, help="sft.checkpoint_every (default 8)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a process counts as hung")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report there")
    ap.add_argument("--workdir", type=Path, default=None, help="where runs go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories, logs and traces")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.kills_per_run < 1:
        ap.error("--runs and --kills-per-run must be >= 1")

    t_start = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="chaos_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    model = build_model(work / "model")

    t0, t_launch = time.monotonic(), time.time()
    ref_dir = work / "reference"
    proc = launch(["train", *overrides(ref_dir, model, args)], work / "reference.trace", work / "reference.log")
    res = run_and_maybe_kill(proc, work / "reference.trace", None, ref_dir, args.timeout)
    ref_seconds = time.monotonic() - t0
    if res["rc"] != 0:
        print(f"the reference run failed (rc {res['rc']}); see {work / 'reference.log'}", file=sys.stderr)
        return 1
    ref_trace = read_trace(work / "reference.trace")
    ref = {
        "events": reference_events(ref_trace),
        "fingerprint": fingerprint(ref_dir, args.iterations),
    }
    ref["startup"] = ref["events"][0]["t"] - t_launch if ref["events"] else 2.0  # launch -> first traced phase
    print(f"reference: {ref_seconds:.1f} s, {len(ref['events'])} traced events", flush=True)

    rng = random.Random(args.seed)
    counter = [0]
    runs = []
    for i in range(args.runs):
        r = one_run(i, args, work, model, ref, rng, counter)
        runs.append(r)
        status = r.get("error") or ("identical" if not r["mismatches"] else "; ".join(r["mismatches"]))
        hits = ", ".join(k["phase"] for k in r.get("kills", []))
        print(f"run {i:2d}: kills in [{hits}] -> {status} ({r.get('seconds', 0):.0f} s)", flush=True)

    report = {
        "runs": runs,
        "n_runs": len(runs),
        "n_kills": sum(len(r.get("kills", [])) for r in runs),
        "phases_hit": dict(Counter(k["phase"] for r in runs for k in r.get("kills", []))),
        "mismatched_runs": sum(bool(r.get("mismatches") or r.get("error")) for r in runs),
        "seconds": time.monotonic() - t_start,
        "reference_seconds": ref_seconds,
        "config": overrides(Path("RUN_DIR"), Path("MODEL_DIR"), args),
        "seed": args.seed,
        "kills_per_run": args.kills_per_run,
    }
    print_table(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"report: {args.out}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["mismatched_runs"] == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
