"""Diagnostic for experiments/results/household-object-choice (see its README).

    python credit.py credit-6its/trajectories.jsonl.gz

Reads a run's logged episodes (``log.trajectories``) and prints, per kind of action, how many steps took it, their
mean advantage before and after EMPG and the share that belong to successful episodes (``take`` split by whether
the object is the task's, clean/heat/cool by whether the verb is); then, for the ``take`` steps, whether the task's
object was named in the observation the step acted on.
"""

import collections
import gzip
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/
from household_episodes import op_kind, take_kind  # noqa: E402

from empg.envs.household_scene import PLACEMENT  # noqa: E402 (object type -> where it can be placed)


def kind(action: str, task: str) -> str:
    if (k := take_kind(action, task)) is not None:
        return f"take {k}"
    if (k := op_kind(action, task)) is not None:
        return f"op {k}"
    return action.split()[0] if action else "none"


with gzip.open(sys.argv[1], "rt") if sys.argv[1].endswith(".gz") else open(sys.argv[1]) as fh:
    episodes = [json.loads(line) for line in fh]
rows = collections.defaultdict(list)  # kind -> (adv before, adv after, episode success)
visible = collections.Counter()  # (right object?, task's object visible?) -> takes
for ep in episodes:
    goal = set(re.findall(r"[a-z]+", ep["task"].lower())) & set(PLACEMENT)  # the task's object type(s)
    for s in ep["steps"]:
        k = kind(s["action"] or "", ep["task"])
        rows[k].append((s["adv_before"], s["adv_after"], ep["success"]))
        if k.startswith("take"):
            seen = set(re.findall(r"[a-z]+", s["observation"]))
            visible[(k, bool(goal & seen))] += 1
print(f"{len(episodes)} episodes, success {sum(e['success'] for e in episodes) / len(episodes):.3f}")
for k, v in sorted(rows.items(), key=lambda kv: -len(kv[1])):
    n = len(v)
    before, after, succ = (sum(x[i] for x in v) / n for i in range(3))
    print(f"{k:11s} n={n:5d}  adv before {before:+.3f}  after {after:+.3f}  in a success {succ:.2f}")
for (k, vis), n in sorted(visible.items()):
    print(f"{k}, task's object {'visible' if vis else 'not visible'}: {n}")
