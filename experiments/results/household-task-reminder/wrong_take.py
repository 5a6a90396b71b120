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

import torch

from empg.eval.evaluate import eval_seeds
from empg.policy import SamplingParams
from empg.policy.hf import Policy
from empg.rollout.collect import collect

torch.set_num_threads(1)
path, reminder, n = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
pol = Policy.load(path)
res = collect(
    pol,
    "household-v0",
    eval_seeds("eval_in", n),
    group_size=1,
    split="eval_in",
    sampling=SamplingParams(temperature=0.4, max_new_tokens=48, jump_forward=True),
    max_turns=20,
    history=2,
    record_behaviour=False,
    generator=torch.Generator().manual_seed(0),
    env_kwargs=dict(scene_size="small", expert="systematic"),
    constrain_actions=True,
    constrain_scope="response",
    task_reminder=reminder,
)
takes = collections.Counter()  # (one-token name?, right object?) -> count
ops = wrong_op = 0
for s in res.steps:
    task = s.extra.get("task", "")
    if m := re.match(r"take (\w+) \d+ from", s.action or ""):
        single = len(pol.tokenizer(" " + m.group(1))["input_ids"]) == 1
        takes[("single" if single else "multi", "right" if m.group(1) in task else "wrong")] += 1
    if m := re.match(r"(clean|heat|cool) ", s.action or ""):
        ops += 1
        wrong_op += m.group(1) not in task
n_takes = sum(takes.values())
wrong = sum(v for (_, right), v in takes.items() if right == "wrong")
succ = sum(t.success for t in res.trajectories) / len(res.trajectories)
print(f"{path}: success {succ:.3f}; take actions {n_takes}, wrong object {wrong / n_takes:.2f};")
print(f"clean/heat/cool {ops}, wrong op {wrong_op / max(1, ops):.2f}")
print("takes by name length:", dict(takes))
