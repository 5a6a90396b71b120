"""Benchmark of the algorithm core: the vectorised EMPG transform against a per-step Python loop, and chunked
against naive token entropy (peak extra memory and time).

Run: ``python benchmarks/bench_algos.py`` (``--help`` for options). Prints two tables.

* EMPG: time of :func:`empg.algos.empg_transform` on 1e4, 1e5 and 1e6 steps (shuffled rows, trajectories of 1-50
  steps), time per step (flat = linear scaling), and the speed-up over a plain per-step Python loop, which is run
  only up to ``--loop-max`` steps (default 1e5; larger sizes are not run, never extrapolated silently). Both are
  timed best-of-``--repeats`` (the loop at most 3 times).
  Target: >= 100x at 1e5 steps.
* Entropy: each measurement runs in a fresh subprocess that allocates the logits (default (8, 512, 32000) float32 =
  512 MiB), then records the peak resident memory (``resource.getrusage(...).ru_maxrss``) before and after one call;
  the difference is the peak extra memory of the call. Target: chunked extra <= 1.5x the logits tensor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

from empg.algos import empg_transform


def make_batch(n_steps: int, seed: int = 0, shuffle: bool = True) -> tuple[torch.Tensor, ...]:
    """Step rows of trajectories with 1-50 steps, shuffled or in trajectory order.

    Returns:
        (advantages, entropy, traj_id, step_idx), each (S,).
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 51, (n_steps // 25 + 1,), generator=gen)
    lengths = lengths[: int((lengths.cumsum(0) < n_steps).sum()) + 1]
    lengths[-1] -= int(lengths.sum()) - n_steps  # total exactly n_steps
    traj = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    step = torch.arange(n_steps) - starts
    adv = torch.randn(len(lengths), generator=gen, dtype=torch.float64)[traj]
    ent = torch.rand(n_steps, generator=gen, dtype=torch.float64) * 3
    perm = torch.randperm(n_steps, generator=gen) if shuffle else torch.arange(n_steps)
    return adv[perm], ent[perm], traj[perm], step[perm]


def loop_empg(adv: list, ent: list, traj: list, step: list, k: float = 1.0, zeta: float = 0.1) -> list:
    """Plain per-step Python reference (final_norm="mean")."""
    lo, hi = min(ent), max(ent)
    h = [(x - lo) / (hi - lo + 1e-8) for x in ent]
    w = [math.exp(-k * x) for x in h]
    mean_w = sum(w) / len(w)
    row_of = {(t, s): i for i, (t, s) in enumerate(zip(traj, step, strict=True))}
    a_mod = []
    for i in range(len(adv)):
        j = row_of.get((traj[i], step[i] + 1))
        f = math.exp(-k * h[j]) if j is not None else 0.0
        a_mod.append(w[i] / (mean_w + 1e-8) * adv[i] + zeta * f)
    mean = sum(a_mod) / len(a_mod)
    return [x - mean for x in a_mod]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_empg(sizes: list[int], loop_max: int, repeats: int) -> None:
    print("\nEMPG transform: vectorised vs per-step Python loop (final_norm='mean')")
    print("(rows shuffled; 'ordered' = the same rows in trajectory order: sequential memory access)")
    head = f"{'steps':>9} | {'vectorised s':>12} | {'us/step':>8} | {'ordered us/step':>15} | {'loop s':>9} | "
    print(head + f"{'loop us/step':>12} | {'speed-up':>8}")
    print("-" * 92)
    for n in sizes:
        batch = make_batch(n)
        empg_transform(*batch)  # warm-up: the allocator's caches, as in a training loop that calls it every step
        vec = best_of(lambda b=batch: empg_transform(*b), repeats)
        ordered = make_batch(n, shuffle=False)
        vec_ord = best_of(lambda b=ordered: empg_transform(*b), repeats)
        loop_s = speed = loop_us = "not run"
        if n <= loop_max:
            lists = [t.tolist() for t in batch]
            ref = loop_empg(*lists)
            lt = best_of(lambda ls=lists: loop_empg(*ls), min(repeats, 3))  # best of both: noise never flatters us
            err = float((empg_transform(*batch) - torch.tensor(ref, dtype=torch.float64)).abs().max())
            assert err < 1e-9, f"vectorised and loop disagree by {err}"
            loop_s, loop_us, speed = f"{lt:.3f}", f"{lt / n * 1e6:.2f}", f"{lt / vec:.0f}x"
        row = f"{n:>9} | {vec:>12.4f} | {vec / n * 1e6:>8.3f} | {vec_ord / n * 1e6:>15.3f} | {loop_s:>9} | "
        print(row + f"{loop_us:>12} | {speed:>8}")


CHILD = r"""
import json, resource, sys, time, torch
from empg.algos import token_entropy
torch.set_num_threads(int(sys.argv[5]))
shape = tuple(int(x) for x in sys.argv[2].split(","))
chunk = int(sys.argv[3]); repeats = int(sys.argv[4])
torch.manual_seed(0)
logits = torch.randn(shape)  # touched: resident
def naive(z):
    return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
def chunked(z):
    return token_entropy(z, chunk_size=chunk)
fn = {"naive": naive, "chunked": chunked}[sys.argv[1]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    out = fn(logits)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(logits)
    times.append(time.perf_counter() - t0)
print(json.dumps({"extra_kib": peak - before, "seconds": min(times) if times else float("nan"),
                  "checksum": float(out.double().sum())}))
"""


def measure(mode: str, shape: tuple[int, ...], chunk: int, repeats: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = [sys.executable, "-c", CHILD, mode, ",".join(map(str, shape)), str(chunk), str(repeats), str(threads)]
    res = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_entropy(shape: tuple[int, ...], chunk: int, repeats: int, threads: int) -> None:
    logits_mib = math.prod(shape) * 4 / 2**20
    print(f"\nToken entropy on {shape} float32 logits ({logits_mib:.0f} MiB), one subprocess per row")
    print(f"{'method':>18} | {'peak extra MiB':>14} | {'x logits':>8} | {'time s':>7}")
    print("-" * 58)
    results = {}
    for mode in ("naive", "chunked"):
        r = measure(mode, shape, chunk, repeats, threads)
        results[mode] = r
        extra = r["extra_kib"] / 1024
        label = mode if mode == "naive" else f"chunked ({chunk})"
        print(f"{label:>18} | {extra:>14.0f} | {extra / logits_mib:>8.2f} | {r['seconds']:>7.3f}")
    diff = abs(results["naive"]["checksum"] - results["chunked"]["checksum"]) / math.prod(shape[:-1])
    print(f"mean |naive - chunked| per token (checksum difference / tokens): {diff:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="EMPG batch sizes")
    p.add_argument("--loop-max", type=int, default=100_000, help="largest size the Python loop is run on")
    p.add_argument("--repeats", type=int, default=10, help="timing repeats (best of; the Python loop at most 3)")
    p.add_argument("--shape", type=int, nargs="+", default=[8, 512, 32000], help="logits shape (..., V)")
    p.add_argument("--chunk", type=int, default=1024, help="chunk_size of token_entropy")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the shared 2-core machine thrashes with 2)"
    )
    p.add_argument("--skip-entropy", action="store_true", help="only the EMPG table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    bench_empg(args.sizes, args.loop_max, args.repeats)
    if not args.skip_entropy:
        bench_entropy(tuple(args.shape), args.chunk, args.repeats, args.threads)


if __name__ == "__main__":
    main()
