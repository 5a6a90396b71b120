"""``alfworld-v0``: ALFWorld (Shridhar et al., 2021) played by its own engine — ``alfworld`` + ``textworld``.

Description:
    ALFWorld's text games: ALFWorld's PDDL domain (``alfred.pddl``) and grammar (``alfred.twl2``), run by TextWorld's
    ``PddlEnv`` with Fast Downward, object names from ALFWorld's ``AlfredDemangler``. Two sources of games:

    * ``"official"``: ALFWorld's game files (``json_2.1.1/<split>/**/game.tw-pddl``) under ``data_dir`` or
      ``$ALFWORLD_DATA`` (``alfworld-download``). As in ALFWorld, games with movable receptacles or slicing and games
      not marked solvable are skipped. Splits: ``train`` → ``train``, ``eval_in`` → ``valid_seen``, ``eval_out`` →
      ``valid_unseen``; the ``k``-th seed of a split plays the split's ``k mod n``-th game (sorted paths).
    * ``"generated"``: the household scene of ``household-v0`` for the same seed and split
      (:func:`~empg.envs.household_scene.generate_scene`) written as a PDDL problem for ALFWorld's domain
      (:func:`~empg.envs.adapters.alfworld_pddl.scene_to_pddl`), so the env works offline without ALFWorld's data.

    ``"auto"`` (default) plays official games when their files are found, else generated ones.

Observation:
    ALFWorld's text: ``-= Welcome to TextWorld, ALFRED! =-`` … ``Your task is to: put a hot apple in fridge.``, then
    e.g. ``You arrive at fridge 1. The fridge 1 is closed.``

Action:
    ALFWorld 0.4's commands (``go to R``, ``open R``, ``take O from R``, ``move O to R``, ``heat O with R``,
    ``use L``, ``examine X``, ``look``, ``inventory``, ``help`` …); ``info["admissible_actions"]`` is the engine's
    list. Case and spacing are ignored, and ``put O in/on R`` (the older ALFWorld and ``household-v0`` phrasing) is
    read as ``move O to R``. Anything else is invalid (``Nothing happens.``, no state change — as in the engine).

Reward:
    1.0 on the step that wins the game, else 0.0.

Episode End:
    Terminated when won; truncation is :class:`~empg.envs.core.TimeLimit`'s job (50 turns).

Expert:
    The engine's planner (Fast Downward, TextWorld's ``policy_commands``): planned at the first ``expert_action()``
    after a reset (cached per game) and re-planned whenever the agent leaves the plan.

Arguments:
    split: ``train`` | ``eval_in`` | ``eval_out``.
    source: ``"auto"`` | ``"official"`` | ``"generated"``.
    data_dir: ALFWorld's data directory (holding ``json_2.1.1``); default ``$ALFWORLD_DATA``.
    semantics: rules for generated games, ``"alfworld"`` (default) or ``"household"``
        (see :mod:`~empg.envs.adapters.alfworld_pddl`).
    ``reset(options={"scene": scene})`` plays a given ``HouseholdScene``; ``options={"game_file": path}`` a given
    ``game.tw-pddl``.

Version History:
    v0: first version (alfworld 0.4.2, textworld 1.7.0, fast-downward-textworld 20.6.4).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import weakref
from pathlib import Path
from typing import Any

from empg.envs.adapters.alfworld_pddl import ALFRED_CLASSES, SEMANTICS, scene_to_pddl
from empg.envs.core import TextEnv, split_index
from empg.envs.household_scene import HouseholdScene, generate_scene

__all__ = [
    "OFFICIAL_SPLITS",
    "AlfworldEnv",
    "AlfworldError",
    "alfworld_can_contain",
    "find_game_files",
    "game_data",
    "goal_from_intro",
    "logic_files",
    "task_type_from_goal",
]

_SETUP_HELP = (
    "alfworld-v0 needs `alfworld`, `textworld` and `fast-downward-textworld` (a C++ build: needs cmake and g++): "
    "`pip install 'empg[real-envs]'`"
)
SOURCES = ("auto", "official", "generated")
OFFICIAL_SPLITS = {"train": "train", "eval_in": "valid_seen", "eval_out": "valid_unseen"}
NOTHING = "Nothing happens."
MAX_ACTION_CHARS = 200
_PUT = re.compile(r"put (.+?) (?:in/on|into|in|on) (.+)")
_GOAL = re.compile(r"Your task is to: (.*?)\.?\s*$", re.MULTILINE)
# ALFWorld's goal templates (alfworld.gen.goal_library), most specific first.
_TASK_PATTERNS = (
    ("look_at_obj_in_light", re.compile(r"(look at .+ under the .+|examine the .+ with the .+)")),
    ("pick_two_obj_and_place", re.compile(r"(put two .+ in .+|find two .+ and put them in .+)")),
    ("pick_clean_then_place_in_recep", re.compile(r"(put a clean .+ in .+|clean some .+ and put it in .+)")),
    ("pick_heat_then_place_in_recep", re.compile(r"(put a hot .+ in .+|heat some .+ and put it in .+)")),
    ("pick_cool_then_place_in_recep", re.compile(r"(put a cool .+ in .+|cool some .+ and put it in .+)")),
    ("pick_and_place_simple", re.compile(r"(put an? .+ in .+|put some .+ on .+)")),
)


class AlfworldError(RuntimeError):
    """alfworld-v0 cannot run: a missing package or data; the message says how to fix it."""


# ----------------------------------------------------------------------------- pure helpers
def task_type_from_goal(goal: str) -> str:
    """ALFWorld's task type from an instruction in ALFWorld's template phrasing; ``"unknown"`` if none matches.

    >>> task_type_from_goal("put a hot apple in fridge.")
    'pick_heat_then_place_in_recep'
    >>> task_type_from_goal("examine the book with the desklamp")
    'look_at_obj_in_light'
    """
    text = " ".join(goal.lower().split()).rstrip(".")
    for task_type, pattern in _TASK_PATTERNS:
        if pattern.fullmatch(text):
            return task_type
    return "unknown"


def goal_from_intro(intro: str) -> str:
    """The instruction of an ALFWorld intro (``… Your task is to: put a mug in desk.`` → ``put a mug in desk``)."""
    m = _GOAL.search(intro)
    return m.group(1).strip() if m else ""


def logic_files() -> tuple[Path, Path]:
    """Paths of ALFWorld's ``alfred.pddl`` and ``alfred.twl2`` inside the installed ``alfworld`` package.

    Found without importing ``alfworld`` (whose import creates ``~/.cache/alfworld`` and sets ``$ALFWORLD_DATA``).
    """
    spec = importlib.util.find_spec("alfworld")
    if spec is None or not spec.submodule_search_locations:
        raise AlfworldError(f"the `alfworld` package is not installed. {_SETUP_HELP}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    domain, grammar = data / "alfred.pddl", data / "alfred.twl2"
    if not (domain.is_file() and grammar.is_file()):
        raise AlfworldError(f"alfworld is installed but lacks {domain} / {grammar}; reinstall it. {_SETUP_HELP}")
    return domain, grammar


def alfworld_can_contain() -> dict[str, set[str]]:
    """ALFWorld's receptacle compatibility table (``VAL_RECEPTACLE_OBJECTS``) in our type names.

    Receptacle type -> object types ``move X to R`` accepts; sliced variants and types we do not model are dropped.
    """
    had_data_var = "ALFWORLD_DATA" in os.environ
    try:
        from alfworld.gen.constants import VAL_RECEPTACLE_OBJECTS
    except ImportError as exc:
        raise AlfworldError(f"cannot import alfworld ({exc}). {_SETUP_HELP}") from exc
    finally:
        if not had_data_var:
            os.environ.pop("ALFWORLD_DATA", None)
    ours = {cls: kind for kind, cls in ALFRED_CLASSES.items()}
    return {
        ours[rec]: {ours[o] for o in objs if o in ours} for rec, objs in VAL_RECEPTACLE_OBJECTS.items() if rec in ours
    }


def game_data(scene: HouseholdScene, *, semantics: str = "alfworld") -> dict[str, str]:
    """A playable ALFWorld game (the ``game.tw-pddl`` JSON fields) for a household scene.

    With ``"alfworld"`` semantics, ``move X to R`` follows ALFWorld's own compatibility table.
    """
    domain, grammar = logic_files()
    table = alfworld_can_contain() if semantics == "alfworld" else None
    problem = scene_to_pddl(scene, semantics=semantics, can_contain=table)
    return {
        "pddl_domain": domain.read_text(),
        "grammar": grammar.read_text().replace("UNKNOWN GOAL", problem.goal),
        "pddl_problem": problem.pddl,
    }


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` or ``$ALFWORLD_DATA`` when it holds ALFWorld's ``json_2.1.1`` folder, else ``None``."""
    for candidate in (data_dir, os.environ.get("ALFWORLD_DATA")):
        if candidate and (Path(candidate).expanduser() / "json_2.1.1").is_dir():
            return Path(candidate).expanduser()
    return None


def find_game_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """ALFWorld's playable game files of a split, sorted (the filter of ALFWorld's ``AlfredTWEnv``).

    Skips trajectories with movable receptacles or slicing, missing ``game.tw-pddl`` files and games whose
    ``solvable`` flag is not true.
    """
    root = Path(data_dir).expanduser() / "json_2.1.1" / OFFICIAL_SPLITS[split]
    games = []
    for game in sorted(root.rglob("game.tw-pddl")):
        if "movable" in str(game.parent) or "Sliced" in str(game.parent):
            continue
        try:
            if json.loads(game.read_text()).get("solvable"):
                games.append(game)
        except (OSError, ValueError):
            continue
    return games


def _official_task_type(game_file: Path, goal: str) -> str:
    traj = game_file.parent / "traj_data.json"
    try:
        return str(json.loads(traj.read_text())["task_type"])
    except (OSError, ValueError, KeyError):
        return task_type_from_goal(goal)


# ----------------------------------------------------------------------------- the engine
def _import_engine() -> tuple[Any, Any, Any]:
    try:
        import textworld
        from textworld.envs.pddl import PddlEnv
        from textworld.envs.pddl.pddl import fast_downward_missing
    except ImportError as exc:
        raise AlfworldError(f"cannot import textworld's PDDL engine ({exc}). {_SETUP_HELP}") from exc
    if fast_downward_missing:
        raise AlfworldError(f"textworld is installed but `fast_downward` is missing. {_SETUP_HELP}")
    had_data_var = "ALFWORLD_DATA" in os.environ
    try:
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    except ImportError as exc:
        raise AlfworldError(f"cannot import alfworld ({exc}). {_SETUP_HELP}") from exc
    finally:
        if not had_data_var:  # importing alfworld sets $ALFWORLD_DATA to ~/.cache/alfworld; keep the process clean
            os.environ.pop("ALFWORLD_DATA", None)
    return textworld, PddlEnv, AlfredDemangler


class _Engine:
    """One TextWorld ``PddlEnv`` (with its own copy of Fast Downward's library) behind ALFWorld's demangler.

    TextWorld translates the PDDL problem to SAS twice on every ``reset`` (about a second per game); the
    translation is a pure function of the texts, so the engine memoises it for the loaded game, which makes
    re-resets of the same game (GRPO groups, ``check_env``) cheap. It also restores ``sys.argv``, which Fast
    Downward's translator overwrites.
    """

    def __init__(self) -> None:
        textworld, pddl_env_cls, demangler_cls = _import_engine()
        self.pddl = pddl_env_cls(textworld.EnvInfos(won=True, admissible_commands=True))
        self.env = demangler_cls(self.pddl, shuffle=False)
        self.key: str | None = None
        self._sas: dict[tuple, Any] = {}

    @contextlib.contextmanager
    def _memoised_translation(self):
        import fast_downward

        original, argv = fast_downward.pddl2sas, list(sys.argv)

        def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
            key = (domain, problem, bool(optimize))
            if key not in self._sas:
                self._sas[key] = original(domain, problem, verbose=verbose, optimize=optimize)
            return self._sas[key]

        fast_downward.pddl2sas = pddl2sas
        try:
            yield
        finally:
            fast_downward.pddl2sas = original
            sys.argv[:] = argv

    def load(self, key: str, data: dict | str) -> Any:
        """Load a game (skipped when ``key`` is already loaded) and reset it; return the first game state."""
        with self._memoised_translation():
            if key != self.key:
                self.key = None
                self._sas.clear()
                self.env.load(data)
                self.key = key
            return self.env.reset()

    def step(self, command: str) -> tuple[Any, bool]:
        state, _, done = self.env.step(command)
        return state, bool(done)

    def plan(self) -> list[str]:
        """The planner's commands from the current state (TextWorld's ``policy_commands``); ``[]`` if none."""
        return list(self.pddl._pddl_state.replan(self.pddl._entity_infos))


def _release(holder: dict) -> None:
    """Free the engine's Fast Downward task (idempotent; used by close and by the GC finalizer).

    The library copy itself stays mapped (about 1.4 MB): unloading it with ``dlclose`` crashes the interpreter at
    exit.
    """
    engine = holder.pop("engine", None)
    if engine is None:
        return
    lib = getattr(engine.pddl, "downward_lib", None)
    engine.pddl._pddl_state = None
    engine._sas.clear()
    if lib is not None:
        lib.cleanup()


# ----------------------------------------------------------------------------- the env
class AlfworldEnv(TextEnv):
    """ALFWorld through its own engine; see the module docstring."""

    family = "household"
    max_turns = 50

    def __init__(
        self,
        split: str = "train",
        *,
        strict_split: bool = True,
        source: str = "auto",
        data_dir: str | os.PathLike | None = None,
        semantics: str = "alfworld",
    ):
        super().__init__(split, strict_split=strict_split)
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        if semantics not in SEMANTICS:
            raise ValueError(f"unknown semantics {semantics!r}; choose one of {SEMANTICS}")
        self.semantics = semantics
        self.data_dir = resolve_data_dir(data_dir)
        if source == "official" and self.data_dir is None:
            where = data_dir or os.environ.get("ALFWORLD_DATA") or "(not set)"
            raise AlfworldError(
                f"no ALFWorld game files: {where} has no json_2.1.1 folder. Run `alfworld-download` and pass "
                "data_dir= or set $ALFWORLD_DATA, or use source='generated'"
            )
        self.source = "official" if source == "official" or (source == "auto" and self.data_dir) else "generated"
        self._games: list[Path] | None = None
        self._holder: dict = {"engine": _Engine()}
        self._finalizer = weakref.finalize(self, _release, self._holder)
        self._plans: dict[str, list[str]] = {}
        self._plan: list[str] | None = None
        self._admissible: list[str] = []
        self._won = False
        self._at_start = True
        self.task = ""
        self.task_type = "unknown"
        self.game = ""
        self._key = ""

    # ----------------------------------------------------------------- reset
    def _engine(self) -> _Engine:
        engine = self._holder.get("engine")
        if engine is None:
            raise RuntimeError("alfworld-v0: the env was closed; make a new one")
        return engine

    def _game_for(self, seed: int, options: dict) -> tuple[str, dict | str, str]:
        """``(key, game data or path, task type or "")`` for this reset."""
        if "game_file" in options:
            path = Path(options["game_file"])
            return f"file:{path}", str(path), ""
        scene = options.get("scene")
        if scene is None and self.source == "official":
            if self._games is None:
                self._games = find_game_files(self.data_dir, self.split)
                if not self._games:
                    raise AlfworldError(f"no playable games for split {self.split!r} under {self.data_dir}")
            path = self._games[split_index(seed) % len(self._games)]
            return f"file:{path}", str(path), ""
        if scene is None:
            scene = generate_scene(seed, self.split)
        elif not isinstance(scene, HouseholdScene):
            raise TypeError(f"options['scene'] must be a HouseholdScene, got {type(scene).__name__}")
        key = f"scene:{self.semantics}:{hashlib.sha1(repr(scene).encode()).hexdigest()}"
        return key, game_data(scene, semantics=self.semantics), scene.task_type

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        key, data, task_type = self._game_for(seed, options)
        state = self._engine().load(key, data)
        self.game = key if key.startswith("file:") else f"generated:{self.split}:{seed}"
        obs = state.feedback.strip()
        self.task = goal_from_intro(obs)
        if not task_type:
            task_type = _official_task_type(Path(key[5:]), self.task) if key.startswith("file:") else ""
        self.task_type = task_type or task_type_from_goal(self.task)
        self._key = key
        self._plan = list(self._plans[key]) if key in self._plans else None
        self._at_start = True
        self._won = False
        self._admissible = list(state["admissible_commands"])
        return obs, self._info(True)

    # ----------------------------------------------------------------- step
    def _resolve(self, action: str) -> str | None:
        """The admissible command ``action`` names (case/spacing-insensitive; ``put X in/on Y`` = ``move X to Y``)."""
        if len(action) > MAX_ACTION_CHARS:
            return None
        text = " ".join(action.lower().split())
        if text in self._admissible:
            return text
        m = _PUT.fullmatch(text)
        if m and f"move {m[1]} to {m[2]}" in self._admissible:
            return f"move {m[1]} to {m[2]}"
        return None

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        command = self._resolve(action)
        if command is None:
            return NOTHING, 0.0, False, self._info(False)
        state, _ = self._engine().step(command)
        self._won = bool(state["won"])
        self._admissible = list(state["admissible_commands"])
        self._at_start = False
        if self._plan and self._plan[0] == command:
            self._plan.pop(0)
        else:
            self._plan = None
        return state.feedback.strip(), 1.0 if self._won else 0.0, self._won, self._info(True)

    def _info(self, valid: bool) -> dict:
        return {
            "task": self.task,
            "task_type": self.task_type,
            "admissible_actions": list(self._admissible),
            "valid": valid,
            "won": self._won,
            "game": self.game,
        }

    # ----------------------------------------------------------------- expert
    def expert_action(self) -> str:
        """The next command of the engine's planner (``"look"`` once won or when no plan exists)."""
        if self.seed is None:
            raise RuntimeError("expert_action() called before reset()")
        if self._won:
            return "look"
        if self._plan is None:
            self._plan = self._engine().plan()
            if self._at_start:
                self._plans[self._key] = list(self._plan)
        if not self._plan:
            return "look"
        command = self._plan[0]
        if command not in self._admissible and command.startswith("go to "):
            # ALFWorld names a location by all its receptacles; the planner names one of them.
            target = command[len("go to ") :]
            command = next((a for a in self._admissible if a.startswith("go to ") and target in a), command)
        return command

    def close(self) -> None:
        """Free the engine (Fast Downward's library copy). Idempotent; the GC does the same."""
        self._finalizer()
