"""More SFT from a warm start: the "same minutes on SFT instead of RL" comparator of issue 18.

    python experiments/sft_continue.py WARMSTART RUN_DIR --config configs/household-tiny-sft.yaml sft.steps=3700 ...

Loads the warm start (verified against its manifest), behaviour-clones it for ``sft.steps`` more steps on the demos
the config names (the same ``sft.episodes`` / ``sft.seed_offset`` / ``sft.noise`` and ``seed`` as the warm start's
recipe give the same demos), evaluates it as ``empg sft`` does (``sft.eval_episodes`` per split, sampling seed from
``seed``) and saves ``RUN_DIR/base_model`` + ``RUN_DIR/sft.json``, so ``empg eval RUN_DIR --sampling-seed S`` and
``experiments/paired.py`` read it like any SFT run. ``empg sft`` always starts from ``model.spec``; this script is
for the comparison only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from empg.policy.hf import Policy
from empg.train import warmstart
from empg.train.config import load_config, to_yaml
from empg.train.sft import run_sft, save_base_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warmstart", help="warm start directory (or packaged name) to continue from")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--config", required=True, help="the warm start's SFT config")
    ap.add_argument("overrides", nargs="*", help="dotted overrides (the warm start's rebuild overrides, sft.steps=N)")
    args = ap.parse_intermixed_args()
    console = Console()
    cfg = load_config(args.config, [*args.overrides, "sft.enabled=true", "model.init=null", f"run_dir={args.run_dir}"])
    path = warmstart.resolve(args.warmstart)
    warmstart.verify(path)
    policy = Policy.load(path, device=cfg.model.device)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "config.yaml").write_text(to_yaml(replace(cfg, model=replace(cfg.model, init=str(path)))))
    result = run_sft(policy, cfg, args.run_dir, console=console)
    save_base_model(policy, args.run_dir)
    summary = {k: v for k, v in result.items() if k.endswith("/success") or k.startswith("time/")}
    console.print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
