"""Training configuration: dataclasses with one help text per field, YAML presets, dotted CLI overrides.

A run is configured by :class:`TrainConfig` (two levels at most: ``env.*``, ``model.*``, ``rollout.*``, ``sft.*``,
``algo.*``, ``optim.*``, ``eval.*``, ``log.*`` plus the top-level ``seed``, ``run_dir`` and ``iterations``).
:func:`load_config` builds it the same way for every entry point:

1. the structured defaults from the dataclasses,
2. merged with a YAML preset (``configs/household-tiny.yaml`` …),
3. merged with dotted overrides (``algo.zeta=0.05 seed=2``),
4. checked by :func:`validate` — the one place for every cross-field rule.

Unknown keys (in the YAML or the overrides) are errors that list close matches. Every error is a
:class:`ConfigError` naming the field, the problem and the fix, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from empg.algos.empg import DEFAULT_PARAMS as EMPG_DEFAULTS
from empg.algos.empg import ENTROPY_NORMS, FINAL_NORMS, EMPGParams
from empg.envs import list_envs, make, split_seeds
from empg.train.warmstart import WarmStartError, resolve, verify


class ConfigError(ValueError):
    """A configuration problem: ``field``, what is wrong (``problem``) and how to fix it (``fix``)."""

    def __init__(self, field_name: str, problem: str, fix: str):
        self.field = field_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"config error in `{field_name}`: {problem}. Fix: {fix}")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at the call sites
    """A dataclass field with a help text (mutable defaults become factories)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- sections
@dataclass
class EnvConfig:
    """Which environment to train on."""

    id: str = _f("household-v0", "Registered env id (`empg envs` lists them) or 'package.module:Class'.")
    max_turns: int | None = _f(None, "Turn limit per episode (truncation); None = the env's registered default.")
    train_pool: int = _f(5000, "Number of train-split seeds RL tasks are sampled from (seeds ≢ 8, 9 mod 10).")
    kwargs: dict[str, Any] = _f({}, "Extra keyword arguments passed to the env constructor.")


@dataclass
class ModelConfig:
    """The policy model."""

    spec: str = _f("tiny-1m", "tiny-1m | tiny-5m | tiny-25m | smollm2-135m | local directory | Hugging Face id.")
    init: str | None = _f(
        None,
        "Start RL from this warm start instead of building model.spec (and running SFT): the name of one shipped in "
        "the package (household-tiny) or a directory written by `empg sft --export DIR`. Its files are checked "
        "against the sha256 hashes of its manifest.json before any work; `empg sft` ignores it and rebuilds from "
        "model.spec and sft.* (the manifest's `rebuild` command). null = build and (if sft.enabled) SFT in the run.",
    )
    cache_dir: str | None = _f(None, "Where built/converted models are cached (default $EMPG_CACHE or ~/.cache/empg).")
    device: str = _f("cpu", "Torch device: cpu, cuda, cuda:1 ...")
    dtype: str = _f(
        "float32",
        "Parameter dtype everywhere the model is loaded (policy, reference, SFT, evaluation, resume): float32 | "
        "bfloat16 | float16 (GPU only). With bfloat16 the forward/backward and checkpoints are bf16 and AdamW updates "
        "fp32 master copies of the weights (empg.train.optim).",
    )
    backend: str = _f(
        "hf",
        "Rollout generation: hf (the trained model itself) | vllm (a vLLM engine on the GPU, weights synced from the "
        "trainer after every update; log-probs and entropies still come from the trainer's scoring pass).",
    )


@dataclass
class RolloutConfig:
    """Multi-turn rollouts (training)."""

    n_tasks: int = _f(16, "Tasks (groups) per iteration.")
    group_size: int = _f(8, "Rollouts per task from the same initial state (the GRPO group).")
    temperature: float = _f(1.0, "Sampling temperature for training rollouts (behaviour log-probs use it too).")
    top_p: float = _f(1.0, "Nucleus sampling threshold for training rollouts (1.0 = off).")
    max_new_tokens: int = _f(64, "Response cap per step (thought + action), in tokens.")
    history: int = _f(2, "Number of past (observation, action) pairs shown in each step's prompt.")
    show_admissible: bool = _f(
        True,
        "List the step's admissible actions in the prompt (SFT demos and rollouts alike). With constrain_actions "
        "they constrain decoding anyway, and hiding them makes household prompts about a third shorter.",
    )
    constrain_actions: bool = _f(
        False,
        "Constrained decoding (training and evaluation): after <action> the policy may only emit one of the step's "
        "admissible actions (a token trie; the sampled distribution is the softmax restricted to them, and the "
        "trainer recomputes log-probs under the same masks), so no action is invalid. Needs an env that lists "
        "admissible actions; a step with an empty list is decoded as free text and counted "
        "(train/unconstrained_steps). Precedent: invalid-action masking (Huang & Ontanon 2020), GLAM, TWOSOME.",
    )
    constrain_scope: str = _f(
        "action",
        "What constrain_actions constrains: action (free thought, then the action span after <action>) | response "
        "(the whole response is one admissible action's templated expert response, thought included, so the "
        "thought never names another action than the one taken).",
    )
    rescore: bool = _f(
        False,
        "Recompute the behaviour log-probs and entropies in a no-grad forward before the update (as verl does) "
        "instead of using those recorded during generation (equal to ~1e-6 in fp32 on CPU, ~25 % of RL time "
        "saved). Always on with model.backend=vllm, whose engine does not return entropies.",
    )
    env_workers: int = _f(
        0,
        "Training envs in this process (0) or in N Ray actors (N > 0; for envs whose steps are slow, see "
        "docs/scaling.md). A dead worker fails only its episodes, which are left out of the batch.",
    )
    env_step_timeout: float = _f(
        120.0,
        "Seconds an env call in a Ray worker may take before the worker counts as hung: it is killed and restarted "
        "and its episodes fail, as for a dead worker (0 = wait forever). A hang costs its iteration this long plus "
        "one worker restart. Only with rollout.env_workers > 0.",
    )


@dataclass
class SFTConfig:
    """Behaviour-cloning warm start on expert demonstrations (`empg sft`, or phase 1 of `empg train`)."""

    enabled: bool = _f(
        False, "Run SFT before RL in `empg train` (on resume: continued from its checkpoint, skipped once done)."
    )
    episodes: int = _f(64, "Expert episodes collected from the train split for the demonstration set.")
    seed_offset: int = _f(100000, "Demo seeds are the first `episodes` train seeds >= this offset (apart from RL).")
    steps: int = _f(200, "Optimizer steps of behaviour cloning.")
    batch_size: int = _f(16, "Demonstration steps per optimizer step.")
    group_by_length: bool = _f(
        True,
        "Form each batch from demos of similar length (shuffled windows of 32 batches, sorted by length, batches "
        "in random order), so less of every batch is padding; False = uniformly shuffled batches.",
    )
    lr: float = _f(1e-3, "AdamW learning rate for SFT.")
    weight_decay: float = _f(0.0, "AdamW weight decay for SFT.")
    schedule: str = _f(
        "constant", "SFT learning-rate schedule: constant | cosine | linear (both decay to 0 at the last step)."
    )
    warmup_steps: int = _f(0, "Linear learning-rate warm-up over the first steps of SFT (both schedules).")
    noise: float = _f(
        0.0,
        "DART-style perturbed demos: probability that a demo step executes a random admissible action instead of the "
        "expert's (not trained on); the expert's recovery from there is. Teaches recovery from the policy's own "
        "mistakes (0 = clean demos).",
    )
    invalid_noise: float = _f(
        0.0,
        "Probability that a demo step (not taken as a noise detour) instead executes an invalid action like the "
        "policy's own: the previous action repeated where it no longer applies, or the expert's action with another "
        "object number. Not trained on; the prompts after it show the env's 'Nothing happens.' and the expert's "
        "recovery is trained on (0 = off; 0.15 lowered the household-tiny warm start, docs/results.md).",
    )
    dagger_rounds: int = _f(
        0,
        "DAgger rounds after behaviour cloning (Ross et al. 2011): roll out the policy, label every state it visited "
        "with the expert's action, train again on all demos so far. Fixes the states the policy's own mistakes lead "
        "to (0 = off).",
    )
    dagger_episodes: int = _f(64, "DAgger: policy episodes per round (train seeds after the demo seeds).")
    dagger_steps: int = _f(500, "DAgger: optimizer steps per round (fresh AdamW, same lr, schedule and warm-up).")
    eval_episodes: int = _f(32, "Episodes per eval split evaluated after SFT (0 = skip).")
    checkpoint_every: int = _f(
        100,
        "Save SFT's training state to run_dir/checkpoints/sft every N steps (and after the last), so a run killed "
        "during SFT resumes it there (removed once base_model is saved; 0 = never: a resume redoes SFT).",
    )


@dataclass
class AlgoConfig:
    """The RL algorithm: GRPO or DAPO, optionally with EMPG (METHOD.md §2-3)."""

    base: str = _f("grpo", "Base algorithm: grpo | dapo (dapo = clip-higher 0.28 + dynamic sampling + token-mean).")
    norm_by_std: bool = _f(True, "Divide group-centred returns by the group std (False = Dr.GRPO).")
    grpo_stats: str = _f("trajectory", "Group statistics over: trajectory (each once) | steps (verl-agent rows).")
    reward_scale: float = _f(10.0, "R_i = reward_scale * outcome - invalid_penalty * #invalid steps.")
    invalid_penalty: float = _f(0.1, "Return penalty per invalid or unparsable step.")
    invalid_step_penalty: float = _f(
        0.0,
        "Subtracted from the final advantage of each invalid or unparsable step (its own tokens only, after "
        "GRPO/EMPG): credit for the action that failed, where invalid_penalty lowers every step of its trajectory.",
    )
    invalid_credit: bool = _f(
        True,
        "Let invalid or unparsable steps receive positive advantage (True, the standard estimator). False caps "
        "their final advantage at 0: an action the env rejected changed nothing, so a success is no credit to it.",
    )
    negative_weight: float = _f(
        1.0,
        "Multiplies the negative final advantages (after GRPO/EMPG and invalid_step_penalty) by this weight in "
        "[0, 1]: 1 = the standard estimator; < 1 learns more from successes than from failures (0 = positive-only).",
    )
    gigpo_weight: float = _f(
        0.0,
        "GiGPO step-level credit (arXiv 2505.10978) added to the base advantage before EMPG: steps of one group that "
        "acted on the same state (same observation and admissible actions) are compared by their discounted return "
        "to go, A = A_GRPO + gigpo_weight * A_step. 0 = off (plain GRPO/DAPO); the paper uses 1.",
    )
    gigpo_gamma: float = _f(0.95, "GiGPO: discount γ of the step returns R_t = Σ_k γ^(k-t) r_k (in [0, 1]).")
    empg: bool = _f(False, "Apply the EMPG advantage transform (entropy-modulated scaling + future-clarity bonus).")
    use_scaling: bool = _f(EMPG_DEFAULTS.use_scaling, "EMPG ablation: self-calibrating scaling g (False = g ≡ 1).")
    use_bonus: bool = _f(True, "EMPG ablation: future-clarity bonus f (False = zeta 0).")
    k: float = _f(EMPG_DEFAULTS.k, "EMPG scaling sharpness k in g = exp(-k H̃) / mean exp(-k H̃).")
    k_next: float = _f(EMPG_DEFAULTS.k_next, "EMPG bonus sharpness k' in f = exp(-k' H̃_next).")
    zeta: float = _f(EMPG_DEFAULTS.zeta, "EMPG bonus weight ζ.")
    final_norm: str = _f(
        EMPG_DEFAULTS.final_norm,
        "EMPG final normalisation: mean | mean_std | none | traj_mean | group_mean (centre within each task group).",
    )
    bonus_nonneg: bool = _f(
        EMPG_DEFAULTS.bonus_nonneg,
        "EMPG variant (METHOD §6): the future-clarity bonus only for steps whose base advantage is >= 0, so it does "
        "not lift the steps of failed trajectories.",
    )
    entropy_norm: str = _f(
        EMPG_DEFAULTS.entropy_norm,
        "EMPG entropy normalisation: batch (paper) | group (min-max and mean of g within each task group, as AEM, "
        "arXiv 2605.00425; AEM has no bonus: also set algo.zeta=0).",
    )
    step_entropy: str = _f("mean", "Step entropy: mean | renyi2 | weighted | action (action-span tokens only).")
    action_weight: float = _f(4.0, "step_entropy=weighted: weight of action tokens relative to thought tokens.")
    clip_low: float = _f(0.2, "PPO ratio clip ε_low.")
    clip_high: float | None = _f(None, "PPO ratio clip ε_high; None = 0.2 for grpo, 0.28 for dapo.")
    dual_clip: float | None = _f(None, "Dual-clip constant c > 1 for negative advantages (None = off).")
    loss_agg: str = _f("token-mean", "Loss aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum-norm.")
    kl_coef: float = _f(0.01, "KL-to-reference loss coefficient (k3); 0 = no reference model at all.")
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient (0 = off).")
    dynamic_sampling: bool | None = _f(
        None,
        "Drop groups with all-equal returns (no GRPO signal) and roll out new tasks until n_tasks informative groups "
        "or max_resample_rounds (DAPO, arXiv 2503.14476); works for grpo too. None = on for dapo only.",
    )
    overlong_buffer: int = _f(
        0,
        "DAPO soft overlong punishment (arXiv 2503.14476), per step: a response longer than rollout.max_new_tokens "
        "- overlong_buffer tokens adds overlong_penalty x (a linear ramp from 0 to -1 at max_new_tokens) to its "
        "trajectory's return. 0 = off (the default for agents, whose step responses are capped anyway).",
    )
    overlong_penalty: float = _f(1.0, "Scale of the overlong punishment (return units; see overlong_buffer).")
    max_resample_rounds: int = _f(10, "Dynamic sampling: extra rollout rounds at most before keeping what is there.")
    ppo_epochs: int = _f(1, "Passes over the batch per iteration.")

    @property
    def effective_clip_high(self) -> float:
        """ε_high actually used: ``clip_high`` or the base algorithm's default."""
        if self.clip_high is not None:
            return self.clip_high
        return 0.28 if self.base == "dapo" else 0.2

    def empg_params(self) -> EMPGParams:
        """The EMPG transform's parameters (``use_bonus=False`` is ζ = 0)."""
        zeta = self.zeta if self.use_bonus else 0.0
        return EMPGParams(
            self.k,
            self.k_next,
            zeta,
            self.use_scaling,
            self.final_norm,
            bonus_nonneg=self.bonus_nonneg,
            entropy_norm=self.entropy_norm,
        )

    @property
    def effective_dynamic_sampling(self) -> bool:
        """Dynamic sampling actually used: ``dynamic_sampling`` or on for DAPO."""
        if self.dynamic_sampling is not None:
            return self.dynamic_sampling
        return self.base == "dapo"


@dataclass
class OptimConfig:
    """The RL optimizer."""

    lr: float = _f(1e-6, "AdamW learning rate for RL.")
    warmup_steps: int = _f(
        0,
        "Linear learning-rate warm-up over the first N optimizer steps of RL (not iterations). Adam's first steps "
        "move every weight by about lr whatever the gradient's size, so without it iteration 1 tends to have the "
        "largest approx-KL of a run.",
    )
    schedule: str = _f(
        "constant",
        "RL learning-rate schedule after the warm-up: constant | cosine | linear, the decays reaching 0 at the "
        "planned last optimizer step (iterations x ppo_epochs x mini_batches).",
    )
    skip_no_signal: bool = _f(
        False,
        "Skip the update of an iteration in which no group has mixed outcomes (every group's returns equal): GRPO's "
        "advantages are then all 0 and only EMPG's outcome-free bonus would move the policy. Logged as "
        "update/skipped = 1.",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay for RL.")
    grad_clip: float = _f(1.0, "Global gradient-norm clip (0 = off).")
    micro_batch_size: int = _f(16, "Step rows per forward/backward; gradients accumulate over the whole batch.")
    mini_batches: int = _f(1, "Optimizer steps per PPO epoch (the batch is split into this many mini-batches).")
    sharding: str = _f(
        "ddp",
        "Multi-process training only (torchrun / accelerate launch): ddp = each process holds the whole model and "
        "optimizer, gradients are all-reduced; fsdp = parameters, gradients and AdamW state are sharded over the "
        "processes (torch FSDP2, one shard unit per decoder layer), plus an unsharded copy per process that "
        "generates and scores, refreshed after every update. Ignored in a single process.",
    )


@dataclass
class EvalConfig:
    """Periodic evaluation on fixed held-out seeds."""

    every: int = _f(5, "Evaluate every N iterations (and after the last); 0 = never during training.")
    episodes: int = _f(
        32,
        "Episodes per split (the first N seeds of the split, fixed across the run) at the first and the last "
        "evaluation. Every evaluation of a run uses the same sampling seed, so start and end are paired.",
    )
    interim_episodes: int = _f(
        0,
        "Episodes per split at the evaluations in between (the first N of the same seeds, a cheap curve); "
        "0 = eval.episodes everywhere.",
    )
    splits: list[str] = _f(
        ["eval_in", "eval_out"],
        "Splits to evaluate: any of train, eval_in, eval_out. train plays the RL task pool (env.train_pool), cycled "
        "when it has fewer tasks than eval.episodes.",
    )
    temperature: float = _f(0.4, "Sampling temperature at evaluation.")
    greedy: bool = _f(False, "Greedy decoding at evaluation (overrides temperature).")
    at_start: bool = _f(True, "Also evaluate before the first RL iteration (iteration 0 point of the curve).")


@dataclass
class LogConfig:
    """Logging, progress and checkpoints."""

    tensorboard: bool = _f(False, "Also write TensorBoard scalars to run_dir/tb (needs the tensorboard extra).")
    wandb: bool = _f(False, "Also log to Weights & Biases (needs the wandb extra).")
    wandb_project: str = _f("empg", "W&B project name.")
    progress: bool = _f(
        True,
        "Show progress: a rich progress bar on a terminal; when the output is not a terminal (a log file, nohup, "
        "CI), plain timestamped lines instead (SFT every log.every seconds, one line per RL iteration).",
    )
    every: float = _f(30.0, "Plain (non-terminal) output: seconds between two SFT progress lines.")
    plots: bool = _f(True, "Write run_dir/plots/*.png at the end of training (as `empg plot RUN_DIR`).")
    checkpoint_every: int = _f(1, "Checkpoint every N iterations (and after the last).")
    keep_checkpoints: int = _f(2, "Keep the newest N checkpoints (0 = keep all).")
    trajectories: int = _f(
        8,
        "Episodes per RL iteration appended step by step to run_dir/trajectories.jsonl (observation, response, "
        "action, validity, step entropy, EMPG g/f, advantage before/after, per-token entropies) for `empg inspect "
        "RUN_DIR`: half successes and half failures when both exist, chosen by seed and iteration (0 = off).",
    )


@dataclass
class TrainConfig:
    """A whole run: `empg train --config PRESET.yaml key=value ...`."""

    seed: int = _f(0, "Seed for everything (model init, task sampling, rollouts, shuffling).")
    run_dir: str = _f("runs/default", "Output directory: config.yaml, metrics.jsonl, checkpoints/, plots/, eval/.")
    iterations: int = _f(50, "RL iterations (0 = SFT only).")
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "algo.base": ("grpo", "dapo"),
    "algo.grpo_stats": ("trajectory", "steps"),
    "algo.final_norm": FINAL_NORMS,
    "algo.entropy_norm": ENTROPY_NORMS,
    "algo.step_entropy": ("mean", "renyi2", "weighted", "action"),
    "algo.loss_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.backend": ("hf", "vllm"),
    "rollout.constrain_scope": ("action", "response"),
    "sft.schedule": ("constant", "cosine", "linear"),
    "optim.schedule": ("constant", "cosine", "linear"),
    "optim.sharding": ("ddp", "fsdp"),
}


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
        _check_init(cfg.model.init)
    if cfg.rollout.constrain_actions:
        _check_admissible(cfg)
    if extras:
        _check_extras(cfg)
    return cfg


def _check_init(init: str) -> None:
    """``model.init`` names a warm start whose files match its manifest (hashes checked here, before any work)."""
    try:
        verify(resolve(init))
    except WarmStartError as e:
        raise ConfigError("model.init", e.problem, e.fix) from None


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
