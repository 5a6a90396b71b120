"""Diagnostic for experiments/results/household-object-choice (see its README).

    python probe.py MODEL_DIR [MODEL_DIR ...] EPISODES

Lets the expert play the first EPISODES ``eval_in`` seeds (the shipped prompt: history 2, admissible actions listed,
no task reminder) and, at each state where the expert takes an object or cleans/heats/cools one, scores every
admissible action's templated response under each model. The sequence probabilities are renormalised over the
admissible set (a close stand-in for the trie-constrained distribution). Prints the mean probability of the
expert's response, of any response with the same verb, and how often the expert's is the most likely.
"""

import collections
import re
import sys

import torch

from empg.envs import make
from empg.eval.evaluate import eval_seeds
from empg.policy.hf import Policy
from empg.rollout import prompts
from empg.train.sft import encode_response

torch.set_num_threads(1)


def logprob(policy: Policy, prompt: list[int], response: list[int]) -> float:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = policy.model(ids).logits[0, len(prompt) - 1 : -1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).sum())


def probe(policies: list[Policy], seeds: list[int]) -> list[dict[str, list[float]]]:
    stats = [collections.defaultdict(list) for _ in policies]
    for seed in seeds:
        env = make("household-v0", "eval_in", max_turns=20, scene_size="small", expert="systematic")
        obs, info = env.reset(seed=seed)
        past, step, done = [], 0, False
        while not done:
            action, admissible = env.expert_action(), info["admissible_actions"]
            kind = "take" if action.startswith("take ") else "op" if re.match(r"(clean|heat|cool) ", action) else None
            if kind:
                msgs = prompts.build_messages(env.family, info["task"], obs, past[-2:], step, admissible)
                same = [a for a in admissible if a.split()[0] == action.split()[0]]
                for policy, st in zip(policies, stats, strict=True):
                    prompt = policy.chat_prompt_ids(msgs)
                    resp = {a: encode_response(policy, prompts.expert_response(env.family, a)) for a in admissible}
                    lp = torch.tensor([logprob(policy, prompt, resp[a]) for a in admissible])
                    p = dict(zip(admissible, torch.softmax(lp, 0).tolist(), strict=True))
                    st[f"{kind} p(expert)"].append(p[action])
                    st[f"{kind} p(same verb)"].append(sum(p[a] for a in same))
                    st[f"{kind} expert most likely"].append(float(max(p, key=p.get) == action))
            past.append((obs, action))
            task = info["task"]
            obs, _, terminated, truncated, info = env.step(action)
            info = {**info, "task": info.get("task") or task}
            done, step = terminated or truncated, step + 1
        env.close()
    return stats


if __name__ == "__main__":
    paths, n = sys.argv[1:-1], int(sys.argv[-1])
    for path, st in zip(paths, probe([Policy.load(p) for p in paths], eval_seeds("eval_in", n)), strict=True):
        print(path)
        for k, v in sorted(st.items()):
            print(f"  {k}: {sum(v) / len(v):.3f} (n={len(v)})")
