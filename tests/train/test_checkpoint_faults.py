"""Corrupt, foreign and unwritable checkpoints (issue 25, parts 2 and 3; docs/reliability.md lists them).

Each fault is made on a copy of one real 3-iteration run (checkpoints after every iteration), then
``empg train --resume`` runs: it either falls back to the newest complete checkpoint with a warning naming the damaged
file and then reproduces the uninterrupted run (metrics and final weights), or stops with exit code 2 and a message
naming the file and the fix. Never a traceback, never a silent restart from iteration 0, never an unpickled file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from empg.cli import main
from empg.eval.runlog import read_metrics
from empg.policy import Policy
from empg.train import checkpoint as ckpt

EXTRA = ("iterations=3", "log.checkpoint_every=1", "log.keep_checkpoints=0")
VOLATILE = ("time/", "perf/")  # wall-clock metrics: the only keys allowed to differ between identical runs
_REFERENCE: dict = {}


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _flat(text: str) -> str:
    """``text`` without whitespace (rich wraps long lines, and may fold a long path)."""
    return "".join(text.split())


@pytest.fixture
def reference(tmp_path_factory, tiny_model_dir, fast):
    """The uninterrupted run (built once per session): 3 iterations, checkpoints iter_0001..iter_0003."""
    if "dir" not in _REFERENCE:
        run_dir = tmp_path_factory.mktemp("reference") / "run"
        assert main(["train", *fast(run_dir, tiny_model_dir, *EXTRA)]) == 0
        _REFERENCE["dir"] = run_dir
    return _REFERENCE["dir"]


@pytest.fixture
def run_copy(reference, tmp_path):
    """A copy of the reference run to damage."""
    dst = tmp_path / "run"
    shutil.copytree(reference, dst)
    return dst


def _assert_same_as(run_dir, reference):
    """The resumed run equals the uninterrupted one: metrics (but wall-clock) and final model + optimizer."""
    assert _stable(read_metrics(run_dir)) == _stable(read_metrics(reference))
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(reference / "checkpoints" / "iter_0003" / name))
        b = load_file(str(run_dir / "checkpoints" / "iter_0003" / name))
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_recorded_sizes(ckpt_dir):  # a checkpoint written before state.json recorded file sizes
    state = json.loads((ckpt_dir / "state.json").read_text())
    del state["files"]
    (ckpt_dir / "state.json").write_text(json.dumps(state))


def _crash_while_writing(root):  # killed inside save_checkpoint of iteration 3: the temp dir, no rename, old pointer
    os.replace(root / "iter_0003", root / ".tmp-iter_0003")
    (root / ".tmp-iter_0003" / "state.json").unlink()
    (root / "latest").write_text("iter_0002")


FAULTS = {  # name: (damage(checkpoints dir), text the warning names)
    "truncated model": (lambda r: _truncate(r / "iter_0003" / "model.safetensors"), "iter_0003/model.safetensors"),
    "truncated model, no recorded sizes": (
        lambda r: (_drop_recorded_sizes(r / "iter_0003"), _truncate(r / "iter_0003" / "model.safetensors")),
        "iter_0003/model.safetensorsisdamaged",
    ),
    "truncated optimizer": (
        lambda r: _truncate(r / "iter_0003" / "optimizer.safetensors"),
        "iter_0003/optimizer.safetensors",
    ),
    "missing optimizer": (
        lambda r: (r / "iter_0003" / "optimizer.safetensors").unlink(),
        "iter_0003/optimizer.safetensorsismissing",
    ),
    "truncated tokenizer": (lambda r: _truncate(r / "iter_0003" / "tokenizer.json"), "iter_0003/tokenizer.json"),
    "no state file": (lambda r: (r / "iter_0003" / "state.json").unlink(), "iter_0003/state.jsonismissing"),
    "unparsable state file": (
        lambda r: (r / "iter_0003" / "state.json").write_text('{"iteration": 3, "rng'),
        "iter_0003/state.jsondoesnotparse",
    ),
    "crash while writing": (_crash_while_writing, ".tmp-iter_0003"),
    "pointer to a deleted checkpoint": (
        lambda r: shutil.rmtree(r / "iter_0003"),
        "latestnamesiter_0003,whichdoesnotexist",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_resume_falls_back_to_the_last_complete_checkpoint(fault, run_copy, reference, capsys):
    damage, named = FAULTS[fault]
    damage(run_copy / "checkpoints")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 0
    out = _flat(capsys.readouterr().out)
    assert "warning:" in out and _flat(named) in out, out
    assert "fromiter_0002(iteration2)" in out
    _assert_same_as(run_copy, reference)


@pytest.mark.parametrize("fault", ["all damaged", "all deleted"])
def test_resume_stops_when_no_checkpoint_is_complete(fault, run_copy, capsys):
    root = run_copy / "checkpoints"
    for name in ("iter_0001", "iter_0002", "iter_0003"):
        if fault == "all damaged":
            _truncate(root / name / "model.safetensors")
        else:
            shutil.rmtree(root / name)
    before = (run_copy / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = _flat(capsys.readouterr().err)
    assert f"nocompletecheckpointin{_flat(str(root))}" in err
    names = ["iter_0001", "iter_0002", "iter_0003"] if fault == "all damaged" else ["latestnamesiter_0003"]
    assert all(n in err for n in names), err
    assert "run_dir=NEW_DIR" in err  # the fix: how to start over, explicitly
    assert (run_copy / "metrics.jsonl").read_bytes() == before  # nothing restarted, nothing truncated


def test_a_damaged_base_model_stops_the_resume(run_copy, capsys):
    _truncate(run_copy / "base_model" / "model.safetensors")  # the KL reference and the architecture check read it
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = _flat(capsys.readouterr().err)
    assert f"basemodelisdamaged:{_flat(str(run_copy / 'base_model' / 'model.safetensors'))}isdamaged" in err
    assert "run_dir=NEW_DIR" in err


def test_no_checkpoint_yet_restarts_from_zero_with_a_warning(run_copy, reference, capsys):
    root = run_copy / "checkpoints"  # killed while writing the very first checkpoint
    shutil.rmtree(root / "iter_0002")
    shutil.rmtree(root / "iter_0003")
    (root / "latest").unlink()
    os.replace(root / "iter_0001", root / ".tmp-iter_0001")
    (root / ".tmp-iter_0001" / "state.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 0
    out = _flat(capsys.readouterr().out)
    assert ".tmp-iter_0001" in out and "noRLcheckpointyet:RLstartsatiteration0fromthesavedbase_model" in out
    _assert_same_as(run_copy, reference)


def test_a_checkpoint_of_another_model_is_refused(run_copy, tiny_model_dir, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = Policy.load(run_copy / "base_model")
    config = Qwen2Config(**{**base.model.config.to_dict(), "hidden_size": 48, "intermediate_size": 96})
    torch.manual_seed(1)
    other = Policy(Qwen2ForCausalLM(config).eval(), base.tokenizer, "other")
    opt = torch.optim.AdamW(other.model.parameters(), lr=1e-3)
    other.model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    root = run_copy / "checkpoints"
    shutil.rmtree(root / "iter_0003")  # another run's iteration-3 checkpoint copied into this one
    ckpt.save_checkpoint(run_copy, 3, other, opt)
    before = (run_copy / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = _flat(capsys.readouterr().err)
    assert _flat(str(root / "iter_0003" / "config.json")) in err
    assert _flat(str(run_copy / "base_model" / "config.json")) in err
    assert "hidden_size48vs32" in err and "Fix:move" in err
    assert (run_copy / "metrics.jsonl").read_bytes() == before


def test_optimizer_state_of_another_model_is_refused(tmp_path):
    small, large = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)

    class Saver:
        def save(self, path):
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{}")

    opt = torch.optim.AdamW(large.parameters())
    large(torch.ones(1, 5)).sum().backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, 1, Saver(), opt)
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.safetensors does not fit .* Fix: move"):
        ckpt.restore_checkpoint(path, torch.optim.AdamW(small.parameters()))


def _refuse_unpickling(monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError(f"torch.load called on {args[:1]}")

    monkeypatch.setattr(torch, "load", no_unpickling)


def test_planted_pickles_are_never_loaded(run_copy, reference, monkeypatch, capsys):
    root = run_copy / "checkpoints"
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(root / "iter_0003" / "model.safetensors")).items()}
    (root / "iter_0003" / "model.safetensors").unlink()  # newest: pickled weights only
    torch.save(zeros, root / "iter_0003" / "pytorch_model.bin")
    (root / "iter_0002" / "optimizer.safetensors").unlink()  # next: pickled optimizer only
    torch.save({"state": {}, "param_groups": []}, root / "iter_0002" / "optimizer.pt")
    for d in (root / "iter_0001", run_copy / "base_model", run_copy):  # beside the real files: ignored
        torch.save(zeros, d / "pytorch_model.bin")
        torch.save({"state": {}}, d / "optimizer.pt")
    _refuse_unpickling(monkeypatch)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 0
    out = _flat(capsys.readouterr().out)
    assert "pytorch_model.bin(pickle)isneverloaded" in out and "optimizer.pt(pickle)isneverloaded" in out
    assert "fromiter_0001(iteration1)" in out
    _assert_same_as(run_copy, reference)  # the zeros of the planted files were never used


def test_policy_load_refuses_a_pickle_only_model_dir(tiny_model_dir, tmp_path, monkeypatch):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    _refuse_unpickling(monkeypatch)
    with pytest.raises(OSError, match="model.safetensors"):
        Policy.load(d)


# ----------------------------------------------------------------------------- part 3: writes that fail
def _fail_second(monkeypatch, target, attr, error):
    """Make ``target.attr`` raise ``error`` when it writes the 2nd checkpoint (``.tmp-iter_0002``)."""
    real = getattr(target, attr)

    def failing(*args, **kwargs):
        if any(".tmp-iter_0002" in str(a) for a in args):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, failing)


def _enospc_safetensors(monkeypatch):  # how safetensors itself reports a full disk (checked on a 64 kB tmpfs)
    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    _fail_second(monkeypatch, ckpt, "save_file", error)


def _enospc_rename(monkeypatch):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "iter_0002":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _read_only(monkeypatch):  # as root chmod does not stop writes: the tokenizer/model writer raises instead
    error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "tokenizer.json")
    _fail_second(monkeypatch, Policy, "save", error)


WRITE_FAULTS = {
    "disk full (safetensors)": (_enospc_safetensors, ["ENOSPC", "freespaceonthediskholding"]),
    "disk full (rename)": (_enospc_rename, ["ENOSPC", "freespaceonthediskholding"]),
    "read-only run_dir": (_read_only, ["EACCES", "writable", "run_dir=..."]),
}


@pytest.mark.parametrize("fault", list(WRITE_FAULTS))
def test_failed_second_checkpoint_keeps_the_first_and_stops(
    fault, tmp_path, tiny_model_dir, fast, reference, monkeypatch, capsys
):
    patch, texts = WRITE_FAULTS[fault]
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    with monkeypatch.context() as m:
        patch(m)
        assert main(["train", *fast(run_dir, tiny_model_dir, *EXTRA)]) == 2
    err = _flat(capsys.readouterr().err)
    assert f"couldnotwritecheckpointiter_0002(thepreviouscheckpoint{_flat(str(root / 'iter_0001'))}isintact)" in err
    assert f"cannotwriteto{_flat(str(root))}" in err and f"--resume{_flat(str(run_dir))}" in err
    assert all(t in err for t in texts), err
    assert sorted(p.name for p in root.iterdir()) == ["iter_0001", "latest"]  # no temp dir, no iter_0002
    assert (root / "latest").read_text() == "iter_0001"
    assert ckpt.checkpoint_problem(root / "iter_0001") is None
    Policy.load(root / "iter_0001")  # loadable
    if fault == "disk full (safetensors)":  # space freed: the run continues and matches the uninterrupted one
        assert main(["train", "--resume", str(run_dir)]) == 0
        _assert_same_as(run_dir, reference)


def _writes_through_read_only(tmp_path) -> bool:
    """Whether this process writes into a chmod 0o555 directory anyway (root, or CAP_DAC_OVERRIDE)."""
    d = tmp_path / "probe"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "x").write_text("x")
        return True
    except PermissionError:
        return False
    finally:
        d.chmod(0o755)


def test_read_only_run_dir_stops_with_a_message(tmp_path, tiny_model_dir, fast, capsys):
    if _writes_through_read_only(tmp_path):
        pytest.skip("this user (root) writes through chmod 0o555; the patched-writer variant above covers it")
    run_dir = tmp_path / "run"
    assert main(["train", *fast(run_dir, tiny_model_dir, "iterations=1", "eval.every=0")]) == 0
    dirs = [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    try:
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir), "iterations=2"]) == 2
        err = _flat(capsys.readouterr().err)
        assert "EACCES" in err and "writable" in err and _flat(str(run_dir)) in err
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_write_error_messages():
    full = ckpt.write_error(OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl"))
    assert full is not None and "/runs/a" in str(full) and "free space" in full.fix
    assert ckpt.write_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None
    other = ckpt.write_error(OSError(errno.EIO, "I/O error"), "/runs/a/checkpoints", "could not write")
    assert other is not None and "--resume /runs/a" in other.fix


def test_resume_checkpoint_warns_through_warnings_without_a_console(tmp_path):
    class Saver:
        def save(self, path):
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{}")
            from safetensors.torch import save_file

            save_file({"w": torch.ones(2)}, str(path / "model.safetensors"))

    for it in (1, 2):
        ckpt.save_checkpoint(tmp_path, it, Saver(), None)
    _truncate(tmp_path / "checkpoints" / "iter_0002" / "model.safetensors")
    with pytest.warns(ckpt.CheckpointWarning, match=r"iter_0002/model\.safetensors .* resuming from iter_0001"):
        assert ckpt.resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "iter_0001"
    assert ckpt.resume_checkpoint(tmp_path, quiet=True) == tmp_path / "checkpoints" / "iter_0001"


def test_resume_without_an_rl_checkpoint_says_what_happens_next(tmp_path, tiny_model_dir):
    """No RL checkpoint yet: the warning names what the resume does (SFT continues, RL starts from the base model,
    or nothing was saved), never a blanket "starts over from iteration 0" after an SFT that was checkpointed."""
    said: list[str] = []
    assert ckpt.resume_checkpoint(tmp_path, warn=said.append) is None
    assert "starts over from the beginning (nothing was saved before)" in said[-1]
    sft_state = tmp_path / "checkpoints" / "sft" / "demos" / "iter_0005"
    sft_state.mkdir(parents=True)
    (sft_state / "state.json").write_text("{}")
    assert ckpt.resume_checkpoint(tmp_path, warn=said.append) is None
    assert "no RL checkpoint yet: SFT continues from its last checkpoint" in said[-1]
    (tmp_path / "base_model").mkdir()
    (tmp_path / "base_model" / "config.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError):  # a base model that is not complete is refused, as before
        ckpt.resume_checkpoint(tmp_path, warn=said.append)
    shutil.rmtree(tmp_path / "base_model")
    shutil.copytree(tiny_model_dir, tmp_path / "base_model")
    assert ckpt.resume_checkpoint(tmp_path, warn=said.append) is None
    assert "no RL checkpoint yet: RL starts at iteration 0 from the saved base_model" in said[-1]
