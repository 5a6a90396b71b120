"""SFT warm start: demos rendered with the rollout prompts, masked next-token loss that learns, `empg sft`."""

from __future__ import annotations

import json

import pytest

from empg.cli import main
from empg.envs import make, split_seeds
from empg.train.sft import collect_demos, encode_response, sft_train


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from empg.policy import Policy

    return Policy.load(tiny_model_dir)


def _expert_episode(seed, max_turns):
    env = make("household-v0", "train", max_turns=max_turns)
    obs, info = env.reset(seed=seed)
    out, done = [], False
    while not done:
        action = env.expert_action()
        out.append((obs, info, action))
        obs, _, term, trunc, info = env.step(action)
        done = term or trunc
    return env, out


def test_demos_follow_the_expert_and_the_rollout_prompts(policy):
    from empg.rollout import prompts

    seeds = split_seeds("train", 2)
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, history=2)
    episodes = [_expert_episode(s, 20) for s in seeds]
    assert len(demos) == sum(len(ep) for _, ep in episodes)
    env, steps = episodes[0]
    past = []
    for i, (obs, info, action) in enumerate(steps):
        messages = prompts.build_messages(env.family, info["task"], obs, past[-2:], i, info["admissible_actions"])
        assert demos[i].prompt_ids == policy.chat_prompt_ids(messages)
        assert demos[i].response_ids == encode_response(policy, prompts.expert_response(env.family, action))
        assert prompts.parse_action(policy.tokenizer.decode(demos[i].response_ids)) == action
        past.append((obs, action))
    assert demos[0].seed == seeds[0] and demos[0].task_type == steps[0][1]["task_type"]


def test_behaviour_cloning_loss_goes_down(tiny_model_dir):
    from empg.policy import Policy

    policy = Policy.load(tiny_model_dir)
    demos = collect_demos(policy, "household-v0", split_seeds("train", 1), max_turns=20)[:8]
    losses = sft_train(policy, demos, steps=12, batch_size=4, lr=1e-2, seed=0)
    assert len(losses) == 12
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, (first, last)


def test_sft_command_saves_base_model_and_report(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "sft"
    args = [
        "sft",
        f"run_dir={run_dir}",
        f"model.spec={tiny_model_dir}",
        "sft.episodes=2",
        "sft.steps=4",
        "sft.batch_size=4",
        "sft.eval_episodes=2",
        "env.max_turns=3",
        "rollout.max_new_tokens=16",
    ]
    assert main(args) == 0
    report = json.loads((run_dir / "sft.json").read_text())
    assert report["demo_episodes"] == 2 and len(report["losses"]) == 4
    assert 0.0 <= report["eval_in/success"] <= 1.0 and "eval_out/success" in report
    assert (run_dir / "base_model" / "config.json").is_file()


def test_noisy_demos_train_only_on_expert_steps(policy, monkeypatch):
    """sft.noise (DART): perturbed steps are executed and shown in history but never targets; the rest are expert."""
    import empg.envs
    from empg.rollout import prompts

    log = []  # per executed step: (expert's suggestion, executed action, admissible actions)
    real_make = empg.envs.make

    def spying_make(*args, **kwargs):
        env = real_make(*args, **kwargs)
        inner_expert, inner_step = env.expert_action, env.step
        state = {}

        def expert_action():
            state["expert"] = inner_expert()
            state["admissible"] = list(env.unwrapped.admissible_actions())
            return state["expert"]

        def step(action):
            log.append((state.pop("expert"), action, state.pop("admissible")))
            return inner_step(action)

        env.expert_action, env.step = expert_action, step
        return env

    monkeypatch.setattr(empg.envs, "make", spying_make)
    seeds = split_seeds("train", 6)
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, noise=0.4)
    perturbed = [(e, a, adm) for e, a, adm in log if a != e]
    followed = [e for e, a, _ in log if a == e]
    assert 0 < len(perturbed) < len(log)
    assert all(a in adm for _, a, adm in perturbed)  # detours are admissible actions
    assert len(demos) == len(followed)
    targets = [prompts.parse_action(policy.tokenizer.decode(d.response_ids)) for d in demos]
    assert targets == followed
    monkeypatch.setattr(empg.envs, "make", real_make)
    again = collect_demos(policy, "household-v0", seeds, max_turns=20, noise=0.4)
    assert [d.prompt_ids for d in again] == [d.prompt_ids for d in demos]  # seeded by the episode seed


def test_lr_schedule_factors():
    from empg.train.sft import lr_factor

    assert [lr_factor(i, 4, "constant", 2) for i in range(4)] == [0.5, 1.0, 1.0, 1.0]
    # cosine over the 4 steps after a 1-step warm-up: 0.5 (1 + cos(pi j / 3)), j = 0..3
    assert [round(lr_factor(i, 5, "cosine", 1), 6) for i in range(5)] == [1.0, 1.0, 0.75, 0.25, 0.0]
    assert lr_factor(0, 1, "cosine") == 1.0  # a single step is not decayed to 0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(3, 5, "linear")
