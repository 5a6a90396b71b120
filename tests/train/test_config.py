"""Config: presets load and validate, overrides, unknown keys with close matches, clear errors, --help text."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from empg.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    format_help,
    from_dict,
    iter_fields,
    load_config,
    load_run_config,
    to_dict,
    to_yaml,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_required_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {
        "household-tiny",
        "household-tiny-sft",
        "shop-tiny",
        "search-tiny",
        "household-smollm",
        "alfworld-qwen1.5b",
    } <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.iterations >= 1


def test_gpu_preset_mirrors_the_paper():
    cfg = load_config(CONFIGS / "alfworld-qwen1.5b.yaml")
    assert cfg.model.spec == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (cfg.rollout.group_size, cfg.rollout.n_tasks, cfg.env.max_turns) == (8, 16, 50)
    assert (cfg.optim.lr, cfg.algo.kl_coef, cfg.iterations) == (1e-6, 0.01, 150)
    assert cfg.rollout.max_new_tokens == 512 and cfg.eval.temperature == 0.4


def test_overrides_apply_and_are_typed():
    cfg = load_config(CONFIGS / "household-tiny.yaml", ["algo.zeta=0.05", "seed=2", "eval.splits=[eval_out]"])
    assert cfg.algo.zeta == 0.05 and cfg.seed == 2 and cfg.eval.splits == ["eval_out"]
    assert isinstance(cfg.algo.zeta, float)


def test_dapo_derived_defaults():
    grpo = load_config(None, ["algo.base=grpo"])
    dapo = load_config(None, ["algo.base=dapo"])
    assert (grpo.algo.effective_clip_high, grpo.algo.effective_dynamic_sampling) == (0.2, False)
    assert (dapo.algo.effective_clip_high, dapo.algo.effective_dynamic_sampling) == (0.28, True)
    assert load_config(None, ["algo.base=dapo", "algo.clip_high=0.3"]).algo.effective_clip_high == 0.3


def test_unknown_key_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algo.zetta=0.1"])
    assert e.value.field == "algo.zetta" and "algo.zeta" in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError, match=r"algo\.kl_coeff.*bad\.yaml.*algo\.kl_coef"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "field", "needle"),
    [
        ("algo.base=ppo", "algo.base", "grpo, dapo"),
        ("algo.zeta=-1", "algo.zeta", ">= 0"),
        ("algo.zeta=abc", "algo.zeta", "could not be converted"),
        ("rollout.group_size=1", "rollout.group_size", "group_size >= 2"),
        ("algo.dual_clip=0.5", "algo.dual_clip", "> 1"),
        ("algo.final_norm=median", "algo.final_norm", "traj_mean"),
        ("algo.entropy_norm=traj", "algo.entropy_norm", "batch, group"),
        ("algo.step_entropy=max", "algo.step_entropy", "action"),
        ("env.id=househld-v0", "env.id", "household-v0"),
        ("eval.splits=[test]", "eval.splits", "eval_out"),
        ("optim.lr=0", "optim.lr", "> 0"),
        ("rollout.temperature=0", "rollout.temperature", "(0, 10]"),
        ("rollout.env_workers=-1", "rollout.env_workers", ">= 0"),
        ("rollout.action_memory=-1", "rollout.action_memory", ">= 0"),
        ("rollout.admissible_style=table", "rollout.admissible_style", "list, grouped"),
        ("model.backend=tpu", "model.backend", "hf, vllm"),
        ("sft.noise=1", "sft.noise", "[0, 1)"),
        ("sft.schedule=exponential", "sft.schedule", "constant, cosine, linear"),
        ("optim.schedule=step", "optim.schedule", "constant, cosine, linear"),
        ("optim.warmup_steps=-1", "optim.warmup_steps", ">= 0"),
        ("rollout.top_p=0.9", "rollout.top_p", "truncated distribution"),
        ("model.init=no-such-warmstart", "model.init", "no warm start"),
        ("sft.warmup_steps=-5", "sft.warmup_steps", ">= 0"),
    ],
)
def test_errors_name_field_problem_and_fix(override, field, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.field == field
    assert needle in str(e.value)
    assert "Fix:" in str(e.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["algo.zeta"])


def test_missing_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_yaml_and_dict():
    cfg = load_config(CONFIGS / "household-tiny.yaml", ["algo.base=dapo"])
    assert from_dict(to_dict(cfg)) == cfg
    assert "base: dapo" in to_yaml(cfg)
    assert apply_overrides(cfg, ["iterations=7"]).iterations == 7


def test_every_field_has_help_and_appears_in_help_text():
    text = format_help()
    rows = iter_fields()
    assert len(rows) > 50
    for name, _type, _default, help_text in rows:
        assert help_text, f"{name} has no help"
        assert f"    {name} (" in text


def test_scale_out_switches_default_to_one_process(monkeypatch):
    import empg.train.config as config_module

    cfg = TrainConfig()
    assert (cfg.rollout.env_workers, cfg.model.backend) == (0, "hf")
    # the switch itself, whether or not the [ray] extra is installed here (its check has its own test below)
    monkeypatch.setattr(config_module, "_installed", lambda module: True)
    assert load_config(None, ["rollout.env_workers=3"]).rollout.env_workers == 3


@pytest.mark.parametrize(
    ("section", "name", "value", "module"),
    [("model", "backend", "vllm", "vllm"), ("rollout", "env_workers", 2, "ray")],
)
def test_a_missing_extra_is_a_config_error_except_when_reading_a_finished_run(
    section, name, value, module, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    fix = f'pip install -e ".[{module}]"'
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}.{name}={value}"])
    assert e.value.field == f"{section}.{name}" and "not installed" in e.value.problem and fix in e.value.fix
    # a finished run's config still loads for `empg eval` and plots; resuming it (apply_overrides) checks again
    saved = TrainConfig()
    setattr(getattr(saved, section), name, value)
    (tmp_path / "config.yaml").write_text(to_yaml(saved))
    cfg = load_run_config(tmp_path)
    assert getattr(getattr(cfg, section), name) == value
    with pytest.raises(ConfigError, match=re.escape(fix)):
        apply_overrides(cfg, [])


def test_algo_empg_params_map_the_bonus_switch_to_zeta_zero():
    from empg.algos import EMPGParams
    from empg.train.config import AlgoConfig

    assert AlgoConfig(zeta=0.3, k=2.0).empg_params() == EMPGParams(k=2.0, zeta=0.3)
    assert AlgoConfig(zeta=0.3, use_bonus=False, use_scaling=False).empg_params() == EMPGParams(
        zeta=0.0, use_scaling=False
    )
