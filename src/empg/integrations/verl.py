"""EMPG as a verl advantage estimator (extra ``verl``): ``algorithm.adv_estimator=empg``.

What it computes (METHOD.md §2-§3): a GRPO (or Dr.GRPO) advantage per trajectory, each trajectory counted once in its
group, then the EMPG transform over all steps of the batch (batch min-max of step entropies, self-calibrating scaling
g, future-clarity bonus f from the next step of the same trajectory, final mean normalisation), broadcast to the
step's own tokens (``response_mask == 1``). ``returns`` are set equal to ``advantages``, as verl's GRPO does.

Two row layouts, picked by ``algorithm.empg.layout`` (``auto`` looks at which id field the batch carries):

* ``step`` (verl-agent): one row per agent step. ``non_tensor_batch["uid"]`` is the group (task) id,
  ``non_tensor_batch["traj_uid"]`` the trajectory id and a **step index field** (default key ``step_idx``, in
  ``non_tensor_batch`` or ``batch``) the 0-based turn of the row. verl-agent does not record it: add
  ``batch.non_tensor_batch["step_idx"] = np.full(len(batch), _step)`` next to the line that sets ``traj_uid`` in
  ``TrajectoryCollector.vanilla_multi_turn_loop`` (all envs start together, so the loop counter is each
  trajectory's turn). The step index is never parsed from prompt text. Every step row carries its episode's score
  in ``token_level_rewards`` (verl-agent's ``EpisodeRewardManager``), so a trajectory's return is its rows' common
  score (``return_mode="episode"``; rows that disagree are an error) or, with ``return_mode="sum"``, the sum of
  its rows' scores.
* ``trajectory`` (verl multi-turn agent loop): one row per trajectory whose response holds several assistant turns
  separated by observation tokens (``response_mask == 0``). ``batch["turn_ids"]`` (B, T) long gives the turn of each
  model token (values at masked positions are ignored); :func:`add_turn_ids_from_mask` derives it from the maximal
  runs of ``response_mask == 1``. The row's return is ``token_level_rewards.sum(-1)``; its trajectory id is
  ``traj_uid`` when present, else the row itself.

Rows may come in any order and may be duplicated (verl's ``pad_dataproto_to_divisor`` repeats rows): identical
duplicates count once in every statistic and receive the same advantage; duplicates that disagree raise an error.

Token entropies: verl computes them in the old-log-prob pass and then drops them
(``old_log_prob.batch.pop("entropys")`` in ``RayPPOTrainer.fit``). :func:`install` wraps
``RayPPOTrainer._compute_old_log_prob`` (verl >= 0.5) so a copy survives as ``batch["empg_entropys"]``; on forks
without that method (verl-agent) change that one line to
``old_log_prob.batch["empg_entropys"] = old_log_prob.batch.pop("entropys")``.

Activation: :func:`install` registers ``empg`` in ``verl.trainer.ppo.core_algos`` and routes verl's
``compute_advantage`` for ``adv_estimator=empg`` to :func:`compute_empg_advantage` (verl passes only
``token_level_rewards``/``response_mask``/``uid`` to registered estimators; EMPG needs ids and entropies). It must run
in the process that computes advantages (verl's ``TaskRunner`` Ray actor), so either launch with
``python -m empg.integrations.verl <your verl overrides>`` or add
``+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=empg.integrations.verl.install``.
Hyper-parameters live under ``algorithm.empg`` (``+algorithm.empg.k=1.0 +algorithm.empg.zeta=0.1`` ...; see
:class:`EMPGVerlConfig`); ``algorithm.norm_adv_by_std_in_grpo`` picks GRPO (True) or Dr.GRPO (False).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from empg.algos.empg import DEFAULT_PARAMS as EMPG_DEFAULTS
from empg.algos.empg import EMPGParams

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "empg"
KEPT_ENTROPY_KEY = "empg_entropys"
_LAYOUTS = ("auto", "step", "trajectory")
_RETURN_MODES = ("episode", "sum")


@dataclass(frozen=True)
class EMPGVerlConfig:
    """EMPG settings read from ``algorithm.empg`` (every field optional).

    Attributes:
        k: scaling sharpness k of g = exp(-k·H̃) / mean exp(-k·H̃).
        k_next: sharpness k' of the future-clarity bonus f = exp(-k'·H̃_next).
        zeta: bonus weight ζ.
        use_scaling: ablation switch for g (g ≡ 1 when False).
        use_bonus: ablation switch for f (ζ = 0 when False).
        final_norm: "mean" (paper) | "mean_std" | "none" | "traj_mean".
        norm_adv_by_std: GRPO (True) or Dr.GRPO (False); None = take ``algorithm.norm_adv_by_std_in_grpo``.
        layout: "auto" | "step" | "trajectory" (see the module docstring).
        group_key: non-tensor field with the group (task) id.
        traj_key: non-tensor field with the trajectory id.
        step_key: field with the 0-based step index (step layout).
        turn_key: (B, T) tensor field with per-token turn ids (trajectory layout).
        entropy_key: (B, T) token entropies; None = ``empg_entropys`` then ``entropys``.
        return_mode: "episode" (every step row carries the episode score) | "sum" (sum of the rows' scores).
    """

    k: float = EMPG_DEFAULTS.k
    k_next: float = EMPG_DEFAULTS.k_next
    zeta: float = EMPG_DEFAULTS.zeta
    use_scaling: bool = EMPG_DEFAULTS.use_scaling
    use_bonus: bool = True
    final_norm: str = EMPG_DEFAULTS.final_norm
    norm_adv_by_std: bool | None = None
    layout: str = "auto"
    group_key: str = "uid"
    traj_key: str = "traj_uid"
    step_key: str = "step_idx"
    turn_key: str = "turn_ids"
    entropy_key: str | None = None
    return_mode: str = "episode"

    def __post_init__(self):
        if self.layout not in _LAYOUTS:
            raise ValueError(f"algorithm.empg.layout={self.layout!r} is not one of {_LAYOUTS}")
        if self.return_mode not in _RETURN_MODES:
            raise ValueError(f"algorithm.empg.return_mode={self.return_mode!r} is not one of {_RETURN_MODES}")
        for name in ("k", "k_next", "zeta"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"algorithm.empg.{name} must be >= 0, got {getattr(self, name)!r}")

    def params(self) -> EMPGParams:
        """The transform's :class:`empg.algos.EMPGParams` (``use_bonus=False`` is ζ = 0)."""
        zeta = self.zeta if self.use_bonus else 0.0
        return EMPGParams(self.k, self.k_next, zeta, self.use_scaling, self.final_norm)

    @classmethod
    def from_algorithm_config(cls, algo_cfg: Any = None, **overrides: Any) -> EMPGVerlConfig:
        """Build from verl's ``algorithm`` config (DictConfig, dict, dataclass or None) plus keyword overrides."""
        raw = _cfg_get(algo_cfg, "empg")
        values: dict[str, Any] = {}
        if raw is not None:
            items = raw.items() if hasattr(raw, "items") else dataclasses.asdict(raw).items()
            values = {str(key): value for key, value in items}
        values.update({key: value for key, value in overrides.items() if value is not None})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown algorithm.empg keys {unknown}; valid keys: {valid}")
        if values.get("norm_adv_by_std") is None:
            top = _cfg_get(algo_cfg, "norm_adv_by_std_in_grpo")
            values["norm_adv_by_std"] = True if top is None else bool(top)
        return cls(**values)


def _cfg_get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        try:
            return cfg.get(key)
        except (AttributeError, KeyError, TypeError):
            pass
    return getattr(cfg, key, None)


# ----------------------------------------------------------------------------------------------- core (no verl)
def _codes(values: Any, n: int, name: str) -> torch.Tensor:
    """Dense integer codes (n,) for arbitrary ids (strings, ints, uuids)."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"field {name!r} has {arr.shape[0]} entries for a batch of {n} rows")
    _, inverse = np.unique(arr.astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def _masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (B,) mean over mask == 1; NaN/inf at masked positions never leak; 0 for empty rows."""
    keep = mask > 0
    total = torch.where(keep, values, torch.zeros_like(values)).sum(-1)
    return total / keep.sum(-1).clamp(min=1)


def _trajectory_returns(
    scores: torch.Tensor, traj: torch.Tensor, group: torch.Tensor, step_key: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory return (n_traj,) and group code (n_traj,) from per-row scores, de-duplicating rows.

    Args:
        scores: (R,) row scores. traj, group: (R,) codes. step_key: (R,) unique key of the row's step, or None when
            each row is a whole trajectory. mode: "episode" (rows of a trajectory share the score) or "sum".
    """
    n_traj = int(traj.max()) + 1
    rows = torch.arange(traj.numel())
    if step_key is not None and mode == "sum":
        _, first = _first_index(step_key)
        rows = first  # one row per distinct step
    dtype = torch.float64
    lo = torch.full((n_traj,), float("inf"), dtype=dtype).scatter_reduce(0, traj[rows], scores[rows].to(dtype), "amin")
    hi = torch.full((n_traj,), -float("inf"), dtype=dtype).scatter_reduce(0, traj[rows], scores[rows].to(dtype), "amax")
    glo = torch.full((n_traj,), 2**62).scatter_reduce(0, traj, group, "amin")
    ghi = torch.full((n_traj,), -1).scatter_reduce(0, traj, group, "amax")
    if bool((glo != ghi).any()):
        raise ValueError("a trajectory id appears under two group ids (uid); trajectory ids must be unique per group")
    if mode == "episode":
        if bool(((hi - lo).abs() > 1e-6 * (1 + lo.abs())).any()):
            bad = int(torch.nonzero((hi - lo).abs() > 1e-6 * (1 + lo.abs()))[0])
            raise ValueError(
                f"rows of trajectory #{bad} carry different scores ({lo[bad]:.6g} vs {hi[bad]:.6g}) with "
                "algorithm.empg.return_mode='episode'; put the episode score on every step row, or set "
                "+algorithm.empg.return_mode=sum if each row holds only its own step's reward"
            )
        return lo.to(scores.dtype), glo
    total = torch.zeros(n_traj, dtype=dtype).index_add_(0, traj[rows], scores[rows].to(dtype))
    return total.to(scores.dtype), glo


def _first_index(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys and, for each, the index of its first occurrence."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    pos = torch.arange(key.numel())
    first = torch.full((uniq.numel(),), key.numel()).scatter_reduce(0, inverse, pos, "amin")
    return uniq, first


def empg_token_advantages(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    entropys: torch.Tensor,
    group_ids: Any,
    traj_ids: Any | None,
    *,
    step_idx: Any | None = None,
    turn_ids: torch.Tensor | None = None,
    cfg: EMPGVerlConfig | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """EMPG token advantages for verl-shaped tensors, without verl.

    Args:
        token_level_rewards: (B, T) float; a row's score is its sum.
        response_mask: (B, T), 1 = the model's own token (only these get an advantage and count in the entropy).
        entropys: (B, T) behaviour-policy token entropies (values at masked positions are ignored).
        group_ids: (B,) group (task) ids of the rows, any hashable type.
        traj_ids: (B,) trajectory ids; None in the trajectory layout means "each row is its own trajectory".
        step_idx: (B,) 0-based step index of each row: selects the step layout.
        turn_ids: (B, T) per-token turn id: selects the trajectory layout. Exactly one of step_idx / turn_ids.
        cfg: settings (defaults: paper values, GRPO).

    Returns:
        advantages (B, T) (0 where response_mask is 0) and a dict of ``empg/...`` metrics.
    """
    from empg.algos import empg_transform_with_stats, grpo_advantages

    cfg = cfg or EMPGVerlConfig()
    if (step_idx is None) == (turn_ids is None):
        raise ValueError("give exactly one of step_idx (per-step rows) or turn_ids (whole-trajectory rows)")
    if token_level_rewards.shape != response_mask.shape or entropys.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)}, response_mask {tuple(response_mask.shape)} "
            f"and entropys {tuple(entropys.shape)} must all be (B, T)"
        )
    n_rows = response_mask.shape[0]
    mask = response_mask > 0
    group = _codes(group_ids, n_rows, "group ids")
    traj = torch.arange(n_rows) if traj_ids is None else _codes(traj_ids, n_rows, "trajectory ids")
    scores = token_level_rewards.sum(-1)

    if step_idx is not None:  # ---- one row per step
        steps = torch.as_tensor(np.asarray(step_idx).reshape(-1).astype(np.int64))
        if steps.numel() != n_rows or bool((steps < 0).any()):
            raise ValueError(f"step index field needs {n_rows} non-negative ints, got {steps.tolist()[:8]}...")
        step_key = traj * (int(steps.max()) + 1) + steps
        ret, traj_group = _trajectory_returns(scores, traj, group, step_key, cfg.return_mode)
        step_h = _masked_row_mean(entropys.float(), response_mask)
        step_traj, step_t, token_step = traj, steps, None
    else:  # ---- one row per trajectory, turns inside the response
        turns = torch.where(mask, turn_ids.long(), torch.zeros_like(turn_ids, dtype=torch.long))
        if bool((turns < 0).any()):
            raise ValueError("turn_ids must be >= 0 on model tokens (response_mask == 1)")
        ret, traj_group = _trajectory_returns(scores, traj, group, None, "episode")
        row_of_tok = torch.arange(n_rows).unsqueeze(1).expand_as(turns)
        pair = row_of_tok * (int(turns.max()) + 1) + turns  # (B, T) unique (row, turn)
        uniq, token_step = torch.unique(pair[mask], return_inverse=True)  # steps sorted by (row, turn)
        step_row = uniq // (int(turns.max()) + 1)
        count = torch.zeros(uniq.numel()).index_add_(0, token_step, torch.ones(token_step.numel()))
        h_sum = torch.zeros(uniq.numel()).index_add_(0, token_step, entropys.float()[mask])
        step_h = h_sum / count
        first_of_row = torch.full((n_rows,), uniq.numel()).scatter_reduce(
            0, step_row, torch.arange(uniq.numel()), "amin"
        )
        step_t = torch.arange(uniq.numel()) - first_of_row[step_row]  # rank of the turn within its row
        step_traj = traj[step_row]

    base = grpo_advantages(ret.float(), traj_group, norm_by_std=cfg.norm_adv_by_std is not False)  # (n_traj,)
    a_final, stats = empg_transform_with_stats(
        base[step_traj],
        step_h,
        step_traj,
        step_t,
        cfg.params(),
    )
    if token_step is None:
        adv = a_final.unsqueeze(1) * mask.to(a_final.dtype)  # (B, T)
    else:
        adv = torch.zeros(response_mask.shape, dtype=a_final.dtype)
        adv[mask] = a_final[token_step]
    return adv.to(token_level_rewards.dtype), _metrics(stats, step_h, base[step_traj], a_final)


def _metrics(stats: Any, step_h: torch.Tensor, base: torch.Tensor, a_final: torch.Tensor) -> dict[str, float]:
    out = stats.metrics(success=base > 0)  # g/f mean/min/max; mean advantage of above/below-baseline steps
    out.update(
        {
            "empg/step_entropy_mean": float(step_h.mean()),
            "empg/adv_base_mean": float(base.mean()),
            "empg/adv_final_mean": float(a_final.mean()),
            "empg/adv_final_abs_mean": float(a_final.abs().mean()),
        }
    )
    return out


# ----------------------------------------------------------------------------------------------- verl glue
def _field(data: Any, key: str) -> Any:
    """A per-row field from ``non_tensor_batch`` or ``batch``; None when absent."""
    if key in getattr(data, "non_tensor_batch", {}):
        return data.non_tensor_batch[key]
    if data.batch is not None and key in data.batch.keys():
        return data.batch[key]
    return None


def _entropies(data: Any, cfg: EMPGVerlConfig) -> torch.Tensor:
    keys = [cfg.entropy_key] if cfg.entropy_key else [KEPT_ENTROPY_KEY, "entropys"]
    for key in keys:
        if key in data.batch.keys():
            return data.batch[key]
    raise KeyError(
        f"EMPG needs the token entropies of the old-log-prob pass under batch[{keys[0]!r}], but the batch has only "
        f"{sorted(data.batch.keys())}. verl drops them after that pass: call empg.integrations.verl.install() in the "
        f"trainer process, or replace `old_log_prob.batch.pop('entropys')` in fit() with "
        f"`old_log_prob.batch[{KEPT_ENTROPY_KEY!r}] = old_log_prob.batch.pop('entropys')`"
    )


def compute_empg_advantage(data: Any, config: Any = None, **overrides: Any) -> Any:
    """Set ``advantages`` and ``returns`` (B, T) on a verl ``DataProto`` with EMPG; returns the same object.

    Args:
        data: ``DataProto`` with ``batch["token_level_rewards"]``, ``batch["response_mask"]``, the token entropies
            and the id fields of the chosen layout (module docstring).
        config: verl's ``algorithm`` config (reads ``algorithm.empg.*`` and ``norm_adv_by_std_in_grpo``).
        **overrides: :class:`EMPGVerlConfig` fields that win over the config.

    The metrics go to ``data.meta_info["empg_metrics"]``.
    """
    cfg = config if isinstance(config, EMPGVerlConfig) else EMPGVerlConfig.from_algorithm_config(config, **overrides)
    layout = cfg.layout
    if layout == "auto":
        if _field(data, cfg.step_key) is not None:
            layout = "step"
        elif _field(data, cfg.turn_key) is not None:
            layout = "trajectory"
        else:
            raise KeyError(
                f"EMPG found neither a step index field {cfg.step_key!r} (per-step rows, verl-agent) nor a per-token "
                f"turn id tensor {cfg.turn_key!r} (whole-trajectory rows); add one (see empg.integrations.verl docs) "
                "or set algorithm.empg.step_key / turn_key to the names your batch uses"
            )
    group = _field(data, cfg.group_key)
    if group is None:
        raise KeyError(f"EMPG needs the group id field {cfg.group_key!r} (verl sets 'uid' per prompt)")
    traj = _field(data, cfg.traj_key)
    if layout == "step" and traj is None:
        raise KeyError(f"per-step rows need the trajectory id field {cfg.traj_key!r} (verl-agent sets 'traj_uid')")
    if layout == "step":
        step = _field(data, cfg.step_key)
        if step is None:
            raise KeyError(f"layout='step' needs the step index field {cfg.step_key!r}")
        step = step.cpu().numpy() if isinstance(step, torch.Tensor) else step
        kwargs = {"step_idx": step}
    else:
        turn = _field(data, cfg.turn_key)
        if turn is None:
            raise KeyError(f"layout='trajectory' needs batch[{cfg.turn_key!r}] (B, T); see add_turn_ids_from_mask")
        kwargs = {"turn_ids": turn}
    traj_np = traj.cpu().numpy() if isinstance(traj, torch.Tensor) else traj
    group_np = group.cpu().numpy() if isinstance(group, torch.Tensor) else group
    rewards = data.batch["token_level_rewards"]
    adv, metrics = empg_token_advantages(
        rewards.cpu(),
        data.batch["response_mask"].cpu(),
        _entropies(data, cfg).cpu(),
        group_np,
        traj_np,
        cfg=cfg,
        **kwargs,
    )
    adv = adv.to(rewards.device)
    data.batch["advantages"] = adv
    data.batch["returns"] = adv.clone()
    data.meta_info["empg_metrics"] = metrics
    return data


def add_turn_ids_from_mask(data: Any, key: str = "turn_ids") -> Any:
    """Add ``batch[key]`` (B, T) long: the index of the maximal run of ``response_mask == 1`` each token is in.

    Valid when assistant turns are separated by at least one masked (observation / template) token, as in verl's
    multi-turn agent loop. Values at masked positions are the id of the preceding turn (ignored by EMPG).
    """
    mask = data.batch["response_mask"] > 0
    starts = mask & ~torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)
    data.batch[key] = (starts.long().cumsum(-1) - 1).clamp(min=0)
    return data


def compute_empg_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    batch: Any = None,
    non_tensor_batch: Mapping | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The function registered under ``empg`` in verl's ``ADV_ESTIMATOR_REGISTRY`` (verl's estimator signature).

    verl's ``compute_advantage`` calls registered estimators with rewards, mask and ``uid`` only; EMPG also needs
    the entropies and the step ids, which it gets from ``batch`` / ``non_tensor_batch`` (passed by the wrapper
    :func:`install` puts around ``compute_advantage``).

    Returns:
        (advantages, returns), both (B, T).
    """
    if batch is None or non_tensor_batch is None:
        raise ValueError(
            "the 'empg' advantage estimator needs the whole batch (step ids, token entropies), which verl's "
            "compute_advantage does not pass to registered estimators; call empg.integrations.verl.install() in the "
            "trainer process (python -m empg.integrations.verl ..., or the Ray worker_process_setup_hook)"
        )
    view = _BatchView(batch, dict(non_tensor_batch))
    view.batch["token_level_rewards"] = token_level_rewards
    view.batch["response_mask"] = response_mask
    compute_empg_advantage(view, config)
    return view.batch["advantages"], view.batch["returns"]


class _BatchView:
    """The two attributes of a ``DataProto`` that :func:`compute_empg_advantage` reads, over plain mappings."""

    def __init__(self, batch: Any, non_tensor_batch: dict):
        self.batch = {key: batch[key] for key in batch.keys()}
        self.non_tensor_batch = non_tensor_batch
        self.meta_info: dict = {}


# ----------------------------------------------------------------------------------------------- installation
def _estimator_name(adv_estimator: Any) -> str:
    return str(getattr(adv_estimator, "value", adv_estimator))


def wrap_compute_advantage(original: Any) -> Any:
    """Wrap verl's ``compute_advantage(data, adv_estimator, ...)``: ``empg`` goes to :func:`compute_empg_advantage`."""
    if getattr(original, "_empg_wrapped", False):
        return original
    signature = inspect.signature(original)

    @functools.wraps(original)
    def compute_advantage(data: Any, adv_estimator: Any, *args: Any, **kwargs: Any) -> Any:
        if _estimator_name(adv_estimator) != ESTIMATOR_NAME:
            return original(data, adv_estimator, *args, **kwargs)
        bound = signature.bind_partial(data, adv_estimator, *args, **kwargs).arguments
        norm = bound.get("norm_adv_by_std_in_grpo")
        cfg = EMPGVerlConfig.from_algorithm_config(bound.get("config"))
        if norm is not None and _cfg_get(_cfg_get(bound.get("config"), "empg"), "norm_adv_by_std") is None:
            cfg = dataclasses.replace(cfg, norm_adv_by_std=bool(norm))
        if "response_mask" not in data.batch.keys():
            raise KeyError("EMPG needs batch['response_mask'] (1 = model token); verl's fit() adds it before this")
        return compute_empg_advantage(data, cfg)

    compute_advantage._empg_wrapped = True  # type: ignore[attr-defined]
    return compute_advantage


def wrap_compute_old_log_prob(original: Any) -> Any:
    """Wrap ``RayPPOTrainer._compute_old_log_prob`` so the token entropies survive as ``empg_entropys``."""
    if getattr(original, "_empg_wrapped", False):
        return original

    @functools.wraps(original)
    def _compute_old_log_prob(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        proto = out[0] if isinstance(out, tuple) else out
        if proto.batch is not None and "entropys" in proto.batch.keys():
            proto.batch[KEPT_ENTROPY_KEY] = proto.batch["entropys"].clone()
        return out

    _compute_old_log_prob._empg_wrapped = True  # type: ignore[attr-defined]
    return _compute_old_log_prob


def register_estimator() -> None:
    """Register ``empg`` in ``verl.trainer.ppo.core_algos`` (idempotent)."""
    from verl.trainer.ppo import core_algos

    if core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is not compute_empg_outcome_advantage:
        core_algos.register_adv_est(ESTIMATOR_NAME)(compute_empg_outcome_advantage)


def install(*, patch_trainer: bool = True) -> None:
    """Make ``algorithm.adv_estimator=empg`` work in this process (idempotent; safe as a Ray setup hook).

    Registers the estimator and, when ``patch_trainer``, wraps ``verl.trainer.ppo.ray_trainer.compute_advantage``
    and ``RayPPOTrainer._compute_old_log_prob`` (where they exist) so the estimator sees the whole batch and the
    token entropies. Trainer modules that fail to import are skipped with a log line.
    """
    register_estimator()
    if not patch_trainer:
        return
    try:
        from verl.trainer.ppo import ray_trainer
    except ImportError as err:  # a verl without the legacy trainer, or missing optional deps
        logger.warning("empg: verl.trainer.ppo.ray_trainer not importable (%s); only the registry entry is set", err)
        return
    ray_trainer.compute_advantage = wrap_compute_advantage(ray_trainer.compute_advantage)
    trainer_cls = getattr(ray_trainer, "RayPPOTrainer", None)
    if trainer_cls is not None and hasattr(trainer_cls, "_compute_old_log_prob"):
        trainer_cls._compute_old_log_prob = wrap_compute_old_log_prob(trainer_cls._compute_old_log_prob)
    else:
        logger.warning("empg: RayPPOTrainer._compute_old_log_prob not found; keep 'entropys' by hand (see docs)")


SETUP_HOOK_OVERRIDE = "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=empg.integrations.verl.install"


def main(argv: list[str] | None = None) -> None:
    """``python -m empg.integrations.verl <verl hydra overrides>``: verl's ``main_ppo`` with EMPG installed.

    Adds the Ray ``worker_process_setup_hook`` override unless one is given; a user-supplied hook must call
    :func:`install` itself, since Ray runs only one hook per worker.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not any("worker_process_setup_hook" in arg for arg in args):
        args.append(SETUP_HOOK_OVERRIDE)
    install()
    from verl.trainer import main_ppo

    sys.argv = [sys.argv[0], *args]
    main_ppo.main()


if __name__ == "__main__":
    main()
