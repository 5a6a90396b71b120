"""Wrong-take rate along SFT: python copy_curve.py EXPORT_DIR CKPT_DIR EPISODES

For each CKPT_DIR/<step>.safetensors (SFT's saved parameters) and the final export, plays the first EPISODES eval_in
seeds (T = 0.4, sampling seed 0, the quick start's constrained decoding, task reminder, take-first thoughts) and prints
success and the share of take actions naming an object that is not the task's.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/
from household_episodes import play, take_counts  # noqa: E402

from empg.policy.hf import Policy  # noqa: E402


def main() -> None:
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
        res = play(pol, n)
        takes = take_counts(res.steps)
        right, wrong = takes["right"], takes["wrong"]
        succ = sum(t.success for t in res.trajectories) / len(res.trajectories)
        share = wrong / max(1, right + wrong)
        print(f"step {step}: success {succ:.3f}, takes {right + wrong}, wrong object {share:.2f}", flush=True)


if __name__ == "__main__":
    main()
