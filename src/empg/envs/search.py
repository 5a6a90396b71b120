"""``search-v0``: Deep-Search-like multi-hop QA over a generated knowledge base with a BM25 search tool.

The knowledge base (:func:`build_kb`, cached per ``kb_seed``) holds fake but pronounceable people, organisations
(publishers), cities, countries and works, linked by relations (a work's author and publisher, a company's founder and
headquarters, a person's birth city and year, a city's country). It is rendered into ~2,200 short documents: one per
work, company, city and country and two per person (``"<name> (early life)"`` with the birth facts and ``"<name>
(career)"`` with a distractor city). First names and surnames are shared across many people, some companies are named
after cities and work titles share words, so a naive single search often returns the wrong entity.

Questions chain 2–4 relations from a work or a company, e.g. ``"In which city was the founder of the company that
published The Silent River born?"``. Each hop's fact lives in a different document.

Actions (free text, ``admissible_actions`` is ``None``):

* ``search[query]``: the top-k (default 3) passages by BM25, shown as ``<doc 1> title: text </doc>`` blocks.
* ``answer[text]``: ends the episode. Reward 1.0 on exact match after SQuAD normalisation, else 0.0;
  ``info["f1"]`` holds the token F1 and ``info["answer"]`` the gold answer.

Anything else (no brackets, unknown verb, empty query/answer) is invalid: ``valid=False``, ``"Nothing happens."``.

Splits: ``train`` and ``eval_in`` draw from the :data:`SEEN_TEMPLATES` (2–3 hops); ``eval_out`` draws from the
held-out :data:`HELDOUT_TEMPLATES` (new relation chains, 2–4 hops). ``task_type`` is ``f"{hops}hop"``;
``info["template"]`` names the template.

A real retriever (``retriever="http"``): ``search[...]`` goes to a Search-R1-style retrieval server
(``retriever_url``, ``POST /retrieve`` with ``queries`` and ``topk``; see :mod:`empg.envs.adapters.retriever`), so
users can point the env at their own e5/BM25 Wikipedia server. A timeout or server error is a *valid* search whose
observation says the search failed; the episode goes on. With ``qa_path`` (a JSONL of ``{"question", "answers"}``,
e.g. HotpotQA or Musique exported by the user) the questions come from that file: record ``j`` belongs to split
``split_of_seed(j)`` (80/10/10, disjoint), and seed ``s`` asks the ``split_index(s)``-th record of its split (modulo
their number). An answer is correct when it matches any gold answer (F1: the best over them); ``task_type`` is
``"qa"``, and the expert is a trivial oracle (``answer[<first gold answer>]``) since the hidden chain is unknown.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from empg.envs._text import BM25Index, exact_match, f1_score, parse_tool_action
from empg.envs.core import TextEnv, split_index, split_of_seed

__all__ = [
    "HELDOUT_TEMPLATES",
    "SEEN_TEMPLATES",
    "KnowledgeBase",
    "Question",
    "SearchEnv",
    "build_kb",
    "build_question",
    "hop_query",
    "question_for_seed",
]

# relation -> (source kind, target kind)
RELATIONS = {
    "author": ("work", "person"),
    "publisher": ("work", "org"),
    "founder": ("org", "person"),
    "hq": ("org", "city"),
    "birth_city": ("person", "city"),
    "birth_year": ("person", "year"),
    "country": ("city", "country"),
}
# name -> (start kind, relation chain, question text with {x})
SEEN_TEMPLATES = {
    "author_birth_city": ("work", ("author", "birth_city"), "In which city was the author of {x} born?"),
    "publisher_founder": ("work", ("publisher", "founder"), "Who founded the company that published {x}?"),
    "founder_birth_year": ("org", ("founder", "birth_year"), "In what year was the founder of {x} born?"),
    "publisher_founder_city": (
        "work",
        ("publisher", "founder", "birth_city"),
        "In which city was the founder of the company that published {x} born?",
    ),
    "author_country": ("work", ("author", "birth_city", "country"), "In which country was the author of {x} born?"),
}
HELDOUT_TEMPLATES = {
    "hq_country": ("org", ("hq", "country"), "In which country are the headquarters of {x}?"),
    "publisher_hq_country": (
        "work",
        ("publisher", "hq", "country"),
        "In which country is the company that published {x} headquartered?",
    ),
    "publisher_founder_year": (
        "work",
        ("publisher", "founder", "birth_year"),
        "In what year was the founder of the company that published {x} born?",
    ),
    "publisher_founder_country": (
        "work",
        ("publisher", "founder", "birth_city", "country"),
        "In which country was the founder of the company that published {x} born?",
    ),
}

_ONSETS = ("b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "v", "z", "th", "h")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "or", "an", "el")
_CODAS = ("", "", "n", "r", "s", "l", "k", "th", "m", "x")
N_PEOPLE, N_ORGS, N_WORKS, N_CITIES, N_COUNTRIES = 700, 150, 500, 120, 20
_PROFESSIONS = ("novelist", "engineer", "painter", "historian", "composer", "physician", "architect", "journalist")
_INDUSTRIES = ("publishing", "media", "printing", "film", "music", "software")
_ORG_SUFFIX = ("Press", "Books", "Media", "Publishing", "House", "Studios")
_GENRES = ("novel", "poetry collection", "film", "album", "play", "memoir")
_ADJ = (
    "Silent",
    "Golden",
    "Hidden",
    "Broken",
    "Distant",
    "Crimson",
    "Quiet",
    "Endless",
    "Last",
    "Northern",
    "Winter",
    "Hollow",
    "Bright",
    "Lost",
    "Iron",
    "Pale",
    "Wild",
    "Sleeping",
    "Burning",
    "Glass",
)
_NOUN = (
    "River",
    "Harbor",
    "Garden",
    "Mountain",
    "Letter",
    "Kingdom",
    "Lantern",
    "Orchard",
    "Tide",
    "Mirror",
    "Bridge",
    "Forest",
    "Crown",
    "Voyage",
    "Season",
    "Tower",
    "Shadow",
    "Island",
    "Song",
    "Road",
    "Field",
    "Window",
    "Horizon",
    "Meadow",
    "Storm",
)


@dataclass(frozen=True)
class Doc:
    title: str
    text: str


@dataclass(frozen=True)
class KnowledgeBase:
    """Entities by kind (``names[kind]``), relations ``facts[(relation, name)] -> value``, documents and their index.

    ``doc_of[(relation, name)]`` is the index of the document stating that fact.
    """

    names: dict
    facts: dict
    docs: tuple[Doc, ...]
    doc_of: dict
    index: BM25Index

    def search(self, query: str, k: int) -> list[int]:
        return self.index.search(query, k)


@dataclass(frozen=True)
class Question:
    """A multi-hop question: its text, template, chain of (relation, entity) hops and the gold answer."""

    text: str
    template: str
    hops: tuple[tuple[str, str], ...]
    answer: str

    @property
    def n_hops(self) -> int:
        return len(self.hops)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)


def _unique(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = make()
        if name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
    return out


def _entities(rng: random.Random) -> dict[str, list[str]]:
    taken: set[str] = set()
    countries = _unique(
        rng, N_COUNTRIES, lambda: _word(rng, 2).title() + rng.choice(("ia", "land", "a", "istan")), taken
    )
    cities = _unique(rng, N_CITIES, lambda: _word(rng, rng.randint(2, 3)).title(), taken)
    firsts = [_word(rng, 2).title() for _ in range(45)]
    lasts = [_word(rng, rng.randint(2, 3)).title() for _ in range(70)]
    people = _unique(rng, N_PEOPLE, lambda: f"{rng.choice(firsts)} {rng.choice(lasts)}", taken)
    orgs = _unique(rng, N_ORGS, lambda: f"{rng.choice(cities + lasts)} {rng.choice(_ORG_SUFFIX)}", taken)

    def title() -> str:
        if rng.random() < 0.7:
            return f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
        return f"{rng.choice(_NOUN)} of {rng.choice(cities)}"

    works = _unique(rng, N_WORKS, title, taken)
    return {"country": countries, "city": cities, "person": people, "org": orgs, "work": works}


def _relations(rng: random.Random, names: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    facts: dict[tuple[str, str], str] = {}
    for city in names["city"]:
        facts[("country", city)] = rng.choice(names["country"])
    for person in names["person"]:
        facts[("birth_city", person)] = rng.choice(names["city"])
        facts[("birth_year", person)] = str(rng.randint(1890, 1995))
    for org in names["org"]:
        facts[("founder", org)] = rng.choice(names["person"])
        facts[("hq", org)] = rng.choice(names["city"])
    for work in names["work"]:
        facts[("author", work)] = rng.choice(names["person"])
        facts[("publisher", work)] = rng.choice(names["org"])
    return facts


def _render(rng: random.Random, names: dict, facts: dict) -> tuple[list[Doc], dict]:
    docs: list[Doc] = []
    doc_of: dict[tuple[str, str], int] = {}

    def add(doc: Doc, *keys: tuple[str, str]) -> None:
        for key in keys:
            doc_of[key] = len(docs)
        docs.append(doc)

    for c in names["country"]:
        capital = rng.choice(names["city"])
        add(Doc(c, f"{c} is a country; its largest city is often said to be {capital}."))
    for city in names["city"]:
        text = f"{city} is a city in {facts[('country', city)]} with about {rng.randint(20, 900) * 1000} residents."
        add(Doc(city, text), ("country", city))
    for p in names["person"]:
        born = f"{p} was born in {facts[('birth_city', p)]} in {facts[('birth_year', p)]}."
        add(Doc(f"{p} (early life)", born), ("birth_city", p), ("birth_year", p))
        moved = rng.choice([c for c in names["city"] if c != facts[("birth_city", p)]])
        add(Doc(f"{p} (career)", f"{p} is a {rng.choice(_PROFESSIONS)} who lived and worked in {moved}."))
    for o in names["org"]:
        text = (
            f"{o} is a {rng.choice(_INDUSTRIES)} company founded in {rng.randint(1900, 2015)} by "
            f"{facts[('founder', o)]}. Its headquarters are in {facts[('hq', o)]}."
        )
        add(Doc(o, text), ("founder", o), ("hq", o))
    for w in names["work"]:
        text = (
            f"{w} is a {rng.randint(1920, 2020)} {rng.choice(_GENRES)} written by {facts[('author', w)]} and "
            f"published by {facts[('publisher', w)]}."
        )
        add(Doc(w, text), ("author", w), ("publisher", w))
    return docs, doc_of


@lru_cache(maxsize=4)
def build_kb(kb_seed: int = 0) -> KnowledgeBase:
    """Build (once per ``kb_seed`` per process) the knowledge base, its ~2,200 documents and the BM25 index."""
    rng = random.Random(f"search-kb-{kb_seed}")
    names = _entities(rng)
    facts = _relations(rng, names)
    docs, doc_of = _render(rng, names, facts)
    index = BM25Index([f"{d.title} {d.text}" for d in docs])
    return KnowledgeBase(names, facts, tuple(docs), doc_of, index)


def question_for_seed(kb: KnowledgeBase, seed: int) -> Question:
    """The question of an episode seed: a template of the seed's split and a start entity, both drawn from the seed."""
    templates = HELDOUT_TEMPLATES if split_of_seed(seed) == "eval_out" else SEEN_TEMPLATES
    rng = random.Random(f"search-question-{seed}")
    name = rng.choice(sorted(templates))
    start_kind, chain, text = templates[name]
    entity = rng.choice(kb.names[start_kind])
    return build_question(kb, name, entity, chain, text)


def build_question(kb: KnowledgeBase, name: str, entity: str, chain: tuple[str, ...], text: str) -> Question:
    """Follow ``chain`` from ``entity`` through ``kb.facts``; each hop is ``(relation, source entity)``."""
    hops, current = [], entity
    for relation in chain:
        hops.append((relation, current))
        current = kb.facts[(relation, current)]
    return Question(text.format(x=entity), name, tuple(hops), current)


def hop_query(kb: KnowledgeBase, relation: str, entity: str) -> str:
    """The expert's query for one hop: the exact title of the document stating ``relation`` of ``entity``."""
    return kb.docs[kb.doc_of[(relation, entity)]].title


class SearchEnv(TextEnv):
    """Multi-hop QA with ``search[...]`` and ``answer[...]`` (see the module docstring).

    Args:
        split: ``train`` | ``eval_in`` | ``eval_out``.
        kb_seed: which generated knowledge base to use (built once per process).
        top_k: passages returned per search.
        strict_split: reject seeds of other splits in ``reset``.
    """

    family = "search"
    max_turns = 10

    def __init__(
        self,
        split: str = "train",
        *,
        kb_seed: int = 0,
        top_k: int = 3,
        strict_split: bool = True,
        retriever: str = "bm25",
        retriever_url: str | None = None,
        retriever_timeout: float = 10.0,
        qa_path: str | None = None,
    ):
        super().__init__(split, strict_split=strict_split)
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if retriever not in ("bm25", "http"):
            raise ValueError(f"retriever must be 'bm25' or 'http', got {retriever!r}")
        if retriever == "http" and not retriever_url:
            raise ValueError("retriever='http' needs retriever_url='http://host:port/retrieve' (your retrieval server)")
        if qa_path is not None and retriever != "http":
            raise ValueError("qa_path (your own QA data) needs retriever='http' and a retriever_url over your corpus")
        self.kb = build_kb(kb_seed)
        self.top_k = top_k
        self.http = None
        if retriever == "http":
            from empg.envs.adapters.retriever import HttpRetriever

            self.http = HttpRetriever(retriever_url, topk=top_k, timeout=retriever_timeout)
        self.qa_items = _qa_items_of_split(qa_path, split) if qa_path is not None else None
        self.question: Question | None = None
        self.qa = None

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        self._seen: set[int] = set()
        self._seen_titles: set[str] = set()
        if self.qa_items is not None:
            self.qa = self.qa_items[split_index(seed) % len(self.qa_items)]
            self.question = Question(self.qa.question, "user-qa", (), self.qa.answers[0])
        else:
            self.question = question_for_seed(self.kb, seed)
        obs = (
            f"Question: {self.question.text}\n"
            "Use search[query] to look things up and answer[text] to give your final answer."
        )
        return obs, self._info(True)

    def _info(self, valid: bool, **extra) -> dict:
        q = self.question
        return {
            "task": q.text,
            "task_type": "qa" if self.qa is not None else f"{q.n_hops}hop",
            "template": q.template,
            "valid": valid,
            "won": False,
            "admissible_actions": None,
            **extra,
        }

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        parsed = parse_tool_action(action, ("search", "answer"))
        if parsed is None or not parsed[1]:
            obs = f"Nothing happens. Use search[query] or answer[text].\nQuestion: {self.question.text}"
            return obs, 0.0, False, self._info(False)
        verb, arg = parsed
        if verb == "answer":
            golds = self.qa.answers if self.qa is not None else (self.question.answer,)
            won = any(exact_match(arg, g) for g in golds)
            verdict = "correct" if won else "incorrect"
            extra = {"f1": max(f1_score(arg, g) for g in golds), "answer": golds[0]}
            return (
                f"You answered: {arg}. That is {verdict}.",
                float(won),
                True,
                {**self._info(True, **extra), "won": won},
            )
        if self.http is not None:
            from empg.envs.adapters.retriever import RetrieverError

            try:
                passages = self.http.search(arg)
            except RetrieverError as exc:  # a failed search is still a valid action: the agent may retry
                body = f"Search failed: {exc}"
            else:
                self._seen_titles.update(p.title for p in passages)
                blocks = [f"<doc {i}> {p.title}: {p.text} </doc>" for i, p in enumerate(passages, 1)]
                body = "\n".join(blocks) if blocks else "No results found."
            return f"Question: {self.question.text}\nResults for {arg!r}:\n{body}", 0.0, False, self._info(True)
        hits = self.kb.search(arg, self.top_k)
        self._seen.update(hits)
        blocks = [f"<doc {i}> {self.kb.docs[h].title}: {self.kb.docs[h].text} </doc>" for i, h in enumerate(hits, 1)]
        body = "\n".join(blocks) if blocks else "No results found."
        return f"Question: {self.question.text}\nResults for {arg!r}:\n{body}", 0.0, False, self._info(True)

    def expert_action(self) -> str:
        """Search the exact title of the first hop document not yet retrieved; answer once all were retrieved.

        With user QA data (``qa_path``) the hops are unknown: the oracle answers directly.
        """
        for relation, entity in self.question.hops:
            doc = self.kb.doc_of[(relation, entity)]
            seen = doc in self._seen or (self.http is not None and self.kb.docs[doc].title in self._seen_titles)
            if not seen:
                return f"search[{hop_query(self.kb, relation, entity)}]"
        return f"answer[{self.question.answer}]"


def _qa_items_of_split(path: str, split: str) -> list:
    """Records of a user QA JSONL that belong to ``split`` (record j → ``split_of_seed(j)``)."""
    from empg.envs.adapters.retriever import load_qa_jsonl

    items = [item for j, item in enumerate(load_qa_jsonl(path)) if split_of_seed(j) == split]
    if not items:
        raise ValueError(f"{path} has no record for split {split!r} (record j goes to split_of_seed(j)); add records")
    return items
