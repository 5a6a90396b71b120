"""Text environments: the contract (:mod:`empg.envs.core`), the registry and the embedded envs.

>>> import empg.envs as envs
>>> env = envs.make("household-v0", split="train")
>>> obs, info = env.reset(seed=0)
"""

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

__all__ = [
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
    "split_of_seed",
    "split_seeds",
]
