"""The trainer's differentiable forward: log-probs and entropies of a :class:`~empg.train.batch.StepBatch`'s response
tokens under a causal LM, computing only the logits that predict response columns.

Generation (:meth:`empg.policy.Policy.generate`) records the same quantities while sampling; with ``top_p = 1``
:func:`response_logprobs` recomputes them exactly (constrained positions included; tested to 1e-5), which is what lets
the RL loop use the recorded ones as its old log-probs and run this only for the update (and the reference model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from empg.algos.entropy import logprobs_and_entropy, masked_logprobs_and_entropy, token_logprobs
from empg.train.batch import StepBatch


def response_logprobs(
    model: Any,
    batch: StepBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of the batch's tokens under ``model`` at ``temperature``; differentiable.

    Only the logits that predict response columns are computed (``logits_to_keep``), in chunks of ``chunk_size``
    positions by the ``empg.algos.entropy`` helpers. Nor are the columns after every row's last token with a choice:
    a constrained token whose allowed set is one id has log-prob and entropy 0 under the restricted distribution (and
    no gradient), and, the model being causal, no later column changes an earlier one's output.

    Args:
        model: HF causal LM.
        batch: a :class:`StepBatch` (layout in :mod:`empg.train.batch`).
        temperature: logits are divided by it.
        chunk_size: positions per chunk in the log-softmax/entropy helpers.
        with_entropy: also return the entropy of each predicted distribution.

    Returns:
        logp: (B, L) float; ``logp[b, j] = log π(input_ids[b, j] | input_ids[b, :j])``; 0 where response_mask is 0.
        entropy: (B, L) float or None; entropy of the distribution at position j; 0 where response_mask is 0.
    """
    ids, P = batch.input_ids, batch.response_start
    B, L = ids.shape
    logits, hi = response_logits(model, batch, end=last_choice_column(batch))
    labels = ids[:, P:hi]  # (B, R') with R' = hi - P; logits (B, R', V) predict columns P..hi-1
    mask = batch.response_mask[:, P:hi].to(logits.device)
    if with_entropy:
        # the entropy carries gradients when called under autograd (entropy bonus), none in no-grad scoring
        lp, ent = logprobs_and_entropy(
            logits, labels, temperature=temperature, chunk_size=chunk_size, entropy_grad=torch.is_grad_enabled()
        )
    else:
        lp, ent = token_logprobs(logits, labels, temperature=temperature, chunk_size=chunk_size), None
    if batch.allowed is not None:  # constrained action spans: the distribution restricted to the allowed tokens
        allowed = batch.allowed[:, P:hi].to(logits.device)  # (B, R', K)
        lp_c, ent_c, constrained = masked_logprobs_and_entropy(logits, labels, allowed, temperature=temperature)
        lp = torch.where(constrained, lp_c, lp)
        ent = torch.where(constrained, ent_c, ent) if ent is not None else None
    pad, tail = lp.new_zeros((B, P)), lp.new_zeros((B, L - hi))
    logp = torch.cat([pad, torch.where(mask != 0, lp, torch.zeros_like(lp)), tail], dim=1)
    if ent is None:
        return logp, None
    return logp, torch.cat([pad, torch.where(mask != 0, ent, torch.zeros_like(ent)), tail], dim=1)


def response_logits(model: Any, batch: StepBatch, *, end: int | None = None) -> tuple[Tensor, int]:
    """Logits ``(B, hi - P, V)`` predicting the response columns ``P … hi-1`` of ``batch`` and ``hi``, the end of
    its real columns (every later column is padding in every row, so it is not computed; nor are leading all-padding
    columns), or ``end`` when that is earlier. Position ids are ``cumsum(attention_mask) - 1``, as in generation."""
    ids, attn, P = batch.input_ids, batch.attention_mask, batch.response_start
    if not 0 < P < ids.shape[1]:
        raise ValueError(
            f"response_start must be inside the row (0 < {P} < {ids.shape[1]}); pack with empg.train.batch"
        )
    position_ids = (attn.cumsum(-1) - 1).clamp_min(0)
    lo, hi = real_columns(attn, P)
    hi = hi if end is None else max(min(hi, end), P + 1)
    logits = forward_logits(model, ids[:, lo:hi], attn[:, lo:hi], position_ids[:, lo:hi], keep=hi - P + 1)[:, :-1]
    return logits, hi


def last_choice_column(batch: StepBatch) -> int | None:
    """One past the last response column of any row whose token had a choice: unconstrained, or constrained to more
    than one id (:attr:`StepBatch.allowed`); None without constraints (every column counts)."""
    if batch.allowed is None:
        return None
    choice = (batch.response_mask != 0) & ((batch.allowed >= 0).sum(-1) != 1)  # (B, L)
    used = choice.any(0).nonzero().flatten()
    return int(used[-1]) + 1 if used.numel() else batch.response_start + 1


def real_columns(attn: Tensor, P: int) -> tuple[int, int]:
    """``[lo, hi)``: the columns holding a real token in some row (``lo < P < hi``), so a micro-batch of similar
    lengths is not computed at the width of the whole batch. Leading all-padding columns change no real token's
    output (they are masked keys; position ids count real tokens only), trailing ones are after every token."""
    used = (attn != 0).any(0).nonzero().flatten()
    if used.numel() == 0:
        return P - 1, P + 1
    return min(int(used[0]), P - 1), max(int(used[-1]) + 1, P + 1)


def forward_logits(model: Any, ids: Tensor, attn: Tensor, pos: Tensor, keep: int) -> Tensor:
    try:
        return model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        return model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits[:, -keep:]
