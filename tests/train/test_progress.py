"""Progress output: plain timestamped lines when stdout is not a terminal, a live rich bar when it is."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys


def _args(run_dir, model_dir, fast):
    return [sys.executable, "-m", "empg.cli", "train",
            *fast(run_dir, model_dir, "sft.enabled=true", "sft.steps=3", "sft.episodes=2", "sft.eval_episodes=0",
                  "log.every=0", "log.progress=true")]  # fmt: skip


def _env():
    return {**os.environ, "COLUMNS": "160", "TERM": "xterm"}


def test_plain_lines_without_a_terminal(tmp_path, tiny_model_dir, fast):
    out = subprocess.run(_args(tmp_path / "run", tiny_model_dir, fast), capture_output=True, text=True, env=_env(),
                         timeout=300, check=True).stdout  # fmt: skip
    stamp = r"^\[\d\d:\d\d:\d\d\] "
    assert re.search(stamp + r"SFT: \d+ demonstration steps", out, re.M), out
    assert len(re.findall(stamp + r"SFT [123]/3 loss \d", out, re.M)) == 3  # log.every=0: every step
    rl = re.findall(stamp + r"RL ([12])/2 success \d+% \| return .* \| mixed .* \| s [\d/]+", out, re.M)
    assert rl == ["1", "2"], out
    assert re.search(stamp + r"evaluation at iteration 2: eval_out \d", out, re.M)
    assert "━" not in out  # no progress-bar drawing in a log file


def test_a_live_bar_on_a_terminal(tmp_path, tiny_model_dir, fast):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_args(tmp_path / "run", tiny_model_dir, fast), stdout=follower, stderr=follower,
                            env=_env())  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "━" in text and "RL" in text and "SFT" in text
    assert not re.search(r"^\[\d\d:\d\d:\d\d\] RL 1/2", text, re.M)  # no plain lines on a terminal
