"""The RL loop: GRPO or DAPO, optionally with EMPG, for multi-turn text agents. Reads top to bottom in :func:`train`.

Which variant (METHOD.md is the source of truth):

* **Rewards**: R_i = ``reward_scale`` · outcome_i − ``invalid_penalty`` · #invalid steps of trajectory i.
* **GRPO** (outcome supervision): A_i = (R_i − mean_group R) / (std_group R + 1e-6), each trajectory counted once in
  its group; every step of trajectory i gets A_i. ``norm_by_std=False`` is Dr.GRPO; ``grpo_stats="steps"`` counts
  every step row in the group statistics (verl-agent).
* **DAPO** = GRPO + clip-higher (ε_high 0.28) + dynamic sampling (drop groups whose returns are all equal, roll out
  new tasks until ``n_tasks`` informative groups or ``max_resample_rounds``) + token-mean loss aggregation.
* **GiGPO step credit** (``gigpo_weight`` ω > 0, off by default): steps of a group that acted on the same state
  (``StepRecord.state_key``) are compared by their discounted return to go and ω·A_step is added to every step's
  base advantage before EMPG (:mod:`empg.algos.anchors`, :func:`empg.train.advantage.anchor_credit`).
* **EMPG** (when ``algo.empg``): step entropies H (mean behaviour token entropy of each step's response, or the
  ``step_entropy`` variant) → batch min-max normalisation → A_mod = g·A + ζ·f_next → final normalisation, see
  :func:`empg.algos.empg_transform_with_stats`. Every token of a step gets the step's final advantage.
* **Step-level invalid penalty** (``invalid_step_penalty``, off by default): subtracted from the final advantage of
  each invalid step only, so the action that failed is blamed rather than every step of its trajectory.
* **No credit for invalid steps** (``invalid_credit=False``; the default True is the standard estimator): the final
  advantage of an invalid step is capped at 0. A rejected action left the env as it was, so a successful
  trajectory's invalid steps (a repeated ``go to`` where the agent already is) are not reinforced with it.
* **Negative weight** (``negative_weight``, 1 by default): negative final advantages are multiplied by it, so
  with a weight < 1 the update learns more from the steps of successful trajectories than from failed ones.
* **Behaviour policy**: log-probs and token entropies are recomputed in one no-grad pass over the packed batch
  before the update (as verl does), with the same forward the update uses, so the first PPO ratio is 1 up to float
  rounding (~1e-6).
* **Update**: PPO clipped surrogate, ``ppo_epochs`` passes over the batch shuffled into ``mini_batches`` optimizer
  steps; each mini-batch accumulates gradients over micro-batches with a global token denominator, so the result
  equals the full mini-batch loss (micro-batches take the mini-batch's rows in length order and are computed at
  their own width: the same sums, 1.3-1.4x less time for scoring and update on the household preset); grad-norm
  clipping. KL to a frozen reference (k3) only when ``kl_coef > 0``; the reference is the model RL starts from
  (after SFT).
* **Determinism**: every random draw of iteration ``it`` comes from generators seeded by ``(seed, it)``, so a run
  resumed from a checkpoint reproduces the uninterrupted run bit for bit on CPU.
* **Scale-out** (docs/scaling.md): ``rollout.env_workers: N`` steps the training envs in N Ray actors (same rollouts
  as in-process envs; an episode whose worker died is marked failed and left out of the batch);
  ``model.backend: vllm`` generates rollouts and evaluations with a vLLM engine that receives the trainer's weights
  after every update. Evaluation envs always run in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from empg.algos import agg_loss, entropy_loss, filter_groups, kl_penalty, policy_loss
from empg.algos.entropy import token_renyi2
from empg.envs import split_seeds
from empg.eval.evaluate import EvalReport, eval_sampling_seed, evaluate_with_config, save_report
from empg.eval.plots import plot_runs
from empg.eval.runlog import METRICS, STEP_ENTROPY, TRAJECTORIES
from empg.policy import Policy
from empg.rollout import collect, collect_with_envs
from empg.rollout.types import RolloutResult, StepRecord
from empg.train import checkpoint as ckpt
from empg.train import fsdp as fs
from empg.train.advantage import episode_returns, step_table, to_tokens
from empg.train.backends import rescores, rollout_backends, rollout_settings, sync_rollout_weights
from empg.train.batch import StepBatch
from empg.train.config import TrainConfig, to_yaml
from empg.train.diagnostics import entropy_metrics
from empg.train.distributed import (
    LOCAL,
    DistInfo,
    Reducer,
    barrier,
    broadcast_parameters,
    check_in_sync,
    check_single_process_options,
    dist_info,
    empty_batch,
    fsdp_reducer,
    global_step_advantages,
    init_distributed,
    leave_process_group,
    reducer,
)
from empg.train.forward import response_logits, response_logprobs
from empg.train.metrics import MetricsLogger, NonFiniteError, check_finite, truncate_jsonl
from empg.train.optim import make_optimizer, model_dtype
from empg.train.progress import Progress, iteration_summary, stamp
from empg.train.schedule import lr_factor
from empg.train.sft import build_base_policy, save_base_model
from empg.train.trajlog import log_trajectories
from empg.train.warmstart import install

PHASES = {"tasks": 1, "rollout": 2, "shuffle": 3, "eval": 4, "sft": 5}


@dataclass
class Run:
    """Everything the loop holds: config, directories, models, optimizer, logger and the iteration to start at."""

    cfg: TrainConfig
    run_dir: Path
    policy: Policy
    optimizer: torch.optim.Optimizer
    logger: MetricsLogger
    start: int
    train_pool: list[int]
    ref_model: torch.nn.Module | None = None
    console: Any = None
    history: list[dict] = field(default_factory=list)
    rollout_policy: Any = None  # the vLLM engine that generates (model.backend=vllm); None: ``policy`` generates
    env_pool: Any = None  # the Ray env workers (rollout.env_workers > 0); None: envs are built in this process
    train_model: Any = None  # the FSDP-sharded copy the update trains (optim.sharding=fsdp); None: ``policy.model``

    @property
    def trained_model(self) -> Any:
        """The module :func:`update_phase` computes gradients of (``policy.model`` unless sharded by FSDP)."""
        return self.train_model if self.train_model is not None else self.policy.model

    @property
    def generating_policy(self) -> Any:
        """The policy that generates rollouts and evaluations (``policy`` itself with the hf backend)."""
        return self.rollout_policy if self.rollout_policy is not None else self.policy


def generator_for(seed: int, iteration: int, phase: str) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, iteration, phase)``; also reseeds torch's global generator."""
    value = (seed * 1_000_003 + iteration * 1_009 + PHASES[phase]) % (2**63 - 1)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


# ============================================================================= the loop
def train(cfg: TrainConfig, *, resume: bool = False, console: Any = None, info: DistInfo | None = None) -> list[dict]:
    """Run SFT (optional) then ``cfg.iterations`` RL iterations; return the metrics rows written by this call.

    The one loop for 1 ... N processes: under a multi-process launcher (``info.world_size > 1``) every rank rolls
    out its shard of the task groups, advantages are batch-global and the update is synchronised
    (:mod:`empg.train.distributed`); rank 0 alone evaluates, logs and checkpoints, and other ranks return ``[]``.

    Args:
        cfg: a validated :class:`TrainConfig`.
        resume: continue from ``cfg.run_dir``'s latest checkpoint (bit-identical on CPU to an uninterrupted run).
        console: a rich Console for the progress bar and messages (None: quiet).
        info: this process's place in the process group (default: :func:`~empg.train.distributed.dist_info`).
    """
    info = info or dist_info()
    run = setup_ranks(cfg, resume=resume, console=console, info=info)
    reduce, fsdp = reducer(info), info.enabled and cfg.optim.sharding == "fsdp"
    if fsdp:
        fs.shard_for_training(run, info)  # parameters, gradients and AdamW state sharded over the ranks
    with rollout_backends(run), _progress(run) as advance:  # vLLM engine and Ray env workers stop on any exit
        if info.is_main and run.start == 0 and cfg.eval.at_start and cfg.eval.every > 0 and cfg.iterations > 0:
            _log(run, 0, _sft_eval_metrics(run) or evaluate_phase(run, 0))

        for it in range(run.start, cfg.iterations):
            t_start = time.perf_counter()
            metrics: dict[str, Any] = {}

            # ----------------------------------------------------------------- 1. rollout (+ DAPO dynamic sampling)
            t0 = time.perf_counter()
            steps, trajs, roll = rollout_phase(run, it, reduce)  # N processes: this rank's shard of the groups
            metrics.update(roll)
            metrics["time/rollout"] = time.perf_counter() - t0

            # ----------------------------------------------------------------- 2. pack + behaviour log-probs/entropies
            t0 = time.perf_counter()
            batch = None
            if steps or (info.enabled and roll["train/n_steps"] > 0):  # a rank with no rows still joins collectives
                batch = pack_steps(run.policy, steps) if steps else empty_batch()
                ref_logp = score_phase(run, batch, it) if steps else None
                if ref_logp is None and run.ref_model is not None:
                    ref_logp = torch.zeros_like(batch.response_mask)
                table = step_table(cfg, batch, steps, trajs)  # per-step ids, outcomes and entropy H, computed once
                if info.is_main and steps:
                    metrics.update(entropy_metrics(batch, table, run.run_dir, it + 1))
            metrics["time/scoring"] = time.perf_counter() - t0

            # ----------------------------------------------------------------- 3. advantages: base (GRPO) → EMPG
            if batch is not None:
                credit: dict | None = None if info.enabled else {}  # per-step terms, for the episode log
                step_adv, adv_metrics = global_step_advantages(cfg, table, it, info, details=credit)
                metrics.update(adv_metrics)
                if steps:
                    batch.advantages = to_tokens(step_adv, batch.response_mask)
                if credit is not None:
                    log_trajectories(run, batch, steps, trajs, credit, it + 1)  # run_dir/trajectories.jsonl

            # ----------------------------------------------------------------- 4. PPO update (+ weight sync)
            t0 = time.perf_counter()
            no_signal = cfg.optim.skip_no_signal and metrics.get("train/kept_mixed_groups", 0.0) == 0  # global
            if batch is not None and not no_signal:
                metrics.update(update_phase(run, batch, ref_logp, it, fsdp_reducer(info) if fsdp else reduce))
                if fsdp:
                    fs.sync_rollout_weights(run)  # the unsharded copy generates and scores the next iteration
                else:
                    metrics.update(sync_rollout_weights(run))  # into the vLLM engine (model.backend=vllm)
            else:  # DAPO kept no informative group, or (skip_no_signal) no group had mixed outcomes
                metrics["update/skipped"] = 1.0
            metrics["time/update"] = time.perf_counter() - t0

            # ----------------------------------------------------------------- 5. periodic evaluation (rank 0)
            last = it + 1 == cfg.iterations
            save = (it + 1) % cfg.log.checkpoint_every == 0 or last
            optimizer = fs.full_optimizer(run) if fsdp and save else run.optimizer  # a collective under FSDP
            if info.is_main:
                t0 = time.perf_counter()
                if cfg.eval.every > 0 and ((it + 1) % cfg.eval.every == 0 or last):
                    metrics.update(evaluate_phase(run, it + 1))
                metrics["time/eval"] = time.perf_counter() - t0
                metrics["time/total"] = time.perf_counter() - t_start

                # ------------------------------------------------------------- 6. log, then checkpoint (rank 0)
                _log(run, it + 1, metrics)
                if save:
                    ckpt.save_checkpoint(run.run_dir, it + 1, run.policy, optimizer, keep=cfg.log.keep_checkpoints)
                advance(metrics)
            barrier(info)

    check_in_sync(run.policy.model, info, atol=1e-4)
    if not info.is_main:
        return []
    run.logger.close()
    _finish(run)
    return run.history


def train_auto(cfg: TrainConfig, *, resume: bool = False, console: Any = None) -> list[dict]:
    """What ``empg train`` runs: :func:`train` in one process, or on every rank under a multi-process launcher
    (``accelerate launch`` / ``torchrun``: joins the process group first, leaves it at the end)."""
    info = init_distributed()
    if not info.enabled:
        return train(cfg, resume=resume, console=console)
    finished = False
    try:
        history = train(cfg, resume=resume, console=console if info.is_main else None, info=info)
        finished = True
        return history
    finally:
        leave_process_group(info, wait=finished)


def _finish(run: Run) -> None:
    """Plots of the run (when ``log.plots``) and a closing line on the console."""
    if run.cfg.log.plots:
        paths = plot_runs([run.run_dir])
        if run.console is not None:
            run.console.print(f"plots: {', '.join(str(p) for p in paths)}")
    if run.console is not None:
        run.console.print(f"metrics: {run.run_dir / 'metrics.jsonl'}; checkpoints: {run.run_dir / 'checkpoints'}")


# ============================================================================= setup
def setup_run(cfg: TrainConfig, *, resume: bool = False, console: Any = None) -> Run:
    """Directories, policy (built, SFT-warmed or restored), reference model, optimizer, logger, start iteration."""
    _quiet_transformers()
    run_dir = Path(cfg.run_dir)
    latest = ckpt.resume_checkpoint(run_dir, console=console) if resume else None  # newest complete one
    if not resume and _has_progress(run_dir):
        raise FileExistsError(
            f"run_dir {run_dir} already holds a run; continue it with `empg train --resume {run_dir}` "
            "or choose a new run_dir=..."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"  # replaced atomically: a kill never leaves --resume an empty config.yaml
    tmp.write_text(to_yaml(cfg))
    tmp.replace(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)

    base_dir = run_dir / "base_model"
    if latest is None and not (base_dir / "config.json").is_file():
        if cfg.model.init is not None:  # a shipped (hash-verified) warm start: no build, no SFT
            install(cfg.model.init, base_dir)
            if console is not None:
                console.print(f"warm start: {cfg.model.init} (verified against its manifest) -> {base_dir}")
        else:
            policy = build_base_policy(cfg, console=console)
            save_base_model(policy, run_dir)  # and delete SFT's checkpoints
    policy, ref_model, optimizer, start = _load_models(cfg, run_dir, latest)
    for name in (METRICS, STEP_ENTROPY, TRAJECTORIES):
        truncate_jsonl(run_dir / name, start if latest is not None else -1)

    logger = MetricsLogger(
        run_dir,
        tensorboard=cfg.log.tensorboard,
        wandb=cfg.log.wandb,
        wandb_project=cfg.log.wandb_project,
        config=None,
    )
    pool = split_seeds("train", cfg.env.train_pool)
    if console is not None and latest is not None:
        console.print(f"resuming {run_dir} from {latest.name} (iteration {start})")
    return Run(cfg, run_dir, policy, optimizer, logger, start, pool, ref_model, console)


def setup_ranks(cfg: TrainConfig, *, resume: bool, console: Any, info: DistInfo) -> Run:
    """:func:`setup_run` in one process. Over N: rank 0 sets the run up (base model, SFT warm start, run directory),
    the others load what it saved (:func:`_setup_worker_run`), and every rank starts from rank 0's weights."""
    if not info.enabled:
        return setup_run(cfg, resume=resume, console=console)
    check_single_process_options(cfg)  # before any collective or file
    run = setup_run(cfg, resume=resume, console=console) if info.is_main else None
    barrier(info)
    if run is None:
        run = _setup_worker_run(cfg, resume)
    broadcast_parameters(run.policy.model, info)
    return run


def _setup_worker_run(cfg: TrainConfig, resume: bool) -> Run:
    """Run state of a non-main rank: the main rank's base model or latest checkpoint, no files written."""
    run_dir = Path(cfg.run_dir)
    latest = ckpt.resume_checkpoint(run_dir, quiet=True) if resume else None  # the one rank 0 chose
    policy, ref_model, optimizer, start = _load_models(cfg, run_dir, latest)
    return Run(cfg, run_dir, policy, optimizer, None, start, split_seeds("train", cfg.env.train_pool), ref_model)


def _load_models(
    cfg: TrainConfig, run_dir: Path, latest: Path | None
) -> tuple[Policy, torch.nn.Module | None, torch.optim.Optimizer, int]:
    """The policy (from checkpoint ``latest``, else ``run_dir/base_model``), the frozen reference model (only when
    ``kl_coef > 0``), the optimizer (restored from ``latest``) and the iteration to start at."""
    dtype = model_dtype(cfg.model.dtype)
    policy = Policy.load(latest or run_dir / "base_model", device=cfg.model.device, dtype=dtype)
    policy.model.eval()  # no dropout: rollout, scoring and update see the same function
    ref_model = None
    if cfg.algo.kl_coef > 0:
        ref_model = Policy.load(run_dir / "base_model", device=cfg.model.device, dtype=dtype).model.eval()
        ref_model.requires_grad_(False)
    # fp32 AdamW; with bf16 weights it updates fp32 master copies (empg.train.optim)
    optimizer = make_optimizer(policy.model, cfg.optim.lr, cfg.optim.weight_decay)
    start = ckpt.restore_checkpoint(latest, optimizer)["iteration"] if latest is not None else 0
    return policy, ref_model, optimizer, start


def _quiet_transformers() -> None:
    """No per-load progress bars from transformers inside the training loop (ours is enough)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass


def _has_progress(run_dir: Path) -> bool:
    return (run_dir / METRICS).is_file() or (run_dir / "checkpoints").is_dir()


# ============================================================================= 1. rollout
def sample_tasks(pool: list[int], n: int, generator: torch.Generator) -> list[int]:
    """``n`` distinct train seeds drawn from ``pool``."""
    idx = torch.randperm(len(pool), generator=generator)[:n]
    return [pool[i] for i in idx.tolist()]


def rollout_phase(run: Run, it: int, reduce: Reducer = LOCAL) -> tuple[list, list, dict[str, float]]:
    """Roll out ``n_tasks`` groups; with dynamic sampling keep only informative groups and resample.

    Over several processes (``reduce`` from :mod:`empg.train.distributed`) every process draws the same task list
    and rolls out its :meth:`Reducer.shard` of the groups with a rollout generator of its own; groups are filtered
    where they live (a group is never split), the kept groups are counted over processes to decide on another
    round, and the final cut to ``n_tasks`` keeps the lowest global group ids. Metrics are those of all processes.

    Returns:
        (steps, trajectories, metrics) of this process. Group ``g`` of the iteration (over all rounds) has id ``g``,
        its trajectories ``g * group_size + k``. ``steps`` is empty when dynamic sampling found no informative group.
    """
    cfg = run.cfg
    lost_calls, hung_calls = (run.env_pool.lost_calls, run.env_pool.hung_calls) if run.env_pool is not None else (0, 0)
    task_gen = generator_for(cfg.seed, it, "tasks")
    roll_gen = generator_for(cfg.seed + 104_729 * reduce.rank, it, "rollout")
    dynamic = cfg.algo.effective_dynamic_sampling
    rounds = 1 + (cfg.algo.max_resample_rounds if dynamic else 0)
    kept_steps: list = []
    kept_trajs: list = []
    all_trajs: list = []
    n_tokens, seconds, n_groups, n_free = 0, 0.0, 0, 0
    n_rounds = 0
    for _ in range(rounds):
        n_rounds += 1
        seeds = sample_tasks(run.train_pool, cfg.rollout.n_tasks, task_gen)
        lo, hi = reduce.shard(len(seeds))
        t0 = time.perf_counter()
        try:
            result = collect_round(run, seeds[lo:hi], roll_gen)
        except FloatingPointError as err:  # NaN/inf logits while sampling: stop before any update, naming both
            raise NonFiniteError(
                f"iteration {it}: {err}; no optimizer step was applied. Fix: lower optim.lr, check the "
                "reward/advantage settings, or resume from the last checkpoint."
            ) from err
        seconds += time.perf_counter() - t0
        n_tokens += sum(len(s.response_ids) for s in result.steps)
        n_free += int(result.stats.get("unconstrained_steps", 0))
        steps, trajs = renumber_groups(result.steps, result.trajectories, n_groups + lo, cfg.rollout.group_size)
        n_groups += len(seeds)
        all_trajs.extend(trajs)
        trajs = [t for t in trajs if not t.failed]
        if dynamic and trajs:
            returns, group_id = episode_returns(cfg, trajs)
            keep = filter_groups(returns, group_id)
            trajs = [t for t, k in zip(trajs, keep.tolist(), strict=True) if k]
        keep_ids = {t.traj_id for t in trajs}
        kept_trajs.extend(trajs)
        kept_steps.extend(s for s in steps if s.traj_id in keep_ids)
        n_kept = int(reduce.sum(len({t.group_id for t in kept_trajs})))
        if not dynamic or n_kept >= cfg.rollout.n_tasks:
            break
    if dynamic:  # DAPO keeps exactly n_tasks informative groups when it has more
        groups = sorted(g for part in reduce.gather(sorted({t.group_id for t in kept_trajs})) for g in part)
        chosen = set(groups[: cfg.rollout.n_tasks])
        kept_trajs = [t for t in kept_trajs if t.group_id in chosen]
        keep_ids = {t.traj_id for t in kept_trajs}
        kept_steps = [s for s in kept_steps if s.traj_id in keep_ids]
    metrics = rollout_metrics(cfg, _joined(reduce, all_trajs), _joined(reduce, kept_trajs))
    metrics["train/n_steps"] = float(reduce.sum(len(kept_steps)))
    metrics["dapo/rounds"] = float(n_rounds)
    metrics["perf/tokens_per_s"] = reduce.sum(n_tokens) / max(seconds, 1e-9)
    if reduce.world_size > 1:
        metrics.update({"dist/world_size": float(reduce.world_size), "dist/tokens": float(reduce.sum(n_tokens))})
    if cfg.rollout.constrain_actions:  # steps whose env listed no admissible action: decoded as free text
        metrics["train/unconstrained_steps"] = float(reduce.sum(n_free))
    if run.env_pool is not None:  # env calls that found their Ray worker dead, restarted or hung (episodes failed)
        metrics["rollout/lost_env_calls"] = float(run.env_pool.lost_calls - lost_calls)
        metrics["rollout/hung_env_calls"] = float(run.env_pool.hung_calls - hung_calls)
    return kept_steps, kept_trajs, metrics


def _joined(reduce: Reducer, items: list) -> list:
    return items if reduce.world_size == 1 else [x for part in reduce.gather(items) for x in part]


def rollout_metrics(cfg: TrainConfig, all_trajs: list, kept_trajs: list) -> dict[str, float]:
    """Success, return, length, invalid rate and group counts of an iteration's trajectories (all processes)."""
    done = [t for t in all_trajs if not t.failed]
    n_steps = sum(t.length for t in done)
    return {
        "train/success": sum(t.success for t in done) / max(1, len(done)),
        "train/return": float(episode_returns(cfg, done)[0].mean()) if done else 0.0,
        "train/ep_len": n_steps / max(1, len(done)),
        "train/invalid_rate": sum(t.n_invalid for t in done) / max(1, n_steps),
        "train/failed_episodes": float(len(all_trajs) - len(done)),
        "train/env_steps": float(sum(t.length for t in all_trajs)),
        "train/mixed_groups": float(mixed_groups(cfg, done)),
        "train/mixed_group_frac": mixed_groups(cfg, done) / max(1, len({t.group_id for t in done})),
        "train/kept_mixed_groups": float(mixed_groups(cfg, kept_trajs)),
        "dapo/kept_groups": float(len({t.group_id for t in kept_trajs})),
    }


def mixed_groups(cfg: TrainConfig, trajs: list) -> int:
    """Number of groups among ``trajs`` whose returns differ (the only groups GRPO's advantage is not 0 for)."""
    if not trajs:
        return 0
    returns, group_id = episode_returns(cfg, trajs)
    spread: dict[int, tuple[float, float]] = {}
    for r, g in zip(returns.tolist(), group_id.tolist(), strict=True):
        lo, hi = spread.get(g, (r, r))
        spread[g] = (min(lo, r), max(hi, r))
    return sum(hi > lo for lo, hi in spread.values())


def collect_round(run: Run, seeds: list[int], generator: torch.Generator) -> RolloutResult:
    """Roll out ``group_size`` copies of each task in ``seeds`` (group ``g`` = ``seeds[g]``): envs built in this
    process, or the run's Ray env pool (reset with the same seeds, so the rollouts are the same)."""
    cfg = run.cfg
    settings = rollout_settings(cfg, generator)  # records behaviour log-probs unless the scoring pass recomputes
    g = cfg.rollout.group_size
    if run.env_pool is None:
        return collect(run.generating_policy, cfg.env.id, seeds, group_size=g, env_kwargs=cfg.env.kwargs, **settings)
    env_seeds = [seed for seed in seeds for _ in range(g)]  # the order collect() builds its envs in
    envs = run.env_pool.envs[: len(env_seeds)]
    group_ids = [i // g for i in range(len(env_seeds))]
    return collect_with_envs(run.generating_policy, envs, env_seeds, group_ids=group_ids, env_id=cfg.env.id, **settings)


def renumber_groups(steps: list, trajs: list, group_offset: int, group_size: int) -> tuple[list, list]:
    """Ids unique over rounds and processes: group ``g`` → ``group_offset + g``, trajectory ``k`` of group ``g`` →
    ``(group_offset + g) * group_size + k`` (records are copied, not modified)."""
    from dataclasses import replace

    by_group: dict[int, int] = {}
    tmap = {}
    for t in sorted(trajs, key=lambda t: (t.group_id, t.traj_id)):
        k = by_group.get(t.group_id, 0)
        by_group[t.group_id] = k + 1
        tmap[t.traj_id] = (group_offset + t.group_id) * group_size + k
    new_trajs = [replace(t, traj_id=tmap[t.traj_id], group_id=group_offset + t.group_id) for t in trajs]
    new_steps = [replace(s, traj_id=tmap[s.traj_id], group_id=group_offset + s.group_id) for s in steps]
    return new_steps, new_trajs


# ============================================================================= 2. packing and scoring
def pack_steps(policy: Policy, steps: list[StepRecord]) -> StepBatch:
    """StepBatch of the step records (row i ↔ ``steps[i]``)."""
    return StepBatch.from_records(steps, _pad_id(policy))


def _pad_id(policy: Policy) -> int:
    tok = policy.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


@torch.no_grad()
def score_phase(run: Run, batch: StepBatch, it: int) -> torch.Tensor | None:
    """Behaviour log-probs and entropies in ``batch.old_logprobs`` / ``batch.token_entropy`` (rollout temperature):
    recomputed here when :func:`~empg.train.backends.rescores`, else the ones recorded during generation (packed
    from the step records). Returns the reference log-probs (B, L) when ``kl_coef > 0``, else None."""
    cfg = run.cfg
    rescore = rescores(cfg)
    if rescore:
        batch.old_logprobs = torch.zeros_like(batch.response_mask)
        batch.token_entropy = torch.zeros_like(batch.response_mask)
    ref = torch.zeros_like(batch.response_mask) if run.ref_model is not None else None
    rows = by_length(batch, torch.arange(batch.response_mask.shape[0]))
    for idx in torch.split(rows, cfg.optim.micro_batch_size) if rescore or ref is not None else ():
        micro = batch.select(idx)
        if rescore:
            logp, ent = response_logprobs(
                run.policy.model, micro, temperature=cfg.rollout.temperature, with_entropy=True
            )
            batch.old_logprobs[idx], batch.token_entropy[idx] = logp, ent  # (cast to the buffers' dtype)
        if ref is not None:
            ref[idx] = response_logprobs(run.ref_model, micro, temperature=cfg.rollout.temperature)[0]
    if cfg.algo.empg and cfg.algo.step_entropy == "renyi2":
        batch.token_renyi2 = token_renyi2_of(run.policy.model, batch, cfg)
        check_finite("behaviour token Renyi-2 entropies", batch.token_renyi2, it, batch.response_mask)
    check_finite("behaviour log-probs (logits)", batch.old_logprobs, it, batch.response_mask)
    check_finite("behaviour token entropies", batch.token_entropy, it, batch.response_mask)
    if ref is not None:
        check_finite("reference log-probs", ref, it, batch.response_mask)
    return ref


def by_length(batch: StepBatch, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` reordered by their number of real tokens (stable), so consecutive micro-batches hold rows of similar
    length and :func:`empg.train.forward.response_logprobs` computes each at its own width instead of the batch's.
    Gradient sums and per-row results do not depend on the grouping."""
    lengths = batch.attention_mask[rows].sum(-1)
    return rows[torch.argsort(lengths, stable=True)]


@torch.no_grad()
def token_renyi2_of(model: torch.nn.Module, batch: StepBatch, cfg: TrainConfig) -> torch.Tensor:
    """Rényi-2 entropy −log Σ p² of each response token's distribution (B, L), 0 off the response mask.

    Micro-batches take rows in length order and are computed at their own width, as in :func:`score_phase`.
    """
    out = torch.zeros_like(batch.response_mask)
    P = batch.response_start
    rows = by_length(batch, torch.arange(batch.response_mask.shape[0]))
    for idx in torch.split(rows, cfg.optim.micro_batch_size):
        logits, hi = response_logits(model, batch.select(idx))  # (b, hi - P, V)
        out[idx, P:hi] = token_renyi2(logits.float(), temperature=cfg.rollout.temperature).to(out.dtype)
    return torch.where(batch.response_mask != 0, out, torch.zeros_like(out))


# ============================================================================= 4. update
LOSS_KEYS = ("loss/pg", "loss/kl", "loss/entropy", "loss/total")


def update_phase(run: Run, batch: StepBatch, ref_logp: torch.Tensor | None, it: int, reduce: Reducer = LOCAL) -> dict:
    """PPO epochs over shuffled mini-batches; micro-batch gradient accumulation; grad clipping.

    The NaN/inf guard checks every loss before backward and the gradient norm before each optimizer step, so a bad
    value stops the run with the model untouched. With a data-parallel ``reduce`` every process must call it (a
    process with no rows still joins the collectives); loss metrics (``loss/*``) are then summed over processes.
    """
    cfg, opt = run.cfg, run.optimizer
    model = run.trained_model
    params = [p for p in model.parameters() if p.requires_grad]
    gen = generator_for(cfg.seed, it, "shuffle")
    n_before = int(batch.response_mask.shape[0])
    if cfg.optim.merge_duplicates:  # rows each merged row stands for: batch.row_weight
        batch, first = batch.merge_duplicates()
        ref_logp = ref_logp[first] if ref_logp is not None else None
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: Any) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)
        counts[key] = counts.get(key, 0) + 1

    n_rows = int(batch.response_mask.shape[0])
    n_mini = max(1, min(cfg.optim.mini_batches, reduce.min(n_rows)))  # the same optimizer steps on every process
    ratios: list[tuple[str, float]] = []  # (actor/ratio_min | actor/ratio_max, value) per micro-batch
    for epoch in range(cfg.algo.ppo_epochs):
        perm = torch.randperm(n_rows, generator=gen)
        for k, mini_idx in enumerate(torch.tensor_split(perm, n_mini)):
            denom = reduce.sum(_denominator(cfg, batch, mini_idx))
            opt.zero_grad(set_to_none=True)
            micros = [m for m in torch.split(by_length(batch, mini_idx), cfg.optim.micro_batch_size) if m.numel() > 0]
            passes = reduce.max(len(micros)) if reduce.lockstep else len(micros)  # agreed before any pass
            # the first mini-batch's ratio is 1 by construction: its KL / clip statistics would only dilute the rest
            drift = _DriftStats(add, epoch, epoch == 0 and k == 0, cfg.algo.ppo_epochs > 1, ratios)
            for i in range(passes):  # no micro-batch only on a process whose shard is empty
                if i < len(micros):
                    _micro_backward(run, batch, micros[i], ref_logp, denom, it, drift)
                else:
                    _idle_backward(model)
            reduce.grads(params)  # Σ over processes of Σ_local / global denominator = the full-batch gradient
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
            check_finite("gradient norm", grad_norm, it)
            add("actor/grad_norm", grad_norm)
            add("optim/lr", set_lr(opt, cfg, optimizer_steps(opt)))
            opt.step()
    out = {k: sums[k] / counts[k] for k in sums}
    n_opt = counts.get("actor/grad_norm", 1)
    for key in LOSS_KEYS:  # loss terms are partial sums per micro-batch: report them per optimizer step
        total = reduce.sum(sums.get(key, 0.0) / n_opt)  # every process joins, whatever terms it has
        if key in sums or total != 0.0:
            out[key] = total
    for key, pick in (("actor/ratio_min", min), ("actor/ratio_max", max)):
        values = [v for k, v in ratios if k == key]
        if values:
            out[key] = pick(values)
    out["optim/steps"] = float(optimizer_steps(opt))
    if batch.row_weight is not None:  # rows computed / rows in the batch (this process's)
        out["update/distinct_rows"] = n_rows / max(n_before, 1)
    return out


DRIFT_KEYS = ("actor/approx_kl", "actor/clipfrac", "actor/clipfrac_low", "actor/clipfrac_high", "actor/dual_clipfrac")


@dataclass
class _DriftStats:
    """Where one mini-batch's micro-batch metrics go: policy-drift statistics (:data:`DRIFT_KEYS`) only from the
    mini-batches after the iteration's first (whose ratio is exactly 1), also per PPO epoch (``…/epoch_N``, 1-based)
    when there are several; ratio min/max from all; everything else as before."""

    add: Callable[[str, Any], None]
    epoch: int
    first: bool
    per_epoch: bool
    ratios: list

    def __call__(self, key: str, value: Any) -> None:
        if key in DRIFT_KEYS:
            if not self.first:
                self.add(key, value)
                if self.per_epoch:
                    self.add(f"{key}/epoch_{self.epoch + 1}", value)
        elif key in ("actor/ratio_min", "actor/ratio_max"):
            self.ratios.append((key, float(value)))
        else:
            self.add(key, value)


def optimizer_steps(opt: torch.optim.Optimizer) -> int:
    """Optimizer steps taken so far: AdamW's own per-parameter ``step`` count (saved and restored with its state,
    so the learning-rate schedule resumes exactly)."""
    steps = [st["step"] for st in opt.state.values() if "step" in st]
    return int(max(float(s) for s in steps)) if steps else 0


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> float:
    """Set the learning rate of optimizer step ``step`` (0-based) from ``optim.lr``, its warm-up and schedule."""
    planned = cfg.iterations * cfg.algo.ppo_epochs * cfg.optim.mini_batches
    lr = cfg.optim.lr * lr_factor(step, planned, cfg.optim.schedule, cfg.optim.warmup_steps)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def _micro_backward(
    run: Run,
    batch: StepBatch,
    idx: torch.Tensor,
    ref_logp: torch.Tensor | None,
    denom: float,
    it: int,
    add: _DriftStats,
) -> None:
    """Loss of micro-batch ``idx`` (normalised by the mini-batch ``denom``), NaN guard, backward; metrics to ``add``.

    Merged rows (:meth:`StepBatch.merge_duplicates`) weight the KL and entropy terms by ``row_weight``, the rows each
    stands for; the policy-gradient term already carries it in its summed advantages."""
    cfg = run.cfg
    micro = batch.select(idx)
    weight = micro.row_weight
    need_ent = cfg.algo.entropy_coef > 0
    logp, ent = response_logprobs(run.trained_model, micro, temperature=cfg.rollout.temperature, with_entropy=need_ent)
    mask = micro.response_mask
    pg, m = policy_loss(
        logp,
        micro.old_logprobs,
        micro.advantages,
        mask,
        clip_low=cfg.algo.clip_low,
        clip_high=cfg.algo.effective_clip_high,
        dual_clip=cfg.algo.dual_clip,
        agg=cfg.algo.loss_agg,
        denominator=denom,
        advantages_neg=micro.advantages_neg,  # set on merged rows
    )
    loss = pg
    if ref_logp is not None:
        kl = agg_loss(_weighted(kl_penalty(logp, ref_logp[idx], kind="k3"), weight), mask, cfg.algo.loss_agg, denom)
        loss = loss + cfg.algo.kl_coef * kl
        add("loss/kl", kl.detach())
    if need_ent:
        ent_term = entropy_loss(_weighted(ent, weight), mask, agg=cfg.algo.loss_agg, denominator=denom)
        loss = loss - cfg.algo.entropy_coef * ent_term
        add("loss/entropy", ent_term.detach())
    check_finite("policy loss", loss, it)
    loss.backward()
    add("loss/pg", pg.detach())
    add("loss/total", loss.detach())
    for key, value in m.items():
        if key != "actor/pg_loss":  # a micro-batch's partial sum; loss/pg is the mini-batch loss
            add(key, value)


def _idle_backward(model: torch.nn.Module) -> None:
    """A forward/backward of one token with zero loss: joins FSDP's per-pass collectives, adds nothing to grads."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    (model(input_ids=ids).logits.sum() * 0.0).backward()


def _weighted(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return values if weight is None else values * weight.to(values.dtype).unsqueeze(-1)


def _denominator(cfg: TrainConfig, batch: StepBatch, rows: torch.Tensor) -> float:
    """Global normaliser of the mini-batch ``rows`` (b,) so micro-batch losses add up to the mini-batch loss: its
    token count for token-mean, its row count otherwise (merged rows count ``row_weight`` times)."""
    mask = batch.response_mask[rows]
    w = torch.ones(mask.shape[0]) if batch.row_weight is None else batch.row_weight[rows].cpu().float()
    if cfg.algo.loss_agg == "token-mean":
        return float(((mask != 0).sum(-1).cpu().float() * w).sum())
    return float(w.sum())


# ============================================================================= 5. evaluation
def evaluate_phase(run: Run, iteration: int) -> dict[str, float]:
    """Evaluate on ``eval.splits`` (fixed seeds); write ``eval/<split>_iter_XXXX.json``; return flat metrics."""
    cfg = run.cfg
    out: dict[str, float] = {}
    full = iteration in (0, cfg.iterations) or cfg.eval.interim_episodes == 0
    episodes = cfg.eval.episodes if full else min(cfg.eval.interim_episodes, cfg.eval.episodes)
    for split in cfg.eval.splits:
        generator_for(cfg.seed, iteration, "eval")
        report = evaluate_with_config(  # vLLM when model.backend=vllm (weights synced); envs in this process
            run.generating_policy, cfg, split, episodes, seed=eval_sampling_seed(cfg.seed)
        )
        save_report(report, run.run_dir / "eval" / f"{split}_{ckpt.checkpoint_name(iteration)}.json")
        out.update(report.metrics())
        if run.console is not None and not getattr(run.console, "is_terminal", False):
            stamp(run.console, f"evaluation at iteration {iteration}: {split} {report.success:.1%} "
                  f"({report.episodes} episodes, invalid {report.invalid_rate:.1%})")  # fmt: skip
    return out


def _sft_eval_metrics(run: Run) -> dict[str, float] | None:
    """The SFT evaluation as the iteration-0 point when it covered the same splits and seeds (no second pass)."""
    import json

    path = run.run_dir / "sft.json"
    if not path.is_file():
        return None
    sft = json.loads(path.read_text())
    cfg = run.cfg
    out: dict[str, float] = {}
    for split in cfg.eval.splits:
        report = sft.get(f"eval/{split}")
        if (
            report is None
            or report["episodes"] != cfg.eval.episodes
            or sft.get("eval_seed", 0) != eval_sampling_seed(cfg.seed)
        ):
            return None
        out.update(EvalReport.from_dict(report).metrics())
    return out


# ============================================================================= diagnostics and logging
def _log(run: Run, iteration: int, metrics: dict[str, Any]) -> None:
    run.logger.log(metrics, step=iteration)
    run.history.append({"iteration": iteration, **metrics})


@contextmanager
def _progress(run: Run) -> Iterator[Any]:
    """Progress over the RL iterations (a rich bar on a terminal, one plain line per iteration elsewhere); yields
    ``advance(metrics)``."""
    if run.console is None or not run.cfg.log.progress:
        yield lambda metrics: None
        return
    with Progress(run.console, "RL", run.cfg.iterations, completed=run.start, unit="its") as progress:
        yield lambda m: progress.line(progress.done + 1, iteration_summary(m))


__all__ = ["Run", "setup_run", "train", "train_auto"]
