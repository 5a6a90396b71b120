"""Diagnostic for experiments/results/household-task-reminder (see its README)."""

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
tok = pol.tokenizer
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
c = collections.Counter()
succ = {t.traj_id: t.success for t in res.trajectories}
first = {}
for s in res.steps:
    task = s.extra.get("task", "")
    m = re.match(r"take (\w+) \d+ from", s.action or "")
    if not m:
        continue
    # the task's object: a word of the task that is some object; approximate by the taken word when right
    single = len(tok(" " + m.group(1))["input_ids"]) == 1
    right = m.group(1) in task
    c[("single" if single else "multi", "right" if right else "wrong")] += 1
print(path, dict(c))
# success by whether the task mentions a multi-token object
tt = collections.Counter()
for t in res.trajectories:
    task = next(s.extra["task"] for s in res.steps if s.traj_id == t.traj_id)
    words = re.findall(r"[a-z]+", task)
    multi = any(
        len(tok(" " + w)["input_ids"]) > 1
        for w in words
        if w
        not in (
            "put",
            "some",
            "and",
            "it",
            "in",
            "a",
            "the",
            "with",
            "them",
            "two",
            "find",
            "clean",
            "hot",
            "cool",
            "heat",
            "examine",
            "look",
            "at",
            "under",
            "on",
            "cold",
        )
    )
    tt[("multi" if multi else "single", t.success)] += 1
print(dict(tt))
