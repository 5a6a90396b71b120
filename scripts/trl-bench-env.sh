#!/usr/bin/env bash
# Builds the separate virtual environment that benchmarks/bench_trl.py runs in (TRL's GRPOTrainer next to ours).
#
#   bash scripts/trl-bench-env.sh                      # /work/venv-trl on top of /work/venv
#   EMPG_VENV=.venv TRL_VENV=.venv-trl bash scripts/trl-bench-env.sh
#   $TRL_VENV/bin/python benchmarks/bench_trl.py --quick
#
# The new venv sees the base venv's packages through a .pth file (site.addsitedir, so the base's own .pth files,
# the editable empg install among them, work too): torch and transformers are the very same installs, never
# replaced. Only what TRL needs and the base lacks is installed into the new venv (trl, datasets, pandas, pyarrow,
# dill, xxhash, multiprocess...), under a constraints file that pins every base package to its installed version,
# so pip can not upgrade or shadow one. Idempotent: a second run reinstalls nothing. Nothing goes into the base venv.
set -euo pipefail

BASE="${EMPG_VENV:-/work/venv}"
DEST="${TRL_VENV:-/work/venv-trl}"
TRL_SPEC="${TRL_SPEC:-trl==1.16.0}"
DATASETS_SPEC="${DATASETS_SPEC:-datasets>=4.7.0}"

[ -x "$BASE/bin/python" ] || { echo "no base venv at $BASE (set EMPG_VENV)" >&2; exit 1; }
[ -x "$DEST/bin/python" ] || "$BASE/bin/python" -m venv "$DEST"

purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
base_site="$(purelib "$BASE/bin/python")"
dest_site="$(purelib "$DEST/bin/python")"
echo "import site; site.addsitedir('$base_site')" > "$dest_site/empg_base_venv.pth"

constraints="$DEST/base-constraints.txt"
"$BASE/bin/python" -m pip list --format=freeze 2>/dev/null | grep -E '^[A-Za-z0-9._-]+==' > "$constraints"

"$DEST/bin/python" -m pip install -q -c "$constraints" "$TRL_SPEC" "$DATASETS_SPEC"
"$DEST/bin/python" - <<'PY'
import torch, transformers, trl, datasets
print(f"trl {trl.__version__}, datasets {datasets.__version__}, torch {torch.__version__} ({torch.__file__}), "
      f"transformers {transformers.__version__}")
PY
