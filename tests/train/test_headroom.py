"""experiments/headroom.py: pass@1, pass@G and group counts (golden), and one run of the script on a tiny model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "headroom.py"


def _module():
    spec = importlib.util.spec_from_file_location("headroom", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headroom_golden():
    h = _module().headroom({0: [False, False], 1: [True, False], 2: [True, True], 3: [False, True]})
    # rates 0, 0.5, 1, 0.5: pass@1 = 2/4, solved at least once 3/4
    assert h == {"tasks": 4, "pass@1": 0.5, "pass@G": 0.75, "all_fail": 1, "all_success": 1, "mixed": 2}


def test_headroom_script_runs(tmp_path, tiny_model_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("env:\n  id: household-v0\n  max_turns: 2\nrollout:\n  max_new_tokens: 8\n")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_model_dir), "--config", str(cfg), "--tasks", "2", "--group", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "2 tasks x 2 samples at T=1.0: pass@1" in out.stdout
