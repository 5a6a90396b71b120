"""``textworld-v0``: games generated offline by TextWorld's own challenge generators (Côté et al., 2018).

Description:
    Three of TextWorld's ``tw-make`` challenges: ``coin_collector`` (walk a chain of rooms to a coin),
    ``treasure_hunter`` (find an object among distractors, possibly behind locked containers) and ``cooking`` (the
    First TextWorld Problems kitchen: read the cookbook, gather, cut and cook ingredients, prepare and eat the meal).
    Games are generated and compiled on first use (slow: TextWorld builds and compiles a whole game) and cached on
    disk by (challenge, settings, seed) in ``cache_dir`` (default ``$EMPG_CACHE/textworld`` or
    ``~/.cache/empg/textworld``), so later resets only load them (costs: README, "Real environments"). Needs the
    ``textworld`` package (``pip install 'empg[real-envs]'``).

Observation:
    After reset: the game's intro (objective and first room) without the ASCII-art banner. After a step: the game's
    text response.

Action:
    TextWorld commands (``go east``, ``take coin``, ``cook pork chop with oven`` …). ``info["admissible_actions"]``
    lists the commands the game accepts in this state; an action outside it has ``info["valid"] = False`` (it is
    still sent to the game, which answers e.g. ``That's not a verb I recognise.``).

Reward:
    The change in game score divided by the game's maximum score, so a won episode's rewards sum to 1.

Episode End:
    Terminated when the game is won (``info["won"]``) or lost (e.g. the meal was burnt). Truncation is
    :class:`~empg.envs.core.TimeLimit`'s job (default 50 turns).

Splits:
    ``train`` and ``eval_in`` play the same settings with disjoint seeds; ``eval_out`` plays harder settings
    (:data:`EVAL_OUT_SETTINGS`: longer coin-collector chains, the medium treasure-hunter tier, cooking games on
    TextWorld's held-out ``test`` foods and preparations). A seed's challenge is ``challenges[k % n]`` with ``k`` its
    index within its split; the TextWorld generator seed is the seed itself.

Arguments:
    split: ``train`` | ``eval_in`` | ``eval_out``.
    challenges: which of ``coin_collector``, ``treasure_hunter``, ``cooking`` to draw from (default all three).
    settings: per-challenge overrides of :data:`TRAIN_SETTINGS` (used by ``train`` and ``eval_in``).
    eval_out_settings: per-challenge overrides of :data:`EVAL_OUT_SETTINGS`.
    cache_dir: where generated games live.

Version History:
    v0: first version (textworld 1.7.0).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

from empg.envs.core import TextEnv, split_index, split_of_seed

__all__ = ["EVAL_OUT_SETTINGS", "TRAIN_SETTINGS", "TextWorldEnv", "default_cache_dir", "generate_game"]

_SETUP_HELP = (
    "textworld-v0 needs the `textworld` package: `pip install 'empg[real-envs]'` (or `pip install textworld`)."
)
_PROMPT_TAIL = re.compile(r"\n\s*>\s.*\Z", re.DOTALL)
_TW_NAME = {"coin_collector": "tw-coin_collector", "treasure_hunter": "tw-treasure_hunter", "cooking": "tw-cooking"}
_COOKING_BASE = {"recipe": 2, "take": 1, "go": 6, "open": True, "cook": True, "cut": True, "drop": False}
TRAIN_SETTINGS: dict[str, dict[str, Any]] = {
    "coin_collector": {"level": 5},
    "treasure_hunter": {"level": 5},
    "cooking": {**_COOKING_BASE, "recipe_seed": 0, "split": "train"},
}
EVAL_OUT_SETTINGS: dict[str, dict[str, Any]] = {
    "coin_collector": {"level": 10},
    "treasure_hunter": {"level": 15},
    "cooking": {**_COOKING_BASE, "recipe_seed": 0, "split": "test"},
}


def _import_textworld() -> Any:
    try:
        import textworld
        import textworld.challenges
    except ImportError as exc:
        raise ImportError(f"could not import textworld ({exc}). {_SETUP_HELP}") from exc
    return textworld


def default_cache_dir() -> Path:
    """``$EMPG_CACHE/textworld`` when ``EMPG_CACHE`` is set, else ``~/.cache/empg/textworld``."""
    root = os.environ.get("EMPG_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "empg") / "textworld"


def _game_dir(cache_dir: Path, challenge: str, settings: dict, seed: int) -> Path:
    tw = _import_textworld()
    key = json.dumps({"settings": settings, "textworld": tw.__version__}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / challenge / digest / f"seed{seed}"


def generate_game(challenge: str, settings: dict, seed: int, cache_dir: str | Path | None = None) -> Path:
    """Path of the compiled game for (challenge, settings, seed), generating it with ``tw-make``'s code if needed.

    Safe with several processes sharing ``cache_dir``: each generates into a temporary folder and renames it into
    place; the first rename wins.

    Args:
        challenge: ``coin_collector`` | ``treasure_hunter`` | ``cooking``.
        settings: the challenge's ``tw-make`` settings (e.g. ``{"level": 5}``).
        seed: TextWorld generator seed.
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        Path to the ``game.z8`` file (its ``game.json`` lies beside it).
    """
    if challenge not in _TW_NAME:
        raise ValueError(f"unknown TextWorld challenge {challenge!r}; choose from {sorted(_TW_NAME)}")
    final = _game_dir(Path(cache_dir or default_cache_dir()), challenge, settings, seed)
    game_file = final / "game.z8"
    if game_file.is_file() and (final / "game.json").is_file():
        return game_file
    tw = _import_textworld()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".seed{seed}-", dir=final.parent))
    try:
        options = tw.GameOptions()
        options.seeds = seed
        options.path = str(tmp / "game.z8")
        options.file_ext = ".z8"
        _, make, _ = tw.challenges.CHALLENGES[_TW_NAME[challenge]]
        game = make(settings=dict(settings), options=options)
        tw.generator.compile_game(game, options)
        (tmp / "settings.json").write_text(json.dumps({"challenge": challenge, "settings": settings, "seed": seed}))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; use its game
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not game_file.is_file():
        raise RuntimeError(f"TextWorld did not produce {game_file}; delete {final} and retry")
    return game_file


def _close_game(holder: dict) -> None:
    game = holder.pop("game", None)
    if game is not None:
        game.close()


def _clean(feedback: str) -> str:
    """Drop the status line (``>  -= Room =-0/1``) that the interpreter echoes after unparsed commands."""
    return _PROMPT_TAIL.sub("", feedback).strip()


def _strip_banner(feedback: str, objective: str) -> str:
    start = feedback.find(objective[:40]) if objective else -1
    return (feedback[start:] if start >= 0 else feedback).strip()


class TextWorldEnv(TextEnv):
    """TextWorld challenge games as an empg :class:`~empg.envs.core.TextEnv` (see the module docstring)."""

    family = "textworld"
    max_turns = 50

    def __init__(
        self,
        split: str = "train",
        *,
        challenges: list[str] | tuple[str, ...] | None = None,
        settings: dict[str, dict] | None = None,
        eval_out_settings: dict[str, dict] | None = None,
        cache_dir: str | Path | None = None,
        strict_split: bool = True,
    ):
        super().__init__(split, strict_split=strict_split)
        self._tw = _import_textworld()
        self.challenges = tuple(challenges) if challenges else tuple(_TW_NAME)
        for name in self.challenges:
            if name not in _TW_NAME:
                raise ValueError(f"unknown TextWorld challenge {name!r}; choose from {sorted(_TW_NAME)}")
        self.settings = {c: {**TRAIN_SETTINGS[c], **(settings or {}).get(c, {})} for c in self.challenges}
        self.eval_out_settings = {c: {**EVAL_OUT_SETTINGS[c], **(eval_out_settings or {}).get(c, {})} for c in _TW_NAME}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._res: dict = {}
        self._finalizer = weakref.finalize(self, _close_game, self._res)
        self._infos = self._tw.EnvInfos(
            admissible_commands=True,
            policy_commands=True,
            objective=True,
            won=True,
            lost=True,
            score=True,
            max_score=True,
            extras=["walkthrough"],
        )
        self._state: Any = None
        self._history: list[str] = []
        self._walkthrough: list[str] = []
        self._task_type = ""

    def game_of_seed(self, seed: int) -> tuple[str, dict]:
        """The ``(challenge, settings)`` that ``seed`` plays (pure function of the seed and the constructor args)."""
        challenge = self.challenges[split_index(seed) % len(self.challenges)]
        table = self.eval_out_settings if split_of_seed(seed) == "eval_out" else self.settings
        return challenge, table[challenge]

    def _info(self, valid: bool) -> dict:
        st = self._state
        return {
            "task": st.objective or "",
            "task_type": self._task_type,
            "admissible_actions": sorted(st.admissible_commands or []),
            "valid": valid,
            "won": bool(st.won),
            "score": float(st.score) / max(float(st.max_score), 1.0),
        }

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        challenge, settings = self.game_of_seed(seed)
        path = generate_game(challenge, settings, seed, self.cache_dir)
        _close_game(self._res)
        with warnings.catch_warnings():  # Jericho warns that it cannot track score; TextWorld tracks it itself
            warnings.filterwarnings("ignore", message=".*is not fully supported.*")
            self._res["game"] = self._tw.start(str(path), self._infos)
            self._state = self._res["game"].reset()
        self._task_type = challenge
        self._history = []
        self._walkthrough = list(self._state.get("extra.walkthrough") or [])
        obs = _strip_banner(self._state.feedback, self._state.objective or "")
        return obs, self._info(True)

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        # The Z-machine interpreter hangs on control characters: keep printable ASCII only.
        action = " ".join("".join(c if " " <= c <= "~" else " " for c in action).split())
        if not action:
            return "Please type a command.", 0.0, False, self._info(False)
        valid = action.lower() in {a.lower() for a in self._state.admissible_commands or []}
        old_score = float(self._state.score)
        self._state, _, done = self._res["game"].step(action)
        if valid:  # actions the game does not accept change nothing, so they do not count as a deviation
            self._history.append(action)
        reward = (float(self._state.score) - old_score) / max(float(self._state.max_score), 1.0)
        return _clean(self._state.feedback), reward, bool(done), self._info(valid)

    def expert_action(self) -> str:
        """The game's walkthrough while the agent has followed it; TextWorld's state-aware policy after a deviation.

        Only admissible actions count: an invalid action leaves the state, and so the expert's answer, unchanged.
        """
        t = len(self._history)
        if self._history == self._walkthrough[:t] and t < len(self._walkthrough):
            return self._walkthrough[t]
        policy = (self._state.policy_commands or []) if self._state is not None else []
        return policy[0] if policy else "look"

    def close(self) -> None:
        """Close the running game (idempotent; also runs on garbage collection)."""
        _close_game(self._res)
        self._done = True
