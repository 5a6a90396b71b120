"""Shared text helpers for the embedded ``shop-v0`` and ``search-v0`` envs.

* :func:`tokenize`: lowercase word tokens (``[a-z0-9]+``) without a small English stopword list; used for indexing
  and for queries so both sides agree.
* :class:`BM25Index`: a thin deterministic wrapper around :mod:`bm25s` (Okapi BM25). Ties are broken by document
  order, queries without known tokens return no hits and never raise.
* :func:`normalize_answer` / :func:`exact_match` / :func:`f1_score`: SQuAD answer normalisation and token F1.
* :func:`parse_tool_action`: ``verb[argument]`` parsing shared by both envs.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import bm25s
import numpy as np

STOPWORDS = frozenset(
    "a an the and or of in on at to for with by from is are was were be it its this that which who what whose "
    "as into than".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")
# The argument holds no bracket: "search[a]...search[b]" is not one call with argument "a]...search[b".
_ACTION = re.compile(r"^\s*([a-z_]+)\s*\[([^\[\]]*)\]\s*$", re.IGNORECASE)
MAX_ACTION_CHARS = 2_000


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric tokens of ``text`` minus :data:`STOPWORDS`.

    >>> tokenize("The Silent River, 2nd ed.")
    ['silent', 'river', '2nd', 'ed']
    """
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def parse_tool_action(action: str, verbs: Sequence[str]) -> tuple[str, str] | None:
    """``(verb, argument)`` for ``verb[argument]`` with a verb from ``verbs`` (case-insensitive), else ``None``.

    The argument is stripped and whitespace-collapsed; over-long actions (> :data:`MAX_ACTION_CHARS`) are rejected.

    >>> parse_tool_action(" Search[ red  shoes ] ", ("search", "click"))
    ('search', 'red shoes')
    >>> parse_tool_action("search red shoes", ("search",)) is None
    True
    """
    if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS:
        return None
    m = _ACTION.match(action)
    if m is None or m.group(1).lower() not in verbs:
        return None
    return m.group(1).lower(), " ".join(m.group(2).split())


class BM25Index:
    """Okapi BM25 over a fixed list of documents (built once; :mod:`bm25s` does the scoring).

    Args:
        docs: document texts (title and body already joined).
    """

    def __init__(self, docs: Sequence[str]):
        if not docs:
            raise ValueError("BM25Index needs at least one document")
        self.size = len(docs)
        self._bm25 = bm25s.BM25()
        self._bm25.index([tokenize(d) or ["<empty>"] for d in docs], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query``, shape ``(size,)`` (zeros when no query token is known)."""
        tokens = tokenize(query)
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def search(self, query: str, k: int) -> list[int]:
        """Indices of the top-``k`` documents with a positive score, best first, ties by document order."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > 0]


# ----------------------------------------------------------------------------- SQuAD answer scoring
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace.

    >>> normalize_answer("  The Brevik-Harbour,  Inc. ")
    'brevikharbour inc'
    """
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, truth: str) -> bool:
    """``normalize_answer(prediction) == normalize_answer(truth)``."""
    return normalize_answer(prediction) == normalize_answer(truth)


def f1_score(prediction: str, truth: str) -> float:
    """SQuAD token-level F1 between normalised ``prediction`` and ``truth`` (1.0 when both are empty)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
