"""webshop-v0 adapter logic.

The real WebShop (package + ~1 GB of data + a Java search index) cannot be installed on our machines, so these tests
drive the adapter with a small fake ``web_agent_site`` that mimics WebAgentTextEnv's API (reset(session=...),
step("search[...]"/"click[...]"), get_available_actions(), instruction_text, observation, server.goals). The fake
checks the adapter's seed→goal mapping, validity, expert and contract; it says nothing about WebShop itself.
"""

from __future__ import annotations

import sys
import types

import pytest

from empg.envs import INFO_KEYS, make
from empg.envs.adapters.webshop import SETUP_STEPS, WebShopEnv, parse_webshop_action

pytestmark = pytest.mark.real_envs

N_GOALS = 1600


class _FakeServer:
    def __init__(self):
        self.goals = [
            {
                "asin": f"B{i:05d}",
                "name": f"widget {i}",
                "query": "widget",
                "category": "beauty" if i % 2 else "fashion",
                "goal_options": ["red", "large"] if i % 2 else {"color": "red"},
                "instruction_text": f"i need widget {i} in red, price lower than 50.00 dollars",
            }
            for i in range(N_GOALS)
        ]


class FakeWebAgentTextEnv:
    """Pages: search → results (target on page 1 for even goals, page 2 for odd) → item → buy."""

    def __init__(self, observation_mode="html", num_products=None, human_goals=None, **kwargs):
        assert observation_mode == "text"
        self.server = _FakeServer()
        self.reset(session=0)

    def reset(self, session=None, instruction_text=None):
        self.goal = self.server.goals[session]
        self.instruction_text = self.goal["instruction_text"]
        self.page, self.result_page, self.item, self.options = "search", 1, None, set()
        return self.observation, None

    @property
    def observation(self):
        return f"Instruction: [SEP] {self.instruction_text} [SEP] page {self.page} {self.result_page} {self.item}"

    def _results(self):
        target_page = 2 if int(self.goal["asin"][1:]) % 2 else 1
        found = [self.goal["asin"].lower()] if self.result_page == target_page else []
        return ["back to search", "next >", *found, "b99999"]

    def get_available_actions(self):
        clickables = {
            "search": ["search"],
            "results": self._results(),
            "item": ["back to search", "< prev", "red", "blue", "large", "small", "buy now"],
        }[self.page]
        return {"has_search_bar": self.page == "search", "clickables": clickables}

    def step(self, action):
        kind, arg = action[: action.index("[")], action[action.index("[") + 1 : -1]
        assert arg in self.get_available_actions()["clickables"] or kind == "search", "adapter sent an invalid action"
        if kind == "search":
            self.page, self.result_page = "results", 1
        elif arg == "next >":
            self.result_page += 1
        elif arg == "back to search":
            self.page = "search"
        elif self.page == "results":
            self.page, self.item = "item", arg
        elif arg == "buy now":
            wanted = self.goal["goal_options"]
            wanted = set(wanted.values() if isinstance(wanted, dict) else wanted)
            right = self.item == self.goal["asin"].lower()
            return self.observation, (0.5 + 0.5 * (wanted <= self.options)) if right else 0.1, True, None
        elif self.page == "item":
            self.options.add(arg)
        return self.observation, 0.0, False, None


@pytest.fixture
def fake_webshop(monkeypatch):
    names = ["web_agent_site", "web_agent_site.envs", "web_agent_site.envs.web_agent_text_env"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[names[-1]].WebAgentTextEnv = FakeWebAgentTextEnv


def test_missing_webshop_lists_the_setup_steps(monkeypatch):
    monkeypatch.setitem(sys.modules, "web_agent_site", None)  # import fails even if a user installed it
    with pytest.raises(ImportError, match="could not import WebShop") as err:
        WebShopEnv("train")
    assert SETUP_STEPS in str(err.value)
    for step in ("git clone https://github.com/princeton-nlp/WebShop.git", "./setup.sh -d small", "PYTHONPATH"):
        assert step in str(err.value)


def test_parse_webshop_action():
    assert parse_webshop_action("click[Buy Now]") == ("click", "buy now")
    assert parse_webshop_action("  search[ red   shoes ] ") == ("search", "red shoes")
    assert parse_webshop_action("Search[a]") == ("search", "a")
    for bad in ("", "buy", "click[]", "click[  ]", "search red", "click[x", "\x00", "jump[x]"):
        assert parse_webshop_action(bad) is None


def test_seed_to_goal_mapping(fake_webshop):
    env = WebShopEnv("train", strict_split=False)
    # eval_out = goals [0, 500) (WebShop's test set), eval_in = [500, 1500), train = [1500, 1600) here.
    assert [env.goal_index(s) for s in (9, 19, 8, 18, 0, 7, 10)] == [0, 1, 500, 501, 1500, 1507, 1508]
    assert env.goal_index(124) == 1500  # train k = 12*8 + 4 = 100 wraps around the 100 train goals
    assert env.goal_index(4999) == 499 and env.goal_index(4989) == 498  # eval_out k = 499, 498
    assert env.goal_index(5009) == 0  # eval_out k = 500 wraps


@pytest.mark.parametrize("seed", [0, 1, 8, 9])
def test_expert_buys_the_right_item(fake_webshop, seed):
    env = WebShopEnv("train", strict_split=False)
    obs, info = env.reset(seed=seed)
    assert set(INFO_KEYS) <= set(info) and info["admissible_actions"] == ["search[...]"]
    assert info["task"] == env._goals[env.goal_index(seed)]["instruction_text"] and info["task"] in obs
    actions, total = [], 0.0
    terminated = False
    while not terminated and len(actions) < 15:
        actions.append(env.expert_action())
        _, reward, terminated, _, info = env.step(actions[-1])
        total += reward
        assert info["valid"]
    assert terminated and info["won"] and total == 1.0
    goal = env._goals[env.goal_index(seed)]
    page_turns = ["click[next >]"] if goal["goal_options"] == ["red", "large"] else []  # odd goals sit on page 2
    options = ["click[red]", "click[large]"] if page_turns else ["click[red]"]
    assert actions == [
        f"search[{goal['name']}]",
        *page_turns,
        f"click[{goal['asin'].lower()}]",
        *options,
        "click[buy now]",
    ]


def test_invalid_actions(fake_webshop):
    env = WebShopEnv("train")
    env.reset(seed=0)
    for bad in ("buy it", "click[buy now]", "click[search]", "", "click[b00000"):
        obs, reward, terminated, _, info = env.step(bad)
        assert not info["valid"] and reward == 0.0 and not terminated and obs.startswith("Invalid action")
    env.step("search[widget]")
    _, _, _, _, info = env.step("search[widget]")  # no search bar on the results page
    assert not info["valid"] and "click[next >]" in info["admissible_actions"]


def test_check_env_and_make(fake_webshop):
    checks = pytest.importorskip("empg.envs.checks")
    env = make("webshop-v0", "train")
    assert env.max_turns == 15 and env.family == "shop"
    assert checks.check_env(env, seeds=[0, 1]) == list(checks.CHECKS)


def test_too_few_goals_is_a_clear_error(fake_webshop, monkeypatch):
    monkeypatch.setattr(
        _FakeServer, "__init__", lambda self: setattr(self, "goals", [{"asin": "B1", "instruction_text": "x"}] * 10)
    )
    with pytest.raises(ValueError, match="loaded only 10 goals"):
        WebShopEnv("train")
