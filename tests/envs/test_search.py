"""search-v0: knowledge base and corpus, SQuAD scoring (hand-computed), BM25, expert, splits, fuzzing."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from empg.envs import make, split_seeds
from empg.envs._text import BM25Index, exact_match, f1_score, normalize_answer, parse_tool_action, tokenize
from empg.envs.search import HELDOUT_TEMPLATES, SEEN_TEMPLATES, SearchEnv, build_kb, question_for_seed

SPLITS = ("train", "eval_in", "eval_out")


@pytest.fixture(scope="module")
def kb():
    return build_kb(0)


def _run_expert(env, seed):
    obs, info = env.reset(seed=seed)
    transcript = [(obs, info)]
    while True:
        action = env.expert_action()
        obs, reward, terminated, truncated, info = env.step(action)
        transcript.append((action, obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return transcript


# ----------------------------------------------------------------------------- scoring helpers (hand-computed)
def test_normalize_and_exact_match_golden():
    assert normalize_answer("  The  Brevik-Harbour, Inc. ") == "brevikharbour inc"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("the KORVIA!", "Korvia") and not exact_match("Korvia city", "Korvia")


def test_f1_golden():
    # pred [cat, sat], gold [cat, sat, on, mat]: common 2, P = 2/2, R = 2/4, F1 = 2*1*0.5/1.5 = 2/3
    assert f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    # pred [a1, b, b], gold [b, c]: common min(2,1) = 1, P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    assert f1_score("a1 b b", "b c") == pytest.approx(0.4)
    assert f1_score("x", "y") == 0.0 and f1_score("", "") == 1.0 and f1_score("the", "x") == 0.0


def test_parse_tool_action():
    assert parse_tool_action("search[ a  b ]", ("search",)) == ("search", "a b")
    assert parse_tool_action("ANSWER[Korvia]", ("search", "answer")) == ("answer", "Korvia")
    for bad in ("search a", "search[a", "find[a]", "x" * 3000, "[a]"):
        assert parse_tool_action(bad, ("search", "answer")) is None


def test_bm25_index_golden_ranking():
    index = BM25Index(["red apple pie", "green apple", "blue sky over the sea"])
    assert index.search("apple", 3) == [1, 0]  # shorter doc wins on equal term frequency
    assert index.search("sky", 3) == [2] and index.search("the of", 3) == [] and index.search("zzz", 3) == []
    assert tokenize("The Sea!") == ["sea"]
    with pytest.raises(ValueError, match="at least one"):
        BM25Index([])


# ----------------------------------------------------------------------------- knowledge base and corpus
def test_kb_shape_and_distractors(kb):
    assert len(kb.docs) >= 2000 and len({d.title for d in kb.docs}) == len(kb.docs)
    people = kb.names["person"]
    firsts, lasts = Counter(p.split()[0] for p in people), Counter(p.split()[1] for p in people)
    assert firsts.most_common(1)[0][1] >= 10 and lasts.most_common(1)[0][1] >= 5  # shared names
    assert any(o.split()[0] in set(kb.names["city"]) for o in kb.names["org"])  # companies named after cities
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", p) for p in people)
    assert build_kb(0) is kb and build_kb.__wrapped__(0).docs == kb.docs


def test_bm25_exact_title_returns_the_document_first(kb):
    for i in random.Random(0).sample(range(len(kb.docs)), 200):
        assert kb.search(kb.docs[i].title, 3)[0] == i


def test_questions_follow_the_facts(kb):
    for seed in range(100):
        q = question_for_seed(kb, seed)
        value = q.hops[0][1]
        assert value in q.text
        for relation, entity in q.hops:
            assert entity == value
            value = kb.facts[(relation, entity)]
            assert value in kb.docs[kb.doc_of[(relation, entity)]].text
        assert value == q.answer


def test_naive_single_search_misleads(kb):
    """Searching the whole question rarely shows the answer's document (that needs the multi-hop chain)."""
    hits = 0
    seeds = split_seeds("train", 200)
    for seed in seeds:
        q = question_for_seed(kb, seed)
        last = kb.doc_of[q.hops[-1]]
        hits += last in kb.search(q.text, 3)
    print(f"search-v0 naive one-search recall of the final-hop doc: {hits}/{len(seeds)}")
    assert hits / len(seeds) < 0.2


# ----------------------------------------------------------------------------- splits
def test_templates_per_split(kb):
    seen = {s: Counter(question_for_seed(kb, x).template for x in split_seeds(s, 300)) for s in SPLITS}
    assert set(seen["train"]) == set(seen["eval_in"]) == set(SEEN_TEMPLATES)
    assert set(seen["eval_out"]) == set(HELDOUT_TEMPLATES) and not set(SEEN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    hops = {s: {len(t[1]) for t in (SEEN_TEMPLATES if s != "eval_out" else HELDOUT_TEMPLATES).values()} for s in SPLITS}
    assert hops["train"] == {2, 3} and hops["eval_out"] == {2, 3, 4}


@pytest.mark.parametrize("split", SPLITS)
def test_expert_succeeds_on_200_seeds(split):
    env = make("search-v0", split)
    types = Counter()
    for seed in split_seeds(split, 200):
        transcript = _run_expert(env, seed)
        _, obs, reward, terminated, truncated, info = transcript[-1]
        assert terminated and not truncated and info["won"] and reward == 1.0 and info["f1"] == 1.0, seed
        n_hops = int(info["task_type"][0])
        # at most one search per hop, then answer (fewer when a search already showed a later hop's document)
        assert 2 <= len(transcript) - 1 <= n_hops + 1
        types[info["task_type"]] += 1
    print(f"search-v0 {split} task types: {dict(sorted(types.items()))}")
    assert ("4hop" in types) == (split == "eval_out")


def test_seeds_reproduce_episodes_exactly():
    a, b = SearchEnv("eval_out"), SearchEnv("eval_out")
    for seed in split_seeds("eval_out", 5):
        assert _run_expert(a, seed) == _run_expert(b, seed)


def test_random_policy_rarely_succeeds(kb):
    env = make("search-v0", "train")
    rng = random.Random(0)
    pool = [n for kind in ("person", "city", "country", "org") for n in kb.names[kind]]
    wins, n = 0, 200
    for seed in split_seeds("train", n):
        _, info = env.reset(seed=seed)
        words = info["task"].rstrip("?").split()
        while True:
            if rng.random() < 0.7:
                action = f"search[{' '.join(rng.sample(words, 3))}]"
            else:
                action = f"answer[{rng.choice(pool + [str(y) for y in range(1890, 1996)])}]"
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                wins += info["won"]
                break
    print(f"search-v0 random policy success: {wins}/{n} = {wins / n:.3f}")
    assert wins / n < 0.05


# ----------------------------------------------------------------------------- actions
def test_search_observation_and_answers():
    env = SearchEnv("train", top_k=2)
    obs, info = env.reset(seed=0)
    q = env.question
    assert obs.startswith(f"Question: {q.text}") and info["admissible_actions"] is None
    obs, reward, terminated, _, info = env.step(env.expert_action())
    assert len(re.findall(r"<doc \d> .+?: .+? </doc>", obs)) == 2 and reward == 0.0 and not terminated
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(f"answer[  THE {q.answer.upper()}. ]")
    assert terminated and reward == 1.0 and info["won"] and info["answer"] == q.answer
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(f"answer[{q.answer} extra]")
    # pred tokens = gold tokens + 1 extra: P = g/(g+1), R = 1, F1 = 2g/(2g+1)
    g = len(normalize_answer(q.answer).split())
    assert terminated and reward == 0.0 and not info["won"] and info["f1"] == pytest.approx(2 * g / (2 * g + 1))
    with pytest.raises(ValueError, match="top_k"):
        SearchEnv("train", top_k=0)


def test_invalid_actions_change_nothing():
    env = SearchEnv("train")
    env.reset(seed=1)
    env.step(env.expert_action())
    for bad in ("search[]", "answer[ ]", "find[x]", "search x", "answer[x", "", "🤖" * 50):
        seen, expert = set(env._seen), env.expert_action()
        obs, reward, terminated, _, info = env.step(bad)
        assert not info["valid"] and reward == 0.0 and not terminated and obs.startswith("Nothing happens.")
        assert env._seen == seen and env.expert_action() == expert


def test_fuzzed_queries_never_crash():
    env = SearchEnv("train")

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=200), st.sampled_from(["search[", "", "answer["]), st.sampled_from(["]", ""]))
    def run(text, prefix, suffix):
        env.reset(seed=1)
        obs, reward, terminated, _, info = env.step(prefix + text + suffix)
        assert isinstance(obs, str) and obs and reward in (0.0, 1.0)
        if not info["valid"]:
            assert not terminated and env._seen == set()

    run()
