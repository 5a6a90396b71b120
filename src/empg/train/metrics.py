"""Metrics: JSONL logging (always), TensorBoard / W&B (when asked), summary helpers and the NaN/inf guard.

Metric keys are namespaced (``train/success``, ``eval_in/success``, ``empg/g_mean``, ``actor/clipfrac_low`` …);
every key the trainer writes is documented in :data:`METRIC_DOCS`. Timing keys (``time/*``, ``perf/*``) are the only
ones that differ between two runs with the same seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from empg.eval.runlog import METRICS

METRIC_DOCS: dict[str, str] = {
    "iteration": "RL iteration index (1-based: the metrics after iteration N's update).",
    "train/success": "Success rate of the training rollouts (all rollout rounds).",
    "train/return": "Mean return R_i = reward_scale*outcome - invalid_penalty*#invalid.",
    "train/ep_len": "Mean episode length in steps.",
    "train/invalid_rate": "Fraction of steps with an invalid or unparsable action.",
    "train/n_steps": "Step rows in the training batch (after DAPO filtering).",
    "train/env_steps": "Environment steps taken by this iteration's rollouts (all rounds, failed episodes included).",
    "train/failed_episodes": "Episodes lost to infrastructure failures (dead env worker), excluded from the batch.",
    "rollout/lost_env_calls": "Env calls lost with a dead, restarted or hung Ray env worker (rollout.env_workers > 0).",
    "rollout/hung_env_calls": "Env calls unanswered within rollout.env_step_timeout (worker killed, restarted).",
    "time/weight_sync": "Seconds spent copying trainer weights into the vLLM engine (model.backend=vllm).",
    "dapo/kept_groups": "Informative groups kept (returns not all equal).",
    "dapo/rounds": "Rollout rounds used (1 = no resampling).",
    "<split>/success": "Eval success rate on a split; per task type as <split>/success/<type> (the train split: "
    "eval_train/..., the RL task pool).",
    "entropy/token_mean": "Mean behaviour token entropy over response tokens.",
    "entropy/thought_token": "Mean token entropy over thought tokens (outside <action>).",
    "entropy/action_token": "Mean token entropy over action-span tokens.",
    "entropy/step_mean": "Mean step entropy H (the EMPG input).",
    "entropy/step_success": "Mean step entropy of steps of successful trajectories.",
    "entropy/step_failure": "Mean step entropy of steps of failed trajectories.",
    "empg/g_mean|min|max": "Statistics of the self-calibrating scale g (mean 1 by construction).",
    "empg/f_mean|min|max": "Statistics of the future-clarity bonus f over steps that have a next step.",
    "adv/success_before|failure_before": "Mean step advantage of successful / failed steps before the final norm.",
    "adv/success_after|failure_after": "Same after the final normalisation (METHOD §6 risk 1).",
    "adv/mean|std|min|max": "Final per-step advantages.",
    "actor/*": "Policy-loss diagnostics from empg.algos.policy_loss (clip fractions, approx KL, ratio).",
    "loss/pg|kl|entropy|total": "Loss terms averaged over optimizer steps.",
    "actor/grad_norm": "Global gradient norm before clipping (mean over optimizer steps).",
    "perf/tokens_per_s": "Generated tokens per second in the rollout phase.",
    "time/rollout|scoring|update|eval|total": "Wall seconds per phase.",
}


class NonFiniteError(FloatingPointError):
    """A NaN or inf reached a tensor the update depends on; raised before any optimizer step is applied."""


def check_finite(name: str, tensor: torch.Tensor, iteration: int, mask: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the iteration and the tensor when ``tensor`` has NaN/inf.

    Args:
        name: what the tensor is (e.g. ``"advantages"``).
        tensor: any shape.
        iteration: the current RL iteration (0-based), for the message.
        mask: optional, same shape; only positions where ``mask != 0`` are checked (padding may hold anything).
    """
    values = tensor.detach()
    if mask is not None:
        values = values[mask.detach() != 0]
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        n = int(bad.sum())
        raise NonFiniteError(
            f"iteration {iteration}: {n} non-finite value(s) (NaN/inf) in {name}; no optimizer step was applied. "
            "Fix: lower optim.lr, check the reward/advantage settings, or resume from the last checkpoint."
        )


def stats(prefix: str, values: torch.Tensor | list[float]) -> dict[str, float]:
    """``{prefix_mean, prefix_min, prefix_max}`` of a 1-D tensor or list (NaN-free; empty → no keys)."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        return {}
    return {f"{prefix}_mean": float(t.mean()), f"{prefix}_min": float(t.min()), f"{prefix}_max": float(t.max())}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` where ``mask`` is non-zero (NaN when the mask is empty). Shapes: any, equal."""
    m = mask != 0
    if not bool(m.any()):
        return float("nan")
    return float(values[m].double().mean())


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append one JSON object per iteration to ``run_dir/metrics.jsonl``; mirror to TensorBoard / W&B when asked.

    Args:
        run_dir: the run directory.
        tensorboard: also write scalars to ``run_dir/tb``.
        wandb: also log to Weights & Biases (project ``wandb_project``, config ``config``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "empg",
        config: dict | None = None,
    ):
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("log.tensorboard=true needs `pip install empg[tensorboard]`") from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as e:
                raise ImportError("log.wandb=true needs `pip install empg[wandb]`") from e
            self._wandb = wandb_mod.init(project=wandb_project, config=config, dir=str(run_dir))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Write ``metrics`` (NaN/inf become null) for iteration ``step``."""
        row = {"iteration": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def truncate_jsonl(path: str | Path, max_iteration: int) -> None:
    """Drop rows with ``iteration > max_iteration`` (resume: the run continues after its last checkpoint), and a last
    row that a crash cut short (no newline, not parsing: a write of several buffers killed in between)."""
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text(errors="surrogateescape")  # a cut-short row may end in part of a UTF-8 character
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n") and not _parses(lines[-1]):
        lines.pop()
    keep = [line for line in lines if json.loads(line).get("iteration", 0) <= max_iteration]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), errors="surrogateescape")
    tmp.replace(path)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
