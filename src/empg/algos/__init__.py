"""The algorithm core: pure tensor functions over masked tensors (imports nothing else from the project).

* :mod:`~empg.algos.advantages` — GRPO / Dr.GRPO group advantages and episode returns;
* :mod:`~empg.algos.anchors` — GiGPO's step-level advantages over anchor states (optional, added to the base);
* :mod:`~empg.algos.empg` — the vectorised EMPG advantage transform;
* :mod:`~empg.algos.entropy` — chunked token entropies / log-probs, step aggregation, broadcast to tokens;
* :mod:`~empg.algos.losses` — PPO clip / clip-higher / dual-clip loss, aggregation, KL, entropy bonus;
* :mod:`~empg.algos.sampling` — DAPO dynamic-sampling filter and overlong shaping.
"""

from empg.algos.advantages import (
    grpo_advantages,
    step_level_grpo_advantages,
    trajectory_returns,
)
from empg.algos.anchors import anchor_advantages, anchor_sets, discounted_step_returns
from empg.algos.empg import FINAL_NORMS, EMPGParams, EMPGStats, empg_transform, empg_transform_with_stats
from empg.algos.entropy import (
    STEP_ENTROPY_MODES,
    broadcast_to_tokens,
    logprobs_and_entropy,
    step_entropy,
    token_entropy,
    token_logprobs,
    token_renyi2,
)
from empg.algos.losses import AGG_MODES, KL_KINDS, agg_loss, entropy_loss, kl_penalty, policy_loss
from empg.algos.sampling import filter_groups, overlong_penalty

__all__ = [
    "AGG_MODES",
    "FINAL_NORMS",
    "KL_KINDS",
    "STEP_ENTROPY_MODES",
    "EMPGStats",
    "agg_loss",
    "anchor_advantages",
    "anchor_sets",
    "broadcast_to_tokens",
    "discounted_step_returns",
    "EMPGParams",
    "empg_transform",
    "empg_transform_with_stats",
    "entropy_loss",
    "filter_groups",
    "grpo_advantages",
    "kl_penalty",
    "logprobs_and_entropy",
    "overlong_penalty",
    "policy_loss",
    "step_entropy",
    "step_level_grpo_advantages",
    "token_entropy",
    "token_logprobs",
    "token_renyi2",
    "trajectory_returns",
]
