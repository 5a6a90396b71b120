"""The PPO update with duplicate step rows merged (``optim.merge_duplicates``, the default) vs every row computed.

One real iteration of the quick start (``configs/household-tiny.yaml``: its warm start, constrained decoding, GRPO +
EMPG + GiGPO advantages over the kept mixed groups) is rolled out, packed and given its advantages; then the same
``empg.train.rl.update_phase`` runs on that batch from the same weights with and without merging. In a GRPO group
several rollouts often take the same step from the same state; merged, each distinct row is computed once with its
advantages summed (same loss and gradient). Prints the rows, the distinct rows, the loss of both (equal up to float
noise with one mini-batch; with several, the mini-batches are drawn differently), and the time ratio.

    python benchmarks/bench_update.py                   # 16 tasks x 4, median of 3 interleaved updates
    python benchmarks/bench_update.py --tasks 64 --repeats 1

The last line is the ratio merged / unmerged update time.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import paired_medians
from empg.train import rl
from empg.train.advantage import step_table, to_tokens
from empg.train.config import load_config
from empg.train.distributed import dist_info, global_step_advantages

PRESET = Path(__file__).resolve().parent.parent / "configs" / "household-tiny.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=16, help="tasks rolled out (rollout.n_tasks), 4 rollouts each")
    ap.add_argument("--iteration", type=int, default=0, help="which iteration's tasks and rollout seeds")
    ap.add_argument("--repeats", type=int, default=3, help="timed updates per side (after one warm-up each)")
    ap.add_argument("--mini-batches", type=int, default=1, help="optim.mini_batches (1: the losses must agree)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        common = [f"rollout.n_tasks={args.tasks}", f"optim.mini_batches={args.mini_batches}", "log.progress=false"]
        cfgs = {
            merge: load_config(PRESET, [*common, f"run_dir={tmp}/{merge}", f"optim.merge_duplicates={merge}"])
            for merge in (True, False)
        }
        runs = {merge: rl.setup_run(cfg) for merge, cfg in cfgs.items()}
        cfg, run = cfgs[True], runs[True]
        steps, trajs, _ = rl.rollout_phase(run, args.iteration)
        batch = rl.pack_steps(run.policy, steps)
        adv, _ = global_step_advantages(cfg, step_table(cfg, batch, steps, trajs), args.iteration, dist_info())
        batch.advantages = to_tokens(adv, batch.response_mask)
        distinct = len(batch.merge_duplicates()[0])
        start = {merge: {k: v.clone() for k, v in r.trained_model.state_dict().items()} for merge, r in runs.items()}
        losses: dict[bool, float] = {}

        def update(merge: bool):
            def fn() -> None:
                r = runs[merge]
                r.trained_model.load_state_dict(start[merge])
                losses[merge] = rl.update_phase(r, batch, None, args.iteration)["loss/pg"]

            return fn

        t_merged, t_plain = paired_medians([update(True), update(False)], args.repeats)
    print(f"threads {torch.get_num_threads()}, {args.tasks} tasks x 4: {len(batch)} step rows, {distinct} distinct")
    print(f"loss/pg merged {losses[True]:.6g}, unmerged {losses[False]:.6g}")
    print(f"update: merged {t_merged:.2f} s, unmerged {t_plain:.2f} s")
    print(f"ratio merged / unmerged: {t_merged / t_plain:.3f}")


if __name__ == "__main__":
    main()
