"""A sample of each RL iteration's episodes, step by step, in ``run_dir/trajectories.jsonl`` (for ``empg inspect``).

``log.trajectories`` = n episodes per iteration (0 = off): half successes and half failures when both exist (the
other outcome fills the rest), drawn by a generator seeded by ``(seed, iteration)`` from the episodes the advantages
were computed for (DAPO's dropped groups are not among them). One JSON line per episode::

    {"iteration": 3, "split": "train", "group_id": 0, "traj_id": 1, "seed": 17, "task_type": "pick", "task": "...",
     "success": true, "outcome": 1.0, "length": 2, "n_invalid": 0, "truncated": false,
     "steps": [{"step": 0, "observation": "...", "response": "...", "action": "go to desk 1", "valid": true,
                "H": 0.81, "g": 1.2, "f": 0.4, "adv_before": 0.71, "adv_after": 0.83,
                "tokens": [["<think>", 0.02], [" go", 1.37], ...]}, ...]}

``iteration`` counts finished iterations, as in ``metrics.jsonl`` (the rollout of loop index ``it`` is ``it + 1``).
``H`` is the step entropy EMPG used (the mean behaviour token entropy when EMPG is off); ``g``/``f`` are None when
EMPG is off; ``adv_before`` is the advantage before EMPG (GRPO, plus GiGPO's step credit when on), ``adv_after`` the
one trained on. ``tokens`` pairs each response token's text (decoded with the policy tokenizer, special tokens kept)
with its behaviour entropy in nats.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empg.eval.runlog import TRAJECTORIES

if TYPE_CHECKING:
    import torch

DECODE_WINDOW = 16  # at most this many tokens decoded before a token to find its own text (see token_pieces)


def log_trajectories(run: Any, batch: Any, steps: list, trajs: list, credit: dict, iteration: int) -> int:
    """Append ``run.cfg.log.trajectories`` sampled episodes of one iteration to ``run.run_dir/trajectories.jsonl``.

    Args:
        run: the :class:`empg.train.rl.Run` (config, run folder, policy tokenizer).
        batch: the scored ``StepBatch`` (row i ↔ ``steps[i]``).
        steps, trajs: the iteration's step records and trajectory summaries (those the advantages cover).
        credit: the ``details`` of :func:`empg.train.advantage.advantage_phase`.
        iteration: the iteration label (``it + 1``).

    Returns:
        The number of episodes written (0 when ``log.trajectories`` is 0).
    """
    n = run.cfg.log.trajectories
    chosen = sample_episodes(trajs, n, run.cfg.seed, iteration)
    if not chosen:
        return 0
    records = episode_records(batch, steps, chosen, credit, run.policy.tokenizer, iteration)
    with (Path(run.run_dir) / TRAJECTORIES).open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return len(records)


def sample_episodes(trajs: list, n: int, seed: int, iteration: int) -> list:
    """Up to ``n`` trajectory summaries: ``n // 2`` successes and the rest failures when both suffice, the other
    outcome filling in otherwise; a pure function of ``(trajs, n, seed, iteration)`` (no global RNG is touched).

    Returns:
        The chosen summaries in trajectory-id order.
    """
    if n <= 0:
        return []
    kept = [t for t in trajs if not t.failed]
    wins = [t for t in kept if t.success]
    losses = [t for t in kept if not t.success]
    n_win = min(len(wins), max(n // 2, n - len(losses)))
    n_loss = min(len(losses), n - n_win)
    rng = random.Random(seed * 1_000_003 + iteration)
    chosen = rng.sample(wins, n_win) + rng.sample(losses, n_loss)
    return sorted(chosen, key=lambda t: t.traj_id)


def episode_records(batch: Any, steps: list, chosen: list, credit: dict, tokenizer: Any, iteration: int) -> list:
    """One JSON-ready dict per chosen trajectory (the format in the module docstring).

    Returns:
        The records, in the order of ``chosen``.
    """
    credit = {k: v.detach().float().cpu() for k, v in credit.items()}  # one device sync, not one per value
    h = credit.get("h")
    if h is None:  # EMPG off: the plain mean token entropy of each step
        mask = batch.response_mask
        h = ((batch.token_entropy * mask).sum(-1) / mask.sum(-1).clamp_min(1)).float().cpu()
    rows: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        rows.setdefault(s.traj_id, []).append(i)
    out = []
    for t in chosen:
        idx = sorted(rows.get(t.traj_id, []), key=lambda i: steps[i].step_idx)
        out.append(
            {
                "iteration": iteration,
                "split": "train",
                "group_id": t.group_id,
                "traj_id": t.traj_id,
                "seed": t.seed,
                "task_type": t.task_type,
                "task": steps[idx[0]].extra.get("task", "") if idx else "",
                "success": bool(t.success),
                "outcome": float(t.outcome),
                "length": t.length,
                "n_invalid": t.n_invalid,
                "truncated": bool(t.truncated),
                "steps": [step_record(batch, steps[i], i, h, credit, tokenizer) for i in idx],
            }
        )
    return out


def step_record(batch: Any, step: Any, row: int, h: torch.Tensor, credit: dict, tokenizer: Any) -> dict:
    """The dict of one step (batch row ``row``): texts, validity, H, g, f, advantages, token pieces and entropies.

    Returns:
        The step's record.
    """
    P, n = batch.response_start, len(step.response_ids)
    ent = batch.token_entropy[row, P : P + n].tolist()

    def value(key: str) -> float | None:
        return _round(credit[key][row]) if key in credit else None

    return {
        "step": step.step_idx,
        "observation": step.extra.get("observation", ""),
        "response": step.response_text,
        "action": step.action,
        "valid": bool(step.valid),
        "H": _round(h[row]),
        "g": value("g"),
        "f": value("f"),
        "adv_before": value("base"),
        "adv_after": value("final"),
        "tokens": [
            [p, round(float(e), 4)] for p, e in zip(token_pieces(tokenizer, step.response_ids), ent, strict=True)
        ],
    }


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds: ``decode(ids[s:i+1])`` minus ``decode(ids[s:i])``.

    ``s`` is the last token before ``i`` that decodes to whole characters on its own (so the window starts on a
    character boundary, and a leading space of token ``i`` survives), at most :data:`DECODE_WINDOW` tokens back. A
    token that ends inside a multi-byte character adds nothing: the character goes to the token that completes it,
    so the pieces join to ``decode(ids)``. Three batched decodes per step.

    Returns:
        One string per token id.
    """
    alone = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=False)
    whole = [bool(t) and "\ufffd" not in t for t in alone]
    starts, last = [], 0
    for i in range(len(ids)):
        starts.append(max(last, i - DECODE_WINDOW))
        last = i if whole[i] else last
    full = tokenizer.batch_decode([ids[s : i + 1] for i, s in enumerate(starts)], skip_special_tokens=False)
    head = tokenizer.batch_decode([ids[s:i] for i, s in enumerate(starts)], skip_special_tokens=False)
    pieces = []
    for i, (f, h) in enumerate(zip(full, head, strict=True)):
        f = f if i == len(ids) - 1 else f.rstrip("\ufffd")  # the last token keeps an unfinished character
        h = h.rstrip("\ufffd")
        pieces.append(f[_common(f, h) :])
    return pieces


def _common(a: str, b: str) -> int:
    """Length of the common prefix of two strings."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _round(x: Any) -> float:
    return round(float(x), 5)
