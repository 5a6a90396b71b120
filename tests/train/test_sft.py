"""SFT warm start: demos rendered with the rollout prompts, masked next-token loss that learns, `empg sft`."""

from __future__ import annotations

import json

import pytest

from empg.cli import main
from empg.envs import make, split_seeds
from empg.envs.checks import expert_episode
from empg.rollout.prompts import PromptSpec, render_admissible
from empg.train import sft
from empg.train.sft import collect_demos, encode_response, sft_train


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from empg.policy import Policy

    return Policy.load(tiny_model_dir)


def _expert_episode(seed, max_turns):
    """The env and the expert's episode as ``(obs, info, action)`` per step: what each prompt is built from."""
    env = make("household-v0", "train", max_turns=max_turns)
    (obs, info), *transitions = expert_episode(env, seed)
    states = [(obs, info)] + [(t[1], t[5]) for t in transitions[:-1]]
    return env, [(o, i, t[0]) for (o, i), t in zip(states, transitions, strict=True)]


def test_demos_follow_the_expert_and_the_rollout_prompts(policy):
    from empg.rollout import prompts

    seeds = split_seeds("train", 2)
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=2))
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


def test_sft_killed_mid_way_resumes_from_its_checkpoint_bit_for_bit(tmp_path, tiny_model_dir):
    import torch

    from empg.policy import Policy

    demos = collect_demos(Policy.load(tiny_model_dir), "household-v0", split_seeds("train", 1), max_turns=20)[:7]
    args = dict(steps=7, batch_size=3, lr=1e-2, seed=0, group_by_length=True, schedule="cosine", warmup_steps=2)
    full = Policy.load(tiny_model_dir)
    reference = sft_train(full, demos, **args)

    def killed_after_step_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt("killed")

    ck = dict(checkpoint_dir=tmp_path / "sft", checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        sft_train(Policy.load(tiny_model_dir), demos, **args, **ck, progress=killed_after_step_3)
    resumed, seen = Policy.load(tiny_model_dir), []
    assert sft_train(resumed, demos, **args, **ck, progress=lambda step, loss: seen.append(step)) == reference
    assert seen == [3, 4, 5, 6]  # steps 0-2 came from the checkpoint at step 3
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name

    seen.clear()  # another SFT (other seed) does not resume from this one's checkpoint
    sft_train(Policy.load(tiny_model_dir), demos, **{**args, "seed": 1}, **ck, progress=lambda s, _: seen.append(s))
    assert seen == list(range(7))


def test_length_grouped_order_is_a_permutation_of_similar_length_batches():
    import random

    import torch

    from empg.train.sft import length_grouped_order

    rng = random.Random(0)
    lengths = [rng.randrange(100, 600) for _ in range(1000)]
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    order = length_grouped_order(perm, lengths, 16, torch.Generator().manual_seed(2), window=8)
    assert sorted(order) == list(range(1000))
    for w in range(0, 1000, 8 * 16):  # each window keeps its own indices: a pass is still shuffled at large scale
        assert sorted(order[w : w + 128]) == sorted(perm[w : w + 128])

    def spread(o):
        return sum(max(lengths[i] for i in o[b : b + 16]) - min(lengths[i] for i in o[b : b + 16])
                   for b in range(0, 1000, 16))  # fmt: skip

    assert spread(order) < 0.2 * spread(perm)  # within-batch length spread (the padding) shrinks
    firsts = [order[b] for b in range(0, 128, 16)]
    assert sorted(firsts, key=lambda i: lengths[i]) != firsts  # the window's batches are not in length order


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
    assert not (run_dir / "checkpoints").exists()  # SFT's checkpoints are deleted once base_model is saved


def _spy_on_envs(monkeypatch) -> list:
    """Patch ``empg.envs.make``: every executed step appends (expert's suggestion, executed action, admissible)."""
    import empg.envs

    log = []
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

    monkeypatch.setattr(sft, "make", spying_make)  # the name collect_demos looks up
    return log


def test_noisy_demos_train_only_on_expert_steps(policy, monkeypatch):
    """sft.noise (DART): perturbed steps are executed and shown in history but never targets; the rest are expert."""
    from empg.rollout import prompts

    log = _spy_on_envs(monkeypatch)
    seeds = split_seeds("train", 6)
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, noise=0.4)
    perturbed = [(e, a, adm) for e, a, adm in log if a != e]
    followed = [e for e, a, _ in log if a == e]
    assert 0 < len(perturbed) < len(log)
    assert all(a in adm for _, a, adm in perturbed)  # detours are admissible actions
    assert len(demos) == len(followed)
    targets = [prompts.parse_action(policy.tokenizer.decode(d.response_ids)) for d in demos]
    assert targets == followed
    monkeypatch.undo()
    again = collect_demos(policy, "household-v0", seeds, max_turns=20, noise=0.4)
    assert [d.prompt_ids for d in again] == [d.prompt_ids for d in demos]  # seeded by the episode seed


def test_invalid_noise_shows_rejected_actions_and_trains_the_recovery(policy, monkeypatch):
    """sft.invalid_noise: some executed steps are invalid (not admissible), never targets; the prompts after them show
    the env's rejection; every target is the expert's action; off, the demos are the clean ones."""
    from empg.envs.household import NOTHING
    from empg.rollout import prompts

    seeds = split_seeds("train", 4)
    clean = collect_demos(policy, "household-v0", seeds, max_turns=20)
    log = _spy_on_envs(monkeypatch)
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, invalid_noise=0.3)
    invalid = [(e, a) for e, a, adm in log if a not in adm]
    followed = [e for e, a, _ in log if a == e]
    assert len(invalid) > 0 and len(invalid) + len(followed) == len(log)  # every other step is the expert's
    targets = [prompts.parse_action(policy.tokenizer.decode(d.response_ids)) for d in demos]
    assert targets == followed
    assert any(NOTHING in policy.tokenizer.decode(d.prompt_ids) for d in demos)
    assert not any(NOTHING in policy.tokenizer.decode(d.prompt_ids) for d in clean)
    monkeypatch.undo()
    assert [d.prompt_ids for d in collect_demos(policy, "household-v0", seeds, max_turns=20)] == [
        d.prompt_ids for d in clean
    ]


def test_invalid_variant_golden():
    import random

    from empg.train.sft import invalid_variant

    admissible = ["take apple 1 from countertop 1", "go to fridge 1", "look"]
    # one of the two numbers becomes another of 1-3; the previous action is admissible here, so never repeated
    seen = {invalid_variant("take apple 1 from countertop 1", "go to fridge 1", admissible, random.Random(i))
            for i in range(40)}  # fmt: skip
    assert seen == {
        "take apple 2 from countertop 1",
        "take apple 3 from countertop 1",
        "take apple 1 from countertop 2",
        "take apple 1 from countertop 3",
    }
    repeat = {invalid_variant("look", "go to sinkbasin 1", admissible, random.Random(i)) for i in range(20)}
    assert repeat == {"go to sinkbasin 1"}  # "look" has no number: only the repeat remains
    assert invalid_variant("look", None, admissible, random.Random(0)) is None


def test_lr_schedule_factors():
    from empg.train.schedule import lr_factor

    assert [lr_factor(i, 4, "constant", 2) for i in range(4)] == [0.5, 1.0, 1.0, 1.0]
    # cosine over the 4 steps after a 1-step warm-up: 0.5 (1 + cos(pi j / 3)), j = 0..3
    assert [round(lr_factor(i, 5, "cosine", 1), 6) for i in range(5)] == [1.0, 1.0, 0.75, 0.25, 0.0]
    # linear: 1 - j / 3 after the warm-up
    assert [round(lr_factor(i, 5, "linear", 1), 6) for i in range(5)] == [1.0, 1.0, 0.666667, 0.333333, 0.0]
    assert lr_factor(0, 1, "cosine") == 1.0  # a single step is not decayed to 0
    assert lr_factor(9, 5, "linear", 1) == 0.0  # past the plan: the last value
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(3, 5, "exponential")


def _scripted_records(seed, max_turns, detour_every=3):
    """StepRecords of an episode that takes a random admissible detour every few steps (else the expert's action),
    with one unparsable response sent as raw text, as the rollout would; returns (records, expert labels computed
    by an independent replay)."""
    import random

    from empg.rollout.types import StepRecord

    rng = random.Random(seed)
    env = make("household-v0", "train", max_turns=max_turns)
    obs, info = env.reset(seed=seed)
    records, labels, done, t = [], [], False, 0
    while not done:
        expert = env.expert_action()
        labels.append(expert)
        if t == 1:
            action, text = None, "I am not sure what to do"  # unparsable: the env gets the raw text
        elif t % detour_every == 2:
            action = rng.choice([a for a in info["admissible_actions"] if a != expert] or [expert])
            text = f"<action>{action}</action>"
        else:
            action, text = expert, f"<action>{expert}</action>"
        obs, reward, term, trunc, info = env.step(action if action is not None else text)
        done = term or trunc
        records.append(
            StepRecord(
                group_id=0,
                traj_id=seed,
                step_idx=t,
                is_last=done,
                env_id="household-v0",
                seed=seed,
                task_type=info.get("task_type", "x"),
                prompt_ids=[seed, t],
                response_ids=[1],
                response_text=text,
                action=action,
                valid=action is not None and bool(info.get("valid", True)),
                parsed=action is not None,
                env_reward=float(reward),
                won=bool(info.get("won")),
                terminated=term,
                truncated=trunc,
            )  # fmt: skip
        )
        t += 1
    return records, labels


def test_dagger_labels_each_visited_state_with_the_expert(policy):
    from empg.rollout import prompts
    from empg.train.sft import expert_labels

    seeds = split_seeds("train", 3)
    recs, labels = [], []
    for s in seeds:
        r, lab = _scripted_records(s, 15)
        recs += r
        labels += lab
    assert any(r.action is None for r in recs) and any(
        r.action not in (None, lab) for r, lab in zip(recs, labels, strict=True)
    )
    order = list(range(len(recs)))[::-1]  # any order: records are grouped by trajectory and sorted by step
    demos = expert_labels(policy, [recs[i] for i in order], "household-v0", max_turns=15)
    assert len(demos) == len(recs)
    by_prompt = {tuple(d.prompt_ids): d for d in demos}
    for rec, label in zip(recs, labels, strict=True):
        demo = by_prompt[tuple(rec.prompt_ids)]  # the prompt the policy saw
        assert prompts.parse_action(policy.tokenizer.decode(demo.response_ids)) == label
        assert demo.seed == rec.seed and demo.task_type == rec.task_type


def test_dagger_refuses_a_replay_that_diverges(policy):
    from empg.train.sft import expert_labels

    recs, _ = _scripted_records(split_seeds("train", 1)[0], 15)
    recs[-1].won = not recs[-1].won
    with pytest.raises(RuntimeError, match="diverged"):
        expert_labels(policy, recs, "household-v0", max_turns=15)


def test_sft_command_with_dagger_rounds(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "sft"
    args = ["sft", f"run_dir={run_dir}", f"model.spec={tiny_model_dir}", "sft.episodes=2", "sft.steps=2",
            "sft.batch_size=4", "sft.eval_episodes=0", "sft.dagger_rounds=2", "sft.dagger_episodes=3",
            "sft.dagger_steps=2", "env.max_turns=3", "rollout.max_new_tokens=8"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((run_dir / "sft.json").read_text())
    rounds = report["dagger"]
    assert len(rounds) == 2
    assert all(r["labelled_steps"] >= 3 for r in rounds)  # >= 1 step per episode, up to 3 turns
    assert rounds[1]["demo_steps"] == report["demo_steps"] + rounds[0]["labelled_steps"] + rounds[1]["labelled_steps"]


def test_demos_with_task_reminder_end_each_prompt_with_the_task(policy):
    seeds = split_seeds("train", 1)
    plain = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1))
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1, task_reminder=True))
    assert len(demos) == len(plain) >= 4
    for demo, base in zip(demos, plain, strict=True):
        text, base_text = policy.tokenizer.decode(demo.prompt_ids), policy.tokenizer.decode(base.prompt_ids)
        task = base_text.split("Your task is to: ")[1].split("\n")[0]
        assert text.split("</action>")[-1].startswith("\nYour task is to: " + task)  # after the format line
        assert len(demo.prompt_ids) > len(base.prompt_ids) and demo.response_ids == base.response_ids


def test_demos_with_action_memory_list_the_earlier_expert_actions(policy):
    seeds = split_seeds("train", 1)
    plain = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1))
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1, action_memory=3))
    _, steps = _expert_episode(seeds[0], 20)
    actions = [a for _, _, a in steps]
    assert len(demos) == len(plain) == len(actions) >= 4
    for i, demo in enumerate(demos):
        text = policy.tokenizer.decode(demo.prompt_ids)
        earlier = actions[max(0, i - 4) : max(0, i - 1)]
        assert (f"Your actions before the last 1: {'; '.join(earlier)}. " in text) == bool(earlier)
        assert (demo.prompt_ids == plain[i].prompt_ids) == (not earlier)
        assert demo.response_ids == plain[i].response_ids


def test_demos_with_done_marks_mark_the_expert_actions_already_taken(policy):
    seeds = split_seeds("train", 2)
    spec = PromptSpec(history=1, admissible_style="grouped", format_hint=False, mark_done=True)
    plain = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1))
    demos = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=spec)
    assert [d.response_ids for d in demos] == [d.response_ids for d in plain]
    marked = 0
    for seed in seeds:
        steps = _expert_episode(seed, 20)[1]
        mine = [d for d in demos if d.seed == seed]
        assert len(mine) == len(steps)
        for i, (demo, (_, info, _)) in enumerate(zip(mine, steps, strict=True)):
            done = {a for _, _, a in steps[:i]} & set(info["admissible_actions"])
            text = policy.tokenizer.decode(demo.prompt_ids)
            assert render_admissible(info["admissible_actions"], "grouped", done=done) in text
            assert "First reason briefly" not in text
            marked += len(done)
    assert marked >= 2  # e.g. a receptacle searched, then passed again on the way to the task's target


def test_demos_with_take_first_thoughts_change_only_the_take_responses(policy):
    seeds = split_seeds("train", 2)
    plain = collect_demos(policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1))
    demos = collect_demos(
        policy, "household-v0", seeds, max_turns=20, prompt=PromptSpec(history=1), thoughts="take_first"
    )
    assert len(demos) == len(plain)
    takes = 0
    for demo, base in zip(demos, plain, strict=True):
        assert demo.prompt_ids == base.prompt_ids
        text, base_text = (policy.tokenizer.decode(d.response_ids) for d in (demo, base))
        if "<action>take " in base_text:
            takes += 1
            obj = base_text.split("<think>I found ")[1].split(";")[0]
            assert text.startswith(f"<think>{obj} is here; I will take it.</think>")
        else:
            assert text == base_text
    assert takes >= 2
