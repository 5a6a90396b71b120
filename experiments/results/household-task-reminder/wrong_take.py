"""Diagnostic for experiments/results/household-task-reminder (see its README)."""

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
takes = wrong = 0
ops = wrong_op = 0
for s in res.steps:
    task = s.extra.get("task", "")
    m = re.match(r"take (\w+) \d+ from", s.action or "")
    if m:
        takes += 1
        wrong += m.group(1) not in task
    m = re.match(r"(clean|heat|cool) ", s.action or "")
    if m:
        ops += 1
        wrong_op += {"clean": "clean", "heat": "heat", "cool": "cool"}[m.group(1)] not in task
succ = sum(t.success for t in res.trajectories) / len(res.trajectories)
print(f"{path}: success {succ:.3f}; take actions {takes}, wrong object {wrong / takes:.2f};")
print(f"clean/heat/cool {ops}, wrong op {wrong_op / max(1, ops):.2f}")
