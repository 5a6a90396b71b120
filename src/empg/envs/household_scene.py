"""The ``household-v0`` world as plain data: the catalogue, :class:`HouseholdScene` and :func:`generate_scene`.

A scene is everything the engine (:mod:`empg.envs.household`) and a PDDL converter need: the numbered receptacles
of one room (with type, number, openable flag and location index), the objects (type, number, the receptacle they
start in), the task type, the goal object type, the goal receptacle type, the lamp (for examine-in-light tasks) and
the instruction text. :func:`generate_scene` is a pure function of ``(seed, split)``.

Task types use ALFWorld's names (:data:`TASK_TYPES`). Object affordances (:data:`CLEANABLE`, :data:`HEATABLE`,
:data:`COOLABLE`) gate ``clean/heat/cool X with Y``; lamps (:data:`LAMP_TYPES`) are objects that cannot be taken.

Out-of-distribution split (``eval_out``): an instruction ``(object type, receptacle type)`` is OOD when the object
type is in :data:`OOD_OBJECT_TYPES` or the pair is in :data:`OOD_PAIRS`. ``train`` and ``eval_in`` scenes only
ever *instruct* in-distribution combinations (OOD objects may still appear as distractors); ``eval_out`` scenes only
instruct OOD combinations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from empg.envs.core import check_split

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# Receptacle types that must be opened before their contents are visible / reachable.
OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe"})

# room -> ((receptacle type, min count, max count), ...); a count range of (0, k) makes the type optional.
ROOMS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "kitchen": (
        ("cabinet", 3, 8),
        ("drawer", 2, 5),
        ("countertop", 1, 3),
        ("fridge", 1, 1),
        ("microwave", 1, 1),
        ("sinkbasin", 1, 1),
        ("stoveburner", 2, 4),
        ("garbagecan", 1, 1),
        ("coffeemachine", 1, 1),
        ("toaster", 1, 1),
        ("diningtable", 0, 1),
        ("shelf", 0, 3),
    ),
    "livingroom": (
        ("sofa", 1, 1),
        ("armchair", 0, 2),
        ("coffeetable", 1, 1),
        ("sidetable", 1, 2),
        ("shelf", 1, 4),
        ("drawer", 1, 4),
        ("cabinet", 0, 3),
        ("dresser", 0, 1),
        ("garbagecan", 1, 1),
        ("tvstand", 0, 1),
        ("desk", 0, 1),
    ),
    "bedroom": (
        ("bed", 1, 1),
        ("desk", 1, 1),
        ("sidetable", 1, 2),
        ("dresser", 1, 1),
        ("drawer", 2, 6),
        ("shelf", 1, 4),
        ("garbagecan", 1, 1),
        ("armchair", 0, 1),
        ("safe", 0, 1),
    ),
    "bathroom": (
        ("cabinet", 2, 4),
        ("countertop", 1, 1),
        ("sinkbasin", 1, 2),
        ("toilet", 1, 1),
        ("bathtubbasin", 1, 1),
        ("towelholder", 1, 1),
        ("handtowelholder", 1, 1),
        ("toiletpaperhanger", 1, 1),
        ("garbagecan", 1, 1),
        ("drawer", 0, 3),
        ("shelf", 0, 2),
    ),
}

_KITCHEN_SURFACES = ("countertop", "diningtable")
_FOOD = ("countertop", "diningtable", "fridge", "microwave", "garbagecan", "sinkbasin")
_DISH = ("cabinet", "countertop", "diningtable", "sinkbasin", "shelf", "fridge", "microwave")
_UTENSIL = ("drawer", "countertop", "diningtable", "sinkbasin")
_SMALL = ("desk", "sidetable", "dresser", "shelf", "drawer", "coffeetable", "tvstand", "cabinet", "safe")

# object type -> receptacle types it may start in / be put in by an instruction.
PLACEMENT: dict[str, tuple[str, ...]] = {
    # food
    "apple": _FOOD,
    "bread": (*_FOOD[:-2], "cabinet"),
    "egg": _FOOD,
    "lettuce": _FOOD,
    "potato": _FOOD,
    "tomato": _FOOD,
    # dishes
    "mug": (*_DISH, "coffeemachine", "desk", "sidetable"),
    "cup": (*_DISH, "coffeemachine", "desk"),
    "bowl": (*_DISH, "desk", "sidetable", "coffeetable"),
    "plate": (*_DISH, "coffeetable"),
    "pan": ("stoveburner", "cabinet", "countertop", "sinkbasin", "fridge"),
    "pot": ("stoveburner", "cabinet", "countertop", "sinkbasin", "fridge", "shelf"),
    "kettle": ("stoveburner", "cabinet", "countertop", "shelf"),
    # utensils
    "knife": _UTENSIL,
    "butterknife": _UTENSIL,
    "fork": _UTENSIL,
    "spoon": _UTENSIL,
    "spatula": _UTENSIL,
    "ladle": _UTENSIL,
    # kitchen misc
    "dishsponge": ("sinkbasin", "countertop", "cabinet", "drawer", "diningtable"),
    "saltshaker": ("countertop", "cabinet", "shelf", "diningtable", "drawer"),
    "peppershaker": ("countertop", "cabinet", "shelf", "diningtable", "drawer"),
    "winebottle": ("countertop", "cabinet", "fridge", "shelf", "diningtable"),
    # living / bedroom
    "remotecontrol": ("sofa", "armchair", "coffeetable", "sidetable", "tvstand", "dresser", "drawer"),
    "keychain": ("sofa", "coffeetable", "sidetable", "dresser", "drawer", "shelf", "safe", "desk"),
    "creditcard": ("sofa", "coffeetable", "sidetable", "dresser", "drawer", "shelf", "desk", "armchair"),
    "newspaper": ("sofa", "coffeetable", "sidetable", "armchair", "garbagecan", "dresser"),
    "box": ("sofa", "coffeetable", "sidetable", "shelf", "dresser", "armchair", "desk"),
    "vase": ("shelf", "coffeetable", "sidetable", "dresser", "desk", "cabinet"),
    "statue": ("shelf", "coffeetable", "sidetable", "dresser", "desk", "tvstand"),
    "watch": ("coffeetable", "sidetable", "dresser", "drawer", "shelf", "safe", "desk"),
    "laptop": ("sofa", "bed", "desk", "coffeetable", "armchair", "sidetable"),
    "pillow": ("sofa", "bed", "armchair"),
    "book": ("bed", "desk", "shelf", "sidetable", "coffeetable", "dresser", "drawer", "sofa"),
    "cellphone": ("bed", "desk", "sidetable", "dresser", "drawer", "sofa", "coffeetable", "safe"),
    "pen": ("desk", "sidetable", "drawer", "shelf", "dresser", "garbagecan"),
    "pencil": ("desk", "sidetable", "drawer", "shelf", "dresser", "garbagecan"),
    "cd": ("desk", "sidetable", "drawer", "shelf", "dresser", "safe", "garbagecan"),
    "alarmclock": ("desk", "sidetable", "dresser", "shelf"),
    "tissuebox": ("sidetable", "coffeetable", "dresser", "shelf", "desk", "toilet", "countertop"),
    "candle": ("shelf", "coffeetable", "sidetable", "toilet", "countertop", "cabinet", "bathtubbasin"),
    # bathroom
    "soapbar": ("sinkbasin", "countertop", "toilet", "bathtubbasin", "cabinet", "garbagecan"),
    "soapbottle": ("countertop", "cabinet", "toilet", "shelf", "garbagecan"),
    "cloth": ("countertop", "cabinet", "bathtubbasin", "sinkbasin", "drawer", "toilet"),
    "handtowel": ("handtowelholder", "countertop", "cabinet"),
    "towel": ("towelholder", "countertop", "cabinet", "shelf"),
    "toiletpaper": ("toiletpaperhanger", "toilet", "cabinet", "countertop", "shelf", "garbagecan"),
    "spraybottle": ("cabinet", "toilet", "countertop", "shelf", "garbagecan"),
}

LAMP_TYPES = frozenset({"desklamp"})
LAMP_HOSTS = ("desk", "sidetable", "dresser")
CLEANABLE = frozenset(
    {
        *("apple", "egg", "lettuce", "potato", "tomato"),
        *("mug", "cup", "bowl", "plate", "pan", "pot"),
        *("knife", "butterknife", "fork", "spoon", "spatula", "ladle", "dishsponge"),
        *("soapbar", "cloth"),
    }
)
HEATABLE = frozenset({"apple", "bread", "egg", "potato", "tomato", "mug", "cup", "plate"})
COOLABLE = frozenset({*HEATABLE, "lettuce", "bowl", "pan", "pot", "winebottle"})
EXAMINABLE = frozenset(
    {
        *("alarmclock", "book", "bowl", "box", "cd", "cellphone", "creditcard", "keychain", "laptop"),
        *("mug", "cup", "newspaper", "pen", "pencil", "pillow", "remotecontrol", "statue", "vase", "watch"),
    }
)

# Out-of-distribution instructions: these object types are never instructed in train/eval_in, nor these pairs.
OOD_OBJECT_TYPES = frozenset({"tomato", "cup", "pan", "cellphone", "pencil", "soapbar"})
OOD_PAIRS = frozenset(
    {
        ("apple", "diningtable"),
        ("mug", "shelf"),
        ("book", "bed"),
        ("spoon", "drawer"),
        ("lettuce", "countertop"),
        ("remotecontrol", "sofa"),
        ("cloth", "bathtubbasin"),
        ("plate", "cabinet"),
        ("keychain", "dresser"),
        ("bowl", "fridge"),
    }
)

# Per task type: rooms it can happen in, the object affordance it needs, and the receptacle type that transforms.
_TASK_ROOMS = {
    "pick_and_place_simple": ("kitchen", "livingroom", "bedroom", "bathroom"),
    "look_at_obj_in_light": ("livingroom", "bedroom"),
    "pick_clean_then_place_in_recep": ("kitchen", "bathroom"),
    "pick_heat_then_place_in_recep": ("kitchen",),
    "pick_cool_then_place_in_recep": ("kitchen",),
    "pick_two_obj_and_place": ("kitchen", "livingroom", "bedroom", "bathroom"),
}
_TASK_AFFORDANCE: dict[str, frozenset[str] | None] = {
    "pick_and_place_simple": None,
    "look_at_obj_in_light": EXAMINABLE,
    "pick_clean_then_place_in_recep": CLEANABLE,
    "pick_heat_then_place_in_recep": HEATABLE,
    "pick_cool_then_place_in_recep": COOLABLE,
    "pick_two_obj_and_place": None,
}
TRANSFORMER = {
    "pick_clean_then_place_in_recep": "sinkbasin",
    "pick_heat_then_place_in_recep": "microwave",
    "pick_cool_then_place_in_recep": "fridge",
}
_TEMPLATES = {
    "pick_and_place_simple": ("put a {o} in {r}.", "put some {o} on {r}."),
    "look_at_obj_in_light": ("look at {o} under the {l}.", "examine the {o} with the {l}."),
    "pick_clean_then_place_in_recep": ("put a clean {o} in {r}.", "clean some {o} and put it in {r}."),
    "pick_heat_then_place_in_recep": ("put a hot {o} in {r}.", "heat some {o} and put it in {r}."),
    "pick_cool_then_place_in_recep": ("put a cool {o} in {r}.", "cool some {o} and put it in {r}."),
    "pick_two_obj_and_place": ("put two {o} in {r}.", "find two {o} and put them in {r}."),
}
MIN_OBJECTS, MAX_OBJECTS = 20, 40
SMALL_OBJECTS = (8, 16)  # object count range of scene_size='small'


@dataclass(frozen=True)
class Receptacle:
    """A numbered receptacle. ``location`` is its index in the scene (each receptacle is its own location)."""

    type: str
    number: int
    openable: bool
    location: int

    @property
    def name(self) -> str:
        return f"{self.type} {self.number}"


@dataclass(frozen=True)
class SceneObject:
    """A numbered object that starts in/on the receptacle named ``location`` (e.g. ``"countertop 2"``)."""

    type: str
    number: int
    location: str

    @property
    def name(self) -> str:
        return f"{self.type} {self.number}"

    @property
    def pickupable(self) -> bool:
        return self.type not in LAMP_TYPES


@dataclass(frozen=True)
class HouseholdScene:
    """One household task: room layout, objects, goal. Plain data; build it with :func:`generate_scene`.

    Attributes:
        seed: the seed it was generated from (``-1`` for hand-built scenes).
        split: ``train`` / ``eval_in`` / ``eval_out``.
        room: ``kitchen`` / ``livingroom`` / ``bedroom`` / ``bathroom``.
        receptacles: in the order the welcome text lists them; ``receptacles[i].location == i``.
        objects: every object, lamps included, each with its starting receptacle name.
        task_type: one of :data:`TASK_TYPES`.
        goal_object_type: e.g. ``"apple"``.
        goal_receptacle_type: e.g. ``"fridge"``; ``None`` for ``look_at_obj_in_light``.
        lamp: name of the lamp object for ``look_at_obj_in_light`` (e.g. ``"desklamp 1"``), else ``None``.
        task: the instruction, ALFWorld phrasing, e.g. ``"put a clean apple in fridge."``.
    """

    seed: int
    split: str
    room: str
    receptacles: tuple[Receptacle, ...]
    objects: tuple[SceneObject, ...]
    task_type: str
    goal_object_type: str
    goal_receptacle_type: str | None
    lamp: str | None
    task: str

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"unknown task_type {self.task_type!r}; choose one of {TASK_TYPES}")
        names = {r.name for r in self.receptacles}
        if len(names) != len(self.receptacles):
            raise ValueError("receptacle names must be unique (type + number)")
        for i, r in enumerate(self.receptacles):
            if r.location != i:
                raise ValueError(f"receptacle {r.name!r} has location {r.location}, expected its index {i}")
        seen: set[str] = set()
        for o in self.objects:
            if o.type not in PLACEMENT and o.type not in LAMP_TYPES:
                raise ValueError(f"unknown object type {o.type!r}; add it to PLACEMENT (receptacle types it fits)")
            if o.location not in names:
                raise ValueError(f"object {o.name!r} is in unknown receptacle {o.location!r}")
            if o.name in seen or o.name in names:
                raise ValueError(f"duplicate object name {o.name!r}")
            seen.add(o.name)
        if self.task_type == "look_at_obj_in_light":
            if self.lamp is None or self.lamp not in seen:
                raise ValueError("look_at_obj_in_light scenes need `lamp` naming one of the objects")
        elif self.goal_receptacle_type not in {r.type for r in self.receptacles}:
            raise ValueError(f"{self.task_type} scenes need a goal_receptacle_type present in the room")
        station = TRANSFORMER.get(self.task_type)
        if station is not None and station not in {r.type for r in self.receptacles}:
            raise ValueError(f"{self.task_type} scenes need a {station} receptacle")

    @property
    def is_ood(self) -> bool:
        return is_ood_instruction(self.goal_object_type, self.goal_receptacle_type)


def is_ood_instruction(object_type: str, receptacle_type: str | None) -> bool:
    """Whether an instruction about ``object_type`` (into ``receptacle_type``) belongs to the ``eval_out`` split."""
    return object_type in OOD_OBJECT_TYPES or (object_type, receptacle_type) in OOD_PAIRS


# ----------------------------------------------------------------------------- generation
SCENE_SIZES = ("full", "small")


def generate_scene(seed: int, split: str, size: str = "full") -> HouseholdScene:
    """Build the scene for ``seed`` in ``split``: a pure, deterministic function (same inputs → equal scenes).

    Args:
        seed: non-negative int; the env only passes seeds of the matching split, but any seed works here.
        split: ``train`` / ``eval_in`` (in-distribution instructions) or ``eval_out`` (OOD instructions).
        size: ``"full"`` (ALFWorld-like: 10-30 receptacles, 20-40 objects) or ``"small"`` (at most one receptacle
            of each type and 8-16 objects: shorter prompts and searches, for tiny models on a CPU).
    """
    check_split(split)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if size not in SCENE_SIZES:
        raise ValueError(f"scene size {size!r} is not one of {SCENE_SIZES}")
    small = size == "small"
    rng = random.Random(f"household-v0/{split}/{seed}" + ("/small" if small else ""))
    task_type = rng.choice(TASK_TYPES)
    while True:  # a few rooms lack candidates for a task (e.g. no lamp host); resample the room
        room = rng.choice(_TASK_ROOMS[task_type])
        receptacles = _sample_receptacles(rng, room, small=small)
        goals = _goal_candidates(task_type, {r.type for r in receptacles}, ood=split == "eval_out")
        if goals:
            break
    goal_obj, goal_rec = rng.choice(goals)
    objects, lamp = _place_objects(rng, task_type, receptacles, goal_obj, goal_rec, small=small)
    template = rng.choice(_TEMPLATES[task_type])
    lamp_type = lamp.partition(" ")[0] if lamp else "desklamp"
    task = template.format(o=goal_obj, r=goal_rec, l=lamp_type)
    return HouseholdScene(
        seed=seed,
        split=split,
        room=room,
        receptacles=receptacles,
        objects=objects,
        task_type=task_type,
        goal_object_type=goal_obj,
        goal_receptacle_type=goal_rec,
        lamp=lamp if task_type == "look_at_obj_in_light" else None,
        task=task,
    )


def _sample_receptacles(rng: random.Random, room: str, *, small: bool = False) -> tuple[Receptacle, ...]:
    kinds = list(ROOMS[room])
    rng.shuffle(kinds)
    out: list[Receptacle] = []
    for rtype, lo, hi in kinds:
        for number in range(1, rng.randint(min(lo, 1), 1) + 1 if small else rng.randint(lo, hi) + 1):
            out.append(Receptacle(rtype, number, rtype in OPENABLE, len(out)))
    return tuple(out)


def _goal_candidates(task_type: str, rtypes: set[str], *, ood: bool) -> list[tuple[str, str | None]]:
    """All (object type, receptacle type) instructions possible for this task in a room with ``rtypes``."""
    afford = _TASK_AFFORDANCE[task_type]
    transformer = TRANSFORMER.get(task_type)
    if transformer is not None and transformer not in rtypes:
        return []
    out: list[tuple[str, str | None]] = []
    for otype, places in PLACEMENT.items():
        if afford is not None and otype not in afford:
            continue
        homes = [r for r in places if r in rtypes]
        if task_type == "look_at_obj_in_light":
            if homes and any(h in rtypes for h in LAMP_HOSTS) and is_ood_instruction(otype, None) == ood:
                out.append((otype, None))
            continue
        min_homes = 2  # the object must be able to start somewhere other than the goal receptacle type
        if len(homes) < min_homes:
            continue
        for rtype in homes:
            if rtype != transformer and is_ood_instruction(otype, rtype) == ood:
                out.append((otype, rtype))
    return out


def _place_objects(
    rng: random.Random,
    task_type: str,
    receptacles: tuple[Receptacle, ...],
    goal_obj: str,
    goal_rec: str | None,
    *,
    small: bool = False,
) -> tuple[tuple[SceneObject, ...], str | None]:
    by_type: dict[str, list[Receptacle]] = {}
    for r in receptacles:
        by_type.setdefault(r.type, []).append(r)
    counts: dict[str, int] = {}
    objects: list[SceneObject] = []

    def add(otype: str, allowed: list[Receptacle]) -> SceneObject:
        counts[otype] = counts.get(otype, 0) + 1
        obj = SceneObject(otype, counts[otype], rng.choice(allowed).name)
        objects.append(obj)
        return obj

    def homes(otype: str) -> list[Receptacle]:
        # Never start an instance of the goal type in the goal receptacle type: the task would be solved already.
        return [
            r
            for t in PLACEMENT[otype]
            if t in by_type and not (otype == goal_obj and t == goal_rec)
            for r in by_type[t]
        ]

    lamp = None
    hosts = [r for t in LAMP_HOSTS for r in by_type.get(t, ())]
    if hosts and (task_type == "look_at_obj_in_light" or rng.random() < 0.5):
        lamp = add("desklamp", hosts).name
    n_goal = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    for _ in range(n_goal):
        add(goal_obj, homes(goal_obj))
    present = [t for t in PLACEMENT if homes(t)]
    n_total = rng.randint(*(SMALL_OBJECTS if small else (MIN_OBJECTS, MAX_OBJECTS)))
    while len(objects) < n_total:
        add(otype := rng.choice(present), homes(otype))
    rng.shuffle(objects)
    return tuple(objects), lamp
