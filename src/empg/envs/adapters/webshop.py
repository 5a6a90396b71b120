"""``webshop-v0``: the real WebShop text environment (Yao et al., 2022), when the user has installed it.

Description:
    WebShop is not on PyPI and needs about 1 GB of product data plus a Pyserini (Java) search index, so empg imports
    it lazily and never downloads it. Set-up (once; see :data:`SETUP_STEPS`): clone princeton-nlp/WebShop, run its
    ``setup.sh -d small`` (or ``-d all``) in the same Python environment, and put the checkout on ``PYTHONPATH`` or
    pass ``webshop_path=``. Without it, constructing the env raises ``ImportError`` listing those steps.
    **Not tested on empg's CI machines** (the data cannot be fetched there); the embedded ``shop-v0`` mirrors it.

Observation:
    WebShop's ``text`` observation mode (page text joined by ``[SEP]``).

Action:
    ``search[keywords]`` (when the page has a search bar) or ``click[button]`` for a button, product id or option on
    the page. ``info["admissible_actions"]`` lists ``search[...]`` (a template) and every ``click[...]``; anything
    else is an invalid action (``info["valid"] = False``, the page does not change).

Reward:
    WebShop's score in ``[0, 1]`` after ``click[buy now]`` (type, attribute, option and price match); 0 before.

Episode End:
    Terminated after buying; ``info["won"]`` iff the score is 1. Truncation: :class:`~empg.envs.core.TimeLimit`
    (15 turns, as in the EMPG paper).

Splits:
    WebShop's usual goal split: goals ``[0, 500)`` are the test set (``eval_out``), ``[500, 1500)`` the dev set
    (``eval_in``) and the rest ``train``. Seed ``s`` plays goal ``start + k % size`` with ``k`` its index within its
    split. (``eval_out`` is WebShop's test set, same distribution; there is no out-of-distribution split.)

Arguments:
    split: ``train`` | ``eval_in`` | ``eval_out``.
    num_products: WebShop's ``num_products`` (``None`` = all of the installed data).
    human_goals: use the human-written instructions (WebShop's default for IL/RL) rather than synthetic ones.
    webshop_path: a WebShop checkout to import ``web_agent_site`` from.

Version History:
    v0: first version (WebShop main branch, text mode).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from empg.envs.core import TextEnv, split_index, split_of_seed

__all__ = ["SETUP_STEPS", "WebShopEnv", "parse_webshop_action"]

SETUP_STEPS = """webshop-v0 needs the WebShop package and its data, which empg does not install:
  1. git clone https://github.com/princeton-nlp/WebShop.git && cd WebShop
  2. in the Python environment that runs empg (WebShop needs Java 11+ for its Pyserini index):
     ./setup.sh -d small        # or -d all: installs requirements, downloads the products and builds the index
  3. export PYTHONPATH=$PWD:$PYTHONPATH   (or pass webshop_path="/path/to/WebShop" to the env)
  4. check: python -c "from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv"
"""
_GOAL_RANGES = {"eval_out": (0, 500), "eval_in": (500, 1500), "train": (1500, None)}
_ACTION = re.compile(r"^\s*(search|click)\s*\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)


def parse_webshop_action(action: str) -> tuple[str, str] | None:
    """``("search"|"click", argument)`` for a well-formed action, else ``None``.

    >>> parse_webshop_action("click[Buy Now]"), parse_webshop_action("search[ red shoes ]"), parse_webshop_action("buy")
    (('click', 'buy now'), ('search', 'red shoes'), None)
    """
    m = _ACTION.match(action or "")
    if not m or not m.group(2).strip():
        return None
    return m.group(1).lower(), " ".join(m.group(2).split()).lower()


def _import_webshop(webshop_path: str | Path | None) -> Any:
    if webshop_path is not None:
        path = str(Path(webshop_path).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv
    except ImportError as exc:
        raise ImportError(f"could not import WebShop ({exc}).\n{SETUP_STEPS}") from exc
    return WebAgentTextEnv


class WebShopEnv(TextEnv):
    """The real WebShop text env as an empg :class:`~empg.envs.core.TextEnv` (see the module docstring)."""

    family = "shop"
    max_turns = 15

    def __init__(
        self,
        split: str = "train",
        *,
        num_products: int | None = None,
        human_goals: bool = True,
        webshop_path: str | Path | None = None,
        strict_split: bool = True,
    ):
        super().__init__(split, strict_split=strict_split)
        engine_cls = _import_webshop(webshop_path)
        self._engine = engine_cls(observation_mode="text", num_products=num_products, human_goals=human_goals)
        self._goals = self._engine.server.goals
        if len(self._goals) <= _GOAL_RANGES["eval_in"][1]:
            raise ValueError(
                f"WebShop loaded only {len(self._goals)} goals; the train split needs more than 1500 "
                "(use human_goals=True with the full goal file, or num_products=None)"
            )
        self._goal: dict = {}
        self._clicked: set[str] = set()
        self._pages = 0

    def goal_index(self, seed: int) -> int:
        """Index into WebShop's (shuffled, fixed) goal list played by ``seed``."""
        start, stop = _GOAL_RANGES[split_of_seed(seed)]
        size = (stop if stop is not None else len(self._goals)) - start
        return start + split_index(seed) % size

    def _available(self) -> tuple[bool, list[str]]:
        avail = self._engine.get_available_actions()
        # WebShop lists the search button as a clickable but ignores click[search]; search[...] is the way to search
        return bool(avail["has_search_bar"]), [c for c in avail["clickables"] if c != "search"]

    def _info(self, valid: bool, won: bool = False, reward: float = 0.0) -> dict:
        has_search, clickables = self._available()
        actions = (["search[...]"] if has_search else []) + [f"click[{c}]" for c in clickables]
        return {
            "task": self._engine.instruction_text,
            "task_type": str(self._goal.get("category", "default")),
            "admissible_actions": actions,
            "valid": valid,
            "won": won,
            "score": reward,
        }

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        idx = self.goal_index(seed)
        self._goal = self._goals[idx]
        obs, _ = self._engine.reset(session=idx)
        self._clicked, self._pages = set(), 0
        return obs, self._info(True)

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        parsed = parse_webshop_action(action)
        has_search, clickables = self._available()
        valid = parsed is not None and (
            (parsed[0] == "search" and has_search) or (parsed[0] == "click" and parsed[1] in clickables)
        )
        if not valid:
            return "Invalid action: " + self._engine.observation, 0.0, False, self._info(False)
        kind, arg = parsed
        if kind == "click":
            self._clicked.add(arg)
            self._pages += arg == "next >"
        obs, reward, done, _ = self._engine.step(f"{kind}[{arg}]")
        reward = float(reward or 0.0)
        return obs, reward, bool(done), self._info(True, won=bool(done) and reward >= 1.0, reward=reward)

    def expert_action(self) -> str:
        """A best-effort heuristic from the goal (WebShop has no planner): search the target's name, open the target
        product (paging up to 5 result pages), click the goal's options, buy."""
        has_search, clickables = self._available()
        asin = str(self._goal.get("asin", "")).lower()
        if has_search:
            return f"search[{self._goal.get('name') or self._goal.get('query', '')}]"
        if asin in clickables:
            return f"click[{asin}]"
        if "buy now" in clickables:
            options = self._goal.get("goal_options") or []
            options = options.values() if isinstance(options, dict) else options
            for opt in options:
                opt = str(opt).lower()
                if opt in clickables and opt not in self._clicked:
                    return f"click[{opt}]"
            return "click[buy now]"
        if "next >" in clickables and self._pages < 5:
            return "click[next >]"
        return "click[back to search]" if "back to search" in clickables else "click[< prev]"
