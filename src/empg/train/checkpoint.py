"""Atomic checkpoints: model + optimizer in safetensors, RNG states and progress in JSON. Never pickles.

Layout of ``run_dir/checkpoints/iter_XXXX/``:

* the policy directory written by ``Policy.save`` (``model.safetensors``, ``config.json``, tokenizer files);
* ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()["state"]`` under ``state/<param>/<name>``;
* ``state.json``: ``iteration`` (iterations completed), optimizer ``param_groups``, RNG states (Python ``random``,
  NumPy, torch CPU [+ CUDA]) and any extra JSON the trainer adds.

A checkpoint is written to ``checkpoints/.tmp-iter_XXXX`` and renamed into place, then the ``checkpoints/latest``
pointer file (the directory name) is replaced atomically, so a process killed at any moment leaves either the old or
the new checkpoint, never a half-written one. ``state.json`` is written last and records the size of every other file
(``files``), so a checkpoint damaged later (truncated, a file deleted) is recognised.

Resume (:func:`resume_checkpoint`) does not trust the pointer alone: it validates the ``iter_*`` directories newest
first (state file present and parsing, recorded file sizes, every JSON file parsing, every safetensors header parsing
and covering its file, the optimizer file present when the state records optimizer state) and resumes from the
newest complete one, warning about each one it skipped and about leftovers of a crash (``.tmp-*``, ``.old-*``). A
checkpoint whose model architecture differs from the run's ``base_model`` (another run's checkpoint copied in) is
refused, and so is a run whose checkpoints are all damaged: :class:`CheckpointError` names the files and the fix,
and nothing restarts from iteration 0 behind the user's back. A failed write (disk full, read-only directory) removes
its temporary directory, leaves the previous checkpoint and the pointer as they were and raises
:class:`CheckpointError` naming the directory and the fix. Weights are only read from safetensors: ``.bin``/``.pt``
files in a checkpoint are never opened (docs/reliability.md).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

LATEST = "latest"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # never opened (a pickle can run code)
ARCH_KEYS = (  # model config entries a checkpoint must share with the run's base model
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "tie_word_embeddings",
)
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed from: what is wrong (``problem``) and how to fix it (``fix``)."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}")


class CheckpointWarning(UserWarning):
    """A checkpoint skipped on resume (the run continues from an older one)."""


# ----------------------------------------------------------------------------- RNG states
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state() -> dict:
    """JSON-serialisable RNG states of Python, NumPy and torch (CPU, and CUDA when available)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore states saved by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- optimizer state
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split ``optimizer.state_dict()`` into flat tensors (for safetensors) and JSON ``param_groups``."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state/{idx}/{key}"] = value.detach().contiguous().cpu()
    groups = []
    for group in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("/", 2)
        if int(idx) >= len(params):
            raise ValueError(f"{name}: the optimizer has {len(params)} parameters")
        if key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master") and value.shape != params[int(idx)].shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, the parameter {tuple(params[int(idx)].shape)}")
        state.setdefault(int(idx), {})[key] = value
    fixed = []
    for group in groups:
        fixed.append({k: (tuple(v) if k == "betas" else v) for k, v in group.items()})
    optimizer.load_state_dict({"state": state, "param_groups": fixed})


# ----------------------------------------------------------------------------- save / load
def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:04d}"


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    policy: Any,
    optimizer: Any,
    *,
    extra: dict | None = None,
    keep: int = 0,
) -> Path:
    """Write ``checkpoints/iter_XXXX`` atomically and point ``checkpoints/latest`` at it.

    Args:
        run_dir: the run directory.
        iteration: iterations completed so far (resume starts at this iteration index).
        policy: object with ``save(path)`` (an :class:`empg.policy.Policy`).
        optimizer: anything with ``state_dict()`` in ``torch.optim`` layout (an optimizer, or the gathered FSDP state
            of :func:`empg.train.fsdp.full_optimizer`); it goes to ``optimizer.safetensors`` (None: no file).
        extra: JSON-serialisable data stored in ``state.json`` under ``extra``.
        keep: keep only the newest ``keep`` checkpoints (0 = keep all).

    Returns:
        The final checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / checkpoint_name(iteration)
    tmp = root / f".tmp-{final.name}"
    previous = _read_pointer(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        policy.save(tmp)
        state: dict[str, Any] = {"iteration": iteration, "rng": get_rng_state(), "extra": extra or {}}
        if optimizer is not None:
            tensors, groups = optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state["param_groups"] = groups
        state["files"] = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / "state.json").write_text(json.dumps(state))
        _install(tmp, final)
        _write_latest(root, final.name)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        intact = f"the previous checkpoint {root / previous} is intact" if previous else "no checkpoint was saved yet"
        raise write_error(err, root, f"could not write checkpoint {final.name} ({intact})") from err
    if keep > 0:
        _prune(root, keep)
    return final


def write_error(err: BaseException, where: str | Path | None = None, what: str = "") -> CheckpointError | None:
    """The :class:`CheckpointError` for a failed write to the directory ``where`` (default: the one of the file ``err``
    names). ``err`` is an OSError or a SafetensorError (safetensors reports I/O errors as "... (os error 28)").
    Disk full and not writable get their own fix; None when ``where`` is not given and the error is neither."""
    code = getattr(err, "errno", None)
    if code is None and (m := re.search(r"os error (\d+)", str(err))):
        code = int(m.group(1))
    filename = getattr(err, "filename", None)
    path = Path(where) if where is not None else Path(filename).parent if filename else None
    if where is None and code not in DISK_FULL | NOT_WRITABLE:
        return None
    place = str(path) if path is not None else "the run directory"
    run_dir = path.parent if path is not None and path.name == "checkpoints" else path
    reason = f"{getattr(err, 'strerror', None) or err} ({errno.errorcode.get(code or 0, type(err).__name__)})"
    problem = f"{what + ': ' if what else ''}cannot write to {place}: {reason}"
    resume = f"`empg train --resume {run_dir or 'RUN_DIR'}`"
    if code in DISK_FULL:
        fix = f"free space on the disk holding {place} (`df -h {path or '.'}`), then {resume}"
        return CheckpointError(
            problem, f"{fix}; or copy {run_dir or 'the run directory'} to a disk with room and resume the copy"
        )
    if code in NOT_WRITABLE:
        return CheckpointError(
            problem,
            f"make {run_dir or 'the run directory'} writable (`chmod -R u+w`, or remount read-write), then {resume}; "
            "or copy it somewhere writable and resume the copy, or start a new run with run_dir=...",
        )
    return CheckpointError(problem, f"check the disk holding {place}, then {resume}")


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first (never half-deleted in place) and put
    back when the rename fails."""
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_pointer(root: Path) -> str | None:
    """The directory name ``checkpoints/latest`` holds (None: no pointer, or not readable)."""
    try:
        name = (root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name or None


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name)
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
    for old in done[:-keep]:
        try:  # renamed first: a crash while deleting leaves a `.old-*` leftover, not a damaged iter_* directory
            trash = old.with_name(f".old-{old.name}")
            os.replace(old, trash)
        except OSError:
            trash = old
        shutil.rmtree(trash, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``checkpoints/latest`` points to, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def resolve_model_dir(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """The model to evaluate: ``checkpoint`` if given, else the latest checkpoint, else ``run_dir/base_model``."""
    if checkpoint is not None:
        path = Path(checkpoint)
    else:
        path = latest_checkpoint(run_dir) or Path(run_dir) / "base_model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {path}; train first (`empg train`) or pass --checkpoint DIR")
    return path


def load_state(ckpt_dir: str | Path) -> dict:
    """``state.json`` of a checkpoint."""
    return json.loads((Path(ckpt_dir) / "state.json").read_text())


def restore_checkpoint(ckpt_dir: str | Path, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load the optimizer state and the RNG states of a checkpoint; return its ``state.json``.

    The model itself is loaded by the caller with ``Policy.load(ckpt_dir)``.
    """
    ckpt_dir = Path(ckpt_dir)
    state = load_state(ckpt_dir)
    opt_file = ckpt_dir / "optimizer.safetensors"
    if optimizer is not None and "param_groups" in state:
        if not opt_file.is_file():
            raise CheckpointError(f"{opt_file} is missing", _fix_damaged(ckpt_dir))
        try:
            load_optimizer(optimizer, load_file(str(opt_file)), state["param_groups"])
        except (ValueError, KeyError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(
                f"{opt_file} does not fit this run's optimizer ({err})", _fix_damaged(ckpt_dir)
            ) from err
    set_rng_state(state["rng"])
    return state


# ----------------------------------------------------------------------------- validation (resume)
def checkpoint_problem(ckpt_dir: str | Path) -> str | None:
    """Why ``ckpt_dir`` is not a complete checkpoint (naming the file), or None when it is.

    Checks the state file (present, parsing, ``iteration`` matching the directory name), that the weights are
    safetensors (a pickle is never a substitute) and the optimizer file exists when the state says one was written,
    the sizes the state recorded for every file, that every JSON file parses and every safetensors header parses and
    covers its file. Reads headers only (fast for any model size); the tensors' bytes are not checksummed.
    """
    d = Path(ckpt_dir)
    state_file = d / "state.json"
    if not state_file.is_file():
        return f"{state_file} is missing (a checkpoint left half-written or damaged)"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        return f"{state_file} does not parse ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int) or "rng" not in state:
        return f"{state_file} has no iteration or RNG state"
    if d.name.startswith("iter_") and d.name != checkpoint_name(state["iteration"]):
        return f"{state_file} records iteration {state['iteration']}, not the one of {d.name} (moved or renamed)"
    if "param_groups" in state and not (d / "optimizer.safetensors").is_file():
        return f"{d / 'optimizer.safetensors'} is missing (state.json records optimizer state){_pickles_note(d)}"
    if (problem := model_dir_problem(d, full=False)) is not None:
        return problem
    for rel, size in (state.get("files") or {}).items():
        f = d / rel
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, {size} were written (truncated or overwritten)"
    return model_dir_problem(d)


def model_dir_problem(model_dir: str | Path, *, full: bool = True) -> str | None:
    """Why ``model_dir`` (a checkpoint or ``base_model``) cannot be loaded, or None: ``config.json`` and safetensors
    weights present (a pickle is never a substitute), and with ``full`` every JSON file parsing and every safetensors
    header parsing and covering its file."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        return f"{d / 'config.json'} is missing"
    index = d / "model.safetensors.index.json"
    if not (d / "model.safetensors").is_file() and not index.is_file():
        return f"{d / 'model.safetensors'} is missing{_pickles_note(d)}"
    if not full:
        return None
    for f in sorted(d.glob("*.json")):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError) as err:
            return f"{f} does not parse ({err})"
    if index.is_file():
        for shard in sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())):
            if not (d / shard).is_file():
                return f"{d / shard} (listed in {index.name}) is missing"
    for f in sorted(d.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except (OSError, SafetensorError) as err:
            return f"{f} is damaged ({err})"
    return None


def _pickles_note(d: Path) -> str:
    pickles = sorted(f.name for f in d.iterdir() if f.suffix in PICKLE_SUFFIXES)
    return f"; {', '.join(pickles)} (pickle) is never loaded" if pickles else ""


def resume_checkpoint(
    run_dir: str | Path, *, console: Any = None, quiet: bool = False, warn: Callable[[str], None] | None = None
) -> Path | None:
    """The checkpoint ``empg train --resume`` continues from: the newest complete ``checkpoints/iter_*``.

    Damaged or half-written checkpoints are skipped with a warning naming the file (on ``console``, else through
    :mod:`warnings`; ``quiet``: none, for the non-main ranks of a distributed run). Returns None only when the run
    has no RL checkpoint yet (a warning says what then happens: SFT continues from its own checkpoint, RL
    starts from the saved base model, or the run starts over).

    Raises:
        CheckpointError: every checkpoint is damaged, the newest complete one does not match the run's
            ``base_model`` (another run's checkpoint), or ``base_model`` itself is damaged: the message names the
            files and the fix.
    """
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    say = warn or _warner(console, quiet)
    base = run_dir / "base_model"
    if base.is_dir() and (problem := model_dir_problem(base)) is not None:
        raise CheckpointError(
            f"the run's base model is damaged: {problem}",
            f"copy {base} back from a backup (the same model.spec / model.init builds the same base model in a new "
            f"run_dir), or start the run over: `empg train --config {run_dir / 'config.yaml'} run_dir=NEW_DIR`",
        )
    candidates = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_")) if root.is_dir() else [],
        key=lambda p: p.name,
        reverse=True,
    )
    for leftover in sorted(root.glob(".tmp-*")) + sorted(root.glob(".old-*")):
        if leftover.is_dir():
            what = "half-written" if leftover.name.startswith(".tmp-") else "being replaced or pruned"
            say(f"ignoring {leftover}: a checkpoint left {what} by a crash (it is never loaded)")
    skipped: list[str] = []
    pointer = _read_pointer(root) if root.is_dir() else None
    if pointer is not None and not (root / pointer).is_dir():
        skipped.append(f"{root / LATEST} names {pointer}, which does not exist")
    chosen = None
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            chosen = path
            break
        skipped.append(problem)
    if chosen is None and (skipped or candidates):
        raise CheckpointError(
            f"no complete checkpoint in {root}: " + "; ".join(skipped),
            f"put a complete checkpoint back into {root} (from a backup), or start the run over in a new directory: "
            f"`empg train --config {run_dir / 'config.yaml'} run_dir=NEW_DIR`",
        )
    if chosen is None:
        say(_no_rl_checkpoint_yet(run_dir))
        return None
    check_matches_base(chosen, base)
    for problem in skipped:
        say(f"skipping a checkpoint: {problem}; resuming from {chosen.name}")
    return chosen


def _no_rl_checkpoint_yet(run_dir: Path) -> str:
    """What a resume without an RL checkpoint does: continue SFT from its own checkpoint, start RL from the saved
    base model, or start over (nothing kept)."""
    sft = run_dir / "checkpoints" / "sft"
    if (run_dir / "base_model" / "config.json").is_file():
        return f"{run_dir} has no RL checkpoint yet: RL starts at iteration 0 from the saved base_model"
    if sft.is_dir() and any(sft.rglob("state.json")):
        return f"{run_dir} has no RL checkpoint yet: SFT continues from its last checkpoint ({sft}), then RL starts"
    return f"{run_dir} has no checkpoint yet: the run starts over from the beginning (nothing was saved before)"


def check_matches_base(ckpt_dir: Path, base_dir: Path) -> None:
    """Refuse a checkpoint whose model is not the run's (its architecture or its weights' shapes differ)."""
    if not (base_dir / "config.json").is_file():
        return
    mine, theirs = (
        json.loads((base_dir / "config.json").read_text()),
        json.loads((ckpt_dir / "config.json").read_text()),
    )
    diffs = [f"{k} {theirs.get(k)!r} vs {mine.get(k)!r}" for k in ARCH_KEYS if theirs.get(k) != mine.get(k)]
    if not diffs:
        shapes_a, shapes_b = _shapes(ckpt_dir), _shapes(base_dir)
        diffs = [
            f"{k} {shapes_a[k]} vs {shapes_b[k]}"
            for k in sorted(set(shapes_a) & set(shapes_b))
            if shapes_a[k] != shapes_b[k]
        ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} is not a checkpoint of this run's model: {ckpt_dir / 'config.json'} and "
            f"{base_dir / 'config.json'} differ ({', '.join(diffs[:4])}; checkpoint vs base model)",
            f"move {ckpt_dir} out of {ckpt_dir.parent} (it belongs to another run), then resume again to continue "
            "from this run's previous checkpoint; or resume the run it came from",
        )


def _shapes(model_dir: Path) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        if f.name == "optimizer.safetensors":
            continue
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except (OSError, SafetensorError):
            continue
    return shapes


def _fix_damaged(ckpt_dir: Path) -> str:
    return (
        f"move {ckpt_dir} out of {ckpt_dir.parent} and resume again (the run continues from the previous checkpoint), "
        "or start over in a new run_dir=..."
    )


def _warner(console: Any, quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    if console is None:
        return lambda message: warnings.warn(message, CheckpointWarning, stacklevel=3)

    def say(message: str) -> None:
        from rich.markup import escape

        console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    return say
