"""Wrong-take rate along SFT: python copy_curve.py EXPORT_DIR CKPT_DIR EPISODES

For each CKPT_DIR/<step>.safetensors (SFT's saved parameters) and the final export, plays the first EPISODES eval_in
seeds (T = 0.4, sampling seed 0, the quick start's constrained decoding, task reminder, take-first thoughts) and prints
success and the share of take actions naming an object that is not the task's.
"""

import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from empg.eval.evaluate import eval_seeds
from empg.policy import SamplingParams
from empg.policy.hf import Policy
from empg.rollout.collect import collect

torch.set_num_threads(1)
export, ckdir, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
pol = Policy.load(export)
final = {k: v.clone() for k, v in pol.model.state_dict().items()}
points = sorted((int(p.stem.split(".")[0]), p) for p in ckdir.glob("*.safetensors"))
for step, path in [*points, ("final", None)]:
    if path is None:
        pol.model.load_state_dict(final)
    else:
        missing, unexpected = pol.model.load_state_dict(load_file(str(path)), strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    pol.model.eval()
    res = collect(
        pol, "household-v0", eval_seeds("eval_in", n), group_size=1, split="eval_in",
        sampling=SamplingParams(temperature=0.4, max_new_tokens=48, jump_forward=True), max_turns=20, history=2,
        record_behaviour=False, generator=torch.Generator().manual_seed(0),
        env_kwargs=dict(scene_size="small", expert="systematic"), constrain_actions=True,
        constrain_scope="response", task_reminder=True, thoughts="take_first",
    )  # fmt: skip
    right = wrong = 0
    for s in res.steps:
        if m := re.match(r"take (\w+) \d+ from", s.action or ""):
            right += m.group(1) in s.extra.get("task", "")
            wrong += m.group(1) not in s.extra.get("task", "")
    succ = sum(t.success for t in res.trajectories) / len(res.trajectories)
    print(f"step {step}: success {succ:.3f}, takes {right + wrong}, wrong object {wrong / max(1, right + wrong):.2f}",
          flush=True)  # fmt: skip
