"""Scoring: the trainer's no-grad pass (log-prob + entropy of every response token) vs a plain forward of the batch.

The same packed rows (real household steps: prompt + the model's own response, from a short rollout) go through
(a) ``empg.train.forward.response_logprobs(..., with_entropy=True)`` under ``no_grad``, which computes the logits of
the response columns only and reduces them chunk by chunk to log-probs and entropies, and (b) the model's forward on
the same columns returning the same logits and nothing else (``forward_logits``): the floor any scoring pass pays.
Target: scoring costs <= 1.3x the forward. Median of ``--repeats`` interleaved timed calls after one warm-up.

    python benchmarks/bench_scoring.py                               # tiny-1m, 64 rows, micro-batches of 16
    python benchmarks/bench_scoring.py --model tiny-25m --rows 32
    python benchmarks/bench_scoring.py --model smollm2-135m --rows 8 --micro-batch 4

The last line is the ratio scoring / forward.
"""

from __future__ import annotations

import argparse

import torch

from common import household_rows, load_policy, paired_medians
from empg.train.batch import StepBatch
from empg.train.forward import forward_logits, real_columns, response_logprobs


def micro_batches(batch: StepBatch, size: int) -> list[StepBatch]:
    return [batch.select(list(range(i, min(i + size, len(batch))))) for i in range(0, len(batch), size)]


def score(model, parts: list[StepBatch]) -> None:
    with torch.no_grad():
        for mb in parts:
            response_logprobs(model, mb, with_entropy=True)


def forward(model, parts: list[StepBatch]) -> None:
    with torch.no_grad():
        for mb in parts:
            attn, P = mb.attention_mask, mb.response_start
            lo, hi = real_columns(attn, P)
            pos = (attn.cumsum(-1) - 1).clamp_min(0)
            forward_logits(model, mb.input_ids[:, lo:hi], attn[:, lo:hi], pos[:, lo:hi], keep=hi - P + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1m", help="tiny-1m | tiny-5m | tiny-25m | smollm2-135m | warm start | dir")
    ap.add_argument("--rows", type=int, default=64, help="step rows scored (one per env step)")
    ap.add_argument("--micro-batch", type=int, default=16, help="rows per forward, as optim.micro_batch_size")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_policy(args.model)
    policy.model.eval()
    batch = household_rows(policy, args.rows)
    parts = micro_batches(batch, args.micro_batch)
    tokens = int(batch.attention_mask.sum())
    responses = int(batch.response_mask.sum())
    t_score, t_fwd = paired_medians(
        [lambda: score(policy.model, parts), lambda: forward(policy.model, parts)], args.repeats
    )
    print(f"model {args.model}, {args.threads} threads, {args.rows} rows in micro-batches of {args.micro_batch}")
    print(f"  {tokens} tokens ({responses} response tokens scored), vocab {policy.model.config.vocab_size}")
    print(f"  scoring (log-probs + entropies): {t_score:.3f} s = {tokens / t_score:,.0f} tok/s")
    print(f"  plain forward (same logits):     {t_fwd:.3f} s = {tokens / t_fwd:,.0f} tok/s")
    print(f"scoring / forward: {t_score / t_fwd:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
