"""Household scene → ALFWorld PDDL problem: a game that ALFWorld's own engine plays offline.

The ``alfworld`` package ships ALFWorld's PDDL domain (``alfred.pddl``) and command grammar (``alfred.twl2``);
TextWorld's ``PddlEnv`` plays any PDDL problem written against them (admissible commands, the Fast Downward
planner's expert plan, ``won``). :func:`scene_to_pddl` writes such a problem for a
:class:`~empg.envs.household_scene.HouseholdScene`, in the form ALFWorld's own generator writes them:

* object ids are ALFWorld's mangled ids (``Apple_bar_01``, ``Sink_bar_00_bar_SinkBasin``) chosen so that ALFWorld's
  ``Demangler`` names them exactly as the scene does (``apple 1``, ``sinkbasin 1``);
* each receptacle stands at its own location; the agent starts at a location with no receptacle ("You are in the
  middle of a room");
* goals are ALFWorld's goal-library formulas (``exists ?r ?o: objectType ?o AppleType & isHot ?o & …``).

Two semantics (``semantics=``):

* ``"alfworld"`` (default, what ``alfworld-v0`` plays): ALFWorld's conventions — ``canContain`` limits where an
  object may be put (ALFWorld's own table when given, else the scene catalogue's placement table), goal-type objects
  that start in a fridge are already cool, bowls/boxes/cups/mugs/pans/plates/pots are receptacle objects and food
  is sliceable.
* ``"household"``: the rules of ``household-v0`` (``canContain`` from the placement table, nothing starts cool, no
  slicing, no receptacle objects), used by the differential test to check that both engines agree where they are
  meant to.

Pure text generation: this module needs neither ``alfworld`` nor ``textworld``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from empg.envs.household_scene import (
    CLEANABLE,
    COOLABLE,
    HEATABLE,
    LAMP_TYPES,
    PLACEMENT,
    TASK_TYPES,
    HouseholdScene,
)

SEMANTICS = ("alfworld", "household")
START_LOCATION = "loc_bar_start"

# Our lower-case type names -> ALFWorld (AI2-THOR) class names. FD lower-cases ids, so case is cosmetic, but the
# problem text then reads like one of ALFWorld's own.
ALFRED_CLASSES: dict[str, str] = {
    **{t: t.capitalize() for t in ("apple", "bread", "egg", "lettuce", "potato", "tomato", "mug", "cup", "bowl")},
    **{t: t.capitalize() for t in ("plate", "pan", "pot", "kettle", "knife", "fork", "spoon", "spatula", "ladle")},
    **{t: t.capitalize() for t in ("box", "vase", "statue", "watch", "laptop", "pillow", "book", "pen", "pencil")},
    **{t: t.capitalize() for t in ("candle", "cloth", "towel", "newspaper", "cabinet", "drawer", "fridge", "shelf")},
    **{t: t.capitalize() for t in ("microwave", "sofa", "desk", "bed", "safe", "toilet", "dresser", "toaster")},
    "butterknife": "ButterKnife",
    "dishsponge": "DishSponge",
    "saltshaker": "SaltShaker",
    "peppershaker": "PepperShaker",
    "winebottle": "WineBottle",
    "remotecontrol": "RemoteControl",
    "keychain": "KeyChain",
    "creditcard": "CreditCard",
    "cellphone": "CellPhone",
    "cd": "CD",
    "alarmclock": "AlarmClock",
    "tissuebox": "TissueBox",
    "soapbar": "SoapBar",
    "soapbottle": "SoapBottle",
    "handtowel": "HandTowel",
    "toiletpaper": "ToiletPaper",
    "spraybottle": "SprayBottle",
    "desklamp": "DeskLamp",
    "countertop": "CounterTop",
    "diningtable": "DiningTable",
    "sinkbasin": "SinkBasin",
    "stoveburner": "StoveBurner",
    "garbagecan": "GarbageCan",
    "coffeemachine": "CoffeeMachine",
    "armchair": "ArmChair",
    "coffeetable": "CoffeeTable",
    "sidetable": "SideTable",
    "tvstand": "TVStand",
    "bathtubbasin": "BathtubBasin",
    "towelholder": "TowelHolder",
    "handtowelholder": "HandTowelHolder",
    "toiletpaperhanger": "ToiletPaperHanger",
}
# ALFWorld affordances that household-v0 does not model (checked against alfworld.gen.constants in the tests).
ALFRED_CLEANABLE_EXTRA = frozenset({"kettle"})
ALFRED_SLICEABLE = frozenset({"apple", "bread", "egg", "lettuce", "potato", "tomato"})
ALFRED_MOVABLE_RECEPTACLES = frozenset({"bowl", "box", "cup", "mug", "plate", "pan", "pot"})
# Types the domain's actions name as constants: every problem must declare them.
_REQUIRED_RTYPES = ("sinkbasin", "microwave", "fridge")
_REQUIRED_OTYPES = ("knife", "butterknife", "desklamp")
_TRANSFORM_PREDICATE = {
    "pick_clean_then_place_in_recep": ("cleanable", "isClean"),
    "pick_heat_then_place_in_recep": ("heatable", "isHot"),
    "pick_cool_then_place_in_recep": ("coolable", "isCool"),
}


@dataclass(frozen=True)
class AlfredProblem:
    """A PDDL problem for ALFWorld's domain, with what the game needs besides it.

    Attributes:
        pddl: the problem text (``(define (problem …) (:domain alfred) …)``).
        goal: the instruction without its final period, for the grammar's ``Your task is to: …`` line.
        task_type: one of ALFWorld's task types.
        names: PDDL id -> the name ALFWorld's ``Demangler`` gives it (``"Apple_bar_01"`` -> ``"apple 1"``).
    """

    pddl: str
    goal: str
    task_type: str
    names: dict[str, str]


def alfred_class(kind: str) -> str:
    """ALFWorld's class name for one of our types (``"countertop"`` -> ``"CounterTop"``); unknown types capitalise."""
    return ALFRED_CLASSES.get(kind, kind[:1].upper() + kind[1:])


def alfred_id(kind: str, number: int, count: int) -> str:
    """The mangled PDDL id that ALFWorld's ``Demangler`` turns into ``"<kind> <number>"``.

    The ``Demangler`` sorts the ids of one name and hands them ``count, count-1, …, 1``, so instance ``number`` of
    ``count`` gets sort key ``count - number``. Receptacles whose name ends in ``basin`` follow ALFWorld's
    ``Sink_bar_…_bar_SinkBasin`` form: the ``Demangler`` appends ``basin`` to any id containing it.

    >>> alfred_id("apple", 1, 2), alfred_id("sinkbasin", 1, 1)
    ('Apple_bar_01', 'Sink_bar_00_bar_SinkBasin')
    """
    if not 1 <= number <= count:
        raise ValueError(f"instance number {number} of {kind!r} must be in 1..{count}")
    cls = alfred_class(kind)
    key = f"{count - number:02d}"
    if kind.endswith("basin"):
        return f"{cls[: -len('Basin')]}_bar_{key}_bar_{cls}"
    return f"{cls}_bar_{key}"


def goal_pddl(task_type: str, obj: str, recep: str | None, toggle: str | None = None) -> str:
    """ALFWorld's goal formula for a task (the goal library's form), e.g. ``(:goal (and (exists (?r - receptacle) …``.

    Args:
        task_type: one of :data:`~empg.envs.household_scene.TASK_TYPES`.
        obj: the goal object type (``"apple"``).
        recep: the goal receptacle type (``"fridge"``); ``None`` for ``look_at_obj_in_light``.
        toggle: the lamp type for ``look_at_obj_in_light`` (``"desklamp"``).
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; choose one of {TASK_TYPES}")
    o = f"{alfred_class(obj)}Type"
    if task_type == "look_at_obj_in_light":
        if toggle is None:
            raise ValueError("look_at_obj_in_light needs the lamp type (toggle=)")
        t = f"{alfred_class(toggle)}Type"
        return (
            "(:goal (and\n"
            "  (exists (?ot - object ?r - receptacle ?a - agent ?l - location)\n"
            f"    (and (objectType ?ot {t}) (toggleable ?ot) (isToggled ?ot)\n"
            "         (receptacleAtLocation ?r ?l) (atLocation ?a ?l) (inReceptacle ?ot ?r)))\n"
            f"  (exists (?o - object ?a - agent) (and (objectType ?o {o}) (holds ?a ?o)))))"
        )
    if recep is None:
        raise ValueError(f"{task_type} needs a goal receptacle type")
    r = f"{alfred_class(recep)}Type"
    if task_type == "pick_two_obj_and_place":
        return (
            "(:goal (and (exists (?r - receptacle) (exists (?o1 - object)\n"
            f"  (and (objectType ?o1 {o}) (receptacleType ?r {r}) (inReceptacle ?o1 ?r)\n"
            "       (exists (?o2 - object)\n"
            f"         (and (not (= ?o1 ?o2)) (objectType ?o2 {o}) (receptacleType ?r {r}) (inReceptacle ?o2 ?r))))))))"
        )
    extra = ""
    if task_type in _TRANSFORM_PREDICATE:
        able, state = _TRANSFORM_PREDICATE[task_type]
        extra = f" ({able} ?o) ({state} ?o)"
    return (
        "(:goal (and (exists (?r - receptacle) (exists (?o - object)\n"
        f"  (and{extra} (objectType ?o {o}) (receptacleType ?r {r}) (inReceptacle ?o ?r))))))"
    )


def scene_ids(scene: HouseholdScene) -> dict[str, str]:
    """Scene name (``"apple 1"``, ``"cabinet 3"``) -> PDDL id, for every receptacle and object of ``scene``."""
    counts: dict[str, int] = {}
    for item in (*scene.receptacles, *scene.objects):
        counts[item.type] = max(counts.get(item.type, 0), item.number)
    rtypes = {r.type for r in scene.receptacles}
    clash = rtypes & {o.type for o in scene.objects}
    if clash:
        raise ValueError(f"types {sorted(clash)} are both receptacles and objects; ALFWorld names would collide")
    return {
        item.name: alfred_id(item.type, item.number, counts[item.type]) for item in (*scene.receptacles, *scene.objects)
    }


def default_can_contain(rtypes: Iterable[str], otypes: Iterable[str]) -> set[tuple[str, str]]:
    """``(receptacle type, object type)`` pairs allowed by the scene catalogue's placement table."""
    rset = set(rtypes)
    return {(r, o) for o in set(otypes) for r in PLACEMENT.get(o, ()) if r in rset}


def scene_to_pddl(
    scene: HouseholdScene,
    *,
    semantics: str = "alfworld",
    can_contain: Mapping[str, Iterable[str]] | None = None,
) -> AlfredProblem:
    """Write ``scene`` as a PDDL problem for ALFWorld's ``alfred.pddl`` domain.

    Args:
        scene: a household scene (:func:`~empg.envs.household_scene.generate_scene`).
        semantics: ``"alfworld"`` (ALFWorld's conventions) or ``"household"`` (household-v0's rules); see the module
            docstring.
        can_contain: for ``"alfworld"`` semantics, receptacle type -> object types it accepts (ALFWorld's own table,
            ``alfworld.gen.constants.VAL_RECEPTACLE_OBJECTS`` in our names); default the scene catalogue's placement
            table. The instruction's own pair is always allowed, so the game stays solvable.

    Returns:
        The problem text, the goal text, the task type and the id -> name map.
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r}; choose one of {SEMANTICS}")
    if not isinstance(scene, HouseholdScene):
        raise TypeError(f"scene_to_pddl needs a HouseholdScene, got {type(scene).__name__}")
    ids = scene_ids(scene)
    loc = {r.name: f"loc_bar_{r.location}" for r in scene.receptacles}
    rtypes = sorted({r.type for r in scene.receptacles} | set(_REQUIRED_RTYPES))
    otypes = sorted({o.type for o in scene.objects} | set(_REQUIRED_OTYPES))
    objects = [
        "agent1 - agent",
        *(f"{alfred_class(t)}Type - otype" for t in otypes),
        *(f"{alfred_class(t)}Type - rtype" for t in rtypes),
        *(f"{ids[o.name]} - object" for o in scene.objects),
        *(f"{ids[r.name]} - receptacle" for r in scene.receptacles),
        *(f"{loc[r.name]} - location" for r in scene.receptacles),
        f"{START_LOCATION} - location",
    ]
    init = [f"(atLocation agent1 {START_LOCATION})"]
    init += _receptacle_facts(scene, ids, loc)
    init += _object_facts(scene, ids, loc, semantics)
    init += _can_contain_facts(scene, semantics, can_contain)
    toggle = scene.lamp.partition(" ")[0] if scene.lamp else None
    goal = goal_pddl(scene.task_type, scene.goal_object_type, scene.goal_receptacle_type, toggle)
    name = f"empg_{scene.split}_{scene.seed}".replace("-", "m")
    pddl = (
        f"(define (problem {name})\n(:domain alfred)\n(:objects\n    "
        + "\n    ".join(objects)
        + "\n)\n(:init\n    "
        + "\n    ".join(init)
        + f"\n)\n{goal}\n)\n"
    )
    return AlfredProblem(
        pddl=pddl,
        goal=scene.task.rstrip().rstrip("."),
        task_type=scene.task_type,
        names={v: k for k, v in ids.items()},
    )


def _receptacle_facts(scene: HouseholdScene, ids: dict[str, str], loc: dict[str, str]) -> list[str]:
    facts = []
    for r in scene.receptacles:
        facts.append(f"(receptacleType {ids[r.name]} {alfred_class(r.type)}Type)")
        facts.append(f"(receptacleAtLocation {ids[r.name]} {loc[r.name]})")
        if r.openable:
            facts.append(f"(openable {ids[r.name]})")
    return facts


def _object_facts(scene: HouseholdScene, ids: dict[str, str], loc: dict[str, str], semantics: str) -> list[str]:
    alfworld = semantics == "alfworld"
    cleanable = CLEANABLE | ALFRED_CLEANABLE_EXTRA if alfworld else CLEANABLE
    rtype_of = {r.name: r.type for r in scene.receptacles}
    facts = []
    for o in scene.objects:
        oid = ids[o.name]
        facts.append(f"(objectType {oid} {alfred_class(o.type)}Type)")
        facts.append(f"(inReceptacle {oid} {ids[o.location]})")
        facts.append(f"(objectAtLocation {oid} {loc[o.location]})")
        if o.type in LAMP_TYPES:
            facts.append(f"(toggleable {oid})")
        else:
            facts.append(f"(pickupable {oid})")
        for predicate, types in (("cleanable", cleanable), ("heatable", HEATABLE), ("coolable", COOLABLE)):
            if o.type in types:
                facts.append(f"({predicate} {oid})")
        if not alfworld:
            continue
        if o.type in ALFRED_SLICEABLE:
            facts.append(f"(sliceable {oid})")
        if o.type in ALFRED_MOVABLE_RECEPTACLES:
            facts.append(f"(isReceptacleObject {oid})")
        # ALFWorld's generator marks goal-type objects that start in a fridge as already cool.
        if o.type == scene.goal_object_type and rtype_of[o.location] == "fridge":
            facts.append(f"(isCool {oid})")
    return facts


def _can_contain_facts(scene: HouseholdScene, semantics: str, table: Mapping[str, Iterable[str]] | None) -> list[str]:
    rtypes = {r.type for r in scene.receptacles}
    otypes = {o.type for o in scene.objects if o.type not in LAMP_TYPES}
    if semantics == "alfworld" and table is not None:
        pairs = {(r, o) for r in rtypes for o in table.get(r, ()) if o in otypes}
    else:
        pairs = default_can_contain(rtypes, otypes)
    if scene.goal_receptacle_type is not None:  # the instruction itself must be achievable
        pairs.add((scene.goal_receptacle_type, scene.goal_object_type))
    return [f"(canContain {alfred_class(r)}Type {alfred_class(o)}Type)" for r, o in sorted(pairs)]
