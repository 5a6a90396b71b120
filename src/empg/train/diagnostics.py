"""Per-iteration entropy diagnostics of the RL loop: token entropy by span, step entropy by outcome, and the
``step_entropy.jsonl`` log the plots read."""

from __future__ import annotations

import json
from pathlib import Path

from empg.eval.runlog import STEP_ENTROPY
from empg.train.advantage import StepTable
from empg.train.batch import StepBatch
from empg.train.metrics import masked_mean


def entropy_metrics(batch: StepBatch, table: StepTable, run_dir: Path, iteration: int) -> dict[str, float]:
    """Token entropy (all / thought / action tokens) and the step entropy H the advantages use, by outcome; appends
    ``step_entropy.jsonl``."""
    mask = batch.response_mask
    ent = batch.token_entropy
    action = batch.action_mask * mask
    thought = mask * (1 - batch.action_mask)
    h_step = table.entropy
    success = table.success[table.traj]
    out = {
        "entropy/token_mean": masked_mean(ent, mask),
        "entropy/thought_token": masked_mean(ent, thought),
        "entropy/action_token": masked_mean(ent, action),
        "entropy/step_mean": float(h_step.mean()),
        "entropy/step_success": float(h_step[success].mean()) if bool(success.any()) else float("nan"),
        "entropy/step_failure": float(h_step[~success].mean()) if bool((~success).any()) else float("nan"),
    }
    row = {
        "iteration": iteration,
        "success": [round(float(h), 5) for h in h_step[success]],
        "failure": [round(float(h), 5) for h in h_step[~success]],
    }
    with (run_dir / STEP_ENTROPY).open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    return out
