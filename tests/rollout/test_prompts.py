import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.rollout.prompts import (
    DONE_MARK,
    FORMAT,
    PromptSpec,
    action_char_span,
    build_messages,
    expert_response,
    parse_action,
    render_admissible,
    split_past,
    thought_templates,
)

FMT = (
    "First reason briefly inside <think> </think>. Then give exactly one action inside <action> </action>, "
    "e.g. <think>...</think><action>...</action>"
)


def test_household_prompt_golden():
    msgs = build_messages(
        "household",
        "put a clean apple in fridge.",
        "You arrive at countertop 1. On the countertop 1, you see a apple 1.",
        [("You are in the middle of a room.", "go to countertop 1")],
        1,
        ["go to fridge 1", "take apple 1 from countertop 1"],
    )
    assert msgs == [
        {
            "role": "user",
            "content": "You are an expert agent in a household environment.\n"
            "Your task is to: put a clean apple in fridge.\n"
            "You have taken 1 step(s). Your last 1 observation(s) and action(s):\n"
            "[Observation 1: You are in the middle of a room.]\n[Action 1: go to countertop 1]\n"
            "Current observation (step 2): You arrive at countertop 1. On the countertop 1, you see a apple 1.\n"
            "Admissible actions: 'go to fridge 1', 'take apple 1 from countertop 1'\n" + FMT,
        }
    ]


def test_shop_prompt_golden_first_step():
    (msg,) = build_messages("shop", "i need red shoes, price < 40", "WebShop [SEP] Search", [], 0, ["search[<query>]"])
    assert msg["content"] == (
        "You are an expert shopping agent in an online store.\n"
        "Your task is to: i need red shoes, price < 40\n"
        "You have taken 0 step(s).\n"
        "Current observation (step 1): WebShop [SEP] Search\n"
        "Admissible actions: 'search[<query>]'\n" + FMT
    )


def test_search_prompt_golden_no_admissible_two_history():
    hist = [("Question: who?", "search[a b]"), ("Passage 1: ...", "search[c]")]
    (msg,) = build_messages("search", "Who founded X?", "Passage 2: ...", hist, 5, None)
    assert msg["content"] == (
        "You are an expert research agent answering a question with a search engine.\n"
        "Your task is to: Who founded X?\n"
        "Actions: search[query] returns passages; answer[text] ends the episode with your answer.\n"
        "You have taken 5 step(s). Your last 2 observation(s) and action(s):\n"
        "[Observation 4: Question: who?]\n[Action 4: search[a b]]\n"
        "[Observation 5: Passage 1: ...]\n[Action 5: search[c]]\n"
        "Current observation (step 6): Passage 2: ...\n" + FMT
    )


def test_long_admissible_lists_are_capped():
    acts = [f"go to drawer {i}" for i in range(1, 61)]
    (msg,) = build_messages("household", "t", "o", [], 0, acts, max_admissible=50)
    assert "'go to drawer 50' ... and 10 more" in msg["content"] and "drawer 51" not in msg["content"]


def test_parse_action_cases():
    assert parse_action("<think>hm</think>\n<action> go  to\nfridge 1 </action>") == "go to fridge 1"
    assert parse_action("<action>look</action><action>inventory</action>") == "look"  # the first one
    assert parse_action("<action>look</action") is None
    assert parse_action("<think>no action</think>") is None
    assert parse_action("<action>   </action>") is None
    assert parse_action("<action>" + "x" * 301 + "</action>") is None
    assert parse_action(None) is None
    assert parse_action("<action>search[a <b> c]</action>") == "search[a <b> c]"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/actionthk[] \nxé")), max_size=80))
def test_parse_action_fuzz_never_raises(text):
    out = parse_action(text)
    assert out is None or (out and out == " ".join(out.split()) and "</action>" not in out)
    span = action_char_span(text)
    assert (span is None) == ("<action>" not in text or "</action>" not in text[text.index("<action>") + 8 :])


def test_expert_response_templates():
    assert expert_response("household", "go to countertop 1") == (
        "<think>I should check countertop 1 next.</think>\n<action>go to countertop 1</action>"
    )
    assert expert_response("household", "heat egg 1 with microwave 1") == (
        "<think>egg 1 must be hot; I will heat it with microwave 1.</think>\n"
        "<action>heat egg 1 with microwave 1</action>"
    )
    assert parse_action(expert_response("shop", "click[buy now]")) == "click[buy now]"
    assert "buy it" in expert_response("shop", "click[buy now]")
    assert expert_response("search", "answer[Paris]").startswith("<think>I have found the answer.</think>")
    assert expert_response("other", "jump") == "<think>I will take the next step.</think>\n<action>jump</action>"
    assert parse_action(expert_response("household", "put apple 1 in/on fridge 1")) == "put apple 1 in/on fridge 1"


def test_action_memory_line_golden_and_absent_when_empty():
    past = [("o1", "go to fridge 1"), ("o2", "open fridge 1"), ("o3", "go to drawer 1"), ("o4", "open drawer 1")]
    recent, memory = split_past(past, history=1, action_memory=2)
    assert recent == [("o4", "open drawer 1")] and memory == ["open fridge 1", "go to drawer 1"]
    (msg,) = build_messages("household", "put a mug in sink.", "o5", recent, 4, None, memory=memory)
    assert msg["content"] == (
        "You are an expert agent in a household environment.\n"
        "Your task is to: put a mug in sink.\n"
        "You have taken 4 step(s). Your actions before the last 1: open fridge 1; go to drawer 1. "
        "Your last 1 observation(s) and action(s):\n"
        "[Observation 4: o4]\n[Action 4: open drawer 1]\n"
        "Current observation (step 5): o5\n" + FMT
    )
    (no_history,) = build_messages("household", "t", "o5", [], 4, None, memory=split_past(past, 0, 9)[1])
    assert (
        "Your actions so far: go to fridge 1; open fridge 1; go to drawer 1; open drawer 1.\n" in no_history["content"]
    )
    # off (0), or nothing before the window yet: exactly the prompt without the option
    for mem in (split_past(past, 1, 0)[1], split_past(past[:1], 1, 5)[1]):
        assert mem == []
        assert build_messages("household", "t", "o", past[-1:], 4, None, memory=mem) == build_messages(
            "household", "t", "o", past[-1:], 4, None
        )
    assert split_past(past, 6, 3) == (past, [])


def test_task_reminder_repeats_the_task_as_the_last_line_golden():
    adm = ["go to sink 1", "take mug 1 from sink 1"]
    past = [("o1", "go to sink 1")]
    (msg,) = build_messages("household", " put a mug in sink. ", "o2", past, 1, adm, task_reminder=True)
    assert msg["content"] == (
        "You are an expert agent in a household environment.\n"
        "Your task is to: put a mug in sink.\n"
        "You have taken 1 step(s). Your last 1 observation(s) and action(s):\n"
        "[Observation 1: o1]\n[Action 1: go to sink 1]\n"
        "Current observation (step 2): o2\n"
        "Admissible actions: 'go to sink 1', 'take mug 1 from sink 1'\n" + FMT + "\n"
        "Your task is to: put a mug in sink."
    )
    # off: exactly the prompt without the option (the line is appended, nothing else moves)
    (off,) = build_messages("household", " put a mug in sink. ", "o2", past, 1, adm)
    assert msg["content"] == off["content"] + "\nYour task is to: put a mug in sink."


def test_take_first_thoughts_name_the_object_first_golden():
    take = "take pot 1 from stoveburner 2"
    assert expert_response("household", take, "take_first") == (
        "<think>pot 1 is here; I will take it.</think>\n<action>take pot 1 from stoveburner 2</action>"
    )
    assert expert_response("household", take) == (
        "<think>I found pot 1; I will take it.</think>\n<action>take pot 1 from stoveburner 2</action>"
    )
    # every other template, and families without a take action, are the verb style's
    others = [("household", "go to countertop 1"), ("household", "put pot 1 in/on cabinet 2"),
              ("shop", "click[buy now]"), ("search", "search[paris]"), ("other", "take it")]  # fmt: skip
    for family, action in others:
        assert expert_response(family, action, "take_first") == expert_response(family, action)
    verb, first = thought_templates("household"), thought_templates("household", "take_first")
    assert len(verb) == len(first) and sum(a != b for a, b in zip(verb, first, strict=True)) == 1
    with pytest.raises(ValueError, match="take_first"):
        thought_templates("household", "object_first")


# ----------------------------------------------------------------------------- PromptSpec and the admissible line
ROOM = ["go to fridge 1", "go to countertop 2", "take apple 1 from countertop 1", "examine countertop 1", "look"]


def test_grouped_admissible_golden():
    assert render_admissible(ROOM, "grouped") == (
        "Admissible actions: go to: fridge 1, countertop 2; take apple 1 from countertop 1; examine countertop 1; look"
    )
    assert render_admissible(["put pen 1 in/on desk 1", "put pen 1 in/on bed 1"], "grouped") == (
        "Admissible actions: put pen 1 in/on: desk 1, bed 1"  # the longest common leading words, not only the verb
    )
    assert render_admissible(["go to a 1", "go to a 1 b"], "grouped") == "Admissible actions: go to a: 1, 1 b"
    assert render_admissible(["look", "look at 1"], "grouped") == "Admissible actions: look; look at 1"
    assert (
        render_admissible(ROOM[:3], "grouped", max_shown=2)
        == "Admissible actions: go to: fridge 1, countertop 2 ... and 1 more"
    )


def test_done_marks_golden_in_both_styles():
    done = {"go to countertop 2", "look", "go to bed 1"}  # bed 1 is not admissible here: no mark anywhere
    assert render_admissible(ROOM, "grouped", done=done) == (
        "Admissible actions: go to: fridge 1, countertop 2 (done); take apple 1 from countertop 1; "
        "examine countertop 1; look (done)"
    )
    assert render_admissible(ROOM[:2], done=done) == "Admissible actions: 'go to fridge 1', 'go to countertop 2 (done)'"
    with pytest.raises(ValueError, match="list | grouped"):
        render_admissible(ROOM, "table")


def _ungroup(line: str) -> list[str]:
    """Invert the grouped style: the actions it lists (each group's head joined to each of its items)."""
    body = line.removeprefix("Admissible actions: ")
    actions = []
    for part in body.split("; "):
        head, sep, rest = part.partition(": ")
        actions.extend([f"{head} {item}" for item in rest.split(", ")] if sep else [part])
    return actions


WORD = st.sampled_from(["go", "to", "take", "put", "desk", "bed", "1", "2", "in/on", "from"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(WORD, min_size=1, max_size=5).map(" ".join), min_size=1, max_size=12, unique=True))
def test_grouped_lists_exactly_the_admissible_actions(actions):
    """Grouping loses no action and invents none (as a multiset), and keeps each action's group order."""
    assert sorted(_ungroup(render_admissible(actions, "grouped"))) == sorted(actions)


def test_default_spec_renders_the_prompts_the_shipped_warm_starts_read():
    past = [("o1", "go to fridge 1"), ("o2", "open fridge 1"), ("o3", "go to countertop 2")]
    for spec in (PromptSpec(), PromptSpec(history=1, action_memory=2, task_reminder=True)):
        recent, memory = split_past(past, spec.history, spec.action_memory)
        old = build_messages("household", "t.", "o4", recent, 3, ROOM, memory=memory, task_reminder=spec.task_reminder)
        assert spec.messages("household", "t.", "o4", past, 3, ROOM) == old
        assert "(done)" not in old[0]["content"] and FORMAT in old[0]["content"]


def test_spec_without_format_hint_and_with_done_marks():
    past = [("o1", "go to countertop 2"), ("o2", "look")]
    spec = PromptSpec(history=1, admissible_style="grouped", format_hint=False, mark_done=True)
    (msg,) = spec.messages("household", "t.", "o3", past, 2, ROOM)
    lines = msg["content"].split("\n")
    assert FORMAT not in lines and lines[-1] == render_admissible(ROOM, "grouped", done={"go to countertop 2", "look"})
    assert msg["content"].count(DONE_MARK) == 2  # the window shows only "look", the marks cover the whole episode
    (hidden,) = PromptSpec(show_admissible=False, mark_done=True).messages("household", "t.", "o3", past, 2, ROOM)
    assert "Admissible" not in hidden["content"] and DONE_MARK not in hidden["content"]


def test_spec_from_config_reads_every_prompt_field():
    from empg.train.config import load_config

    cfg = load_config(
        None,
        [
            "rollout.history=1",
            "rollout.admissible_style=grouped",
            "rollout.format_hint=false",
            "rollout.mark_done=true",
        ],
    )
    assert PromptSpec.from_config(cfg.rollout) == PromptSpec(
        history=1, admissible_style="grouped", format_hint=False, mark_done=True
    )
