"""The text the tiny models' tokenizer is trained on (:func:`empg.policy.tokenizer.train_tokenizer`): expert episodes
of every registered embedded env on its first train seeds (instructions, observations, admissible and expert
actions), rendered with the rollout's own prompt templates and templated expert responses. Deterministic.
"""

from __future__ import annotations

import warnings

from empg.envs import make, split_seeds
from empg.rollout import prompts

EMBEDDED_ENVS = ("household-v0", "shop-v0", "search-v0")


def env_corpus(
    env_ids: tuple[str, ...] = EMBEDDED_ENVS, *, episodes: int = 40, history: int = 2, thoughts: str = "verb"
) -> list[str]:
    """Text of expert episodes on the first ``episodes`` train seeds of each env that can be built, the responses'
    thoughts in style ``thoughts`` (``rollout.thoughts``, :func:`empg.rollout.prompts.thought_templates`).

    Envs that are not importable yet, or whose expert episodes fail, are skipped with a warning (the corpus hash then
    changes when they appear, so cached tiny models are rebuilt rather than silently reused).
    """
    texts: list[str] = []
    for env_id in env_ids:
        try:
            env = make(env_id, "train")
        except (ImportError, ModuleNotFoundError, KeyError) as err:
            warnings.warn(f"tokenizer corpus: skipping {env_id} ({err})", stacklevel=2)
            continue
        try:
            env_texts = [
                t for seed in split_seeds("train", episodes) for t in _episode_texts(env, seed, history, thoughts)
            ]
        except Exception as err:  # noqa: BLE001 - a broken env must not block building a model for the others
            warnings.warn(f"tokenizer corpus: skipping {env_id}, its expert episodes failed ({err!r})", stacklevel=2)
            env_texts = []
        finally:
            env.close()
        texts.extend(env_texts)
    return texts


def _episode_texts(env, seed: int, history: int, thoughts: str = "verb") -> list[str]:
    obs, info = env.reset(seed=seed)
    texts = [info["task"]]
    past: list[tuple[str, str]] = []
    done, step = False, 0
    while not done:
        action = env.expert_action()
        msgs = prompts.build_messages(
            env.family, info["task"], obs, past[-history:] if history else [], step, info["admissible_actions"]
        )
        texts.append(msgs[0]["content"])
        texts.append(prompts.expert_response(env.family, action, thoughts))
        past.append((obs, action))
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        step += 1
    texts.append(obs)
    return texts
