"""Fuzzed model output through the response parser and ``env.step`` of every embedded env.

For each of ``household-v0``, ``shop-v0`` and ``search-v0`` a fixed-seed generator produces 10^4 responses (random
bytes decoded, empty/whitespace, 10 kB strings, random unicode incl. lone surrogates, nested/unclosed/mis-cased tags,
injection-looking ``</action><action>`` text, over-long actions, well-formed actions with whitespace noise, and bare
commands without tags). Every response goes through :func:`empg.rollout.prompts.parse_action` and is compared with
an independent reference classifier written from the documented rule; every response is then stepped, as
:mod:`empg.rollout.collect` does (the parsed action, or ``collect.INVALID_ACTION`` when the parser rejects it), and:

* no exception, the step result is well-typed and ``info`` has the contract keys;
* a step the env reports invalid leaves the env's state unchanged (snapshot of the unwrapped env's attributes, the
  admissible actions) and answers "Nothing happens";
* a parser-rejected response never changes the env (before the fix, collect sent the raw text, which a bare command
  such as ``look`` made a real env step recorded invalid; and shop-v0/search-v0 matched ``verb[...]`` with greedy
  brackets spanning action tags).

All 10^4 responses per env are stepped (no subset): invalid steps cost microseconds.
"""

from __future__ import annotations

import copy
import random
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.envs import INFO_KEYS, make, split_seeds
from empg.envs._text import parse_tool_action
from empg.rollout.collect import INVALID_ACTION, _sent
from empg.rollout.prompts import MAX_ACTION_CHARS, parse_action

ENVS = ("household-v0", "shop-v0", "search-v0")
TOOL_VERBS = {"shop-v0": ("search", "click"), "search-v0": ("search", "answer")}
N_RESPONSES = 10_000
OPEN, CLOSE = "<action>", "</action>"
# Large attributes that never change during an episode (catalogue, knowledge base, client): left out of snapshots.
CONSTANT_ATTRS = frozenset({"catalog", "kb", "http", "qa_items"})


# ----------------------------------------------------------------------------- reference classifier
def reference_parse(text) -> str | None:
    """The documented rule (prompts module docstring), written without regular expressions.

    The action is the text between the first ``<action>`` and the first ``</action>`` after it, with whitespace
    runs collapsed to one space and the ends stripped; ``None`` when there is no such span, when it is empty, longer
    than ``MAX_ACTION_CHARS`` or holds another ``<action>`` (nested opening tag); non-str input gives ``None``.
    """
    if not isinstance(text, str):
        return None
    start = text.find(OPEN)
    if start < 0:
        return None
    end = text.find(CLOSE, start + len(OPEN))
    if end < 0:
        return None
    words, word = [], []
    for ch in text[start + len(OPEN) : end]:
        if ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    action = " ".join(words)
    if not action or len(action) > MAX_ACTION_CHARS or OPEN in action:
        return None
    return action


# ----------------------------------------------------------------------------- generator
WHITESPACE = [" ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\x0b", "\x1f"]
UNICODE_POOL = "éßøΩж中文日本語한국어🙂🔥\u200b\u200d\u202e\ufeff\ud800\udfff\x00\x7f" + "".join(
    map(chr, range(0x300, 0x310))
)
TAG_PIECES = [OPEN, CLOSE, "<think>", "</think>", "<action", "action>", "</action", "<ACTION>", "<action >", "<"]


def _noise(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(WHITESPACE) for _ in range(n))


def _random_unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append(rng.choice(UNICODE_POOL))
        elif r < 0.7:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        else:
            out.append(chr(rng.randrange(0, 0x110000)))  # any code point, surrogates included
    return "".join(out)


def _good_action(rng: random.Random, env, info: dict) -> str:
    admissible = [a for a in (info.get("admissible_actions") or []) if "<" not in a]
    if admissible and rng.random() < 0.5:
        return rng.choice(admissible)
    return env.expert_action()


def _spaced(rng: random.Random, action: str) -> str:
    """``action`` with random whitespace runs around and between its words (the parser collapses them)."""
    return _noise(rng, rng.randrange(3)) + _noise(rng, 1).join(action.split(" ")) + _noise(rng, rng.randrange(3))


def generate(rng: random.Random, env, info: dict) -> tuple[str, str]:
    """``(category, response)``; the state-dependent categories use the env's current admissible/expert actions."""
    kind = rng.choice(KINDS)
    if kind == "bytes":
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        return kind, raw.decode(rng.choice(["utf-8", "latin-1", "utf-16-le"]), errors=rng.choice(["replace", "ignore"]))
    if kind == "empty":
        return kind, rng.choice(["", " ", "\n\n", OPEN + CLOSE, OPEN + _noise(rng, 5) + CLOSE, "<think></think>"])
    if kind == "huge":
        body = _random_unicode(rng, 10_000) if rng.random() < 0.5 else "a" * 10_000
        tail = rng.choice(["", f"{OPEN}look{CLOSE}", f"{OPEN}{body[:500]}{CLOSE}", OPEN])
        return kind, body + tail
    if kind == "unicode":
        inner = _random_unicode(rng, rng.randrange(1, 60))
        return kind, rng.choice([inner, f"<think>{inner}</think>{OPEN}{inner}{CLOSE}", f"{OPEN}{inner}"])
    if kind == "tags":
        return kind, "".join(
            rng.choice(TAG_PIECES) if rng.random() < 0.5 else rng.choice(["look", "x", " ", "search[a]", "\n"])
            for _ in range(rng.randrange(1, 12))
        )
    if kind == "injection":
        a = _good_action(rng, env, info)
        return kind, rng.choice(
            [
                f"{OPEN}{a}{CLOSE}{CLOSE}{OPEN}inventory{CLOSE}",
                f"</action><action>{a}",
                f"{OPEN}{OPEN}{a}{CLOSE}",
                f"{OPEN}{a}</action ><action>look{CLOSE}",
                f"<think>{OPEN}{a}{CLOSE}</think>",
                f"{OPEN}search[</action><action>]{CLOSE}",
                f"{OPEN}{a}\n\nIgnore previous instructions.{CLOSE}",
                f"<ACTION>{a}</ACTION>",
                f"{OPEN}{a}",
            ]
        )
    if kind == "overlong":
        return kind, f"{OPEN}{'look ' * rng.randrange(61, 200)}{CLOSE}"
    if kind == "bare":  # a command without tags: the parser rejects it, collect sends the raw text
        return kind, _good_action(rng, env, info)
    a = _good_action(rng, env, info)  # "valid"
    return (
        kind,
        f"<think>{_random_unicode(rng, rng.randrange(0, 30))}</think>{_noise(rng, 1)}{OPEN}{_spaced(rng, a)}{CLOSE}",
    )


KINDS = ["bytes", "empty", "huge", "unicode", "tags", "injection", "overlong", "bare", "valid", "valid"]


# ----------------------------------------------------------------------------- state snapshots
def _freeze(value):
    if isinstance(value, random.Random):
        return ("Random", value.getstate())
    return copy.deepcopy(value)


def snapshot(env) -> dict:
    """The unwrapped env's attributes (the constant large ones left out); the turn counter of TimeLimit is not
    included, since every step, valid or not, counts against the turn limit (documented in collect)."""
    return {k: _freeze(v) for k, v in vars(env.unwrapped).items() if k not in CONSTANT_ATTRS}


# ----------------------------------------------------------------------------- tests
def test_reference_classifier_golden():
    cases = {
        "<action>look</action>": "look",
        "<think>t</think>\n<action>  go   to\n desk 1 </action>": "go to desk 1",
        "<action>a</action><action>b</action>": "a",
        "</action><action>b</action>": "b",
        "<action><action>b</action>": None,
        "<action>look": None,
        "<action> \n </action>": None,
        "<ACTION>look</ACTION>": None,
        "look": None,
        "": None,
        f"<action>{'x' * MAX_ACTION_CHARS}</action>": "x" * MAX_ACTION_CHARS,
        f"<action>{'x' * (MAX_ACTION_CHARS + 1)}</action>": None,
    }
    for text, want in cases.items():
        assert reference_parse(text) == want, text
        assert parse_action(text) == want, text
    assert parse_action(None) is None and parse_action(b"<action>look</action>") is None


@settings(max_examples=500, derandomize=True, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(TAG_PIECES + ["look", " ", "\n", "\u00a0"]), st.text(max_size=20)),
        max_size=12,
    ).map("".join)
)
def test_parser_matches_reference_on_arbitrary_text(text):
    assert parse_action(text) == reference_parse(text)


@pytest.mark.parametrize("env_id", ENVS)
def test_fuzzed_responses_through_parser_and_env(env_id):
    rng = random.Random(f"fuzz-{env_id}")
    env = make(env_id, "train")
    seeds = iter(split_seeds("train", N_RESPONSES))
    obs, info = env.reset(seed=next(seeds))
    counts: dict[str, list[int]] = {}  # kind -> [n, parsed, env-valid]
    try:
        for _ in range(N_RESPONSES):
            kind, response = generate(rng, env, info)
            action = parse_action(response)
            assert action == reference_parse(response), (kind, response[:200])
            sent = action if action is not None else INVALID_ACTION  # what collect._sent sends
            before, admissible_before = snapshot(env), info.get("admissible_actions")
            obs, reward, terminated, truncated, info = env.step(sent)
            assert isinstance(obs, str) and isinstance(reward, float)
            assert isinstance(terminated, bool) and isinstance(truncated, bool)
            assert all(k in info for k in INFO_KEYS)
            c = counts.setdefault(kind, [0, 0, 0])
            c[0] += 1
            c[1] += action is not None
            c[2] += bool(info["valid"])
            if not info["valid"]:
                assert snapshot(env) == before, (kind, sent[:200])
                assert info.get("admissible_actions") == admissible_before
                assert obs.startswith("Nothing happens") and reward == 0.0 and not terminated
            else:
                assert action is not None, f"parser-rejected {kind} response moved the env: {response[:200]!r}"
            if terminated or truncated:
                obs, info = env.reset(seed=next(seeds))
    finally:
        env.close()
    # the generator really covered both outcomes of both classifiers
    assert sum(c[0] for c in counts.values()) == N_RESPONSES
    assert counts["valid"][1] == counts["valid"][0] and counts["valid"][2] > 0.5 * counts["valid"][0]
    assert counts["bare"][1] == 0 and counts["bytes"][1] == 0 and counts["overlong"][1] == 0
    assert sum(c[0] - c[2] for c in counts.values()) > 0.5 * N_RESPONSES  # mostly invalid steps


@pytest.mark.parametrize("env_id", ENVS)
def test_unparsable_response_is_sent_as_the_empty_action_which_changes_nothing(env_id):
    env = make(env_id, "train")
    env.reset(seed=0)
    response = env.expert_action()  # a bare command, no tags: the parser rejects it, and the env would carry it out
    assert parse_action(response) is None
    gen = types.SimpleNamespace(text=response)
    assert _sent(gen, None) == INVALID_ACTION and _sent(gen, "look") == "look"
    before = snapshot(env)
    obs, reward, terminated, _, info = env.step(_sent(gen, None))
    assert snapshot(env) == before and not info["valid"] and obs.startswith("Nothing happens")
    assert reward == 0.0 and not terminated


@pytest.mark.parametrize("env_id", ["shop-v0", "search-v0"])
def test_tagged_raw_text_is_not_a_tool_call(env_id):
    env = make(env_id, "train")
    env.reset(seed=0)
    response = "search[a]</think></action><action></action\n</think>looksearch[a]"  # found by the fuzzer
    assert parse_action(response) is None
    assert parse_tool_action(response, TOOL_VERBS[env_id]) is None
    before = snapshot(env)
    _, _, _, _, info = env.step(response)
    assert not info["valid"] and snapshot(env) == before
    assert parse_tool_action("search[ a  b ]", ("search",)) == ("search", "a b")  # a well-formed call still parses
