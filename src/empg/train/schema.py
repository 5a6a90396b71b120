"""The training configuration's schema: one dataclass per section, one default and one help text per field.

:class:`TrainConfig` holds the sections (``env``, ``model``, ``rollout``, ``sft``, ``algo``, ``optim``, ``eval``,
``log``) and the top-level ``seed``, ``run_dir`` and ``iterations``; :data:`CHOICES` lists the allowed values of the
enumerated fields. :mod:`empg.train.config` loads, merges and validates it (and re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from empg.algos.empg import DEFAULT_PARAMS as EMPG_DEFAULTS
from empg.algos.empg import ENTROPY_NORMS, FINAL_NORMS, EMPGParams
from empg.rollout.prompts import ADMISSIBLE_STYLES, THOUGHT_STYLES


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
    action_memory: int = _f(
        0,
        "Also list the actions of up to this many steps before the history window, on one line of the prompt (SFT "
        "demos, rollouts and evaluation alike), so the policy can tell what it already did (visited, took, heated, "
        "put) once those steps leave the window. 0: no such line.",
    )
    show_admissible: bool = _f(
        True,
        "List the step's admissible actions in the prompt (SFT demos and rollouts alike). With constrain_actions "
        "they constrain decoding anyway, and hiding them makes household prompts about a third shorter.",
    )
    task_reminder: bool = _f(
        False,
        "Repeat the task ('Your task is to: ...') as the last line of every step's prompt (SFT demos, rollouts and "
        "evaluation alike), next to where the response starts, instead of only near the top, a few hundred tokens "
        "before the choice of action. A warm start must be trained with the same setting.",
    )
    admissible_style: str = _f(
        "list",
        "How the prompt writes the admissible actions: list = each quoted, comma-separated (the shipped warm starts "
        "read this); grouped = actions that share a first word written once as their common leading words then the "
        "rest of each ('go to: cabinet 1, drawer 2; take pen 1 from desk 1'): the same actions in ~30 % fewer "
        "household tokens. A warm start must be trained with the same setting.",
    )
    format_hint: bool = _f(
        True,
        "End every step's prompt with the output-format instruction ('First reason briefly inside <think> ...'). "
        "Under constrain_scope=response the format is forced, and the hint is ~35 tokens of every household prompt. "
        "A warm start must be trained with the same setting.",
    )
    mark_done: bool = _f(
        False,
        "Mark each admissible action already taken earlier in the episode with ' (done)' (SFT demos, rollouts and "
        "evaluation alike), so a policy whose history window is a few steps can tell the places it has searched "
        "from the ones it has not. A warm start must be trained with the same setting.",
    )
    thoughts: str = _f(
        "verb",
        "Style of the templated thoughts of SFT demos and of constrained responses (constrain_scope=response): "
        "verb = the action's verb picks the template ('I found pot 1; I will take it.'); take_first = the same, "
        "except that a take's thought starts with its object ('pot 1 is here; I will take it.'), so a take's first "
        "choice is the object's name, which a small model can copy from the task (only visible objects can be "
        "taken). Families without a take action are unchanged. A warm start must be trained with the same setting.",
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
    jump_forward: bool = _f(
        False,
        "With constrain_actions: feed the tokens the admissible-action trie forces (a prefix shared by every choice "
        "left: log-prob 0, entropy 0) in one forward with the token sampled before them, instead of one decode step "
        "each (hf back end; training rollouts, DAgger and evaluation alike). Same response distribution and "
        "recorded log-probs/entropies (to float rounding), fewer forwards; but a different random stream, so "
        "samples and evaluations are not those of a run without it (compare runs with the same setting). No "
        "effect without constrain_actions (free text forces nothing).",
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
    merge_duplicates: bool = _f(
        True,
        "Compute each distinct step row once in the update: rows with the same tokens and advantage signs (rollouts "
        "of a group that took the same step from the same state) are merged into one with their advantages summed "
        "and their count as its weight in the loss denominators and the KL / entropy terms; the loss and gradient "
        "are those of the unmerged batch. Mini-batches are then drawn over distinct rows. Logged as "
        "update/distinct_rows (rows computed / rows).",
    )
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
    "rollout.thoughts": THOUGHT_STYLES,
    "rollout.admissible_style": ADMISSIBLE_STYLES,
    "sft.schedule": ("constant", "cosine", "linear"),
    "optim.schedule": ("constant", "cosine", "linear"),
    "optim.sharding": ("ddp", "fsdp"),
}
