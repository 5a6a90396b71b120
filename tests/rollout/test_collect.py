import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.envs import TextEnv, TimeLimit, list_envs, spec
from empg.policy import SamplingParams
from empg.policy.hf import Generation
from empg.rollout import action_token_mask, collect, collect_with_envs
from empg.rollout.prompts import PromptSpec
from empg.train.batch import StepBatch
from empg.train.forward import response_logprobs


class CountEnv(TextEnv):
    """Say 'win' after at least ``need`` steps to succeed; anything but 'wait'/'win' is invalid."""

    env_id, family, max_turns = "count-v0", "generic", 6

    def __init__(self, split="train", *, need=2, fail_at=None):
        super().__init__(split, strict_split=False)
        self.need, self.fail_at = need, fail_at

    def _reset(self, seed, options):
        self.t = 0
        return f"start {seed}", {
            "task": "count then win",
            "task_type": f"type{seed % 2}",
            "admissible_actions": ["wait", "win"],
        }

    def _step(self, action):
        self.t += 1
        if self.fail_at == self.t:
            raise RuntimeError("worker died")
        won = action == "win" and self.t > self.need
        valid = action in ("wait", "win")
        return f"t={self.t}", float(won), won, {"valid": valid, "won": won, "admissible_actions": ["wait", "win"]}

    def expert_action(self):
        return "win" if self.t >= self.need else "wait"


class ScriptedPolicy:
    """Returns fixed/fuzzed texts; token ids are bytes (+3) so any text works."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.calls = tokenizer, list(texts), 0

    def chat_prompt_ids(self, messages):
        return self.tokenizer.encode(messages[0]["content"][-50:], add_special_tokens=False)

    def generate(self, prompt_ids, **kw):
        out = []
        for _ in prompt_ids:
            text = self.texts[self.calls % len(self.texts)]
            self.calls += 1
            ids = self.tokenizer.encode(text, add_special_tokens=False) or [self.tokenizer.eos_token_id]
            out.append(
                Generation(
                    ids,
                    self.tokenizer.decode(ids, skip_special_tokens=True),
                    [-1.0] * len(ids),
                    [0.5] * len(ids),
                    "stop",
                )
            )
        return out


def _check_ids(result, n_groups, group_size, max_turns):
    trajs = result.trajectories
    assert sorted(t.traj_id for t in trajs) == list(range(n_groups * group_size))
    for t in trajs:
        assert t.group_id == t.traj_id // group_size
        steps = [s for s in result.steps if s.traj_id == t.traj_id]
        assert [s.step_idx for s in steps] == list(range(len(steps))) == list(range(t.length))
        assert [s.is_last for s in steps] == [False] * (len(steps) - 1) + [True]
        assert 1 <= t.length <= max_turns and all(s.group_id == t.group_id for s in steps)
        assert t.truncated == (not steps[-1].won and steps[-1].truncated)
        assert all(len(s.response_ids) >= 1 and len(s.action_token_mask) == len(s.response_ids) for s in steps)


def test_scripted_rollout_rewards_validity_and_ids(tiny):
    texts = ["<think>a</think><action>wait</action>", "garbage", "<action>win</action>", "<action>win</action>"]
    envs = [TimeLimit(CountEnv(), 5) for _ in range(4)]
    res = collect_with_envs(ScriptedPolicy(tiny.tokenizer, texts), envs, [0, 0, 1, 1], env_id="count-v0")
    _check_ids(res, 2, 2, 5)
    # turn 1: env0 wait, env1 garbage(invalid), env2 win (too early, t=1 ≤ 2), env3 win (too early)
    first = [s for s in res.steps if s.step_idx == 0]
    assert [s.parsed for s in first] == [True, False, True, True] and [s.valid for s in first] == [
        True,
        False,
        True,
        True,
    ]
    # lock-step: the 4 texts cycle over the live envs in order. Turns 1-3 (4 live): env0 wait, env1 garbage, env2/env3
    # win, which succeeds at t=3 > need=2. Turn 4 (calls 12, 13): env0 wait, env1 garbage. Turn 5 (calls 14, 15):
    # both get "win" at t=5 → success; env1 had 4 invalid steps; nobody reaches TimeLimit(5) unsuccessfully.
    got = [(t.length, t.success, t.outcome, t.n_invalid, t.truncated) for t in res.trajectories]
    assert got == [
        (5, True, 1.0, 0, False),
        (5, True, 1.0, 4, False),
        (3, True, 1.0, 0, False),
        (3, True, 1.0, 0, False),
    ]
    assert [t.task_type for t in res.trajectories] == ["type0", "type0", "type1", "type1"]
    # state keys: what the step acted on (observation + admissible actions); a group's first steps share theirs
    from empg.rollout.collect import state_key

    keys = [s.state_key for s in first]
    assert keys[0] == keys[1] == state_key("start 0", ["wait", "win"]) != keys[2] == keys[3] >= 0
    second = [s.state_key for s in res.steps if s.step_idx == 1]
    assert len(set(second)) == 1 and second[0] == state_key(" t=1 ", ["wait", "win"])  # whitespace-normalised
    assert state_key("t=1", ["wait"]) != state_key("t=1", ["wait", "win"])
    assert res.stats["env_steps"] == len(res.steps) == 16 and res.stats["turns"] == 5
    assert res.stats["tokens"] == sum(len(s.response_ids) for s in res.steps)


def test_turn_limit_and_env_failure(tiny):
    envs = [TimeLimit(CountEnv(), 3), CountEnv(fail_at=2), CountEnv(need=10)]
    res = collect_with_envs(ScriptedPolicy(tiny.tokenizer, ["<action>wait</action>"]), envs, [0, 1, 2], max_turns=4)
    t = {x.traj_id: x for x in res.trajectories}
    assert t[0].length == 3 and t[0].truncated and not t[0].failed  # TimeLimit(3)
    assert t[1].failed and t[1].length == 1  # step 2 raised: trajectory dropped, rollout continues
    assert t[2].length == 4 and t[2].truncated  # our own cap: max_turns=4
    assert [s.is_last for s in res.steps if s.traj_id == 1] == [True]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.text(max_size=40) | st.sampled_from(["<action>win</action>", "<action></action>", "<action>w"]),
        min_size=1,
        max_size=5,
    )
)
def test_fuzzed_model_outputs_never_crash(texts):
    envs = [TimeLimit(CountEnv(), 4) for _ in range(3)]
    res = collect_with_envs(ScriptedPolicy(_TOK, texts), envs, [0, 1, 2])
    _check_ids(res, 3, 1, 4)
    for s in res.steps:
        assert s.valid <= s.parsed and (s.action is None) == (not s.parsed)


def test_action_token_mask_covers_the_action_content(tiny):
    tok = tiny.tokenizer
    text = "<think>I should check countertop 1 next.</think>\n<action>go to countertop 1</action>"
    ids = tok.encode(text, add_special_tokens=False)
    mask = action_token_mask(tok, ids)
    inside = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert (
        "go to countertop 1" in inside and "think" not in inside and len(inside) <= len("><action>go to countertop 1</")
    )
    assert action_token_mask(tok, tok.encode("no action", add_special_tokens=False)) == [0] * len(
        tok.encode("no action")
    )


def _embedded_envs():
    out = []
    for env_id in ("household-v0", "shop-v0", "search-v0"):
        try:
            spec(env_id).load()
            out.append(env_id)
        except ImportError:
            pass
    return out


@pytest.mark.parametrize("env_id", _embedded_envs())
def test_tiny_model_rollout_on_every_env_terminates_and_logprobs_agree(tiny, env_id):
    def rollout():
        return collect(tiny, env_id, [0, 1], group_size=2, max_turns=3, generator=torch.Generator().manual_seed(0),
                       sampling=SamplingParams(temperature=0.8, max_new_tokens=16))  # fmt: skip

    res = rollout()
    _check_ids(res, 2, 2, 3)
    assert all(t.length == 3 and t.truncated for t in res.trajectories if not t.success)
    batch = StepBatch.from_records(res.steps, tiny.pad_id)
    with torch.no_grad():
        logp, ent = response_logprobs(tiny.model, batch, temperature=0.8, with_entropy=True)
    torch.testing.assert_close(logp, batch.old_logprobs, atol=1e-4, rtol=0)  # recorded vs recomputed
    torch.testing.assert_close(ent, batch.token_entropy, atol=1e-4, rtol=0)
    again = rollout()
    assert [s.response_ids for s in again.steps] == [s.response_ids for s in res.steps]


def test_registered_env_list_contains_embedded():
    assert {"household-v0", "shop-v0", "search-v0"} <= set(list_envs())
    assert "household-v0" in _embedded_envs()


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="group_size"):
        collect(tiny, "household-v0", [0], group_size=0)
    with pytest.raises(ValueError, match="one seed per env"):
        collect_with_envs(tiny, [CountEnv()], [0, 1])


_TOK = importlib.import_module("empg.policy.tokenizer").train_tokenizer(
    ["<action>win</action> wait"] * 3, vocab_size=300
)


class _Recording(ScriptedPolicy):
    """A scripted policy that keeps the text of every prompt it is given."""

    def __init__(self, tokenizer, texts):
        super().__init__(tokenizer, texts)
        self.seen: list[str] = []

    def chat_prompt_ids(self, messages):
        self.seen.append(messages[0]["content"])
        return super().chat_prompt_ids(messages)


def test_task_reminder_ends_every_prompt_of_the_rollout_with_the_task(tiny):
    texts = ["<action>wait</action>", "<action>wait</action>", "<action>win</action>"]
    runs = []
    for reminder in (False, True):
        policy = _Recording(tiny.tokenizer, texts)
        env = TimeLimit(CountEnv(need=3), 6)
        collect_with_envs(policy, [env], [0], env_id="count-v0", prompt=PromptSpec(history=1, task_reminder=reminder))
        runs.append(policy.seen)
    plain, reminded = runs
    assert len(plain) == len(reminded) >= 3
    task = plain[0].split("\n")[1]
    assert task.startswith("Your task is to: ")
    assert reminded == [p + "\n" + task for p in plain]


def test_done_marks_follow_the_actions_the_rollout_took(tiny):
    texts = ["<action>wait</action>", "<action>look</action>", "<action>win</action>", "<action>win</action>"]
    policy = _Recording(tiny.tokenizer, texts)
    spec = PromptSpec(history=0, mark_done=True, format_hint=False)
    collect_with_envs(policy, [TimeLimit(CountEnv(need=3), 6)], [0], env_id="count-v0", prompt=spec)
    # the invalid 'look' is not admissible, so it marks nothing; history 0: only the marks remember 'wait'
    assert [p.split("\n")[-1] for p in policy.seen] == [
        "Admissible actions: 'wait', 'win'",
        "Admissible actions: 'wait (done)', 'win'",
        "Admissible actions: 'wait (done)', 'win'",
        "Admissible actions: 'wait (done)', 'win (done)'",
    ]


def test_action_memory_lists_the_actions_before_the_history_window(tiny):
    texts = ["<action>wait</action>", "<action>wait</action>", "<action>look</action>", "<action>win</action>"]
    policy = _Recording(tiny.tokenizer, texts)
    spec = PromptSpec(history=1, action_memory=2)
    collect_with_envs(policy, [TimeLimit(CountEnv(need=3), 6)], [0], env_id="count-v0", prompt=spec)
    # turn k's prompt: the action of step k-1 in the window, at most 2 earlier ones on the memory line
    assert [p.split("\n")[2] for p in policy.seen] == [
        "You have taken 0 step(s).",
        "You have taken 1 step(s). Your last 1 observation(s) and action(s):",
        "You have taken 2 step(s). Your actions before the last 1: wait. Your last 1 observation(s) and action(s):",
        "You have taken 3 step(s). Your actions before the last 1: wait; wait. Your last 1 observation(s) and "
        "action(s):",
    ]
    assert "[Action 3: look]" in policy.seen[3]  # the invalid action is shown in the window as executed
