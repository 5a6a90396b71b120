"""FSDP for multi-process training (``optim.sharding=fsdp`` under torchrun / ``accelerate launch``).

With DDP every process holds the whole model, its gradients and the AdamW state (about 4x the parameters). Here the
update trains a copy of the model sharded with torch's FSDP2 (:func:`torch.distributed.fsdp.fully_shard`, one unit
per decoder layer plus the root), so gradients and AdamW state cost 3/N of the parameters per process. Generation,
scoring and evaluation need every process to run a *different* number of forward passes, which a sharded model
cannot do (each forward all-gathers); they use an unsharded copy (``run.policy``) that :func:`sync_rollout_weights`
refreshes after every update, as hybrid engines (verl) refresh their rollout engine. That copy costs 1x the
parameters, so a process holds about 1 + 3/N of them instead of 4.

The update is the single-process one (:func:`empg.train.rl.update_phase`) with
:func:`empg.train.distributed.fsdp_reducer`: FSDP sums the gradients over processes itself (divide factor 1, matching
the global loss denominators), and every process runs as many micro-batches as the busiest one (zero-loss passes on
the others). Checkpoints gather the full AdamW state and write it in the single-process format, so a run can resume
with either sharding, or in one process.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["full_optimizer", "shard_for_training", "sync_rollout_weights"]


def shard_for_training(run: Any, info: Any) -> None:
    """Give ``run`` an FSDP-sharded training copy of ``run.policy.model`` and a sharded AdamW in place of
    ``run.optimizer``, carrying over the optimizer's hyperparameters and state (e.g. restored from a checkpoint).

    Every process must call it with identical weights in ``run.policy.model`` (after the initial broadcast).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    full = run.policy.model
    device = next(full.parameters()).device
    mesh = init_device_mesh(device.type, (info.world_size,))
    model = copy.deepcopy(full)
    for module in _shard_units(model):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in [m for m in model.modules() if isinstance(m, FSDPModule)]:  # each unit reduces its own gradients
        unit.set_gradient_divide_factor(1.0)  # sum, not mean: the loss is already divided by the global denominator
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    old = run.optimizer
    group = {k: v for k, v in old.param_groups[0].items() if k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **group)
    state = _index_to_names(old.state_dict(), _param_names(model))
    if state["state"]:
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    run.train_model, run.optimizer = model, opt


def sync_rollout_weights(run: Any) -> None:
    """Copy the trained (sharded) weights into the unsharded ``run.policy.model``; a collective, every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(run.train_model, options=StateDictOptions(full_state_dict=True))
    with torch.no_grad():
        run.policy.model.load_state_dict(full)


def full_optimizer(run: Any) -> Any:
    """The full AdamW state in the single-process layout, for :func:`empg.train.checkpoint.save_checkpoint`.

    A collective (every process calls it); returns an object with ``state_dict()`` on every process, complete on
    the main one (the others get an empty state, as only the main process writes files).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    named = get_optimizer_state_dict(run.train_model, run.optimizer, options=options)
    return _StateOnly(_names_to_index(named, _param_names(run.train_model)))


# ----------------------------------------------------------------------------- helpers
def _shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (Hugging Face models name their classes in ``_no_split_modules``), else no sub-units."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _param_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters in optimizer order (tied weights once, as ``parameters()`` yields them)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _index_to_names(sd: dict, names: list[str]) -> dict:
    """A plain optimizer state dict (params by index) keyed by parameter name, as torch.distributed.checkpoint
    expects."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {names[i]: v for i, v in sd["state"].items()}, "param_groups": groups}


def _names_to_index(sd: dict, names: list[str]) -> dict:
    """Inverse of :func:`_index_to_names` (an empty dict, as non-main ranks get with ``cpu_offload``, stays empty)."""
    if not sd:
        return {"state": {}, "param_groups": []}
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[n]: v for n, v in sd["state"].items()}, "param_groups": groups}


class _StateOnly:
    """What the checkpoint writer reads of an optimizer: ``state_dict()``."""

    def __init__(self, sd: dict):
        self._sd = sd

    def state_dict(self) -> dict:
        return self._sd
