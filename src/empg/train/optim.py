"""The RL optimizer: AdamW, with fp32 master weights when the model's parameters are in a lower precision.

``model.dtype`` sets the dtype of the model everywhere it is loaded (policy, reference, SFT, evaluation, resume), so
with ``bfloat16`` the forward and backward passes run in bf16 and checkpoints are bf16 safetensors, at half the memory
of fp32. AdamW's update ``lr · m / (sqrt(v) + eps)`` is then far below bf16's resolution for most weights (an 8-bit
mantissa rounds a relative change under 2^-8 away), so the optimizer works on fp32 **master copies**: each step casts
the bf16 gradients to fp32, updates the masters and their fp32 moments, and rounds the masters back into the bf16
parameters — the mixed-precision recipe of Micikevicius et al. 2018 that verl's and TRL's bf16 trainers follow. The
masters are part of the optimizer state (``state_dict``), so checkpoints resume bit for bit. fp32 models get plain
AdamW.
"""

from __future__ import annotations

from typing import Any

import torch


class MasterAdamW(torch.optim.AdamW):
    """AdamW over fp32 master copies of (bf16) model parameters.

    Args:
        params: the model's trainable parameters (any floating dtype; one parameter group).
        **kwargs: AdamW's arguments (``lr``, ``weight_decay``, …).
    """

    def __init__(self, params: list[torch.nn.Parameter], **kwargs: Any):
        self.model_params = list(params)
        masters = [p.detach().to(torch.float32).clone().requires_grad_(True) for p in self.model_params]
        super().__init__(masters, **kwargs)

    @property
    def masters(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for p, m in zip(self.model_params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
        loss = super().step(closure)
        for p, m in zip(self.model_params, self.masters, strict=True):
            p.copy_(m)  # round to the model's dtype
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        for i, m in enumerate(self.masters):
            sd["state"].setdefault(i, {})["master"] = m.detach().clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {i: dict(s) for i, s in state_dict["state"].items()}
        masters = {int(i): s.pop("master") for i, s in state.items() if "master" in s}
        super().load_state_dict({**state_dict, "state": {i: s for i, s in state.items() if s}})
        with torch.no_grad():
            for i, m in enumerate(self.masters):
                if i in masters:
                    m.copy_(masters[i])


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable parameters; :class:`MasterAdamW` when any of them is not float32."""
    params = [p for p in model.parameters() if p.requires_grad]
    if all(p.dtype == torch.float32 for p in params):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return MasterAdamW(params, lr=lr, weight_decay=weight_decay)


def model_dtype(name: str) -> torch.dtype:
    """``model.dtype`` as a torch dtype."""
    return getattr(torch, name)
