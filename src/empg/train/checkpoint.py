"""Atomic checkpoints: model + optimizer in safetensors, RNG states and progress in JSON. Never pickles.

Layout of ``run_dir/checkpoints/iter_XXXX/``:

* the policy directory written by ``Policy.save`` (``model.safetensors``, ``config.json``, tokenizer files);
* ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()["state"]`` under ``state/<param>/<name>``;
* ``state.json``: ``iteration`` (iterations completed), optimizer ``param_groups``, RNG states (Python ``random``,
  NumPy, torch CPU [+ CUDA]) and any extra JSON the trainer adds.

A checkpoint is written to ``checkpoints/.tmp-iter_XXXX`` and renamed into place, then the ``checkpoints/latest``
pointer file (the directory name) is replaced atomically, so a process killed at any moment leaves either the old or
the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


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
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("/", 2)
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
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(iteration)
    tmp = root / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save(tmp)
    state: dict[str, Any] = {"iteration": iteration, "rng": get_rng_state(), "extra": extra or {}}
    if optimizer is not None:
        tensors, groups = optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["param_groups"] = groups
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_latest(root, final.name)
    if keep > 0:
        _prune(root, keep)
    return final


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name)
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``checkpoints/latest`` points to, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


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
    if optimizer is not None and opt_file.is_file():
        load_optimizer(optimizer, load_file(str(opt_file)), state["param_groups"])
    set_rng_state(state["rng"])
    return state
