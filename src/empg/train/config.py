"""Training configuration: dataclasses with one help text per field, YAML presets, dotted CLI overrides.

A run is configured by :class:`TrainConfig` (two levels at most: ``env.*``, ``model.*``, ``rollout.*``, ``sft.*``,
``algo.*``, ``optim.*``, ``eval.*``, ``log.*`` plus the top-level ``seed``, ``run_dir`` and ``iterations``).
:func:`load_config` builds it the same way for every entry point:

1. the structured defaults from the dataclasses,
2. merged with a YAML preset (``configs/household-tiny.yaml`` …),
3. merged with dotted overrides (``algo.zeta=0.05 seed=2``),
4. checked by :func:`validate` — the one place for every cross-field rule.

The dataclasses themselves (the schema) live in :mod:`empg.train.schema`; their names are re-exported here.

Unknown keys (in the YAML or the overrides) are errors that list close matches. Every error is a
:class:`ConfigError` naming the field, the problem and the fix, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from empg.envs import list_envs, make, split_seeds
from empg.rollout.prompts import DEFAULT_PROMPT, PromptSpec
from empg.train.schema import (
    CHOICES,
    AlgoConfig,
    ConfigError,
    EnvConfig,
    EvalConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    SFTConfig,
    TrainConfig,
)
from empg.train.warmstart import WarmStartError, resolve, verify

__all__ = [
    "CHOICES",
    "AlgoConfig",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainConfig",
    "apply_overrides",
    "format_help",
    "from_dict",
    "get_field",
    "iter_fields",
    "load_config",
    "load_run_config",
    "preset_overrides",
    "to_dict",
    "to_yaml",
    "validate",
]


# ----------------------------------------------------------------------------- validation
def _check(ok: bool, name: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(name, problem, fix)


def validate(cfg: TrainConfig, *, extras: bool = True) -> TrainConfig:
    """Check every field and every cross-field rule; raise :class:`ConfigError` on the first problem.

    Args:
        cfg: the config.
        extras: also check that the optional packages the config asks for (vLLM, Ray) are installed here. Off only
            when a finished run's config is read for evaluation or plots (``load_run_config``), which need neither.

    Returns:
        ``cfg`` unchanged, for chaining.
    """
    for name, choices in CHOICES.items():
        value = get_field(cfg, name)
        _check(value in choices, name, f"unknown value {value!r}", f"use one of {', '.join(choices)}")
    for name, low in [
        ("iterations", 0),
        ("rollout.n_tasks", 1),
        ("rollout.group_size", 1),
        ("rollout.max_new_tokens", 1),
        ("rollout.history", 0),
        ("rollout.action_memory", 0),
        ("env.train_pool", 1),
        ("sft.episodes", 1),
        ("sft.steps", 0),
        ("sft.batch_size", 1),
        ("sft.eval_episodes", 0),
        ("sft.seed_offset", 0),
        ("sft.warmup_steps", 0),
        ("sft.dagger_rounds", 0),
        ("sft.dagger_episodes", 1),
        ("sft.dagger_steps", 1),
        ("sft.checkpoint_every", 0),
        ("algo.max_resample_rounds", 0),
        ("algo.overlong_buffer", 0),
        ("algo.ppo_epochs", 1),
        ("optim.micro_batch_size", 1),
        ("optim.mini_batches", 1),
        ("optim.warmup_steps", 0),
        ("eval.every", 0),
        ("eval.episodes", 1),
        ("eval.interim_episodes", 0),
        ("log.checkpoint_every", 1),
        ("log.keep_checkpoints", 0),
        ("log.trajectories", 0),
        ("seed", 0),
    ]:
        value = get_field(cfg, name)
        _check(value >= low, name, f"must be >= {low}, got {value}", f"set {name}={max(low, 1)} or larger")
    for name in [
        "algo.reward_scale",
        "algo.invalid_penalty",
        "algo.invalid_step_penalty",
        "algo.gigpo_weight",
        "algo.k",
        "algo.k_next",
        "algo.zeta",
        "algo.kl_coef",
        "algo.entropy_coef",
        "algo.overlong_penalty",
        "algo.action_weight",
        "optim.lr",
        "optim.weight_decay",
        "optim.grad_clip",
        "sft.lr",
        "sft.weight_decay",
        "eval.temperature",
    ]:
        value = get_field(cfg, name)
        _check(
            math.isfinite(value) and value >= 0,
            name,
            f"must be a finite number >= 0, got {value}",
            f"set {name} to a non-negative value",
        )
    _check(
        0 <= cfg.algo.negative_weight <= 1,
        "algo.negative_weight",
        f"must be in [0, 1], got {cfg.algo.negative_weight}",
        "use 1 (standard) or e.g. 0.25",
    )
    _check(
        0 <= cfg.algo.gigpo_gamma <= 1,
        "algo.gigpo_gamma",
        f"must be in [0, 1], got {cfg.algo.gigpo_gamma}",
        "use 0.95 (GiGPO's default) or 1 (no discount)",
    )
    _check(cfg.algo.reward_scale > 0, "algo.reward_scale", "must be > 0 (0 makes every advantage 0)", "use e.g. 10")
    _check(cfg.optim.lr > 0, "optim.lr", "must be > 0", "use e.g. 1e-6 for LLMs, 1e-4 for the tiny models")
    _check(cfg.sft.lr > 0, "sft.lr", "must be > 0", "use e.g. 1e-3 for the tiny models")
    _check(0 <= cfg.sft.noise < 1, "sft.noise", f"must be in [0, 1), got {cfg.sft.noise}", "use 0 (off) to 0.3")
    _check(
        0 <= cfg.sft.invalid_noise < 1,
        "sft.invalid_noise",
        f"must be in [0, 1), got {cfg.sft.invalid_noise}",
        "use 0 (off) to 0.2",
    )
    _check(
        0 < cfg.rollout.temperature <= 10,
        "rollout.temperature",
        f"must be in (0, 10], got {cfg.rollout.temperature}",
        "use 1.0 (the behaviour log-probs are taken at this temperature)",
    )
    _check(
        cfg.eval.temperature > 0 or cfg.eval.greedy,
        "eval.temperature",
        "0 is not a sampling temperature",
        "set eval.greedy=true for greedy decoding, or a positive temperature such as 0.4",
    )
    _check(0 < cfg.rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {cfg.rollout.top_p}", "use 1.0")
    _check(0 < cfg.algo.clip_low < 1, "algo.clip_low", f"must be in (0, 1), got {cfg.algo.clip_low}", "use 0.2")
    clip_high = cfg.algo.clip_high
    _check(
        clip_high is None or 0 < clip_high < 10,
        "algo.clip_high",
        f"must be in (0, 10), got {clip_high}",
        "use 0.2 (GRPO), 0.28 (DAPO) or null for the base algorithm's default",
    )
    _check(
        cfg.algo.overlong_buffer <= cfg.rollout.max_new_tokens,
        "algo.overlong_buffer",
        f"must be <= rollout.max_new_tokens ({cfg.rollout.max_new_tokens}), got {cfg.algo.overlong_buffer}",
        "use e.g. a quarter of rollout.max_new_tokens, or 0 to turn the punishment off",
    )
    dual = cfg.algo.dual_clip
    _check(dual is None or dual > 1, "algo.dual_clip", f"must be > 1, got {dual}", "use 3.0 or null to turn it off")
    _check(
        cfg.rollout.group_size >= 2 or not cfg.algo.norm_by_std or cfg.iterations == 0,
        "rollout.group_size",
        "a group of one has zero advantage, so RL would not learn",
        "use rollout.group_size >= 2",
    )
    _check(
        cfg.env.max_turns is None or cfg.env.max_turns >= 1,
        "env.max_turns",
        f"must be >= 1 or null, got {cfg.env.max_turns}",
        "use null for the env's default turn limit",
    )
    for split in cfg.eval.splits:
        _check(
            split in ("train", "eval_in", "eval_out"),
            "eval.splits",
            f"unknown split {split!r}",
            "use a list of train, eval_in, eval_out, e.g. eval.splits=[eval_in,eval_out]",
        )
    _check(bool(cfg.run_dir), "run_dir", "is empty", "set run_dir=runs/my-run")
    _check(
        cfg.rollout.env_workers >= 0,
        "rollout.env_workers",
        f"must be >= 0, got {cfg.rollout.env_workers}",
        "use 0 for envs in this process or N > 0 for N Ray env workers",
    )
    _check(
        cfg.rollout.env_step_timeout >= 0,
        "rollout.env_step_timeout",
        f"must be >= 0 seconds, got {cfg.rollout.env_step_timeout}",
        "use e.g. rollout.env_step_timeout=120, or 0 to wait for env workers forever",
    )
    _check(
        cfg.rollout.top_p == 1.0 or cfg.iterations == 0,
        "rollout.top_p",
        f"top_p={cfg.rollout.top_p} < 1 for training rollouts: the update's log-probs and EMPG's entropies come from "
        "the full softmax, so the PPO ratio would not describe the truncated distribution that was sampled from",
        "use rollout.top_p=1.0 for training (evaluation samples at eval.temperature)",
    )
    _check(
        not (cfg.rollout.constrain_actions and cfg.model.backend == "vllm"),
        "rollout.constrain_actions",
        "constrained decoding is implemented in the hf back end only; model.backend=vllm cannot apply the trie",
        "use model.backend=hf with rollout.constrain_actions=true, or rollout.constrain_actions=false with vllm",
    )
    _check(
        not (cfg.model.dtype == "float16" and cfg.model.device == "cpu"),
        "model.dtype",
        "float16 on the CPU: many CPU kernels lack float16 and its 5-bit exponent overflows in the softmax without "
        "loss scaling, which this trainer does not do",
        "use model.dtype=bfloat16 (same memory, fp32's range) or float32 on the CPU; float16 only with a GPU",
    )
    _check_env_id(cfg.env.id)
    if cfg.model.init is not None:
        _check_init(cfg.model.init, cfg)
    if cfg.rollout.constrain_actions:
        _check_admissible(cfg)
    if extras:
        _check_extras(cfg)
    return cfg


PROMPT_FIELDS = (*PromptSpec.__dataclass_fields__, "thoughts")  # what a step's prompt shows and how its templated
# response reads, besides the env; a manifest older than a field reads its default (history and show_admissible were
# recorded from the start, so they are not defaulted)
PROMPT_DEFAULTS = {
    **{
        name: getattr(DEFAULT_PROMPT, name) for name in PROMPT_FIELDS[:-1] if name not in ("history", "show_admissible")
    },
    "thoughts": "verb",
}


def _check_init(init: str, cfg: TrainConfig) -> None:
    """``model.init`` names a warm start whose files match its manifest (hashes checked here, before any work), and
    the run builds its prompts as the warm start was trained to read them (``rollout.history``,
    ``rollout.action_memory``, ``rollout.show_admissible``, ``rollout.task_reminder``) and reads its responses'
    thoughts in the style it was trained on (``rollout.thoughts``): a model trained on other prompts starts
    off-distribution.
    """
    try:
        manifest = verify(resolve(init))
    except WarmStartError as e:
        raise ConfigError("model.init", e.problem, e.fix) from None
    trained = manifest.get("config", {}).get("rollout", {})
    for name in PROMPT_FIELDS:
        want = trained.get(name, PROMPT_DEFAULTS.get(name))
        got = getattr(cfg.rollout, name)
        _check(
            want is None or got == want,
            f"rollout.{name}",
            f"is {got!r}, but the warm start {init!r} was trained on prompts with rollout.{name}={want!r}",
            f"set rollout.{name}={want!r}, or use (or build, `empg sft ... --export DIR`) a warm start trained with "
            f"{got!r}",
        )


def _check_admissible(cfg: TrainConfig) -> None:
    """``rollout.constrain_actions`` needs an env that lists admissible actions: reset one and look."""
    try:
        env = make(cfg.env.id, "train", **cfg.env.kwargs)
    except Exception:  # noqa: BLE001 - a broken env is reported where it is built, with its own message
        return
    try:
        _, info = env.reset(seed=split_seeds("train", 1)[0])
        listed = info.get("admissible_actions")
    finally:
        env.close()
    _check(
        bool(listed),
        "rollout.constrain_actions",
        f"env {cfg.env.id!r} lists no admissible actions (info['admissible_actions'] is empty after reset), so "
        "there is nothing to constrain the action to",
        f"use rollout.constrain_actions=false with {cfg.env.id}, or an env that lists them (household-v0, shop-v0)",
    )


def _installed(module: str) -> bool:
    """True when ``module`` can be imported here (found without importing it: vLLM's import takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _check_extras(cfg: TrainConfig) -> None:
    """The optional packages the config needs are installed (checked before any work starts)."""
    _check(
        cfg.model.backend != "vllm" or _installed("vllm"),
        "model.backend",
        "model.backend=vllm needs vLLM, which is not installed in this environment",
        'pip install -e ".[vllm]" (on a machine with a GPU), or use model.backend=hf',
    )
    _check(
        cfg.rollout.env_workers == 0 or _installed("ray"),
        "rollout.env_workers",
        f"rollout.env_workers={cfg.rollout.env_workers} runs envs in Ray actors, but ray is not installed",
        'pip install -e ".[ray]", or use rollout.env_workers=0 (envs in this process)',
    )


def _check_env_id(env_id: str) -> None:
    if ":" in env_id:
        return

    known = list_envs()
    close = difflib.get_close_matches(env_id, known, n=3)
    _check(
        env_id in known,
        "env.id",
        f"unknown environment {env_id!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
        f"use one of {', '.join(known)} or 'package.module:Class'",
    )


# ----------------------------------------------------------------------------- field access and help
def get_field(cfg: Any, dotted: str) -> Any:
    """``get_field(cfg, "algo.zeta")`` → ``cfg.algo.zeta``."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def iter_fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every leaf field as ``(dotted_name, type, default, help)``, in declaration order (sections last)."""
    rows: list[tuple[str, str, Any, str]] = []
    sections = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            sections.append((f.name, type(default)))
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((prefix + f.name, type_name, default, f.metadata.get("help", "")))
    for name, sub in sections:
        rows.extend(iter_fields(sub, prefix=f"{prefix}{name}."))
    return rows


def format_help() -> str:
    """Plain-text list of every field with type, default and help (used by `empg train --help`)."""
    lines = ["configuration fields (override with key=value, e.g. algo.zeta=0.05 seed=2):"]
    section = None
    for name, type_name, default, help_text in iter_fields():
        head = name.split(".")[0] if "." in name else ""
        if head != section:
            section = head
            doc = (type(get_field(TrainConfig(), head)).__doc__ or "").strip() if head else "Top level."
            lines.append(f"\n  [{head or 'run'}] {doc}")
        lines.append(f"    {name} ({type_name}, default {default!r})\n        {help_text}")
    return "\n".join(lines)


def _all_keys() -> list[str]:
    return [row[0] for row in iter_fields()]


def _check_keys(tree: dict, source: str, prefix: str = "") -> None:
    """Reject keys that are not config fields (``kwargs`` dicts are free-form)."""
    known = _all_keys()
    sections = {k.split(".")[0] for k in known if "." in k}
    for key, value in tree.items():
        dotted = prefix + str(key)
        if dotted == "env.kwargs":
            continue
        if not prefix and key in sections:
            if not isinstance(value, dict):
                raise ConfigError(
                    dotted,
                    f"is a section in {source}, got the value {value!r}",
                    f"write it as a mapping, e.g. {dotted}.<field>=...",
                )
            _check_keys(value, source, prefix=f"{dotted}.")
            continue
        if dotted not in known:
            close = difflib.get_close_matches(dotted, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "run `empg train --help` for the list of fields"
            raise ConfigError(dotted, f"unknown key in {source}", hint)


def _parse_overrides(overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(item, "an override must look like key=value", "write e.g. algo.zeta=0.05")
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(overrides), f"could not parse overrides ({e.msg})", "write key=value") from None
    return tree  # type: ignore[return-value]


def _merge(base: Any, tree: dict, source: str) -> Any:
    _check_keys(tree, source)
    try:
        return OmegaConf.merge(base, tree)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(
            str(key),
            f"bad value in {source}: {str(e.msg).splitlines()[0]}",
            "give a value of the field's type (see `empg train --help`)",
        ) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← YAML preset ← dotted overrides, then :func:`validate`.

    Args:
        path: a YAML preset (or None for the dataclass defaults).
        overrides: ``["algo.zeta=0.05", "seed=2"]``.

    Raises:
        ConfigError: unknown key (with close matches), wrong type, or a failed validation rule.
    """
    base = OmegaConf.structured(TrainConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                "--config", f"file {str(path)!r} does not exist", "pass a YAML preset, e.g. configs/household-tiny.yaml"
            )
        tree = OmegaConf.to_container(OmegaConf.load(path)) or {}
        if not isinstance(tree, dict):
            raise ConfigError("--config", f"{path} is not a YAML mapping", "write `key: value` lines")
        base = _merge(base, tree, str(path))
    if overrides:
        base = _merge(base, _parse_overrides(overrides), "the command-line overrides")
    return validate(OmegaConf.to_object(base))  # type: ignore[arg-type]


def preset_overrides(path: str | Path) -> list[str]:
    """The dotted ``key=value`` overrides that set exactly what the YAML preset ``path`` sets, so a preset can be
    extended by another override list (``load_config(None, preset_overrides(p) + extra)``)."""
    tree = OmegaConf.to_container(OmegaConf.load(path)) or {}
    _check_keys(tree, str(path))

    def flat(node: dict, prefix: str) -> list[str]:
        return [
            item
            for key, value in node.items()
            for item in (
                flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={json.dumps(value)}"]
            )
        ]

    return flat(tree, "")


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A copy of ``cfg`` with dotted overrides applied, validated."""
    base = OmegaConf.structured(cfg)
    if overrides:
        base = _merge(base, _parse_overrides(overrides), "the command-line overrides")
    return validate(OmegaConf.to_object(base))  # type: ignore[arg-type]


def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of the config (for JSON / YAML)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(tree: dict) -> TrainConfig:
    """Rebuild (and validate) a config saved with :func:`to_dict` / ``config.yaml``.

    Optional packages are not checked (a vLLM run may be evaluated or plotted where vLLM is not installed);
    :func:`apply_overrides`, which ``empg train --resume`` applies next, checks them.
    """
    base = _merge(OmegaConf.structured(TrainConfig), tree, "the saved config")
    return validate(OmegaConf.to_object(base), extras=False)  # type: ignore[arg-type]


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was started with (``run_dir/config.yaml``); optional packages unchecked (see from_dict)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError("run_dir", f"{path} does not exist", "pass a directory created by `empg train`")
    return from_dict(OmegaConf.to_container(OmegaConf.load(path)))  # type: ignore[arg-type]
