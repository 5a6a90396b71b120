"""``scienceworld-v0``: the real ScienceWorld simulator (Wang et al., 2022) behind the empg text-env contract.

Description:
    ScienceWorld is a Scala simulator of elementary-science experiments (boil water, grow plants, build circuits …)
    shipped on PyPI as ``scienceworld`` with its jar; Python talks to it through py4j. Each :class:`ScienceWorldEnv`
    starts **one JVM** and reuses it for every episode (no JVM start-up on each reset); :meth:`close` (or garbage
    collection) stops it.
    **Needs Java 17 on ``PATH``** (``apt-get install openjdk-17-jre-headless``); a clear error says so when ``java``
    is missing.

Observation:
    After reset: the task description followed by the room description (``look around``, a free action). After a
    step: the simulator's text response.

Action:
    Free text in ScienceWorld's grammar (``open door to kitchen``, ``focus on water``, ``pour cup into pot`` …). When
    the simulator asks to disambiguate it expects a number (``0``). Text it cannot parse gives ``info["valid"] =
    False`` and the observation ``No known action matches that input.``: an invalid action, never a crash.

Reward:
    The change of ``max(score, 0) / 100`` since the previous step, so an episode's rewards sum to its final
    (non-negative) score over 100. ``info["score"]`` carries the current score in ``[0, 1]``.

Episode End:
    Terminated when the simulator reports the task completed (``info["won"]`` is True iff the score reached 100) or
    failed (negative score, e.g. focusing on the wrong object). Truncation is :class:`~empg.envs.core.TimeLimit`'s
    job (default 50 turns here).

Splits:
    The 30 task types crossed with ScienceWorld's own variation splits: ``train`` → its train variations,
    ``eval_in`` → its dev variations, ``eval_out`` → its test variations (held-out objects/locations, the paper's
    unseen set). A seed ``s`` maps to index ``k`` within its split (``split_of_seed``); the task type is
    ``task_types[k % n_types]`` and the variation ``variations[k // n_types % len(variations)]``.

Arguments:
    split: ``train`` | ``eval_in`` | ``eval_out``.
    task_types: ScienceWorld task names (or ids like ``"1-1"``) to draw from; default all 30.
    simplifications: ScienceWorld simplification string, e.g. ``"easy"`` or ``"openDoors,noElectricalAction"``.
    expert: generate the gold path (extra simulator work on the first reset of each variation; then cached) so
        :meth:`expert_action` works.
    admissible_actions: put ScienceWorld's valid action-object combinations (hundreds, enumerated by the simulator
        at every step, so off unless asked for) in ``info["admissible_actions"]``; ``None`` otherwise.

Version History:
    v0: first version (scienceworld 1.2.3).
"""

from __future__ import annotations

import shutil
import subprocess
import weakref
from typing import Any

from empg.envs.core import TextEnv, split_index, split_of_seed

__all__ = ["ScienceWorldEnv", "ScienceWorldError", "split_index"]

INVALID_OBSERVATION = "No known action matches that input."
_SETUP_HELP = (
    "scienceworld-v0 needs the `scienceworld` package and Java 17+: `pip install 'empg[real-envs]'` and "
    "`apt-get install openjdk-17-jre-headless` (or any JDK/JRE 17 with `java` on PATH)."
)
# ScienceWorld's own names for our three splits.
_ENGINE_SPLIT = {"train": "train", "eval_in": "dev", "eval_out": "test"}


class ScienceWorldError(RuntimeError):
    """ScienceWorld could not start, or its JVM died (create a new env to restart it)."""


def _check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ScienceWorldError(f"Java was not found on PATH. {_SETUP_HELP}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScienceWorldError(f"`java -version` failed ({exc}). {_SETUP_HELP}") from exc
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else "unknown java"


def _import_engine() -> Any:
    try:
        import scienceworld
    except ImportError as exc:
        raise ImportError(f"could not import scienceworld ({exc}). {_SETUP_HELP}") from exc
    return scienceworld


def _shutdown(engine: Any) -> None:
    """Stop the JVM behind ``engine`` (idempotent; used by close and by the GC finalizer)."""
    proc = getattr(getattr(engine, "_gateway", None), "java_process", None)
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - the JVM may already be dead; we kill it below
        pass
    if proc is not None and proc.poll() is None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class ScienceWorldEnv(TextEnv):
    """ScienceWorld's 30 task types as an empg :class:`~empg.envs.core.TextEnv` (see the module docstring)."""

    family = "scienceworld"
    max_turns = 50

    def __init__(
        self,
        split: str = "train",
        *,
        task_types: list[str] | tuple[str, ...] | None = None,
        simplifications: str = "",
        expert: bool = True,
        admissible_actions: bool = False,
        strict_split: bool = True,
    ):
        super().__init__(split, strict_split=strict_split)
        sw = _import_engine()
        requested = self._resolve_task_types(task_types, sw)
        self.java_version = _check_java()
        self.simplifications = simplifications
        self.expert = expert
        self.with_admissible = admissible_actions
        try:
            self._engine = sw.ScienceWorldEnv("", envStepLimit=10**9)
        except Exception as exc:  # py4j raises plain Exceptions when the JVM cannot start
            raise ScienceWorldError(f"could not start the ScienceWorld JVM ({exc}); java: {self.java_version}") from exc
        self._finalizer = weakref.finalize(self, _shutdown, self._engine)
        self.task_types = requested or tuple(self._call(self._engine.get_task_names))
        self._variations: dict[tuple[str, str], list[int]] = {}
        self._gold: list[str] = []
        self._gold_cache: dict[tuple[str, int], list[str]] = {}
        self._t = 0
        self._last_score = 0
        self._task = ""
        self._task_type = ""

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _resolve_task_types(task_types: Any, sw: Any) -> tuple[str, ...]:
        """Canonical names of the requested task types (checked before the JVM starts); ``()`` means all."""
        if task_types is None:
            return ()
        known = sorted(sw.utils.infer_task(name) for name in sw.constants.ID2TASK.values())
        out = []
        for name in [task_types] if isinstance(task_types, str) else task_types:
            resolved = sw.utils.infer_task(str(name))
            if resolved not in known:
                raise ValueError(f"unknown ScienceWorld task {name!r}; choose from {known}")
            out.append(resolved)
        if not out:
            raise ValueError("task_types is empty; pass None for all 30 ScienceWorld task types")
        return tuple(out)

    def _call(self, fn: Any, *args: Any) -> Any:
        """Call into the JVM; a dead JVM becomes a :class:`ScienceWorldError` that says what to do."""
        if not self._finalizer.alive:
            raise ScienceWorldError("this ScienceWorldEnv is closed; create a new one")
        try:
            return fn(*args)
        except Exception as exc:
            from py4j.protocol import Py4JError

            if isinstance(exc, Py4JError):
                proc = getattr(self._engine._gateway, "java_process", None)
                code = proc.poll() if proc is not None else None
                self.close()
                raise ScienceWorldError(
                    f"the ScienceWorld JVM crashed or stopped responding (exit code {code}, {type(exc).__name__}); "
                    "this env is now closed, create a new one"
                ) from exc
            raise

    def variations(self, task_type: str, split: str) -> list[int]:
        """ScienceWorld's variation ids of ``task_type`` for our ``split`` (cached; loads the task once)."""
        key = (task_type, split)
        if key not in self._variations:
            self._call(self._engine.load, task_type, 0, self.simplifications, False)
            engine_split = _ENGINE_SPLIT[split]
            self._variations[key] = list(self._call(getattr(self._engine, f"get_variations_{engine_split}")))
            if not self._variations[key]:
                raise ScienceWorldError(f"ScienceWorld task {task_type!r} has no {engine_split} variations")
        return self._variations[key]

    def task_of_seed(self, seed: int) -> tuple[str, int]:
        """The ``(task_type, variation)`` that ``seed`` plays (pure function of the seed and ``task_types``)."""
        k = split_index(seed)
        task_type = self.task_types[k % len(self.task_types)]
        variations = self.variations(task_type, split_of_seed(seed))
        return task_type, variations[(k // len(self.task_types)) % len(variations)]

    def _info(self, valid: bool, won: bool, score: int) -> dict:
        admissible = self._call(self._engine.get_valid_action_object_combinations) if self.with_admissible else None
        return {
            "task": self._task,
            "task_type": self._task_type,
            "admissible_actions": admissible,
            "valid": valid,
            "won": won,
            "score": max(score, 0) / 100.0,
            "variation": self.variation,
        }

    # ----------------------------------------------------------------- TextEnv
    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        task_type, self.variation = self.task_of_seed(seed)
        key = (task_type, self.variation)
        need_gold = self.expert and key not in self._gold_cache
        self._call(self._engine.load, task_type, self.variation, self.simplifications, need_gold)
        if need_gold:
            self._gold_cache[key] = list(self._call(self._engine.get_gold_action_sequence))
        self._gold = self._gold_cache.get(key, []) if self.expert else []
        self._task_type = task_type
        self._task = self._call(self._engine.taskdescription).removeprefix("Task Description:").strip()
        self._t = 0
        self._last_score = 0
        obs = f"{self._task}\n\n{self._call(self._engine.look)}".strip()
        return obs, self._info(True, False, 0)

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        action = " ".join(action.split())
        if self._t < len(self._gold) and action == self._gold[self._t]:
            self._t += 1  # the agent follows the gold path
        if not action:
            return INVALID_OBSERVATION, 0.0, False, self._info(False, False, self._last_score)
        server = self._engine.server  # a py4j proxy: even looking up a method talks to the JVM, so inside _call
        obs = self._call(lambda: server.step(action))
        score = int(round(100 * self._call(lambda: server.getScore())))
        completed = bool(self._call(lambda: server.getCompleted())) or score < 0
        reward = (max(score, 0) - max(self._last_score, 0)) / 100.0
        self._last_score = score
        valid = not obs.startswith(INVALID_OBSERVATION)
        won = completed and score >= 100
        return obs, reward, completed, self._info(valid, won, score)

    def expert_action(self) -> str:
        """The next action of ScienceWorld's gold path for this variation.

        The gold path is a fixed plan from the initial state: the pointer advances when the agent takes the gold
        action, so invalid or side actions (``look around``) do not derail it; after a state-changing deviation the
        next gold action is still returned but may no longer lead to success. ScienceWorld's gold-path generator is
        not deterministic (it may pick another of several equivalent cups), so the first path generated for a
        (task, variation) is cached and reused: the expert is a pure function of the seed.
        """
        if not self.expert:
            raise RuntimeError("expert_action() needs the gold path: create the env with expert=True")
        if self._t >= len(self._gold):
            return "look around"
        return self._gold[self._t]

    @property
    def gold_path(self) -> list[str]:
        """The whole gold action sequence of the current episode (empty when ``expert=False``)."""
        return list(self._gold)

    @property
    def jvm_pid(self) -> int | None:
        """Process id of this env's JVM (``None`` once closed)."""
        if not self._finalizer.alive:
            return None
        proc = getattr(self._engine._gateway, "java_process", None)
        return None if proc is None else proc.pid

    def close(self) -> None:
        """Stop the JVM. Idempotent; also runs when the env is garbage-collected."""
        self._finalizer()
        self._done = True
