"""``household-v0``: an embedded ALFWorld-like household world (six ALFWorld task types, ALFWorld's text).

## Description
One room (kitchen, living room, bedroom or bathroom) of numbered receptacles (``cabinet 3``, ``fridge 1``,
``sinkbasin 1``, ``desk 1`` …) and 20–40 numbered objects placed at random (:mod:`empg.envs.household_scene`).
Openable receptacles (cabinet, drawer, fridge, microwave, safe) start closed and hide their contents until opened.
The agent holds at most one object. Task types, as in ALFWorld: ``pick_and_place_simple``,
``look_at_obj_in_light``, ``pick_clean_then_place_in_recep`` (at a sinkbasin), ``pick_heat_then_place_in_recep``
(microwave), ``pick_cool_then_place_in_recep`` (fridge), ``pick_two_obj_and_place``. A goal names receptacle
*types* ("put a clean apple in fridge."): any receptacle of that type counts; "put two X in Y" needs both objects in
the same receptacle; "look at X under the desklamp" needs X in hand and a lamp turned on (``use desklamp 1``) at the
agent's location.

## Observation
ALFWorld's text: the welcome (``-= Welcome to TextWorld, ALFRED! =-`` … ``Your task is to: …``), then e.g.
``"You arrive at fridge 1. The fridge 1 is closed."``, ``"On the countertop 2, you see a apple 1, and a knife 2."``,
``"You pick up the apple 1 from the countertop 2."``. Anything not understood or not applicable gives
``"Nothing happens."`` with ``info["valid"] = False`` and no state change.

## Action
ALFWorld's grammar: ``go to R``, ``open R``, ``close R``, ``take O from R``, ``put O in/on R`` (``in`` / ``on``
are accepted too; so is ALFWorld 0.4's ``move O to R``, answered in its phrasing), ``clean O with R``,
``heat O with R``, ``cool O with R``, ``use L``, ``examine O|R``, ``look``, ``inventory``. Case and repeated
whitespace are ignored. ``info["admissible_actions"]`` lists the applicable ones. Semantics follow ALFWorld's PDDL:
``take``/``put``/``open``/``close``/``use`` need the agent at the receptacle; ``take``/``put`` need an openable
receptacle to be open; ``put`` needs a receptacle type that can contain the object (``canContain``, here
:data:`~empg.envs.household_scene.PLACEMENT`); ``clean/heat/cool`` need the object in hand, the agent at a
sinkbasin/microwave/fridge and an object with that affordance (``CLEANABLE``/``HEATABLE``/``COOLABLE``).

## Reward
1.0 on the step that completes the task, else 0.0 (the trainer scales it).

## Episode End
Terminated on success. Truncated by :class:`empg.envs.TimeLimit` after 50 turns (``make`` applies it).

## Arguments
``split``: ``train`` / ``eval_in`` / ``eval_out``. ``eval_out`` instructs only object types or object–receptacle
pairs never instructed in ``train``/``eval_in`` (``OOD_OBJECT_TYPES``, ``OOD_PAIRS`` in the scene module).
``strict_split``: reject seeds of other splits. ``HouseholdEnv.from_scene(scene)`` or
``reset(options={"scene": scene})`` plays a given :class:`HouseholdScene`. ``expert``: what ``expert_action()``
demonstrates: ``"oracle"`` (default) walks straight to the hidden goal object; ``"explore"`` acts only on what the
agent has seen — it searches the receptacles that can hold the goal object in a random order (seeded by the episode
seed), opens closed ones, takes the object once seen, then transforms and delivers it; ``"systematic"`` does the same
but searches in a fixed prior order (the goal object's likely receptacle types first, in ``PLACEMENT`` order, then by
number), so its next ``go to`` follows from the task and the current location alone, which a policy that sees only
the last few steps can imitate. Both are learnable from the observations alone (the oracle's first ``go to`` is not),
so behaviour cloning on them gives an imperfect searcher rather than a policy that guesses hidden locations; they
succeed on every seed within 50 turns.
``scene_size``: ``"full"`` (default) or ``"small"``: at most one receptacle per type and 8-16 objects (an easier,
shorter-prompt variant for tiny models on a CPU; same task types, splits and semantics).

## Version History
v0: first version.
"""

from __future__ import annotations

import random
import re

from empg.envs.core import TextEnv
from empg.envs.household_scene import (
    CLEANABLE,
    COOLABLE,
    HEATABLE,
    LAMP_HOSTS,
    LAMP_TYPES,
    PLACEMENT,
    SCENE_SIZES,
    TRANSFORMER,
    HouseholdScene,
    generate_scene,
)

NOTHING = "Nothing happens."
WELCOME = "-= Welcome to TextWorld, ALFRED! =-"
MAX_ACTION_CHARS = 200

_PATTERNS = (
    ("goto", re.compile(r"go to (.+)")),
    ("open", re.compile(r"open (.+)")),
    ("close", re.compile(r"close (.+)")),
    ("take", re.compile(r"take (.+?) from (.+)")),
    ("put", re.compile(r"put (.+?) (?:in/on|in|on) (.+)")),
    ("move", re.compile(r"move (.+?) to (.+)")),
    ("transform", re.compile(r"(clean|heat|cool) (.+?) with (.+)")),
    ("use", re.compile(r"use (.+)")),
    ("examine", re.compile(r"examine (.+)")),
)
_VERB_TASK = {
    "clean": "pick_clean_then_place_in_recep",
    "heat": "pick_heat_then_place_in_recep",
    "cool": "pick_cool_then_place_in_recep",
}
_TASK_VERB = {v: k for k, v in _VERB_TASK.items()}


def _listing(names: list[str]) -> str:
    """ALFWorld's object list: ``a apple 1``, ``a apple 1, and a knife 2``, ``a x, a y, and a z``; else nothing."""
    if not names:
        return "nothing"
    if len(names) == 1:
        return f"a {names[0]}"
    return ", ".join(f"a {n}" for n in names[:-1]) + f", and a {names[-1]}"


class HouseholdEnv(TextEnv):
    """ALFWorld-like household env; see the module docstring for the full description."""

    family = "household"
    max_turns = 50

    EXPERTS = ("oracle", "explore", "systematic")

    def __init__(
        self, split: str = "train", *, strict_split: bool = True, expert: str = "oracle", scene_size: str = "full"
    ):
        super().__init__(split, strict_split=strict_split)
        if expert not in self.EXPERTS:
            raise ValueError(
                f"expert={expert!r} is not one of {self.EXPERTS}; pass env kwargs expert=oracle|explore|systematic"
            )
        if scene_size not in SCENE_SIZES:
            raise ValueError(f"scene_size={scene_size!r} is not one of {SCENE_SIZES}; pass scene_size=full|small")
        self.expert = expert
        self.scene_size = scene_size
        self._fixed_scene: HouseholdScene | None = None
        self.scene: HouseholdScene | None = None

    @classmethod
    def from_scene(cls, scene: HouseholdScene, *, expert: str = "oracle") -> HouseholdEnv:
        """An env whose every ``reset`` plays ``scene`` (the seed passed to ``reset`` is only recorded)."""
        if not isinstance(scene, HouseholdScene):
            raise TypeError(f"from_scene needs a HouseholdScene, got {type(scene).__name__}")
        env = cls(split=scene.split, strict_split=False, expert=expert)
        env._fixed_scene = scene
        return env

    # ----------------------------------------------------------------- reset
    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        scene = options.get("scene", self._fixed_scene)
        if scene is None:
            scene = generate_scene(seed, self.split, self.scene_size)
        elif not isinstance(scene, HouseholdScene):
            raise TypeError(f"options['scene'] must be a HouseholdScene, got {type(scene).__name__}")
        self.scene = scene
        self._load(scene)
        self._explore_rng = random.Random(seed * 7919 + 17)
        self._overview = (
            "You are in the middle of a room. Looking quickly around you, you see "
            f"{_listing([r.name for r in scene.receptacles])}."
        )
        return f"{WELCOME}\n\n{self._overview}\n\nYour task is to: {scene.task}", self._info(True)

    def _load(self, scene: HouseholdScene) -> None:
        self._recs = {r.name: r for r in scene.receptacles}
        self._contents: dict[str, list[str]] = {name: [] for name in self._recs}
        self._obj_type: dict[str, str] = {}
        self._obj_loc: dict[str, str | None] = {}
        for o in scene.objects:
            self._contents[o.location].append(o.name)
            self._obj_type[o.name] = o.type
            self._obj_loc[o.name] = o.location
        self._goal_objs = [o.name for o in scene.objects if o.type == scene.goal_object_type]
        self._lamps = [o.name for o in scene.objects if o.type in LAMP_TYPES]
        self._goto = {None: [f"go to {n}" for n in self._recs]}
        for n in self._recs:
            self._goto[n] = [a for a in self._goto[None] if a[6:] != n]
        self._opened: set[str] = set()
        self._loc: str | None = None
        self._holding: str | None = None
        self._clean: set[str] = set()
        self._hot: set[str] = set()
        self._cool: set[str] = set()
        self._lamps_on: set[str] = set()
        self._won = False
        self._checked: set[str] = set()  # receptacles whose contents the agent has seen
        self._target: str | None = None  # the exploring expert's current destination

    # ----------------------------------------------------------------- step
    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        obs = self._apply(action)
        valid = obs is not None
        if not valid:
            obs = NOTHING
        elif not self._won and self._goal_reached():
            self._won = True
        if self._loc is not None and self._accessible(self._loc):
            self._checked.add(self._loc)
        return obs, 1.0 if (valid and self._won) else 0.0, self._won, self._info(valid)

    def _info(self, valid: bool) -> dict:
        scene = self.scene
        return {
            "task": scene.task,
            "task_type": scene.task_type,
            "admissible_actions": self.admissible_actions(),
            "valid": valid,
            "won": self._won,
            "room": scene.room,
            "split": scene.split,
        }

    def _apply(self, action: str) -> str | None:
        """Apply one command; return its observation, or ``None`` when it is invalid (state unchanged)."""
        if len(action) > MAX_ACTION_CHARS:
            return None
        text = " ".join(action.lower().split())
        if text == "look":
            if self._loc is None:
                return self._overview
            return f"You are facing the {self._loc}. Next to it, you see nothing."
        if text == "inventory":
            return f"You are carrying: a {self._holding}." if self._holding else "You are not carrying anything."
        for kind, pattern in _PATTERNS:
            m = pattern.fullmatch(text)
            if m:
                return getattr(self, f"_do_{kind}")(*m.groups())
        return None

    def _accessible(self, rec: str) -> bool:
        return not self._recs[rec].openable or rec in self._opened

    def _describe(self, rec: str) -> str:
        if self._recs[rec].openable:
            if rec not in self._opened:
                return f"The {rec} is closed."
            return f"The {rec} is open. In it, you see {_listing(self._contents[rec])}."
        return f"On the {rec}, you see {_listing(self._contents[rec])}."

    def _do_goto(self, rec: str) -> str | None:
        if rec not in self._recs or rec == self._loc:
            return None
        self._loc = rec
        return f"You arrive at {rec}. {self._describe(rec)}"

    def _do_open(self, rec: str) -> str | None:
        if rec != self._loc or not self._recs[rec].openable or rec in self._opened:
            return None
        self._opened.add(rec)
        return f"You open the {rec}. {self._describe(rec)}"

    def _do_close(self, rec: str) -> str | None:
        if rec != self._loc or rec not in self._opened:
            return None
        self._opened.discard(rec)
        return f"You close the {rec}."

    def _do_take(self, obj: str, rec: str) -> str | None:
        if rec != self._loc or self._holding is not None or self._obj_loc.get(obj) != rec:
            return None
        if not self._accessible(rec) or self._obj_type[obj] in LAMP_TYPES:
            return None
        self._contents[rec].remove(obj)
        self._obj_loc[obj] = None
        self._holding = obj
        return f"You pick up the {obj} from the {rec}."

    def _can_put(self, obj: str, rec: str) -> bool:
        """ALFWorld's PutObject: holding ``obj``, at ``rec``, ``rec`` open if openable, and ``canContain``."""
        return (
            obj == self._holding
            and rec == self._loc
            and self._accessible(rec)
            and self._recs[rec].type in PLACEMENT.get(self._obj_type[obj], ())
        )

    def _do_put(self, obj: str, rec: str) -> str | None:
        if not self._can_put(obj, rec):
            return None
        self._contents[rec].append(obj)
        self._obj_loc[obj] = rec
        self._holding = None
        return f"You put the {obj} in/on the {rec}."

    def _do_move(self, obj: str, rec: str) -> str | None:
        """ALFWorld 0.4's spelling of ``put``: ``move O to R`` → ``You move the O to the R.``"""
        if self._do_put(obj, rec) is None:
            return None
        return f"You move the {obj} to the {rec}."

    def _do_transform(self, verb: str, obj: str, rec: str) -> str | None:
        if obj != self._holding or rec != self._loc or not self._can_transform(verb, obj, rec):
            return None
        if verb == "clean":
            self._clean.add(obj)
        elif verb == "heat":
            self._hot.add(obj)
            self._cool.discard(obj)
        else:
            self._cool.add(obj)
            self._hot.discard(obj)
        return f"You {verb} the {obj} using the {rec}."

    def _can_transform(self, verb: str, obj: str, rec: str) -> bool:
        otype = self._obj_type[obj]
        afford = CLEANABLE if verb == "clean" else HEATABLE if verb == "heat" else COOLABLE
        return otype in afford and self._recs[rec].type == TRANSFORMER[_VERB_TASK[verb]]

    def _do_use(self, lamp: str) -> str | None:
        if lamp not in self._lamps or self._loc is None or self._obj_loc[lamp] != self._loc:
            return None
        self._lamps_on.add(lamp)  # ALFWorld's goal tests isToggled, which stays true, and always says "turn on"
        return f"You turn on the {lamp}."

    def _do_examine(self, name: str) -> str | None:
        if name == self._loc:
            return self._describe(name)
        visible = self._loc is not None and self._obj_loc.get(name) == self._loc and self._accessible(self._loc)
        if name != self._holding and not visible:
            return None
        if name in self._lamps:
            return f"This {name} is {'on' if name in self._lamps_on else 'off'}."
        clean, hot, cool = name in self._clean, name in self._hot, name in self._cool
        state = "hot and clean" if clean and hot else "cool and clean" if clean and cool else None
        state = state or ("hot" if hot else "clean" if clean else "cold" if cool else None)
        return f"This is a {state} {name}." if state else f"There's nothing special about {name}."

    # ----------------------------------------------------------------- goal
    def _satisfies(self, obj: str) -> bool:
        """Whether ``obj`` (of the goal type) has the property the task needs (clean / hot / cool)."""
        verb = _TASK_VERB.get(self.scene.task_type)
        if verb is None:
            return True
        return obj in (self._clean if verb == "clean" else self._hot if verb == "heat" else self._cool)

    def _placed(self) -> dict[str, int]:
        """Goal-receptacle name -> number of goal objects in it that satisfy the task's property."""
        goal_rtype = self.scene.goal_receptacle_type
        out: dict[str, int] = {}
        for o in self._goal_objs:
            rec = self._obj_loc[o]
            if rec is not None and self._recs[rec].type == goal_rtype and self._satisfies(o):
                out[rec] = out.get(rec, 0) + 1
        return out

    def _goal_reached(self) -> bool:
        task_type = self.scene.task_type
        if task_type == "look_at_obj_in_light":
            return (
                self._holding in self._goal_objs
                and self._loc is not None
                and any(self._obj_loc[lamp] == self._loc for lamp in self._lamps_on)
            )
        need = 2 if task_type == "pick_two_obj_and_place" else 1
        return any(n >= need for n in self._placed().values())

    # ----------------------------------------------------------------- admissible actions
    def admissible_actions(self) -> list[str]:
        """The commands that are valid in the current state (ALFWorld-style), computed from the state."""
        loc, held = self._loc, self._holding
        acts = list(self._goto[loc])
        if loc is not None:
            rec = self._recs[loc]
            if rec.openable:
                acts.append(f"close {loc}" if loc in self._opened else f"open {loc}")
            if self._accessible(loc):
                for o in self._contents[loc]:
                    if self._obj_type[o] in LAMP_TYPES:
                        acts.append(f"use {o}")
                    elif held is None:
                        acts.append(f"take {o} from {loc}")
                if held is not None and self._can_put(held, loc):
                    acts.append(f"put {held} in/on {loc}")
            if held is not None:
                for verb in ("clean", "heat", "cool"):
                    if self._can_transform(verb, held, loc):
                        acts.append(f"{verb} {held} with {loc}")
            acts.append(f"examine {loc}")
        if held is not None:
            acts.append(f"examine {held}")
        acts += ["inventory", "look"]
        return acts

    # ----------------------------------------------------------------- expert
    def expert_action(self) -> str:
        """An oracle next command from the hidden state: fetch a goal object, transform it, deliver it.

        Not optimal (it visits receptacles in scene order) but always succeeds well within 50 turns.
        """
        if self.scene is None:
            raise RuntimeError("expert_action() called before reset()")
        if self._won:
            return "look"
        held = self._holding
        if held is not None and held not in self._goal_objs:
            return self._drop_action(held)
        if held is not None:
            if self.expert != "oracle" and self.scene.task_type == "look_at_obj_in_light":
                return self._explore_lamp_action()
            return self._deliver_action(held)
        return self._fetch_action() if self.expert == "oracle" else self._explore_fetch_action()

    # The exploring expert: decisions from what the agent has seen (``_checked`` receptacles) and the task text.
    def _explore_fetch_action(self) -> str:
        pick_two = self.scene.task_type == "pick_two_obj_and_place"
        dest = self._dest() if pick_two and self._placed() else None
        todo = [o for o in self._goal_objs if not (dest and self._obj_loc[o] == dest)]
        seen = [o for o in todo if self._obj_loc[o] in self._checked]
        if seen:
            here = [o for o in seen if self._obj_loc[o] == self._loc]
            obj = (here or seen)[0]
            return self._go_or(self._obj_loc[obj], f"take {obj} from {self._obj_loc[obj]}")
        goal_rtype = self.scene.goal_receptacle_type
        homes = [t for t in PLACEMENT[self.scene.goal_object_type] if t != goal_rtype]
        everything = list({rec.type: None for rec in self._recs.values()})
        return self._explore_step(homes) or self._explore_step(everything) or self._fetch_action()

    def _explore_lamp_action(self) -> str:
        seen = [lamp for lamp in self._lamps if self._obj_loc[lamp] in self._checked]
        if seen:
            return self._go_or(self._obj_loc[seen[0]], f"use {seen[0]}")
        return self._explore_step(list(LAMP_HOSTS)) or self._deliver_action(self._holding)

    def _explore_step(self, rtypes: list[str]) -> str | None:
        """Open the current receptacle if it is an unchecked candidate, else go to a random unchecked candidate."""
        candidates = [r for r, rec in self._recs.items() if rec.type in rtypes and r not in self._checked]
        if not candidates:
            return None
        if self._loc in candidates:
            return f"open {self._loc}"  # unchecked and here: it is closed
        if self.expert == "systematic":  # first in the prior order: likely types first, then by number
            rank = {t: i for i, t in enumerate(rtypes)}
            self._target = min(candidates, key=lambda r: (rank[self._recs[r].type], self._recs[r].number))
        elif self._target not in candidates:
            self._target = self._explore_rng.choice(candidates)
        return f"go to {self._target}"

    def _go_or(self, rec: str, action: str) -> str:
        """``go to rec`` unless there; then ``open rec`` if closed; else ``action``."""
        if self._loc != rec:
            return f"go to {rec}"
        if not self._accessible(rec):
            return f"open {rec}"
        return action

    def _drop_action(self, held: str) -> str:
        """Put a wrongly held object into the first receptacle that can contain it (the current one if it can)."""
        homes = PLACEMENT.get(self._obj_type[held], ())
        fits = [r for r, rec in self._recs.items() if rec.type in homes]
        rec = self._loc if self._loc in fits else fits[0] if fits else None
        if rec is None:
            raise RuntimeError(f"no receptacle in this scene can contain {held!r}; fix the scene's objects")
        return self._go_or(rec, f"put {held} in/on {rec}")

    def _dest(self) -> str:
        """Where the expert delivers goal objects: the goal receptacle already holding most of them, else the first."""
        placed = self._placed()
        if placed:
            return max(placed, key=lambda r: placed[r])
        goal_rtype = self.scene.goal_receptacle_type
        return next(r for r, rec in self._recs.items() if rec.type == goal_rtype)

    def _deliver_action(self, held: str) -> str:
        task_type = self.scene.task_type
        if task_type == "look_at_obj_in_light":
            lamp = self.scene.lamp if self.scene.lamp in self._lamps else self._lamps[0]
            return self._go_or(self._obj_loc[lamp], f"use {lamp}")
        verb = _TASK_VERB.get(task_type)
        if verb is not None and not self._satisfies(held):
            station = next(r for r, rec in self._recs.items() if rec.type == TRANSFORMER[task_type])
            return f"go to {station}" if self._loc != station else f"{verb} {held} with {station}"
        dest = self._dest()
        return self._go_or(dest, f"put {held} in/on {dest}")

    def _fetch_action(self) -> str:
        pick_two = self.scene.task_type == "pick_two_obj_and_place"
        dest = self._dest() if pick_two else None
        todo = [o for o in self._goal_objs if not (pick_two and self._obj_loc[o] == dest)]
        here = [o for o in todo if self._obj_loc[o] == self._loc]
        obj = (here or todo)[0]
        rec = self._obj_loc[obj]
        return self._go_or(rec, f"take {obj} from {rec}")
