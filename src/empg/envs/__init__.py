"""Text environments: the contract (:mod:`empg.envs.core`), the registry and the embedded envs.

>>> import empg.envs as envs
>>> env = envs.make("household-v0", split="train")
>>> obs, info = env.reset(seed=0)
"""

from empg.envs.checks import EnvCheckError, check_env
from empg.envs.core import (
    INFO_KEYS,
    SPLITS,
    EnvSpec,
    EpisodeOverError,
    TextEnv,
    TimeLimit,
    list_envs,
    make,
    register,
    spec,
    split_index,
    split_of_seed,
    split_seeds,
)

register(
    "household-v0",
    "empg.envs.household:HouseholdEnv",
    max_turns=50,
    description="ALFWorld-like household tasks (6 task types), sparse success reward",
)
register(
    "shop-v0",
    "empg.envs.shop:ShopEnv",
    max_turns=15,
    description="WebShop-like store: search, browse, pick options, buy; WebShop scoring",
)
register(
    "search-v0",
    "empg.envs.search:SearchEnv",
    max_turns=10,
    description="Deep-search multi-hop QA over a generated corpus with BM25 search[...] and answer[...]",
)

register(
    "scienceworld-v0",
    "empg.envs.adapters.scienceworld:ScienceWorldEnv",
    max_turns=50,
    description="Real ScienceWorld (30 science task types; needs `scienceworld` + Java 17), score/100 reward",
)
register(
    "textworld-v0",
    "empg.envs.adapters.textworld:TextWorldEnv",
    max_turns=50,
    description="TextWorld games generated offline (coin collector, treasure hunter, cooking); needs `textworld`",
)
register(
    "alfworld-v0",
    "empg.envs.adapters.alfworld:AlfworldEnv",
    max_turns=50,
    description="ALFWorld through its own engine (alfworld + textworld): official games or generated household scenes",
)
register(
    "webshop-v0",
    "empg.envs.adapters.webshop:WebShopEnv",
    max_turns=15,
    description="Real WebShop text env (user-installed package + data; see empg.envs.adapters.webshop)",
)

__all__ = [
    "EnvCheckError",
    "check_env",
    "INFO_KEYS",
    "SPLITS",
    "EnvSpec",
    "EpisodeOverError",
    "TextEnv",
    "TimeLimit",
    "list_envs",
    "make",
    "register",
    "spec",
    "split_index",
    "split_of_seed",
    "split_seeds",
]
