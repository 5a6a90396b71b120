"""Why does a household model fail? A failure taxonomy next to the systematic expert.

    python experiments/failures.py MODEL_DIR [--episodes 128] [--split eval_in] [--sampling-seed 0]
        [--task-reminder 1] [--thoughts take_first]

Plays the first EPISODES seeds of the split as the quick start evaluates them (:func:`household_episodes.play`),
replays every episode in a fresh env next to the systematic expert and prints, as Markdown: success; the expert's
own length on the same seeds; the share of steps whose action is the expert's; failures split by how they ended
(turn limit or not) and whether they went back to a receptacle already visited; and, for failed and successful
episodes, the first step where the model left the expert's path (the expert's verb -> the model's).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from household_episodes import Replay, episodes_of, play, replay, take_counts  # noqa: E402

from empg.rollout.prompts import PromptSpec  # noqa: E402


def taxonomy(result, split: str) -> dict:
    """Counts of one :func:`household_episodes.play` result on ``split`` (see the module docstring)."""
    cats, first_fail, first_ok = Counter(), Counter(), Counter()
    agree = steps = 0
    lengths = []
    for traj, eps in zip(result.trajectories, episodes_of(result), strict=True):
        r: Replay = replay([s.action for s in eps], traj.seed, split)
        agree, steps = agree + r.agree, steps + r.steps
        lengths.append(r.expert_length)
        first = r.first_divergence[:2] if r.first_divergence else ("on the expert's path", "")
        if traj.success:
            cats["success"] += 1
            first_ok[first] += 1
        else:
            ended = "turn limit" if traj.truncated else "ended early"
            cats[f"failure: {ended}, {'revisits' if r.revisits else 'no revisit'}"] += 1
            first_fail[first] += 1
    return dict(cats=cats, first_fail=first_fail, first_ok=first_ok, agree=agree / max(1, steps), lengths=lengths)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an exported model directory (a warm start, or a run's checkpoints/iter_NNNN)")
    ap.add_argument("--episodes", type=int, default=128, help="seeds of the split to play (the first N)")
    ap.add_argument("--split", default="eval_in", help="eval_in | eval_out | train")
    ap.add_argument("--sampling-seed", type=int, default=0, help="seed of the sampling generator")
    ap.add_argument("--task-reminder", type=int, default=1, help="1 if the model was trained with the task reminder")
    ap.add_argument("--thoughts", default="take_first", help="the thought templates the model was trained with")
    ap.add_argument(
        "--config",
        help="the config the model was trained with (a run's config.yaml or a preset): its rollout.* prompt fields "
        "and thoughts replace --task-reminder and --thoughts",
    )
    args = ap.parse_args(argv)
    prompt, thoughts = PromptSpec(history=2, task_reminder=bool(args.task_reminder)), args.thoughts
    if args.config:
        from empg.train.config import load_config

        rollout = load_config(args.config, []).rollout
        prompt, thoughts = PromptSpec.from_config(rollout), rollout.thoughts

    import torch

    from empg.policy.hf import Policy

    torch.set_num_threads(1)
    policy = Policy.load(args.model)
    result = play(
        policy,
        args.episodes,
        split=args.split,
        sampling_seed=args.sampling_seed,
        prompt=prompt,
        thoughts=thoughts,
    )
    t = taxonomy(result, args.split)
    n = len(result.trajectories)
    takes = take_counts(result.steps)
    print(f"## {args.model}: {args.split}, {n} episodes, sampling seed {args.sampling_seed}\n")
    print(f"- success {t['cats']['success'] / n:.1%}; steps on the expert's action {t['agree']:.1%}")
    over = sum(x > 20 for x in t["lengths"])
    print(f"- the expert alone: {sum(t['lengths']) / n:.1f} turns on average, {over} of {n} seeds need more than 20")
    n_takes = sum(takes.values())
    print(f"- takes {n_takes}, naming an object not in the task {takes['wrong'] / max(1, n_takes):.1%}")
    print("\n| episodes | count |\n| --- | --- |")
    for k, v in t["cats"].most_common():
        print(f"| {k} | {v} |")
    for name, c in (("failed", t["first_fail"]), ("successful", t["first_ok"])):
        print(f"\n| first step off the expert's path ({name}): expert -> model | episodes |\n| --- | --- |")
        for (want, did), v in c.most_common(10):
            print(f"| {want} -> {did} | {v} |" if did else f"| {want} | {v} |")


if __name__ == "__main__":
    main()
