"""alfworld-v0 and the household scene → ALFWorld PDDL converter.

The converter and the pure helpers are tested without ALFWorld; everything that runs ALFWorld's engine is marked
``real_envs`` and skipped when ``alfworld`` / ``textworld`` / ``fast_downward`` are missing.
"""

from __future__ import annotations

import gc
import json
import sys

import pytest

from empg.envs.adapters.alfworld import goal_from_intro, task_type_from_goal
from empg.envs.adapters.alfworld_pddl import (
    ALFRED_CLASSES,
    ALFRED_CLEANABLE_EXTRA,
    ALFRED_MOVABLE_RECEPTACLES,
    ALFRED_SLICEABLE,
    alfred_id,
    goal_pddl,
    scene_ids,
    scene_to_pddl,
)
from empg.envs.household_scene import (
    CLEANABLE,
    COOLABLE,
    HEATABLE,
    PLACEMENT,
    HouseholdScene,
    Receptacle,
    SceneObject,
    generate_scene,
)


def _tiny_scene(task_type="pick_cool_then_place_in_recep", goal_rec="countertop", lamp=None) -> HouseholdScene:
    recs = (
        Receptacle("countertop", 1, False, 0),
        Receptacle("fridge", 1, True, 1),
        Receptacle("sinkbasin", 1, False, 2),
        Receptacle("cabinet", 1, True, 3),
        Receptacle("cabinet", 2, True, 4),
    )
    objs = (
        SceneObject("apple", 2, "fridge 1"),
        SceneObject("apple", 1, "countertop 1"),
        SceneObject("mug", 1, "cabinet 2"),
    )
    return HouseholdScene(
        seed=-1,
        split="train",
        room="kitchen",
        receptacles=recs,
        objects=objs,
        task_type=task_type,
        goal_object_type="apple",
        goal_receptacle_type=goal_rec,
        lamp=lamp,
        task="put a cool apple in countertop.",
    )


# ----------------------------------------------------------------------------- pure helpers (no ALFWorld needed)
@pytest.mark.parametrize(
    "goal,task_type",
    [
        ("put a mug in desk.", "pick_and_place_simple"),
        ("put some book on sofa", "pick_and_place_simple"),
        ("look at box under the desklamp.", "look_at_obj_in_light"),
        ("examine the cd with the desklamp", "look_at_obj_in_light"),
        ("put a clean cloth in bathtubbasin.", "pick_clean_then_place_in_recep"),
        ("clean some pot and put it in countertop", "pick_clean_then_place_in_recep"),
        ("put a hot egg in fridge.", "pick_heat_then_place_in_recep"),
        ("heat some bread and put it in fridge", "pick_heat_then_place_in_recep"),
        ("put a cool tomato in microwave.", "pick_cool_then_place_in_recep"),
        ("Cool  some POT and put it in sinkbasin.", "pick_cool_then_place_in_recep"),
        ("put two cd in safe.", "pick_two_obj_and_place"),
        ("find two pen and put them in drawer", "pick_two_obj_and_place"),
        ("dance on the table", "unknown"),
    ],
)
def test_task_type_from_goal_reads_alfworld_templates(goal, task_type):
    assert task_type_from_goal(goal) == task_type


def test_task_type_from_goal_agrees_with_every_generated_scene():
    scenes = [generate_scene(s, split) for split in ("train", "eval_in", "eval_out") for s in range(40)]
    assert all(task_type_from_goal(sc.task) == sc.task_type for sc in scenes)


def test_goal_from_intro():
    intro = (
        "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room.\n\nYour task is to: put a mug in desk."
    )
    assert goal_from_intro(intro) == "put a mug in desk"
    assert goal_from_intro("no task here") == ""


def test_alfred_ids_follow_the_demangler_numbering():
    # The Demangler sorts a name's ids and gives them count, count-1, ..., 1: instance n of k sorts at k - n.
    assert [alfred_id("apple", n, 3) for n in (1, 2, 3)] == ["Apple_bar_02", "Apple_bar_01", "Apple_bar_00"]
    assert alfred_id("sinkbasin", 1, 1) == "Sink_bar_00_bar_SinkBasin"
    assert alfred_id("bathtubbasin", 2, 2) == "Bathtub_bar_00_bar_BathtubBasin"
    assert alfred_id("countertop", 1, 1) == "CounterTop_bar_00"
    with pytest.raises(ValueError, match="1..2"):
        alfred_id("apple", 3, 2)


def test_scene_to_pddl_alfworld_semantics_golden_facts():
    p = scene_to_pddl(_tiny_scene())
    assert p.goal == "put a cool apple in countertop" and p.task_type == "pick_cool_then_place_in_recep"
    assert p.names == {
        "CounterTop_bar_00": "countertop 1",
        "Fridge_bar_00": "fridge 1",
        "Sink_bar_00_bar_SinkBasin": "sinkbasin 1",
        "Cabinet_bar_01": "cabinet 1",
        "Cabinet_bar_00": "cabinet 2",
        "Apple_bar_00": "apple 2",
        "Apple_bar_01": "apple 1",
        "Mug_bar_00": "mug 1",
    }
    lines = {line.strip() for line in p.pddl.splitlines()}
    assert "(atLocation agent1 loc_bar_start)" in lines
    assert "(receptacleAtLocation Cabinet_bar_00 loc_bar_4)" in lines
    assert {"(openable Fridge_bar_00)", "(openable Cabinet_bar_01)", "(openable Cabinet_bar_00)"} <= lines
    assert "(openable CounterTop_bar_00)" not in lines
    # apple 2 starts in the fridge and is of the goal type: ALFWorld's generator marks it cool; apple 1 is not.
    assert "(isCool Apple_bar_00)" in lines and "(isCool Apple_bar_01)" not in lines
    assert {"(isReceptacleObject Mug_bar_00)", "(sliceable Apple_bar_01)", "(pickupable Mug_bar_00)"} <= lines
    # canContain from the placement table: apple -> countertop, fridge, sinkbasin (3); mug -> cabinet,
    # countertop, sinkbasin, fridge (4); 7 pairs, the goal pair (countertop, apple) among them.
    can = sorted(line for line in lines if line.startswith("(canContain"))
    assert len(can) == 7 and "(canContain CounterTopType AppleType)" in can
    assert "(canContain CabinetType AppleType)" not in can
    # Constants the domain's actions name are always declared.
    for const in ("SinkBasinType - rtype", "MicrowaveType - rtype", "KnifeType - otype", "ButterKnifeType - otype"):
        assert const in lines
    assert "(coolable ?o) (isCool ?o) (objectType ?o AppleType) (receptacleType ?r CounterTopType)" in p.pddl


def test_scene_to_pddl_household_semantics_keeps_household_rules():
    lines = {line.strip() for line in scene_to_pddl(_tiny_scene(), semantics="household").pddl.splitlines()}
    can = {line for line in lines if line.startswith("(canContain")}
    assert len(can) == 7  # the placement table, as household-v0's `move`/`put` uses it (see the golden test above)
    assert can == {line.strip() for line in scene_to_pddl(_tiny_scene()).pddl.split("\n") if "(canContain" in line}
    assert not any(line.startswith(("(isCool", "(sliceable", "(isReceptacleObject")) for line in lines)


def test_scene_to_pddl_uses_a_given_can_contain_table():
    table = {"cabinet": {"mug", "apple", "book"}, "fridge": {"mug"}, "desk": {"mug"}}
    lines = {line.strip() for line in scene_to_pddl(_tiny_scene(), can_contain=table).pddl.splitlines()}
    # cabinet: apple, mug (book and desk are absent from the scene); fridge: mug; + the goal pair countertop/apple.
    assert {line for line in lines if line.startswith("(canContain")} == {
        "(canContain CabinetType AppleType)",
        "(canContain CabinetType MugType)",
        "(canContain FridgeType MugType)",
        "(canContain CounterTopType AppleType)",
    }


def test_goal_pddl_per_task_type():
    assert "(not (= ?o1 ?o2))" in goal_pddl("pick_two_obj_and_place", "cd", "safe")
    look = goal_pddl("look_at_obj_in_light", "book", None, "desklamp")
    assert "(objectType ?ot DeskLampType) (toggleable ?ot) (isToggled ?ot)" in look and "(holds ?a ?o)" in look
    simple = goal_pddl("pick_and_place_simple", "mug", "desk")
    assert "(objectType ?o MugType) (receptacleType ?r DeskType) (inReceptacle ?o ?r)" in simple
    assert "isHot" in goal_pddl("pick_heat_then_place_in_recep", "egg", "fridge")
    with pytest.raises(ValueError, match="unknown task_type"):
        goal_pddl("juggle", "egg", "fridge")
    with pytest.raises(ValueError, match="lamp type"):
        goal_pddl("look_at_obj_in_light", "book", None)
    with pytest.raises(ValueError, match="semantics"):
        scene_to_pddl(_tiny_scene(), semantics="thor")
    with pytest.raises(TypeError, match="HouseholdScene"):
        scene_to_pddl("a kitchen")


def test_scene_ids_are_unique_for_generated_scenes():
    for split in ("train", "eval_out"):
        for seed in range(30):
            scene = generate_scene(seed, split)
            ids = scene_ids(scene)
            assert len(set(ids.values())) == len(ids) == len(scene.receptacles) + len(scene.objects)


# ----------------------------------------------------------------------------- ALFWorld's engine
def _need_engine():
    for module in ("textworld", "alfworld", "fast_downward"):
        pytest.importorskip(module, reason=f"needs {module} (pip install 'empg[real-envs]')")


@pytest.fixture(scope="module")
def env():
    _need_engine()
    from empg.envs.adapters.alfworld import AlfworldEnv

    e = AlfworldEnv("train", source="generated", strict_split=False)
    yield e
    e.close()


@pytest.mark.real_envs
def test_our_types_and_affordances_are_alfworlds():
    _need_engine()
    import alfworld.gen.constants as c

    assert set(ALFRED_CLASSES.values()) <= set(c.OBJECTS)
    ours = {v: k for k, v in ALFRED_CLASSES.items()}
    for ours_set, theirs in (
        (CLEANABLE | ALFRED_CLEANABLE_EXTRA, "Cleanable"),
        (HEATABLE, "Heatable"),
        (COOLABLE, "Coolable"),
        (ALFRED_SLICEABLE, "Sliceable"),
    ):
        assert ours_set == {ours[k] for k in c.VAL_ACTION_OBJECTS[theirs] if k in ours}, theirs
    assert ALFRED_MOVABLE_RECEPTACLES == {ours[k] for k in c.MOVABLE_RECEPTACLES}
    assert set(PLACEMENT) <= set(ALFRED_CLASSES)
    from empg.envs.adapters.alfworld import alfworld_can_contain

    table = alfworld_can_contain()
    assert {"apple", "mug", "egg"} <= table["fridge"] and "book" not in table["fridge"]
    assert "towel" not in table["countertop"] and "sinkbasin" in table and "bathtubbasin" in table


@pytest.mark.real_envs
def test_alfworld_demangler_names_match_the_scene(env):
    for split, seed in (("train", 0), ("eval_out", 29)):
        scene = generate_scene(seed, split)
        env.reset(seed=seed, options={"scene": scene})
        infos = env._engine().pddl._entity_infos
        problem = scene_to_pddl(scene)
        assert {pid: infos[pid.lower()].name for pid in problem.names} == problem.names


@pytest.mark.real_envs
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planner_expert_wins(env, seed):
    obs, info = env.reset(seed=seed)
    scene = generate_scene(seed, "train")
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-") and obs.endswith(f"Your task is to: {scene.task}")
    assert (info["task"], info["task_type"]) == (scene.task.rstrip("."), scene.task_type)
    steps = 0
    while steps < 30:
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
        steps += 1
        assert info["valid"]
        if terminated:
            break
    assert info["won"] and reward == 1.0 and not truncated and steps <= 12


@pytest.mark.real_envs
def test_commands_bad_actions_and_put_alias(env):
    _, info = env.reset(seed=1)
    assert "go to countertop 1" in info["admissible_actions"] and "help" in info["admissible_actions"]
    for bad in ("", "fly to the moon", "x" * 10_000, "\x00💥", "take apple 99 from nowhere 7"):
        obs, reward, terminated, _, bad_info = env.step(bad)
        assert (obs, reward, terminated, bad_info["valid"]) == ("Nothing happens.", 0.0, False, False)
        assert bad_info["admissible_actions"] == info["admissible_actions"]
    goto = env.expert_action()
    obs, _, _, _, info = env.step("  " + goto.upper().replace(" ", "   ") + " ")
    assert info["valid"] and obs.startswith(f"You arrive at {goto[len('go to ') :]}.")
    while not (take := env.expert_action()).startswith("take "):
        assert env.step(take)[4]["valid"]
    held, where = take[len("take ") :].split(" from ")
    env.step(take)
    obs, _, _, _, info = env.step(f"put {held} in/on {where}")
    assert info["valid"] and obs == f"You move the {held} to the {where}."


@pytest.mark.real_envs
def test_check_env_and_splits():
    _need_engine()
    from empg.envs import check_env, make

    env = make("alfworld-v0", "eval_out", source="generated")
    try:
        checks = ["reset_types", "invalid_actions"]  # the full check_env runs in test_contract.py (train seed)
        assert check_env(env, seeds=[29], checks=checks) == checks
        _, info = env.reset(seed=29)
        assert info["task"] == generate_scene(29, "eval_out").task.rstrip(".")
        with pytest.raises(ValueError, match="split"):
            env.reset(seed=0)
    finally:
        env.close()


@pytest.mark.real_envs
def test_official_game_files(tmp_path):
    """A data dir laid out like ALFWorld's (json_2.1.1/<split>/<task>/<trial>/game.tw-pddl + traj_data.json)."""
    _need_engine()
    from empg.envs.adapters.alfworld import AlfworldEnv, find_game_files, game_data

    def write(split, task, scene, **extra):
        trial = tmp_path / "json_2.1.1" / split / task / "trial_T0"
        trial.mkdir(parents=True)
        (trial / "game.tw-pddl").write_text(json.dumps({**game_data(scene), "solvable": True, **extra}))
        (trial / "traj_data.json").write_text(json.dumps({"task_type": scene.task_type}))
        return trial / "game.tw-pddl"

    scene = generate_scene(1, "train")
    good = write("valid_unseen", "pick_and_place_simple-A-None-B-1", scene)
    write("valid_unseen", "pick_and_place_with_movable_recep-A-B-C-1", scene)  # skipped like ALFWorld does
    write("valid_unseen", "pick_and_place_simple-C-None-D-2", scene, solvable=False)  # not solvable: skipped
    assert find_game_files(tmp_path, "eval_out") == [good]
    env = AlfworldEnv("eval_out", data_dir=tmp_path)
    try:
        assert env.source == "official"
        obs, info = env.reset(seed=19)
        assert info["game"] == f"file:{good}" and info["task_type"] == scene.task_type
        for _ in range(12):
            _, _, terminated, _, info = env.step(env.expert_action())
            if terminated:
                break
        assert info["won"]
    finally:
        env.close()


@pytest.mark.real_envs
def test_setup_errors_are_clear(tmp_path, monkeypatch):
    _need_engine()
    from empg.envs.adapters.alfworld import AlfworldEnv, AlfworldError

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(AlfworldError, match="alfworld-download"):
        AlfworldEnv("train", source="official", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown source"):
        AlfworldEnv("train", source="thor")
    env = AlfworldEnv("train")
    assert env.source == "generated"
    env.close()


@pytest.mark.real_envs
def test_close_and_gc_release_the_engine_and_argv_is_kept():
    _need_engine()
    from empg.envs.adapters.alfworld import AlfworldEnv

    argv = list(sys.argv)
    env = AlfworldEnv("train")
    env.reset(seed=0)
    assert sys.argv == argv  # Fast Downward's translator overwrites sys.argv; the adapter restores it
    env.close()
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(seed=0)
    other = AlfworldEnv("train")
    finalizer = other._finalizer
    del other
    gc.collect()
    assert not finalizer.alive
