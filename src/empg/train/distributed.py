"""Data-parallel RL training over several processes (DDP semantics, ``torch.distributed``; launched by Accelerate).

``accelerate launch --num_processes N [--cpu] -m empg.cli train ...`` (or ``torchrun --nproc_per_node N -m empg.cli
train ...``) starts N processes with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set;
:func:`init_distributed` joins them (gloo on CPU, NCCL on CUDA).

There is one training loop, :func:`empg.train.rl.train`, for 1 ... N processes; this module holds what it needs to
run on several: the process group (:class:`DistInfo`), the collectives, and the :class:`Reducer` through which the
loop's phases combine values over processes (the defaults, :data:`LOCAL`, are one process). It imports nothing of
the loop. The pieces, in the order of one iteration:

1. **Rollout sharding** — the trainer's own :func:`empg.train.rl.rollout_phase` with this group's :func:`reducer`:
   every rank draws the same task list (same seeded generator) and rolls out its contiguous shard of the groups
   (:meth:`empg.train.rl.Reducer.shard`); :func:`empg.train.rl.renumber_groups` gives its groups and trajectories ids
   that are unique over all ranks (group ``g`` keeps its global index, trajectory ``g * group_size + k``).
2. **Scoring** — each rank scores its own step rows (behaviour log-probs and token entropies).
3. **Advantages on the full batch** — :func:`global_step_advantages` gathers the step tables (ids, outcomes, step
   entropies) of all ranks, runs the trainer's own :func:`empg.train.advantage.advantage_phase` on the whole batch
   (GRPO group statistics and EMPG's min-max, mean of g and final mean are batch-global), and keeps this rank's rows.
4. **Update** — :func:`empg.train.rl.update_phase` with this process group's :func:`reducer`, whose all-reduces
   make N processes compute exactly the single-process step: the loss denominator (token count or row count of the
   mini-batch) is summed over ranks, and gradients are summed over ranks (one flat
   all-reduce) before clipping and the optimizer step. Parameters therefore stay identical on every rank (checked by
   :func:`check_in_sync`).
5. **Checkpoints, evaluation, logging** — on the main rank only (``DistInfo.is_main``), followed by :func:`barrier`.
   Rank 0 sets the run up (base model, SFT warm start, run directory); the others load what it saved.

Exactness: with ``optim.mini_batches = 1`` the N-process update equals the single-process update on the same batch
(to float rounding; tested with 2 gloo processes to 1e-5). With more mini-batches each rank splits its own shard, so
mini-batches are drawn per shard (still a valid PPO update, not the same partition as one process).

``optim.sharding=fsdp`` shards parameters, gradients and optimizer state instead (:mod:`empg.train.fsdp`); the
steps above are the same, the update uses FSDP's own gradient reduction and an unsharded copy generates and scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from empg.train import advantage
from empg.train.advantage import StepTable
from empg.train.batch import StepBatch
from empg.train.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Reducer:
    """How :func:`empg.train.rl.rollout_phase` and :func:`empg.train.rl.update_phase` combine values over
    data-parallel processes; the defaults (:data:`LOCAL`) are one process.

    :func:`reducer` fills in a process group's rank and collectives, which is all that separates an N-process
    rollout (a shard of the task groups, DAPO's rounds decided on global counts) and update from one process's.
    """

    sum: Callable[[float], float] = float  # Σ of a float over processes (loss denominators, loss metrics)
    min: Callable[[int], int] = int  # min of an int over processes (so every process takes the same optimizer steps)
    grads: Callable[[list[torch.nn.Parameter]], None] = lambda params: None  # Σ gradients over processes, in place
    max: Callable[[int], int] = int  # max of an int over processes
    # FSDP: every forward/backward is a collective, so every process runs as many micro-batches as the busiest one
    # (padding with zero-loss passes); DDP's single gradient all-reduce per optimizer step does not need it
    lockstep: bool = False
    rank: int = 0
    world_size: int = 1
    gather: Callable[[Any], list] = lambda obj: [obj]  # [obj of rank 0, obj of rank 1, ...] on every process

    def shard(self, n: int) -> tuple[int, int]:
        """Contiguous, balanced ``[start, stop)`` of ``n`` items for this process (the first ``n % world`` get one
        more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


LOCAL = Reducer()


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (1 = a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the launcher's environment; a no-op for a single process.

    Args:
        backend: "gloo" | "nccl"; None = nccl when CUDA is available, else gloo.
        timeout_s: collective timeout.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={world} but {key} is not set; start the processes with `accelerate launch` or "
                    "`torchrun`, which set RANK, MASTER_ADDR and MASTER_PORT"
                )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":  # one GPU per process: model.device="cuda" then means this rank's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return dist_info()


def dist_info() -> DistInfo:
    """The current :class:`DistInfo` (single process when no process group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def leave_process_group(info: DistInfo, *, wait: bool = True) -> None:
    """Destroy the process group (a no-op for a single process); with ``wait``, after every rank has arrived.

    Pass ``wait=True`` on a normal exit: without the barrier a rank that finishes first (workers return from
    :func:`empg.train.rl.train` while rank 0 still writes plots) closes its gloo connections under a peer that still
    holds them, which can abort that peer ("terminate called without an active exception", SIGABRT). Pass
    ``wait=False`` when leaving on an exception: the other ranks may be inside a collective that will never match,
    and closing at once makes theirs fail now instead of at the collective timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait and info.enabled:
        dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives
def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; keep it small)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's ``t`` (first dims may differ; other dims must agree) in rank order."""
    if not info.enabled:
        return t
    sizes = torch.tensor([t.shape[0]], dtype=torch.long)
    all_sizes = [torch.zeros_like(sizes) for _ in range(info.world_size)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype)
    padded[: t.shape[0]] = t.detach().cpu()
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum of a float over ranks (float64 on the wire)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def all_reduce_min(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def sync_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients of ``params`` over ranks, in place (one flat buffer; missing grads count as zeros)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(model: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (start from identical weights)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src)


def check_in_sync(model: torch.nn.Module, info: DistInfo, atol: float = 0.0) -> None:
    """Raise if this rank's parameters differ from rank 0's by more than ``atol`` (a cheap checksum per tensor)."""
    if not info.enabled:
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    ref = sums.clone()
    dist.broadcast(ref, 0)
    if not torch.allclose(sums, ref, rtol=0, atol=atol):
        raise RuntimeError(f"rank {info.rank}: parameters drifted from rank 0; gradients were not synchronised")


# ----------------------------------------------------------------------------- 1. rollout sharding
# ----------------------------------------------------------------------------- 3. advantages on the full batch
def global_step_advantages(
    cfg: TrainConfig, table: StepTable, it: int, info: DistInfo, details: dict | None = None
) -> tuple:
    """Per-step advantages (S_local,) of this rank's steps, computed by :func:`empg.train.advantage.advantage_phase`
    on all ranks' :class:`~empg.train.advantage.StepTable`s joined in rank order.

    Args:
        cfg: the :class:`~empg.train.config.TrainConfig`.
        table: this rank's step table (:func:`empg.train.advantage.step_table`), ids unique over ranks
            (:func:`empg.train.rl.renumber_groups`).
        it: iteration (for error messages).
        info: process group info.
        details: filled with the per-step terms as :func:`~empg.train.advantage.advantage_phase` does (one process
            only: the terms of N processes' joined batch do not line up with this rank's steps).

    Returns:
        (advantages (S_local,), metrics of the global batch).
    """
    if not info.enabled:
        return advantage.advantage_phase(cfg, table, it, details=details)
    parts = gather_objects(table, info)
    whole = StepTable.cat(parts)
    pairs = set(zip(whole.traj_id.tolist(), whole.traj.tolist(), strict=True))
    if len(pairs) != len(set(whole.traj_id.tolist())):
        raise ValueError("trajectory ids collide across ranks; renumber each rank's rollout with rl.renumber_groups()")
    final, metrics = advantage.advantage_phase(cfg, whole, it)
    start = sum(len(p) for p in parts[: info.rank])
    return final[start : start + len(table)], metrics


# ----------------------------------------------------------------------------- 4. update
def reducer(info: DistInfo) -> Reducer:
    """The :class:`Reducer` of this process group: all-reduces (:data:`LOCAL` for one process)."""
    if not info.enabled:
        return LOCAL
    return Reducer(
        sum=lambda value: all_reduce_sum(value, info),
        min=lambda value: all_reduce_min(value, info),
        max=lambda value: -all_reduce_min(-int(value), info),
        grads=lambda params: sync_gradients(params, info),
        rank=info.rank,
        world_size=info.world_size,
        gather=lambda obj: gather_objects(obj, info),
    )


def fsdp_reducer(info: DistInfo) -> Reducer:
    """:func:`reducer` without its gradient all-reduce (FSDP reduces gradients itself) and with lock-step
    micro-batches."""
    return replace(reducer(info), grads=LOCAL.grads, lockstep=True)


def empty_batch() -> StepBatch:
    """A zero-row ``StepBatch`` for a rank whose shard kept no step (it still joins every collective)."""
    z = torch.zeros(0, 2)
    zl = torch.zeros(0, 2, dtype=torch.long)
    zi = torch.zeros(0, dtype=torch.long)
    return StepBatch(zl, zl, z, z, z, z, z, zi, zi, zi, torch.zeros(0, dtype=torch.bool), 1)


# ----------------------------------------------------------------------------- options
def check_single_process_options(cfg: TrainConfig) -> None:
    """Ray env workers and the vLLM backend are wired into the single-process loop only (before any work starts)."""
    if cfg.rollout.env_workers > 0:
        raise ConfigError(
            "rollout.env_workers",
            "Ray env workers are not wired into multi-process (torchrun/accelerate) training",
            "use rollout.env_workers=0 under torchrun, or train in one process with env workers",
        )
    if cfg.model.backend != "hf":
        raise ConfigError(
            "model.backend",
            f"model.backend={cfg.model.backend} is not wired into multi-process (torchrun/accelerate) training",
            "use model.backend=hf under torchrun, or train in one process with vLLM",
        )
