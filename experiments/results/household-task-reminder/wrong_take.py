"""Diagnostic for experiments/results/household-task-reminder (see its README).

    python wrong_take.py MODEL_DIR REMINDER(0|1) EPISODES

Plays the first EPISODES ``eval_in`` seeds (T = 0.4, sampling seed 0, the quick start's constrained decoding) and
prints: success; the share of ``take`` actions naming an object that is not in the task, overall and split by
whether the object's name is one token or several; the share of clean/heat/cool actions whose verb is not in the
task (counted by verb, so tasks worded hot/cold inflate it).
"""

import collections
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/
from household_episodes import op_kind, play, take_kind  # noqa: E402

from empg.policy.hf import Policy  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    path, reminder, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    pol = Policy.load(path)
    res = play(pol, n, task_reminder=reminder, thoughts="verb")  # this question's models use the verb thoughts
    takes = collections.Counter()  # (one-token name?, right object?) -> count
    ops = wrong_op = 0
    for s in res.steps:
        task = s.extra.get("task", "")
        if (kind := take_kind(s.action, task)) is not None:
            name = re.match(r"take (\w+)", s.action).group(1)
            single = len(pol.tokenizer(" " + name)["input_ids"]) == 1
            takes[("single" if single else "multi", kind)] += 1
        if (op := op_kind(s.action, task)) is not None:
            ops += 1
            wrong_op += op == "wrong"
    n_takes = sum(takes.values())
    wrong = sum(v for (_, right), v in takes.items() if right == "wrong")
    succ = sum(t.success for t in res.trajectories) / len(res.trajectories)
    print(f"{path}: success {succ:.3f}; take actions {n_takes}, wrong object {wrong / max(1, n_takes):.2f};")
    print(f"clean/heat/cool {ops}, wrong op {wrong_op / max(1, ops):.2f}")
    print("takes by name length:", dict(takes))


if __name__ == "__main__":
    main()
