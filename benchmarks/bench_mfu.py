"""The training step against the machine's peak: model FLOP utilisation (MFU) of the update's forward + backward.

In one run: this CPU's fp32 GEMM peak (a 2048 x 2048 matmul, the best seen, measured before and after every model)
and, per model, the achieved FLOP/s of the trainer's differentiable pass on one micro-batch of real household step
rows (prompt + the model's own response, from a short rollout): ``response_logprobs`` with autograd, a
policy-gradient loss, backward. Run it on a quiet machine: load during a step lowers the MFU it reports.
The optimizer step (memory-bound, a few ms) is not included.

Useful FLOPs count real tokens only (padding inside a micro-batch is waste, reported as such):
forward = 2 * (non-embedding parameters) * tokens + 2 * hidden * vocab * (predicted positions, the response
columns) + 4 * layers * hidden * sum(row length^2) (attention scores and values); training = 3 x forward.

    python benchmarks/bench_mfu.py                                   # tiny-1m, tiny-5m, tiny-25m, smollm2-135m
    python benchmarks/bench_mfu.py --models tiny-25m --micro-batch 8

The last line is the MFU of the last model.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import household_rows, load_policy, paired_medians
from empg.policy import Policy
from empg.train.batch import StepBatch
from empg.train.forward import real_columns, response_logprobs

# optim.micro_batch_size of the presets: tiny models 16 (household-tiny.yaml), SmolLM2 4 (household-smollm.yaml)
MICRO_BATCH = {"smollm2-135m": 4}


def gemm_peak(n: int, repeats: int) -> float:
    """fp32 FLOP/s of an n x n matmul (best of ``repeats``, after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_flops(policy: Policy, batch: StepBatch) -> tuple[float, float]:
    """(useful training FLOPs of one forward + backward over ``batch``, fraction of computed tokens that is padding)."""
    cfg = policy.model.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    non_emb = sum(p.numel() for p in policy.model.model.layers.parameters())
    lengths = batch.attention_mask.sum(-1).double()
    tokens = float(lengths.sum())
    lo, hi = real_columns(batch.attention_mask, batch.response_start)
    predicted = len(batch) * (hi - batch.response_start)
    forward = 2 * non_emb * tokens + 2 * d * vocab * predicted + 4 * layers * d * float((lengths**2).sum())
    return 3 * forward, 1 - tokens / (len(batch) * (hi - lo))


def step(model, batch: StepBatch) -> None:
    logp, _ = response_logprobs(model, batch)
    loss = -(logp * batch.response_mask).sum() / batch.response_mask.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-1m,tiny-5m,tiny-25m,smollm2-135m", help="comma-separated model specs")
    ap.add_argument("--micro-batch", type=int, default=None, help="rows per step (default: the preset's, 16 or 4)")
    ap.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n matmul that measures the peak")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per model (median) and matmuls (best)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the peak is measured at it too)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = gemm_peak(args.gemm_size, args.repeats)
    rows_out = []
    for spec in args.models.split(","):
        policy = load_policy(spec)
        policy.model.train()
        rows = args.micro_batch or MICRO_BATCH.get(spec, 16)
        batch = household_rows(policy, rows)
        flops, pad = train_flops(policy, batch)
        (secs,) = paired_medians([lambda m=policy.model, b=batch: step(m, b)], args.repeats)
        params = sum(p.numel() for p in policy.model.parameters())
        rows_out.append((spec, params, rows, int(batch.attention_mask.sum()), pad, secs, flops / secs))
        peak = max(
            peak, gemm_peak(args.gemm_size, args.repeats)
        )  # the best seen: load on a shared machine comes and goes
    print(f"{args.threads} threads: fp32 GEMM peak ({args.gemm_size}^2 matmul, best seen) {peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':>14} {'params':>8} {'rows':>4} {'tokens':>6} {'pad':>5} {'s/step':>7} {'GFLOP/s':>8} {'MFU':>6}")
    for spec, params, rows, tokens, pad, secs, achieved in rows_out:
        print(
            f"{spec:>14} {params / 1e6:>7.1f}M {rows:>4} {tokens:>6} {pad:>5.0%} {secs:>7.2f}"
            f" {achieved / 1e9:>8.1f} {achieved / peak:>6.1%}"
        )
    spec, achieved = rows_out[-1][0], rows_out[-1][-1]
    print(f"MFU of the update's forward + backward ({spec}): {achieved / peak:.1%} of the fp32 GEMM peak")


if __name__ == "__main__":
    main()
