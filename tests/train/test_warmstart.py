"""Shipped warm starts: export with a manifest, hash verification before any work, install into a run."""

from __future__ import annotations

import json

import pytest

from empg.cli import main
from empg.eval.runlog import read_metrics
from empg.train import rl
from empg.train.config import ConfigError, load_config
from empg.train.warmstart import WarmStartError, export, file_hash, resolve, verify


@pytest.fixture
def warm(tmp_path, tiny_model_dir):
    """The session's micro model exported as a warm start."""
    return export(tiny_model_dir, tmp_path / "warm", name="warm", rebuild="empg sft --export X", config={}, sft={})


def test_export_writes_every_file_hash_and_verify_accepts_it(warm, tiny_model_dir):
    manifest = json.loads((warm / "manifest.json").read_text())
    names = sorted(p.name for p in tiny_model_dir.iterdir() if p.is_file())
    assert sorted(manifest["files"]) == names and "model.safetensors" in names
    assert manifest["files"]["model.safetensors"] == file_hash(warm / "model.safetensors")
    assert verify(warm)["rebuild"] == "empg sft --export X"


def test_a_changed_file_is_refused_with_the_rebuild_command(warm):
    weights = warm / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(WarmStartError, match=r"model\.safetensors has sha256 .*empg sft --export X"):
        verify(warm)


def test_a_missing_or_an_unlisted_weight_file_is_refused(warm):
    (warm / "extra.bin").write_bytes(b"\x80\x04not a model")
    with pytest.raises(WarmStartError, match=r"extra\.bin.*nothing is ever unpickled"):
        verify(warm)
    (warm / "extra.bin").unlink()
    (warm / "config.json").unlink()
    with pytest.raises(WarmStartError, match="lacks config.json"):
        verify(warm)


def test_names_resolve_to_the_package_and_paths_stay_paths(tmp_path):
    assert resolve("household-tiny").parts[-2:] == ("warmstarts", "household-tiny")
    assert resolve(str(tmp_path)) == tmp_path


def test_model_init_is_checked_before_any_work(warm, tmp_path, tiny_model_dir, fast, capsys):
    (warm / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        load_config(None, fast(tmp_path / "run", tiny_model_dir, f"model.init={warm}"))
    assert e.value.field == "model.init" and "tokenizer.json" in e.value.problem
    assert main(["train", *fast(tmp_path / "run", tiny_model_dir, f"model.init={warm}")]) == 2
    assert "rebuild" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_run_starts_from_the_warm_start_without_sft(warm, tmp_path, tiny_model_dir, fast):
    cfg = load_config(None, fast(tmp_path / "run", "tiny-1m", f"model.init={warm}", "sft.enabled=true", "iterations=1"))
    run = rl.setup_run(cfg)  # model.spec tiny-1m is not built, SFT does not run
    assert not (tmp_path / "run" / "sft.json").exists()
    base = tmp_path / "run" / "base_model"
    assert file_hash(base / "model.safetensors") == file_hash(warm / "model.safetensors")
    assert run.policy.model.config.hidden_size == 32  # the micro model, not tiny-1m
    rl.train(cfg)
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [1]


def test_sft_export_builds_a_verified_warm_start(tmp_path, tiny_model_dir, fast):
    out = tmp_path / "exported"
    args = fast(tmp_path / "sft", tiny_model_dir, "sft.steps=2", "sft.episodes=2", "sft.eval_episodes=1")
    assert main(["sft", *args, "--export", str(out)]) == 0
    manifest = verify(out)
    assert manifest["rebuild"].startswith("empg sft ") and manifest["rebuild"].endswith(f"--export {out}")
    assert manifest["sft"]["demo_episodes"] == 2 and "losses" not in manifest["sft"]
    assert manifest["config"]["model"]["init"] is None


def test_every_packaged_warm_start_verifies_and_every_preset_names_one_that_exists():
    from pathlib import Path

    from empg.policy import Policy
    from empg.train.warmstart import packaged

    names = packaged()
    assert {"household-tiny-constrained", "household-tiny-take-first"} <= set(names)
    for name in names:
        manifest = verify(resolve(name))
        assert manifest["name"] == name and "--export src/empg/warmstarts/" + name in manifest["rebuild"]
        policy = Policy.load(resolve(name))
        assert sum(p.numel() for p in policy.model.parameters()) > 0
    configs = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(configs.glob("*.yaml")):
        init = load_config(path).model.init
        if init is not None and "/" not in init:
            assert init in names, f"{path.name} names model.init={init!r}, which is not a packaged warm start"


def test_the_quick_start_reads_its_warm_starts_prompts_and_the_previous_preset_stays_reachable():
    from pathlib import Path

    preset = Path(__file__).resolve().parents[2] / "configs" / "household-tiny.yaml"
    cfg = load_config(preset)
    trained = verify(resolve(cfg.model.init))["config"]["rollout"]
    assert cfg.model.init == "household-tiny-take-first"
    assert (cfg.rollout.task_reminder, cfg.rollout.thoughts) == (True, "take_first")
    assert (trained["task_reminder"], trained["thoughts"], trained["history"]) == (True, "take_first", 2)
    with pytest.raises(ConfigError) as e:  # the shipped templates on the take-first model: refused before any work
        load_config(preset, ["rollout.thoughts=verb"])
    assert e.value.field == "rollout.thoughts" and "'take_first'" in e.value.fix
    # the previous preset, as the configs header says: session 10's warm start with its prompts
    old = load_config(
        preset, ["model.init=household-tiny-constrained", "rollout.task_reminder=false", "rollout.thoughts=verb"]
    )
    assert old.model.init == "household-tiny-constrained"


def test_a_warm_start_trained_on_other_prompts_is_refused_before_any_work(tmp_path, tiny_model_dir, fast, capsys):
    warm = export(
        tiny_model_dir,
        tmp_path / "warm",
        name="warm",
        rebuild="empg sft --export X",
        config={"rollout": {"history": 1, "action_memory": 20, "show_admissible": True}},
        sft={},
    )
    run = tmp_path / "run"
    ok = ["rollout.history=1", "rollout.action_memory=20"]
    assert load_config(None, fast(run, tiny_model_dir, f"model.init={warm}", *ok)).rollout.action_memory == 20
    for bad, field in [(["rollout.history=2"], "history"), (["rollout.history=1"], "action_memory")]:
        with pytest.raises(ConfigError) as e:
            load_config(None, fast(run, tiny_model_dir, f"model.init={warm}", *bad))
        assert e.value.field == f"rollout.{field}" and f"rollout.{field}=" in e.value.fix
    assert main(["train", *fast(run, tiny_model_dir, f"model.init={warm}", "rollout.history=2")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long messages
    assert "trained on prompts with rollout.history=1" in err and not run.exists()
    # a manifest written before action_memory existed means 0
    old = export(tiny_model_dir, tmp_path / "old", name="old", rebuild="X", config={"rollout": {"history": 1}}, sft={})
    assert (
        load_config(None, fast(run, tiny_model_dir, f"model.init={old}", "rollout.history=1")).rollout.action_memory
        == 0
    )
    with pytest.raises(ConfigError, match="action_memory"):
        load_config(
            None, fast(run, tiny_model_dir, f"model.init={old}", "rollout.history=1", "rollout.action_memory=2")
        )
    # ... and without task_reminder: a run that asks for the reminder on such a warm start is refused
    with pytest.raises(ConfigError) as e:
        load_config(
            None, fast(run, tiny_model_dir, f"model.init={old}", "rollout.history=1", "rollout.task_reminder=true")
        )
    assert e.value.field == "rollout.task_reminder" and "rollout.task_reminder=False" in e.value.fix
    # ... and its thoughts are the verb style's: a run with take_first thoughts on it is refused
    with pytest.raises(ConfigError) as e:
        load_config(
            None, fast(run, tiny_model_dir, f"model.init={old}", "rollout.history=1", "rollout.thoughts=take_first")
        )
    assert e.value.field == "rollout.thoughts" and "rollout.thoughts='verb'" in e.value.fix
    # ... and its prompts list the admissible actions quoted, end with the format hint and mark nothing done
    for override, field in [
        ("rollout.admissible_style=grouped", "admissible_style"),
        ("rollout.format_hint=false", "format_hint"),
        ("rollout.mark_done=true", "mark_done"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, fast(run, tiny_model_dir, f"model.init={old}", "rollout.history=1", override))
        assert e.value.field == f"rollout.{field}"
