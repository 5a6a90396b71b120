"""``StepBatch``: step records packed into padded tensors for scoring and the policy update.

Layout (every row, width ``L = P + R``)::

    [pad … pad | prompt tokens][response tokens | pad … pad]
     <---------- P ----------> <------------ R ----------->

Prompts are **left**-padded to the common width ``P`` (= ``response_start``) and responses **right**-padded to ``R``,
so every response starts at column ``P``: the forward pass then needs logits only for columns ``P-1 … L-2``
(``logits_to_keep``), and position ids are ``cumsum(attention_mask) - 1`` exactly as during generation.
Ids (group, trajectory, step) travel with the rows through :meth:`StepBatch.select` / :meth:`StepBatch.split`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class StepBatch:
    """Packed steps. ``B`` rows (one per step), ``L`` columns.

    Attributes:
        input_ids: (B, L) long. Left-padded prompt + response + right padding (pad id elsewhere).
        attention_mask: (B, L) long. 1 = real token (prompt or response), 0 = padding.
        response_mask: (B, L) float. 1 = a token the model generated itself (trained on), 0 = prompt/padding.
        action_mask: (B, L) float. 1 = response token inside ``<action>…</action>``; subset of response_mask.
        old_logprobs: (B, L) float. Behaviour log π_old(token_j | tokens_<j) at the rollout temperature; 0 off-mask.
        token_entropy: (B, L) float. Behaviour entropy of the distribution that produced token j; 0 off-mask.
        advantages: (B, L) float. Filled by the trainer (zeros after packing).
        group_id, traj_id, step_idx: (B,) long. Task group, trajectory, 0-based turn.
        is_last: (B,) bool. The trajectory ended after this step.
        response_start: int. Column ``P`` where every response starts.
        token_renyi2: (B, L) float or None. Optional Rényi-2 entropy per token (filled by the trainer if used).
        allowed: (B, L, K) long or None. Constrained decoding (:mod:`empg.policy.constrain`): at a response token
            the ids its distribution was restricted to, padded with -1; all -1 = unconstrained (full softmax).
            None when no row was constrained.
        advantages_neg: (B, L) float or None. Set by :meth:`merge_duplicates` only: the summed negative advantages of
            the rows merged into each row, whose ``advantages`` then hold the summed positive ones.
        row_weight: (B,) float or None. Set by :meth:`merge_duplicates` only: how many rows each row stands for, the
            weight of its KL and entropy terms and of its tokens in the loss denominators.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    action_mask: Tensor
    old_logprobs: Tensor
    token_entropy: Tensor
    advantages: Tensor
    group_id: Tensor
    traj_id: Tensor
    step_idx: Tensor
    is_last: Tensor
    response_start: int
    token_renyi2: Tensor | None = None
    allowed: Tensor | None = None
    advantages_neg: Tensor | None = None
    row_weight: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(cls, records: Sequence, pad_id: int, *, max_len: int | None = None) -> StepBatch:
        """Pack :class:`empg.rollout.types.StepRecord` s (row i ↔ ``records[i]``).

        Behaviour fields are copied when the records carry them (``old_logprobs``/``token_entropies``), else zeros.
        With ``max_len``, prompts longer than ``max_len - R`` keep their **last** tokens (left truncation); a response
        longer than ``max_len`` is an error.
        """
        if not records:
            raise ValueError("cannot pack an empty list of step records")
        batch = pack(
            [r.prompt_ids for r in records],
            [r.response_ids for r in records],
            pad_id,
            max_len=max_len,
            action_masks=[r.action_token_mask for r in records],
            old_logprobs=[r.old_logprobs for r in records],
            entropies=[r.token_entropies for r in records],
            allowed=[r.allowed_ids for r in records],
        )
        batch.group_id = torch.tensor([r.group_id for r in records], dtype=torch.long)
        batch.traj_id = torch.tensor([r.traj_id for r in records], dtype=torch.long)
        batch.step_idx = torch.tensor([r.step_idx for r in records], dtype=torch.long)
        batch.is_last = torch.tensor([bool(r.is_last) for r in records], dtype=torch.bool)
        return batch

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def select(self, idx: Tensor | Sequence[int]) -> StepBatch:
        """Rows ``idx`` (same width and layout, so per-row results line up with the full batch's columns)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, Tensor) else v
        return StepBatch(**out)

    def split(self, micro_batch_size: int) -> list[StepBatch]:
        """Consecutive chunks of at most ``micro_batch_size`` rows."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        return [self.select(i) for i in torch.arange(self.batch_size).split(micro_batch_size)]

    def merge_duplicates(self) -> tuple[StepBatch, Tensor]:
        """Rows with the same tokens, masks and allowed sets merged into one row each.

        In a GRPO group several rollouts often take the same step from the same state (the first turns, or a
        confident policy), so the update would compute the same forward/backward several times. Duplicate rows share
        the PPO ratio exactly, and the clipped surrogate of a token, ``-min(r A, clip(r) A)``, is degree-1
        homogeneous in ``A`` for a fixed sign of ``A``; so the rows' surrogates add up to that of one row whose
        positive advantages are summed in ``advantages`` and negative ones in ``advantages_neg`` (both passed to
        :func:`empg.algos.losses.policy_loss`). Terms without ``A`` (KL, entropy) and the loss denominators must
        weight the merged row by its count, ``row_weight`` (:func:`empg.train.rl.update_phase` does both). Behaviour
        log-probs of duplicates differ only by float noise from batching; the first row's are kept.

        Returns:
            (merged batch ``B' <= B`` rows in order of first appearance, with ``advantages_neg`` and ``row_weight``
            (the rows each stands for; summed when this batch was merged already) set; first (B',) long: the index in
            this batch of each one's first row).
        """
        keys: dict[bytes, int] = {}
        slot = []
        for i in range(self.batch_size):
            parts = [self.input_ids[i], self.attention_mask[i], self.response_mask[i]]
            if self.allowed is not None:
                parts.append(self.allowed[i])
            slot.append(keys.setdefault(b"|".join(t.contiguous().cpu().numpy().tobytes() for t in parts), len(keys)))
        index = torch.tensor(slot, dtype=torch.long, device=self.input_ids.device)
        rows = torch.arange(self.batch_size, device=index.device)
        first = torch.full((len(keys),), self.batch_size, dtype=torch.long, device=index.device)
        first = first.scatter_reduce(0, index, rows, "amin")
        merged = self.select(first)
        pos, neg = self.advantages.clamp(min=0), self.advantages.clamp(max=0)
        if self.advantages_neg is not None:  # already merged: the two parts stay apart
            pos, neg = self.advantages, self.advantages_neg
        zeros = torch.zeros_like(merged.advantages)
        merged.advantages, merged.advantages_neg = zeros.index_add(0, index, pos), zeros.index_add(0, index, neg)
        own = self.row_weight if self.row_weight is not None else torch.ones(self.batch_size, device=index.device)
        merged.row_weight = torch.zeros(len(keys), dtype=torch.float32, device=index.device).index_add(0, index, own)
        return merged, first

    def to(self, device: str | torch.device) -> StepBatch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self) if _is_t(self, f)})


def _is_t(batch: StepBatch, f) -> bool:
    return isinstance(getattr(batch, f.name), Tensor)


def pack(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    max_len: int | None = None,
    action_masks: Sequence[Sequence[int] | None] | None = None,
    old_logprobs: Sequence[Sequence[float] | None] | None = None,
    entropies: Sequence[Sequence[float] | None] | None = None,
    allowed: Sequence[Sequence[Sequence[int]] | None] | None = None,
) -> StepBatch:
    """Pack (prompt, response) token lists into the layout above; ids are ``0..B-1``, ``step_idx`` 0, not last.

    ``allowed``: per row None or one list of allowed token ids per response token (``[]`` = unconstrained), packed
    into ``StepBatch.allowed`` (None when no row has a constrained token)."""
    n = len(prompt_ids)
    if n == 0 or n != len(response_ids):
        raise ValueError(f"need as many prompts as responses (>0), got {n} and {len(response_ids)}")
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("every response needs at least one token (an empty generation cannot be trained on)")
    R = max(len(r) for r in response_ids)
    if max_len is not None and R >= max_len:
        raise ValueError(f"a response has {R} tokens but max_len={max_len}; raise max_len or lower max_new_tokens")
    keep = None if max_len is None else max_len - R
    prompts = [list(p)[-keep:] if keep is not None else list(p) for p in prompt_ids]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every step needs a non-empty prompt")
    P = max(len(p) for p in prompts)
    L = P + R
    ids = torch.full((n, L), int(pad_id), dtype=torch.long)
    attn = torch.zeros((n, L), dtype=torch.long)
    resp = torch.zeros((n, L), dtype=torch.float32)
    act, old, ent = torch.zeros_like(resp), torch.zeros_like(resp), torch.zeros_like(resp)
    for i, (p, r) in enumerate(zip(prompts, response_ids, strict=True)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[i, P : P + len(r)] = torch.tensor(list(r), dtype=torch.long)
        attn[i, P - len(p) : P + len(r)] = 1
        resp[i, P : P + len(r)] = 1.0
        _fill(act, i, P, r, action_masks[i] if action_masks else None, "action_token_mask")
        _fill(old, i, P, r, old_logprobs[i] if old_logprobs else None, "old_logprobs")
        _fill(ent, i, P, r, entropies[i] if entropies else None, "token_entropies")
    rows = torch.arange(n, dtype=torch.long)
    return StepBatch(
        allowed=_pack_allowed(allowed, response_ids, P, L) if allowed else None,
        input_ids=ids,
        attention_mask=attn,
        response_mask=resp,
        action_mask=act,
        old_logprobs=old,
        token_entropy=ent,
        advantages=torch.zeros_like(resp),
        group_id=rows.clone(),
        traj_id=rows.clone(),
        step_idx=torch.zeros(n, dtype=torch.long),
        is_last=torch.zeros(n, dtype=torch.bool),
        response_start=P,
    )


def _fill(dst: Tensor, row: int, start: int, response: Sequence[int], values, name: str) -> None:
    if values is None:
        return
    if len(values) != len(response):
        raise ValueError(f"row {row}: {name} has {len(values)} values for {len(response)} response tokens")
    dst[row, start : start + len(values)] = torch.tensor(list(values), dtype=torch.float32)


def _pack_allowed(
    allowed: Sequence[Sequence[Sequence[int]] | None], response_ids: Sequence[Sequence[int]], P: int, L: int
) -> Tensor | None:
    """(B, L, K) long allowed ids, -1 padded, K = the largest allowed set; None when every set is empty."""
    K = max((len(a) for row in allowed if row for a in row), default=0)
    if K == 0:
        return None
    out = torch.full((len(response_ids), L, K), -1, dtype=torch.long)
    for i, (row, r) in enumerate(zip(allowed, response_ids, strict=True)):
        if not row:
            continue
        if len(row) != len(r):
            raise ValueError(f"row {i}: allowed_ids has {len(row)} entries for {len(r)} response tokens")
        for j, ids in enumerate(row):
            if ids:
                out[i, P + j, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return out


def sft_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> StepBatch:
    """Behaviour-cloning batch: same layout, behaviour fields zero, row ids ``0..B-1``."""
    return pack(prompt_ids, response_ids, pad_id)
