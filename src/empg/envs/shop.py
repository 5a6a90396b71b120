"""``shop-v0``: a WebShop-like store (Yao et al., 2022) over a generated catalogue, searched with BM25.

The catalogue (:func:`build_catalog`, cached per ``catalog_seed``) holds 1,200 products in 6 categories; each product
has a product type, 3–8 attributes, ``size`` and ``color`` options, a price, a title (with a unique model code) and a
description. The episode seed picks a target product and asks for its type, 1–3 of its attributes, one value per
option and a price bound::

    i need a running shoes with non slip and breathable, size: 9 and color: black, and price lower than 50.00
    dollars

Pages and actions (WebShop text mode; observations use ``" [SEP] "`` separators):

* search page: ``search[<free text query>]``. ``admissible_actions`` lists the template ``"search[<query>]"``.
* results page (10 items per page, at most 50 results): ``click[<item id>]``, ``click[next >]``, ``click[< prev]``,
  ``click[back to search]``.
* item page: ``click[<option value>]``, ``click[description]``, ``click[< prev]``, ``click[back to search]``,
  ``click[buy now]``; description page: ``click[< prev]``, ``click[back to search]``.

Matching is case-insensitive. Anything else (unknown item, option not on the page, malformed brackets, search off the
search page) is invalid: ``valid=False``, observation ``"Nothing happens."`` plus the page, no state change.

Reward on ``buy now`` is WebShop's score: ``r_type * (attributes matched + options matched + price ok) /
(n_attributes + n_options + 1)`` with ``r_type`` 1 for the same product type, 0.5 for the same category and 0.1
otherwise. Success (``won``) is score 1. ``task_type`` is the product category.

Splits: ``train`` / ``eval_in`` ask for attribute sets that avoid every *held-out attribute pair* (about one pair in
five per category, fixed by :func:`is_heldout_pair`); ``eval_out`` asks for attribute sets that contain at least one
held-out pair, so its attribute combinations never occur in train instructions.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from empg.envs._text import BM25Index, parse_tool_action
from empg.envs.core import TextEnv, split_of_seed

__all__ = ["CATEGORIES", "Catalog", "Goal", "Product", "ShopEnv", "build_catalog", "is_heldout_pair", "shop_score"]

SEP = " [SEP] "
PAGE_SIZE = 10
MAX_RESULTS = 50
PRODUCTS_PER_TYPE = 40

# category -> (product types, attribute pool, sizes, colors, price range)
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, int]]] = {
    "footwear": (
        ("running shoes", "hiking boots", "sandals", "slippers", "sneakers"),
        (
            "non slip",
            "rubber sole",
            "water resistant",
            "lightweight",
            "breathable",
            "memory foam",
            "arch support",
            "wide toe box",
            "slip on",
            "quick drying",
        ),
        ("6", "7", "8", "9", "10", "11", "12"),
        ("black", "white", "grey", "navy", "brown", "red"),
        (15, 140),
    ),
    "clothing": (
        ("hoodie", "t-shirt", "rain jacket", "yoga pants", "wool sweater"),
        (
            "machine washable",
            "cotton",
            "moisture wicking",
            "slim fit",
            "relaxed fit",
            "long sleeve",
            "pockets",
            "stretch fabric",
            "hooded",
            "wrinkle free",
        ),
        ("x-small", "small", "medium", "large", "x-large", "xx-large"),
        ("black", "heather grey", "olive", "burgundy", "sky blue", "beige"),
        (10, 90),
    ),
    "beauty": (
        ("face moisturizer", "shampoo", "lip balm", "sunscreen", "hair serum"),
        (
            "paraben free",
            "cruelty free",
            "fragrance free",
            "vegan",
            "organic",
            "long lasting",
            "sensitive skin",
            "travel size",
            "natural ingredients",
            "oil free",
        ),
        ("1 fl oz", "2 fl oz", "4 fl oz", "8 fl oz", "16 fl oz"),
        ("unscented", "lavender", "coconut", "citrus", "rose", "mint"),
        (5, 60),
    ),
    "grocery": (
        ("green tea", "trail mix", "dark chocolate", "protein bar", "coffee beans"),
        (
            "gluten free",
            "sugar free",
            "low carb",
            "non gmo",
            "keto friendly",
            "individually wrapped",
            "kosher",
            "high protein",
            "caffeine free",
            "ready to eat",
        ),
        ("pack of 1", "pack of 2", "pack of 4", "pack of 6", "pack of 12"),
        ("original", "vanilla", "salted caramel", "peanut butter", "mixed berry", "hazelnut"),
        (4, 45),
    ),
    "electronics": (
        ("wireless earbuds", "phone charger", "bluetooth speaker", "usb hub", "webcam"),
        (
            "fast charging",
            "noise cancelling",
            "long battery life",
            "waterproof",
            "easy install",
            "high definition",
            "usb c",
            "portable",
            "plug and play",
            "dual band",
        ),
        ("standard", "mini", "pro", "max"),
        ("matte black", "silver", "space grey", "white", "midnight blue"),
        (12, 200),
    ),
    "home": (
        ("throw pillow", "bed sheets", "desk lamp", "storage basket", "bath towel"),
        (
            "easy clean",
            "space saving",
            "dishwasher safe",
            "eco friendly",
            "anti slip",
            "hypoallergenic",
            "living room",
            "bedroom",
            "soft",
            "assembly required",
        ),
        ("twin", "full", "queen", "king", "one size"),
        ("ivory", "charcoal", "sage green", "dusty pink", "teal", "walnut"),
        (8, 120),
    ),
}
BRANDS = (
    "Aldera",
    "Brovo",
    "Cintra",
    "Dunmore",
    "Elvix",
    "Fennick",
    "Galloway",
    "Hestia",
    "Ivelle",
    "Joric",
    "Kestrel",
    "Lumina",
    "Morrow",
    "Norvik",
    "Orlen",
    "Pellam",
)
STYLES = ("Classic", "Premium", "Everyday", "Ultra", "Essential", "Deluxe", "Urban", "Signature")
_ASIN_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Product:
    """One catalogue item. ``options`` maps an option name (``size``/``color``) to its values on this item."""

    asin: str
    category: str
    product_type: str
    title: str
    price: float
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    description: str

    def option_dims(self) -> dict[str, tuple[str, ...]]:
        return dict(self.options)


@dataclass(frozen=True)
class Goal:
    """What the instruction asks for (the WebShop goal): type, attributes, one value per option, price bound."""

    category: str
    product_type: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    price_upper: float
    target: str  # the asin the instruction was drawn from (a product that scores 1)

    def instruction(self) -> str:
        opts = " and ".join(f"{name}: {value}" for name, value in self.options)
        return (
            f"i need a {self.product_type} with {' and '.join(self.attributes)}, {opts}, "
            f"and price lower than {self.price_upper:.2f} dollars"
        )


@dataclass(frozen=True)
class Catalog:
    """The generated store: products, an asin lookup and a BM25 index over title + attributes + description."""

    products: tuple[Product, ...]
    by_asin: dict
    index: BM25Index

    def search(self, query: str, k: int = MAX_RESULTS) -> list[Product]:
        return [self.products[i] for i in self.index.search(query, k)]


def is_heldout_pair(category: str, a: str, b: str) -> bool:
    """Whether the attribute pair ``{a, b}`` of ``category`` is held out of train instructions (~1 pair in 5)."""
    key = "|".join([category, *sorted((a, b))]).encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) % 5 == 0


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B0" + "".join(rng.choice(_ASIN_CHARS) for _ in range(8))
        if asin not in taken:
            taken.add(asin)
            return asin


def _product(rng: random.Random, category: str, ptype: str, asin: str, index: int) -> Product:
    _, pool, sizes, colors, (lo, hi) = CATEGORIES[category]
    attrs = tuple(sorted(rng.sample(pool, rng.randint(3, 8))))
    size_pick = set(rng.sample(sizes, rng.randint(2, len(sizes))))
    color_pick = set(rng.sample(colors, rng.randint(2, len(colors))))
    size_vals, color_vals = tuple(v for v in sizes if v in size_pick), tuple(v for v in colors if v in color_pick)
    price = round(rng.uniform(lo, hi), 2)
    brand, style = rng.choice(BRANDS), rng.choice(STYLES)
    model = f"{asin[-3:].lower()}{index}"
    title = f"{brand} {style} {ptype.title()} {attrs[0].title()} {attrs[-1].title()} Model {model.upper()}"
    description = (
        f"This {ptype} from {brand} is {', '.join(attrs[:-1])} and {attrs[-1]}. "
        f"Available in {len(size_vals)} sizes and {len(color_vals)} colors."
    )
    return Product(
        asin, category, ptype, title, price, attrs, (("size", size_vals), ("color", color_vals)), description
    )


@lru_cache(maxsize=4)
def build_catalog(catalog_seed: int = 0) -> Catalog:
    """Build (once per ``catalog_seed`` per process) the 1,200-product catalogue and its BM25 index."""
    rng = random.Random(f"shop-catalog-{catalog_seed}")
    taken: set[str] = set()
    products = []
    for category, (types, *_rest) in CATEGORIES.items():
        for ptype in types:
            for _ in range(PRODUCTS_PER_TYPE):
                products.append(_product(rng, category, ptype, _asin(rng, taken), len(products)))
    docs = [f"{p.title} {p.product_type} {' '.join(p.attributes)} {p.description}" for p in products]
    return Catalog(tuple(products), {p.asin: p for p in products}, BM25Index(docs))


def _goal_allowed(category: str, attrs: tuple[str, ...], split: str) -> bool:
    heldout = any(is_heldout_pair(category, a, b) for a, b in combinations(attrs, 2))
    return heldout if split == "eval_out" else not heldout


def sample_goal(catalog: Catalog, seed: int) -> Goal:
    """The goal for an episode seed: a target product and 1–3 of its attributes allowed in the seed's split."""
    split = split_of_seed(seed)
    rng = random.Random(f"shop-goal-{seed}")
    while True:
        p = rng.choice(catalog.products)
        n = rng.randint(2, 3) if split == "eval_out" else rng.randint(1, 3)
        attrs = tuple(rng.sample(p.attributes, n))
        if _goal_allowed(p.category, attrs, split):
            break
    options = tuple((name, rng.choice(values)) for name, values in p.options)
    upper = float(int(p.price * rng.uniform(1.1, 1.6)) + 1)
    return Goal(p.category, p.product_type, attrs, options, upper, p.asin)


def shop_score(goal: Goal, product: Product, chosen: dict[str, str]) -> float:
    """WebShop's reward for buying ``product`` with options ``chosen`` under ``goal``, in [0, 1].

    ``r_type * (n_attr_match + n_opt_match + price_ok) / (n_attr + n_opt + 1)``, ``r_type`` = 1 (same type),
    0.5 (same category) or 0.1.
    """
    r_type = 1.0 if product.product_type == goal.product_type else 0.5 if product.category == goal.category else 0.1
    attr_hits = sum(a in product.attributes for a in goal.attributes)
    opt_hits = sum(chosen.get(name) == value for name, value in goal.options)
    price_ok = int(product.price <= goal.price_upper)
    return r_type * (attr_hits + opt_hits + price_ok) / (len(goal.attributes) + len(goal.options) + 1)


class ShopEnv(TextEnv):
    """WebShop-like shopping env (see the module docstring for pages, actions, reward and splits).

    Args:
        split: ``train`` | ``eval_in`` | ``eval_out``.
        catalog_seed: which generated catalogue to use (built once per process).
        strict_split: reject seeds of other splits in ``reset``.
    """

    family = "shop"
    max_turns = 15

    def __init__(self, split: str = "train", *, catalog_seed: int = 0, strict_split: bool = True):
        super().__init__(split, strict_split=strict_split)
        self.catalog = build_catalog(catalog_seed)
        self.goal: Goal | None = None

    # ----------------------------------------------------------------- state
    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        self.goal = sample_goal(self.catalog, seed)
        self._page = "search"
        self._query = ""
        self._results: tuple[str, ...] = ()
        self._page_no = 0
        self._item: str | None = None
        self._chosen: dict[str, str] = {}
        return self._render(), self._info(True)

    def _info(self, valid: bool, **extra) -> dict:
        return {
            "task": self.goal.instruction(),
            "task_type": self.goal.category,
            "admissible_actions": self._clickables(),
            "valid": valid,
            "won": False,
            "page": self._page,
            **extra,
        }

    def _page_items(self) -> tuple[str, ...]:
        start = self._page_no * PAGE_SIZE
        return self._results[start : start + PAGE_SIZE]

    def _clickables(self) -> list[str]:
        if self._page == "search":
            return ["search[<query>]"]
        out = ["click[back to search]"]
        if self._page == "results":
            if self._page_no > 0:
                out.append("click[< prev]")
            if (self._page_no + 1) * PAGE_SIZE < len(self._results):
                out.append("click[next >]")
            out += [f"click[{a.lower()}]" for a in self._page_items()]
        elif self._page == "item":
            out.append("click[< prev]")
            for _, values in self.catalog.by_asin[self._item].options:
                out += [f"click[{v}]" for v in values]
            out += ["click[description]", "click[buy now]"]
        else:  # description
            out.append("click[< prev]")
        return out

    # ----------------------------------------------------------------- rendering
    def _render(self) -> str:
        head = ["Instruction:", self.goal.instruction()]
        if self._page == "search":
            return SEP.join(["WebShop", *head, "Search"])
        parts = [*head, "Back to Search"]
        if self._page == "results":
            parts.append(f"Page {self._page_no + 1} (Total results: {len(self._results)})")
            if self._page_no > 0:
                parts.append("< Prev")
            if (self._page_no + 1) * PAGE_SIZE < len(self._results):
                parts.append("Next >")
            for asin in self._page_items():
                p = self.catalog.by_asin[asin]
                parts += [asin, p.title, f"${p.price:.2f}"]
            if not self._results:
                parts.append("No products match your query.")
            return SEP.join(parts)
        p = self.catalog.by_asin[self._item]
        parts.append("< Prev")
        if self._page == "description":
            return SEP.join([*parts, p.description])
        for name, values in p.options:
            parts += [name, *values]
        chosen = ", ".join(f"{k}: {v}" for k, v in sorted(self._chosen.items())) or "none"
        parts += [p.title, f"Price: ${p.price:.2f}", "Rating: N.A.", f"Selected: {chosen}", "Description", "Buy Now"]
        return SEP.join(parts)

    # ----------------------------------------------------------------- transitions
    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        parsed = parse_tool_action(action, ("search", "click"))
        if parsed is not None:
            verb, arg = parsed
            if verb == "search":
                ok = self._do_search(arg)
            else:
                bought = self._do_click(arg.lower())
                if isinstance(bought, float):
                    won = bought >= 1.0 - 1e-9
                    obs = f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {bought:.4f}"
                    return obs, bought, True, {**self._info(True, score=bought), "won": won}
                ok = bought
            if ok:
                return self._render(), 0.0, False, self._info(True)
        return "Nothing happens. " + self._render(), 0.0, False, self._info(False)

    def _do_search(self, query: str) -> bool:
        if self._page != "search" or not query:
            return False
        self._query = query
        self._results = tuple(p.asin for p in self.catalog.search(query))
        self._page, self._page_no = "results", 0
        return True

    def _do_click(self, target: str) -> bool | float:
        if self._page == "search" or f"click[{target}]" not in self._clickables():
            return False
        if target == "back to search":
            self._page, self._item, self._chosen = "search", None, {}
        elif self._page == "results":
            if target in ("next >", "< prev"):
                self._page_no += 1 if target == "next >" else -1
            else:
                self._page, self._item, self._chosen = "item", target.upper(), {}
        elif self._page == "description":
            self._page = "item"
        elif target == "< prev":
            self._page, self._item, self._chosen = "results", None, {}
        elif target == "description":
            self._page = "description"
        elif target == "buy now":
            return shop_score(self.goal, self.catalog.by_asin[self._item], self._chosen)
        else:
            for name, values in self.catalog.by_asin[self._item].options:
                if target in values:
                    self._chosen[name] = target
        return True

    # ----------------------------------------------------------------- oracle
    def expert_action(self) -> str:
        """Search the target's exact title, page to it, pick the goal's options, buy."""
        goal = self.goal
        target = self.catalog.by_asin[goal.target]
        if self._page == "search":
            return f"search[{target.title.lower()}]"
        if self._page == "description":
            return "click[< prev]"
        if self._page == "results":
            if goal.target in self._results:
                pos = self._results.index(goal.target) // PAGE_SIZE
                if pos == self._page_no:
                    return f"click[{goal.target.lower()}]"
                return "click[next >]" if pos > self._page_no else "click[< prev]"
            return "click[back to search]"
        if self._item != goal.target:
            return "click[< prev]"
        for name, value in goal.options:
            if self._chosen.get(name) != value:
                return f"click[{value}]"
        return "click[buy now]"
