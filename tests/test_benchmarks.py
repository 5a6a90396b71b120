"""The comparison benchmarks run end to end on a toy setting (no timings are checked), and the MFU benchmark counts
FLOPs as its docstring says (a golden value by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("script", "args", "last"),
    [
        (
            "bench_generate.py",
            ["--batches", "2", "--max-new-tokens", "6"],
            "generation throughput, ours / HF generate at batch 2",
        ),
        ("bench_scoring.py", ["--rows", "4", "--micro-batch", "2"], "scoring / forward"),
        ("bench_mfu.py", ["--micro-batch", "2", "--gemm-size", "64"], "MFU of the update's forward + backward"),
    ],
)
def test_benchmark_runs_and_prints_its_ratio_last(tiny_model_dir, script, args, last):
    model = ["--models" if script == "bench_mfu.py" else "--model", str(tiny_model_dir)]
    line = _run(script, *model, *args, "--repeats", "1", "--threads", "1")
    assert line.startswith(last), line
    ratio = line.rsplit(":", 1)[1].strip().split()[0].rstrip("x%")
    assert float(ratio) > 0


def test_mfu_flop_count_by_hand(tiny_model_dir):
    sys.path.insert(0, str(BENCH))
    try:
        from bench_mfu import train_flops
    finally:
        sys.path.remove(str(BENCH))
    from empg.policy import Policy
    from empg.train.batch import pack

    policy = Policy.load(tiny_model_dir)
    batch = pack([[5, 6, 7], [8, 9]], [[1, 2], [3]], policy.pad_id)  # lengths 5 and 3, response columns 3..4
    vocab = policy.model.config.vocab_size
    # micro layer: q 32x32+32, k and v 32x16+16, o 32x32, MLP 3 x 32x64, two RMSNorms of 32 = 9,344 parameters
    layer = 1056 + 528 + 528 + 1024 + 3 * 2048 + 64
    forward = 2 * layer * 8 + 2 * 32 * vocab * (2 * 2) + 4 * 1 * 32 * (5**2 + 3**2)
    flops, pad = train_flops(policy, batch)
    assert flops == 3 * forward
    assert pad == pytest.approx(1 - 8 / 10)  # 8 real tokens in a computed 2 x 5 window


def test_trl_benchmark_measures_our_side_without_trl(tiny_model_dir):
    line = _run("bench_trl.py", "--model", str(tiny_model_dir), "--quick", "--skip-trl")
    assert line.startswith("ratio TRL/empg s/it"), line
