"""Shipped warm starts: an SFT model saved with a manifest of file hashes, verified before a run uses it.

A warm start is a model directory (``Policy.save``: ``model.safetensors``, ``config.json``, tokenizer files) plus
``manifest.json``::

    {"name": "household-tiny", "files": {"model.safetensors": "<sha256>", ...},
     "rebuild": "empg sft --config configs/household-tiny.yaml --export src/empg/warmstarts/household-tiny",
     "config": {...the run config that built it...}, "sft": {...its training and evaluation summary...}}

``model.init`` names one: a bare name (``household-tiny``) is a warm start shipped inside the package
(``empg/warmstarts/<name>``), anything else a path. :func:`verify` recomputes every listed file's sha256 and refuses a
directory whose files differ from the manifest, miss a listed file, or hold a weight file the manifest does not list
(nothing is ever unpickled: the model loads from safetensors only); the error says how to rebuild it. The RL loop
then copies the verified model into ``run_dir/base_model`` and starts from it without SFT.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PACKAGED = Path(__file__).resolve().parent.parent / "warmstarts"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")


class WarmStartError(ValueError):
    """A warm start that cannot be used (missing, or not matching its manifest): ``problem`` and ``fix``."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}")


def resolve(init: str) -> Path:
    """The directory ``model.init`` names: a packaged warm start for a bare name, else the path itself."""
    if "/" not in init and "\\" not in init and not init.startswith("."):
        return PACKAGED / init
    return Path(init).expanduser()


def packaged() -> list[str]:
    """Names of the warm starts shipped in the package."""
    if not PACKAGED.is_dir():
        return []
    return sorted(p.name for p in PACKAGED.iterdir() if (p / MANIFEST).is_file())


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path) -> dict[str, Any]:
    """Check a warm-start directory against its manifest; return the manifest.

    Raises:
        WarmStartError: no such directory or manifest, a listed file missing or with another sha256, or an unlisted
            weight file (``.safetensors``/``.bin``/``.pt``/...). The message names the file and the rebuild command.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise WarmStartError(
            f"no warm start at {path} (no {MANIFEST}); packaged warm starts: {', '.join(packaged()) or 'none'}",
            "build one with `empg sft --config PRESET.yaml --export DIR`, or set model.init=null to build and SFT "
            "the model in the run",
        )
    manifest = json.loads(manifest_path.read_text())
    rebuild = manifest.get("rebuild", "empg sft --config PRESET.yaml --export DIR")
    files: dict[str, str] = manifest.get("files", {})
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise WarmStartError(f"warm start {path} lacks {name}, which its manifest lists", f"rebuild it: {rebuild}")
        got = file_hash(f)
        if got != want:
            raise WarmStartError(
                f"warm start {path}: {name} has sha256 {got[:16]}..., its manifest says {want[:16]}... (the file was "
                "changed or truncated)",
                f"restore it from git (`git checkout -- {f}`) or rebuild it: {rebuild}",
            )
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES and f.name not in files:
            raise WarmStartError(
                f"warm start {path} holds {f.name}, which its manifest does not list (only the files listed there are "
                "loaded, and nothing is ever unpickled)",
                f"remove {f.name}, or rebuild the warm start: {rebuild}",
            )
    return manifest


def install(init: str, dest: Path) -> dict[str, Any]:
    """Verify the warm start ``init`` names and copy its model files into ``dest`` (the run's ``base_model``)."""
    src = resolve(init)
    manifest = verify(src)
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in manifest["files"]:
        shutil.copy2(src / name, tmp / name)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return manifest


def export(model_dir: Path, out: Path, *, name: str, rebuild: str, config: dict, sft: dict) -> Path:
    """Copy a saved model into ``out`` and write its manifest (sha256 of every file, the rebuild command, the config
    and the SFT summary, without the per-step losses)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = {}
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, out / f.name)
            files[f.name] = file_hash(out / f.name)
    summary = {k: v for k, v in sft.items() if k != "losses"}
    manifest = {"name": name, "files": files, "rebuild": rebuild, "config": config, "sft": summary}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
