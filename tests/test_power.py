"""experiments/power.py: the paired t power against a textbook value, the seed search, and the script on the pilot."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "power.py"


def _module():
    spec = importlib.util.spec_from_file_location("power", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_power_of_a_paired_t_test_matches_the_textbook_value():
    p = _module()
    # one-sample t, two-sided alpha 0.05, effect size 1 (delta = sd), n = 10: power 0.803 (Cohen's tables)
    assert p.power(10, 1.0, 1.0) == pytest.approx(0.803, abs=0.002)
    assert p.power(10, 0.0, 1.0) == pytest.approx(0.05, abs=1e-6)  # no effect: the test's own size
    assert p.power(4, 0.05, 0.005) == pytest.approx(1.0, abs=1e-6)  # far in the tail (scipy's nct gives nan there)


def test_seeds_needed_is_the_smallest_n_reaching_the_target():
    p = _module()
    n = p.seeds_needed(1.0, 1.0, 0.8)
    assert n == 10 and p.power(n - 1, 1.0, 1.0) < 0.8 <= p.power(n, 1.0, 1.0)


def test_script_on_the_shipped_pilot():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "d = +9.8%, +0.8%, +3.1%" in out.stdout  # EMPG - GRPO at iteration 30, seeds 0-2 (README "Status")
    assert "| 256 |" in out.stdout and "| 2048 |" in out.stdout
