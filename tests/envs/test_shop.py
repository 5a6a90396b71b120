"""shop-v0: catalogue, WebShop scoring (hand-computed), pages and actions, expert, splits, fuzzing."""

from __future__ import annotations

import random
import re
from itertools import combinations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from empg.envs import make, split_seeds
from empg.envs.shop import (
    CATEGORIES,
    Goal,
    Product,
    ShopEnv,
    build_catalog,
    is_heldout_pair,
    sample_goal,
    shop_score,
)

SPLITS = ("train", "eval_in", "eval_out")


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(0)


def _run_expert(env, seed):
    obs, info = env.reset(seed=seed)
    transcript = [(obs, info)]
    while True:
        action = env.expert_action()
        obs, reward, terminated, truncated, info = env.step(action)
        transcript.append((action, obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return transcript


# ----------------------------------------------------------------------------- catalogue
def test_catalog_shape(catalog):
    products = catalog.products
    assert len(products) == 1200 and len({p.category for p in products}) == len(CATEGORIES) == 6
    assert len({p.asin for p in products}) == 1200 and len({p.title for p in products}) == 1200
    assert all(re.fullmatch(r"B0[A-Z0-9]{8}", p.asin) for p in products)
    assert all(3 <= len(p.attributes) <= 8 for p in products)
    assert all(set(p.option_dims()) == {"size", "color"} and all(len(v) >= 2 for _, v in p.options) for p in products)
    reserved = {"back to search", "next >", "< prev", "description", "buy now"}
    for _, _, sizes, colors, _ in CATEGORIES.values():
        assert not set(sizes) & set(colors) and not (set(sizes) | set(colors)) & reserved  # clicks are unambiguous
    for p in products:
        lo, hi = CATEGORIES[p.category][4]
        assert lo <= p.price <= hi and p.description and p.product_type in CATEGORIES[p.category][0]


def test_catalog_is_deterministic_and_cached(catalog):
    assert build_catalog(0) is catalog
    other = build_catalog.__wrapped__(0)
    assert other.products == catalog.products
    assert build_catalog.__wrapped__(1).products != catalog.products


def test_bm25_exact_title_returns_the_product_first(catalog):
    for p in random.Random(0).sample(catalog.products, 150):
        assert catalog.search(p.title.lower(), 10)[0].asin == p.asin


# ----------------------------------------------------------------------------- scoring (hand-computed)
def _product(**kw):
    base = dict(
        asin="B0AAAAAAAA",
        category="footwear",
        product_type="sandals",
        title="t",
        price=20.0,
        attributes=("non slip", "rubber sole", "lightweight"),
        options=(("size", ("8", "9")), ("color", ("red",))),
        description="d",
    )
    return Product(**{**base, **kw})


GOAL = Goal("footwear", "sandals", ("non slip", "breathable"), (("size", "9"), ("color", "red")), 25.0, "B0AAAAAAAA")


def test_shop_score_golden_values():
    p = _product()
    # 1 of 2 attributes, 2 of 2 options, price ok: (1 + 2 + 1) / (2 + 2 + 1) = 4/5
    assert shop_score(GOAL, p, {"size": "9", "color": "red"}) == pytest.approx(0.8)
    # no options chosen: (1 + 0 + 1) / 5 = 0.4
    assert shop_score(GOAL, p, {}) == pytest.approx(0.4)
    # price 30 > 25: (1 + 2 + 0) / 5 = 0.6
    assert shop_score(GOAL, _product(price=30.0), {"size": "9", "color": "red"}) == pytest.approx(0.6)
    # same category, other type: 0.5 * (1 + 1 + 1) / 5 = 0.3
    assert shop_score(GOAL, _product(product_type="slippers"), {"size": "9"}) == pytest.approx(0.3)
    # other category: 0.1 * (0 + 0 + 1) / 5 = 0.02
    other = _product(category="home", product_type="desk lamp", attributes=("soft",))
    assert shop_score(GOAL, other, {}) == pytest.approx(0.02)
    # everything matches: 5/5
    full = _product(attributes=("breathable", "non slip"))
    assert shop_score(GOAL, full, {"size": "9", "color": "red"}) == 1.0


def test_instruction_text():
    assert GOAL.instruction() == (
        "i need a sandals with non slip and breathable, size: 9 and color: red, and price lower than 25.00 dollars"
    )


def test_goal_target_scores_one(catalog):
    for seed in range(300):
        goal = sample_goal(catalog, seed)
        target = catalog.by_asin[goal.target]
        assert shop_score(goal, target, dict(goal.options)) == 1.0


# ----------------------------------------------------------------------------- splits
def test_eval_out_attribute_combinations_are_absent_from_train(catalog):
    def combos(split):
        return {
            (g.category, frozenset(g.attributes)) for g in (sample_goal(catalog, s) for s in split_seeds(split, 300))
        }

    train, eval_in, eval_out = combos("train"), combos("eval_in"), combos("eval_out")
    assert not train & eval_out and not eval_in & eval_out
    for cat, attrs in eval_out:
        assert len(attrs) >= 2 and any(is_heldout_pair(cat, a, b) for a, b in combinations(sorted(attrs), 2))
    for cat, attrs in train | eval_in:
        assert not any(is_heldout_pair(cat, a, b) for a, b in combinations(sorted(attrs), 2))
    assert len(train & eval_in) < len(eval_in)  # same distribution, mostly fresh combinations


@pytest.mark.parametrize("split", SPLITS)
def test_expert_succeeds_on_200_seeds(split):
    env = make("shop-v0", split)
    types = set()
    for seed in split_seeds(split, 200):
        transcript = _run_expert(env, seed)
        *_, reward, terminated, truncated, info = transcript[-1]
        assert terminated and not truncated and info["won"] and reward == 1.0, seed
        assert len(transcript) - 1 <= 6
        types.add(info["task_type"])
    assert types == set(CATEGORIES)


def test_seeds_reproduce_episodes_exactly():
    a, b = ShopEnv("eval_in"), ShopEnv("eval_in")
    for seed in split_seeds("eval_in", 5):
        assert _run_expert(a, seed) == _run_expert(b, seed)
    assert _run_expert(a, 8)[0] != _run_expert(a, 18)[0]


def test_random_policy_rarely_succeeds():
    env = make("shop-v0", "train")
    rng = random.Random(0)
    wins, n = 0, 200
    for seed in split_seeds("train", n):
        obs, info = env.reset(seed=seed)
        words = info["task"].split()
        while True:
            actions = info["admissible_actions"]
            if actions == ["search[<query>]"]:
                action = f"search[{' '.join(rng.sample(words, 3))}]"
            else:
                action = rng.choice(actions)
            obs, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                wins += info["won"]
                break
    print(f"shop-v0 random policy success: {wins}/{n} = {wins / n:.3f}")
    assert wins / n < 0.05


# ----------------------------------------------------------------------------- pages and actions
def test_pages_navigation_and_partial_score(catalog):
    env = ShopEnv("train")
    obs, info = env.reset(seed=0)
    assert obs.startswith("WebShop [SEP] Instruction: [SEP] i need a ") and info["admissible_actions"] == [
        "search[<query>]"
    ]
    goal = env.goal
    obs, _, _, _, info = env.step(f"search[{goal.instruction()}]")
    assert "Page 1 (Total results: 50)" in obs and "Next >" in obs and "< Prev" not in obs
    first_page = info["admissible_actions"]
    assert first_page[:2] == ["click[back to search]", "click[next >]"] and len(first_page) == 12
    assert env.step("click[Next >]")[4]["admissible_actions"][1] == "click[< prev]"
    assert env.step("click[< prev]")[4]["admissible_actions"] == first_page
    item = first_page[2][6:-1]
    obs, _, _, _, info = env.step(f"click[{item.upper()}]")
    product = catalog.by_asin[item.upper()]
    assert product.title in obs and "Buy Now" in obs and "click[buy now]" in info["admissible_actions"]
    obs, _, _, _, info = env.step("click[description]")
    assert obs.endswith(product.description) and info["admissible_actions"] == [
        "click[back to search]",
        "click[< prev]",
    ]
    env.step("click[< prev]")
    size = product.option_dims()["size"][0]
    env.step(f"click[{size}]")
    obs, reward, terminated, _, info = env.step("click[buy now]")
    assert terminated and reward == pytest.approx(shop_score(goal, product, {"size": size})) == info["score"]
    assert info["won"] == (reward == 1.0)


def test_back_to_search_resets_page():
    env = ShopEnv("train")
    env.reset(seed=1)
    env.step("search[hoodie]")
    obs, _, _, _, info = env.step("click[back to search]")
    assert info["admissible_actions"] == ["search[<query>]"] and obs.endswith("Search")


def test_query_without_hits_shows_empty_results():
    env = ShopEnv("train")
    env.reset(seed=1)
    obs, _, _, _, info = env.step("search[zzzqqq]")
    assert info["valid"] and "Total results: 0" in obs and info["admissible_actions"] == ["click[back to search]"]


def _state(env):
    return (env._page, env._query, env._results, env._page_no, env._item, dict(env._chosen))


def _invalid_cases(catalog):
    foreign = next(p for p in catalog.products if p.category == "home").option_dims()["color"][0]
    return [
        "click[B0ZZZZZZZZ]",
        f"click[{foreign}]",
        "click[buy now",
        "click buy now]",
        "search[]",
        "search[shoes]",
        "buy now",
        "click[]",
        "click[next >]",
        "click[< prev][x]",
    ]


@pytest.mark.parametrize("page", ["search", "results", "item", "description"])
def test_invalid_actions_change_nothing(catalog, page):
    env = ShopEnv("train")
    env.reset(seed=2)
    prefix = {"search": [], "results": ["search"], "item": ["search", "item"], "description": ["search", "item", "d"]}
    for step in prefix[page]:
        if step == "search":
            env.step(env.expert_action())
        elif step == "item":
            env.step(env.expert_action())
        else:
            env.step("click[description]")
    assert env._page == page
    for bad in _invalid_cases(catalog):
        if page == "search" and bad == "search[shoes]":
            continue
        before, adm = _state(env), env._clickables()
        obs, reward, terminated, _, info = env.step(bad)
        if page == "results" and bad == "click[next >]":
            continue
        assert not info["valid"] and reward == 0.0 and not terminated, bad
        assert obs.startswith("Nothing happens.") and _state(env) == before and info["admissible_actions"] == adm


def test_fuzzed_text_on_the_item_page():
    env = ShopEnv("train")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=100), st.sampled_from(["", "click[", "search[", "click[b0"]))
    def run(text, prefix):
        env.reset(seed=3)
        env.step(env.expert_action())
        env.step(env.expert_action())
        before = _state(env)
        obs, reward, terminated, _, info = env.step(prefix + text)
        assert isinstance(obs, str) and obs
        if not info["valid"]:
            assert _state(env) == before and reward == 0.0 and not terminated

    run()


def test_constructor_rejects_bad_split():
    with pytest.raises(ValueError, match="split"):
        ShopEnv("test")
