"""Deep search against a real retrieval server, with the HTTP API that Search-R1-style setups use.

The API (Search-R1 ``search_r1/search/retrieval_server.py``)::

    POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    ->              {"result": [[{"document": {"contents": "\\"Title\\"\\ntext", ...}, "score": 12.3}, ...], ...]}

(with ``return_scores`` false each hit is the bare document). A document's ``contents`` holds the title on its first
line and the text after it. Users point :class:`HttpRetriever` at their own e5/BM25 Wikipedia server and load their
QA data (HotpotQA, Musique … exported as JSONL) with :func:`load_qa_jsonl`.

* :class:`HttpRetriever`: the client. ``search(query, k)`` returns :class:`Passage` objects or raises
  :class:`RetrieverError`; ``search_text(query, k)`` never raises: it returns the observation text, which says the
  search failed on timeouts, connection errors, HTTP errors and malformed replies.
* :func:`serve_bm25`: a small server with the same API over a local corpus (bm25s), for tests and offline use;
  also ``python -m empg.envs.adapters.retriever --corpus corpus.jsonl --port 8000``.
* :func:`load_qa_jsonl`: question/answers records.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "BM25RetrievalServer",
    "HttpRetriever",
    "Passage",
    "QAItem",
    "RetrieverError",
    "format_passages",
    "load_qa_jsonl",
    "serve_bm25",
]


class RetrieverError(RuntimeError):
    """The retrieval server could not be reached, failed, or answered something that is not the expected JSON."""


@dataclass(frozen=True)
class Passage:
    """One retrieved document: ``title`` (first line of ``contents``, quotes removed), ``text``, ``score``."""

    title: str
    text: str
    score: float | None = None

    @classmethod
    def from_contents(cls, contents: str, score: float | None = None) -> Passage:
        title, _, text = contents.partition("\n")
        return cls(title.strip().strip('"'), text.strip(), score)

    def contents(self) -> str:
        """The Search-R1 ``contents`` string: ``"Title"`` on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'


def format_passages(passages: Sequence[Passage]) -> str:
    """Render passages the way Search-R1 shows them to the model.

    >>> format_passages([Passage("Paris", "Capital of France.")])
    'Doc 1(Title: Paris) Capital of France.'
    """
    if not passages:
        return "No results found."
    return "\n".join(f"Doc {i}(Title: {p.title}) {p.text}" for i, p in enumerate(passages, 1))


def _parse_hit(hit: Any) -> Passage:
    if isinstance(hit, dict) and isinstance(hit.get("document"), dict):
        doc, score = hit["document"], hit.get("score")
    elif isinstance(hit, dict):
        doc, score = hit, None
    else:
        raise RetrieverError(f"expected a JSON object per hit, got {type(hit).__name__}")
    contents = doc.get("contents")
    if contents is None and "text" in doc:  # some servers split title/text
        contents = f'"{doc.get("title", "")}"\n{doc["text"]}'
    if not isinstance(contents, str):
        raise RetrieverError("hit has no 'contents' string in its document")
    try:
        return Passage.from_contents(contents, None if score is None else float(score))
    except (TypeError, ValueError) as exc:
        raise RetrieverError(f"hit score {score!r} is not a number") from exc


class HttpRetriever:
    """Client for a Search-R1-style ``/retrieve`` endpoint.

    Args:
        url: full endpoint, e.g. ``"http://127.0.0.1:8000/retrieve"`` (a bare ``http://host:port`` gets ``/retrieve``).
        topk: passages per query when ``search`` gets no ``k``.
        timeout: seconds per request.
        retries: extra attempts after a connection error or timeout (HTTP errors are not retried).
    """

    def __init__(self, url: str, *, topk: int = 3, timeout: float = 10.0, retries: int = 1):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever url must start with http:// or https://, got {url!r}")
        if topk < 1 or timeout <= 0 or retries < 0:
            raise ValueError(f"need topk >= 1, timeout > 0, retries >= 0; got {topk}, {timeout}, {retries}")
        self.url = url if url.rstrip("/").endswith("/retrieve") else url.rstrip("/") + "/retrieve"
        self.topk, self.timeout, self.retries = topk, timeout, retries

    def batch_search(self, queries: Sequence[str], k: int | None = None) -> list[list[Passage]]:
        """Retrieve for several queries in one request. Raises :class:`RetrieverError` on any failure."""
        payload = json.dumps({"queries": list(queries), "topk": k or self.topk, "return_scores": True}).encode()
        body = self._post(payload)
        try:
            result = json.loads(body)["result"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrieverError(f"reply is not JSON with a 'result' list: {body[:200]!r}") from exc
        if not isinstance(result, list) or len(result) != len(queries):
            raise RetrieverError(f"expected {len(queries)} result lists, got {type(result).__name__}")
        return [[_parse_hit(h) for h in hits] for hits in result]

    def search(self, query: str, k: int | None = None) -> list[Passage]:
        """Top-``k`` passages for ``query``. Raises :class:`RetrieverError` on any failure."""
        return self.batch_search([query], k)[0]

    def search_text(self, query: str, k: int | None = None) -> str:
        """The observation for ``search[query]``: formatted passages, or a message that the search failed."""
        if not query.strip():
            return "Search failed: the query is empty. Use search[your query]."
        try:
            return format_passages(self.search(query, k))
        except RetrieverError as exc:
            return f"Search failed: {exc}"

    def _post(self, payload: bytes) -> bytes:
        request = urllib.request.Request(
            self.url, data=payload, headers={"Content-Type": "application/json"}, method="POST"
        )
        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                raise RetrieverError(f"the retrieval server answered HTTP {exc.code} ({exc.reason})") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = exc
        reason = getattr(last, "reason", last)
        kind = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "is unreachable"
        raise RetrieverError(f"the retrieval server at {self.url} {kind} ({reason})") from last


# ----------------------------------------------------------------------------- local BM25 server
class BM25RetrievalServer:
    """A threaded HTTP server answering ``POST /retrieve`` over a fixed corpus with bm25s (see :func:`serve_bm25`)."""

    def __init__(self, contents: Sequence[str], host: str = "127.0.0.1", port: int = 0):
        import bm25s

        if not contents:
            raise ValueError("the corpus is empty")
        self.contents = list(contents)
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(self.contents, stopwords="en", show_progress=False), show_progress=False)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/retrieve"

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[tuple[int, float]]]:
        """``(doc index, score)`` pairs per query, best first; documents with zero BM25 score are left out."""
        k = min(max(int(topk), 1), len(self.contents))
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        with self._lock:  # bm25s retrieval is not documented as thread-safe
            ids, scores = self._index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [
            [(int(i), float(s)) for i, s in zip(row_i, row_s, strict=True) if s > 0]
            for row_i, row_s in zip(ids, scores, strict=True)
        ]

    def _answer(self, body: dict) -> dict:
        queries, topk = body.get("queries"), body.get("topk", 3)
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise ValueError("'queries' must be a list of strings")
        hits = self.retrieve(queries, topk) if queries else []
        with_scores = bool(body.get("return_scores", False))
        result = []
        for row in hits:
            docs = [{"id": str(i), "contents": self.contents[i]} for i, _ in row]
            result.append(
                [{"document": d, "score": s} for d, (_, s) in zip(docs, row, strict=True)] if with_scores else docs
            )
        return {"result": result}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/retrieve":
                    return self._send(404, {"error": f"unknown path {self.path}; POST /retrieve"})
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    reply = server._answer(json.loads(self.rfile.read(length) or b"{}"))
                except (ValueError, TypeError, AttributeError) as exc:
                    return self._send(400, {"error": str(exc)})
                self._send(200, reply)

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        return Handler

    def start(self) -> BM25RetrievalServer:
        """Serve in a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> BM25RetrievalServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve_bm25(
    documents: Iterable[str | dict | Passage], host: str = "127.0.0.1", port: int = 0
) -> BM25RetrievalServer:
    """Start a Search-R1-compatible BM25 server over ``documents`` in a background thread.

    Args:
        documents: ``contents`` strings (``"Title"\\ntext``), dicts with ``contents`` or ``title``/``text``, or
            :class:`Passage` objects.
        host: interface to bind (default localhost only).
        port: TCP port; 0 picks a free one (read ``server.url``).

    Returns:
        The running server; use it as a context manager or call ``close()``.
    """
    contents = []
    for doc in documents:
        if isinstance(doc, Passage):
            contents.append(doc.contents())
        elif isinstance(doc, dict):
            contents.append(doc["contents"] if "contents" in doc else f'"{doc.get("title", "")}"\n{doc["text"]}')
        else:
            contents.append(str(doc))
    return BM25RetrievalServer(contents, host, port).start()


# ----------------------------------------------------------------------------- QA data
@dataclass(frozen=True)
class QAItem:
    """A question with its accepted answers (exact match against any of them)."""

    question: str
    answers: tuple[str, ...]
    id: str = ""


def load_qa_jsonl(path: str | Path) -> list[QAItem]:
    """Read a JSONL of ``{"question": ..., "answers": [...]}`` records (HotpotQA, Musique … exported by the user).

    Accepted answer keys: ``answers``, ``golden_answers`` (Search-R1's name) or ``answer`` (a string or a list).
    An optional ``id`` is kept. Blank lines are skipped; a malformed line raises ``ValueError`` naming its number.
    """
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                question = rec["question"]
                answers = next(rec[k] for k in ("answers", "golden_answers", "answer") if k in rec)
            except (ValueError, KeyError, StopIteration, TypeError) as exc:
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object with 'question' and 'answers' (or 'golden_answers' / "
                    f"'answer'), got {line.strip()[:120]!r}"
                ) from exc
            answers = [answers] if isinstance(answers, str) else list(answers)
            if not isinstance(question, str) or not question.strip() or not answers:
                raise ValueError(f"{path}:{lineno}: the question must be a non-empty string with at least one answer")
            items.append(QAItem(question.strip(), tuple(str(a) for a in answers), str(rec.get("id", lineno))))
    if not items:
        raise ValueError(f"{path} holds no QA records")
    return items


def _read_corpus(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m empg.envs.adapters.retriever --corpus corpus.jsonl [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(description="Serve a JSONL corpus (contents or title/text) over /retrieve")
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL with 'contents' or 'title'+'text'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    server = serve_bm25(_read_corpus(args.corpus), args.host, args.port)
    print(f"serving {len(server.contents)} documents at {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
