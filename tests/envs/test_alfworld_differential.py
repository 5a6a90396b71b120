"""Differential test: ``household-v0`` against ALFWorld's own engine on the same generated scenes.

Each scene is played in both engines — our :class:`~empg.envs.household.HouseholdEnv` and ALFWorld's PDDL domain
and grammar run by TextWorld (``alfworld-v0`` with ``semantics="household"``, the converter's mode that keeps
household-v0's rules) — with the same action sequences: ALFWorld's planner plan, our expert's plan and random
admissible walks. At every step both must agree on admissibility (the full admissible sets), success and the
observation's facts, after normalising the differences that are phrasing only:

* ALFWorld 0.4 says ``move X to Y`` / ``You move the X to the Y.``; household-v0 (like ALFWorld ≤ 0.3 and the EMPG
  paper's prompts) says ``put X in/on Y`` / ``You put the X in/on the Y.``;
* ALFWorld admits ``help``; household-v0 has no help command;
* object lists ("you see a x, a y, and a z") are compared as sets (ALFWorld lists them in fact order).

Known semantic differences (household-v0 departs from ALFWorld) are counted by category, reported and asserted to be
the *only* differences: :data:`KNOWN`. Run this file as a script to measure the agreement rate and both engines'
speeds on more scenes: ``python tests/envs/test_alfworld_differential.py --scenes 30``.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter

import pytest

from empg.envs.core import split_seeds
from empg.envs.household import HouseholdEnv
from empg.envs.household_scene import generate_scene

pytestmark = pytest.mark.real_envs

# Differences where household-v0 departs from ALFWorld (see the report): category -> description.
KNOWN = {
    "look_at_start": "`look` before any `go to`: ALFWorld says 'Looking quickly around you, you see nothing.' (its "
    "look rule binds the agent's location, which has no receptacle); household-v0 lists the receptacles again",
}
_LIST = re.compile(r"(you see |you are carrying: )(.*?)\.(?=\s|$)")
_PUT = re.compile(r"^put (.+?) in/on (.+)$")


def _to_alfworld(command: str) -> str:
    m = _PUT.match(command)
    return f"move {m[1]} to {m[2]}" if m else command


def _to_household(command: str) -> str:
    m = re.match(r"^move (.+?) to (.+)$", command)
    return f"put {m[1]} in/on {m[2]}" if m else command


def _norm_obs(text: str) -> str:
    """Phrasing-only normalisation: ``move``→``put``, whitespace, and object lists as sorted sets."""
    text = " ".join(text.split())
    text = re.sub(r"You move the (.+?) to the (.+?)\.", r"You put the \1 in/on the \2.", text)

    def as_set(m: re.Match) -> str:
        items = sorted(i.strip() for i in re.split(r",(?: and)? ", m[2].replace(", and ", ", ")) if i.strip())
        return m[1] + "{" + "|".join(items) + "}."

    return _LIST.sub(as_set, text)


def _norm_admissible(actions: list[str]) -> set[str]:
    """Both engines' admissible commands in one phrasing (``put X in/on Y``), without ALFWorld's ``help``."""
    return {_to_household(a) for a in actions if a != "help"}


class Tally:
    """Counts of compared steps and of disagreements per category."""

    def __init__(self) -> None:
        self.steps = 0
        self.agree = 0
        self.diffs: Counter = Counter()
        self.examples: dict[str, str] = {}

    def record(self, category: str | None, detail: str = "") -> None:
        self.steps += 1
        if category is None:
            self.agree += 1
        else:
            self.diffs[category] += 1
            self.examples.setdefault(category, detail)

    @property
    def rate(self) -> float:
        return self.agree / max(self.steps, 1)


def _classify(action: str, ours: tuple, theirs: tuple) -> str | None:
    """``None`` when both engines agree on this step, else the disagreement's category."""
    (o_obs, o_info), (t_obs, t_info) = ours, theirs
    if o_info["valid"] != t_info["valid"]:
        return "validity"
    if o_info["won"] != t_info["won"]:
        return "success"
    if _norm_admissible(o_info["admissible_actions"]) != _norm_admissible(t_info["admissible_actions"]):
        return "admissible"
    if _norm_obs(o_obs) != _norm_obs(t_obs):
        if action == "look" and t_obs.startswith("You are in the middle of a room"):
            return "look_at_start"
        if action.startswith("examine ") and t_obs.startswith("This is a"):
            return "examine_state"
        return "observation"
    return None


def play(scene, actions_source: str, aw, tally: Tally, *, rng: random.Random | None = None, max_steps: int = 30):
    """Play one scene in both engines driven by ``actions_source`` (``alfworld_expert``/``our_expert``/``random``)."""
    hh = HouseholdEnv.from_scene(scene)
    o_obs, o_info = hh.reset(seed=0)
    t_obs, t_info = aw.reset(seed=0, options={"scene": scene})
    tally.record(_classify("reset", (o_obs, o_info), (t_obs, t_info)), f"reset: {o_obs!r} vs {t_obs!r}")
    for _ in range(max_steps):
        if actions_source == "alfworld_expert":
            action = _to_household(aw.expert_action())
        elif actions_source == "our_expert":
            action = hh.expert_action()
        else:
            common = sorted(
                _norm_admissible(o_info["admissible_actions"]) & _norm_admissible(t_info["admissible_actions"])
            )
            action = rng.choice(common + ["look", "examine nothing 9"])
        o_obs, _, o_done, _, o_info = hh.step(action)
        t_obs, _, t_done, _, t_info = aw.step(_to_alfworld(action))
        category = _classify(action, (o_obs, o_info), (t_obs, t_info))
        ours, theirs = _norm_admissible(o_info["admissible_actions"]), _norm_admissible(t_info["admissible_actions"])
        tally.record(
            category, f"{action!r}: {o_obs!r} vs {t_obs!r}; only ours {ours - theirs}, only theirs {theirs - ours}"
        )
        if o_done or t_done:
            return o_info["won"], t_info["won"]
    return o_info["won"], t_info["won"]


def _scenes(n_per_split: int) -> list:
    return [
        generate_scene(s, split) for split in ("train", "eval_in", "eval_out") for s in split_seeds(split, n_per_split)
    ]


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def aw():
    pytest.importorskip("textworld", reason="needs textworld (pip install 'empg[real-envs]')")
    pytest.importorskip("alfworld", reason="needs alfworld (pip install 'empg[real-envs]')")
    pytest.importorskip("fast_downward", reason="needs fast-downward-textworld (pip install 'empg[real-envs]')")
    from empg.envs.adapters.alfworld import AlfworldEnv

    env = AlfworldEnv("train", strict_split=False, source="generated", semantics="household")
    yield env
    env.close()


# Small, fast-to-plan scenes covering the six task types: (split, seed).
_SCENES = [("train", 0), ("train", 1), ("train", 2), ("train", 6), ("eval_out", 29), ("eval_in", 28)]


def test_known_scenes_cover_all_task_types():
    assert {generate_scene(s, split).task_type for split, s in _SCENES} == {
        "pick_cool_then_place_in_recep",
        "pick_and_place_simple",
        "look_at_obj_in_light",
        "pick_clean_then_place_in_recep",
        "pick_heat_then_place_in_recep",
        "pick_two_obj_and_place",
    }


def test_both_engines_agree_on_expert_plans_and_random_walks(aw):
    tally, wins = Tally(), []
    rng = random.Random(0)
    for split, seed in _SCENES:
        scene = generate_scene(seed, split)
        wins.append(play(scene, "alfworld_expert", aw, tally))
        wins.append(play(scene, "our_expert", aw, tally))
        play(scene, "random", aw, tally, rng=rng, max_steps=8)
    print(f"\nagreement {tally.agree}/{tally.steps} = {tally.rate:.3f}; differences {dict(tally.diffs)}")
    # Both experts win in both engines: success agrees on every expert episode.
    assert wins == [(True, True)] * (2 * len(_SCENES))
    unexpected = {c: tally.examples[c] for c in tally.diffs if c not in KNOWN}
    assert not unexpected, f"household-v0 and ALFWorld disagree: {unexpected}"
    assert tally.steps >= 100 and tally.rate >= 0.9


def test_known_differences_are_still_there(aw):
    """Each :data:`KNOWN` difference shows up where expected; once household-v0 fixes one, drop it from KNOWN."""
    scene = generate_scene(29, "eval_out")  # "heat some ..." task
    hh = HouseholdEnv.from_scene(scene)
    hh.reset(seed=0)
    aw.reset(seed=0, options={"scene": scene})
    ours, theirs = hh.step("look"), aw.step("look")
    assert theirs[0] == "You are in the middle of a room. Looking quickly around you, you see nothing."
    # household-v0 agrees when its look says "nothing" too; otherwise this is the known "look_at_start" difference.
    assert _classify("look", (ours[0], ours[4]), (theirs[0], theirs[4])) in (None, "look_at_start")
    while not (action := _to_household(aw.expert_action())).startswith("heat "):
        hh.step(action)
        aw.step(_to_alfworld(action))
    hh.step(action)
    aw.step(action)
    held = action.split(" ")[1] + " " + action.split(" ")[2]
    ours, theirs = hh.step(f"examine {held}"), aw.step(f"examine {held}")
    assert theirs[0] == f"This is a hot {held}."
    category = _classify(f"examine {held}", (ours[0], ours[4]), (theirs[0], theirs[4]))
    # household-v0 reports the object's state as ALFWorld does ("This is a hot X."): no difference any more.
    assert category is None, f"examine of a transformed object differs again: {ours[0]!r} vs {theirs[0]!r}"


def test_normalisation_only_touches_phrasing():
    assert _norm_obs("You move the apple 1 to the fridge 1.") == "You put the apple 1 in/on the fridge 1."
    a = _norm_obs("On the desk 1, you see a pen 2, a book 1, and a cd 3.")
    b = _norm_obs("On the desk 1, you see a book 1, a cd 3, and a pen 2.")
    assert a == b == "On the desk 1, you see {a book 1|a cd 3|a pen 2}."
    assert _norm_obs("On the desk 1, you see a book 1.") != _norm_obs("On the desk 1, you see a book 2.")
    assert _norm_admissible(["help", "move mug 1 to desk 1", "look"]) == {"put mug 1 in/on desk 1", "look"}


def test_alfworld_semantics_only_add_alfworld_rules(aw):
    """With ALFWorld's own conventions, every admissible command of ALFWorld that household-v0 lacks is a slice or a
    put into a receptacle that ALFWorld's canContain forbids is the other way round."""
    from empg.envs.adapters.alfworld import AlfworldEnv

    scene = generate_scene(1, "train")
    faithful = AlfworldEnv("train", source="generated")
    try:
        hh = HouseholdEnv.from_scene(scene)
        hh.reset(seed=0)
        faithful.reset(seed=1)
        extra_ours, extra_theirs = set(), set()
        for _ in range(8):
            action = hh.expert_action()
            _, _, _, _, o_info = hh.step(action)
            _, _, _, _, t_info = faithful.step(_to_alfworld(action))
            theirs = _norm_admissible(t_info["admissible_actions"])
            extra_ours |= set(o_info["admissible_actions"]) - theirs
            extra_theirs |= theirs - set(o_info["admissible_actions"])
            if o_info["won"]:
                break
        assert all(a.startswith("put ") for a in extra_ours)
        assert all(a.startswith("slice ") for a in extra_theirs)
    finally:
        faithful.close()


def test_our_engine_is_fast():
    """Speed is a benchmark, not a timed test: here only that 2,000 random steps run without error."""
    scene = generate_scene(0, "train")
    env = HouseholdEnv.from_scene(scene)
    _, info = env.reset(seed=0)
    rng = random.Random(0)
    for _ in range(2000):
        _, _, done, _, info = env.step(rng.choice(info["admissible_actions"]))
        if done:
            _, info = env.reset(seed=0)
    assert isinstance(info["admissible_actions"], list)


# ----------------------------------------------------------------------------- script: measure
def _steps_per_second(env, scenes, steps: int, scene_option: bool) -> float:
    rng, n, elapsed = random.Random(0), 0, 0.0
    for scene in scenes:
        _, info = env.reset(seed=0, options={"scene": scene}) if scene_option else env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, done, _, info = env.step(rng.choice(info["admissible_actions"]))
            n += 1
            if done:
                break
        elapsed += time.perf_counter() - t0
    return n / elapsed


def main(argv: list[str]) -> None:
    from empg.envs.adapters.alfworld import AlfworldEnv

    n = int(argv[argv.index("--scenes") + 1]) if "--scenes" in argv else 9
    scenes = _scenes(max(1, n // 3))
    aw = AlfworldEnv("train", strict_split=False, source="generated", semantics="household")
    tally, rng, wins = Tally(), random.Random(0), Counter()
    for scene in scenes:
        for source in ("alfworld_expert", "our_expert", "random"):
            won = play(scene, source, aw, tally, rng=rng, max_steps=15 if source == "random" else 40)
            if source != "random":
                wins[won] += 1
    print(f"scenes {len(scenes)}; compared steps {tally.steps}; agreement {tally.rate:.4f}")
    print(f"disagreements by category: {dict(tally.diffs)}")
    for category, example in tally.examples.items():
        print(f"  {category}: {example[:300]}")
    print(f"expert episodes (household won, alfworld won): {dict(wins)}")
    hh_sps = _steps_per_second(HouseholdEnv.from_scene(scenes[0]), scenes, 500, scene_option=True)
    aw_sps = _steps_per_second(aw, scenes[:3], 30, scene_option=True)
    print(f"household-v0 {hh_sps:,.0f} steps/s; ALFWorld engine {aw_sps:.1f} steps/s; ratio {hh_sps / aw_sps:,.0f}x")
    aw.close()


if __name__ == "__main__":
    main(sys.argv[1:])
