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
  also ``python -m empg.envs.adapters.retriever --corpus corpus.jsonl --port 8000``. It bounds every request
  (:class:`ServerLimits`: body size, queries per request, ``topk``, query length, a per-request socket timeout):
  a request over a limit gets HTTP 413 (body) or 400 (the others) with a JSON body
  ``{"error": ..., "limit": name, "max": value, "received": value}``; malformed JSON gets 400; a client that stalls
  is dropped after the timeout (408 when it stalls inside the body). The server keeps serving after any of them.
* :func:`load_qa_jsonl`: question/answers records.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
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
    "ServerLimits",
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
                detail = _error_detail(exc)
                raise RetrieverError(f"the retrieval server answered HTTP {exc.code} ({exc.reason}){detail}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = exc
        reason = getattr(last, "reason", last)
        kind = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "is unreachable"
        raise RetrieverError(f"the retrieval server at {self.url} {kind} ({reason})") from last


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """``": <server's error message>"`` when an HTTP error reply is JSON with an ``error`` string, else ``""``."""
    try:
        message = json.loads(exc.read(4096))["error"]
    except Exception:  # noqa: BLE001 - any unreadable/odd error body just means no detail
        return ""
    return f": {message[:300]}" if isinstance(message, str) else ""


# ----------------------------------------------------------------------------- local BM25 server
@dataclass(frozen=True)
class ServerLimits:
    """Per-request bounds of :class:`BM25RetrievalServer` (the CLI flags of the same names set them).

    Attributes:
        max_body_bytes: largest accepted ``Content-Length`` (bigger: HTTP 413, the body is not parsed).
        max_queries: most queries in one request.
        max_topk: largest ``topk``.
        max_query_chars: longest query, in characters.
        request_timeout: seconds each socket read/write may wait, and the most the body of a request may take to
            arrive; a client that stalls longer is dropped (408 when it stalls inside the body).
    """

    max_body_bytes: int = 1 << 20
    max_queries: int = 512
    max_topk: int = 100
    max_query_chars: int = 4096
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_queries", "max_topk", "max_query_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout!r}")


class _RequestError(Exception):
    """A request the server refuses: HTTP ``code`` with a JSON error body (``limit``/``max``/``received`` if set)."""

    def __init__(self, code: int, message: str, limit: str | None = None, maximum: Any = None, received: Any = None):
        super().__init__(message)
        self.code = code
        self.body: dict[str, Any] = {"error": message}
        if limit is not None:
            self.body.update(limit=limit, max=maximum, received=received)


_DRAIN_CAP = 16 << 20  # at most this many bytes of a refused body are read and discarded (see _discard)


class BM25RetrievalServer:
    """A threaded HTTP server answering ``POST /retrieve`` over a fixed corpus with bm25s (see :func:`serve_bm25`).

    ``limits`` (a :class:`ServerLimits`) or its fields as keyword arguments bound each request; see the module
    docstring for the error replies.
    """

    def __init__(
        self,
        contents: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: ServerLimits | None = None,
        **limit_kwargs: Any,
    ):
        import bm25s

        if not contents:
            raise ValueError("the corpus is empty")
        if limits is not None and limit_kwargs:
            raise ValueError("pass either limits=ServerLimits(...) or its fields as keywords, not both")
        self.limits = limits if limits is not None else ServerLimits(**limit_kwargs)
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

    def _validate(self, body: Any) -> tuple[list[str], int, bool]:
        """``(queries, topk, return_scores)`` of a request body, or :class:`_RequestError` (400) naming the problem."""
        lim = self.limits
        if not isinstance(body, dict):
            raise _RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        queries, topk = body.get("queries"), body.get("topk", 3)
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise _RequestError(400, "'queries' must be a list of strings")
        if len(queries) > lim.max_queries:
            raise _RequestError(
                400,
                f"{len(queries)} queries in one request; at most max_queries={lim.max_queries}",
                "max_queries",
                lim.max_queries,
                len(queries),
            )
        for i, q in enumerate(queries):
            if len(q) > lim.max_query_chars:
                raise _RequestError(
                    400,
                    f"query {i} has {len(q)} characters; at most max_query_chars={lim.max_query_chars}",
                    "max_query_chars",
                    lim.max_query_chars,
                    len(q),
                )
        if isinstance(topk, bool) or not isinstance(topk, int):
            raise _RequestError(400, f"'topk' must be an integer, got {json.dumps(topk)[:50]}")
        if not 1 <= topk <= lim.max_topk:
            received = topk if abs(topk) < 10**18 else f"{str(topk)[:20]}... ({len(str(topk))} digits)"
            raise _RequestError(
                400, f"'topk' must be in [1, max_topk={lim.max_topk}]", "max_topk", lim.max_topk, received
            )
        return queries, topk, bool(body.get("return_scores", False))

    def _answer(self, body: Any) -> dict:
        queries, topk, with_scores = self._validate(body)
        hits = self.retrieve(queries, topk) if queries else []
        result = []
        for row in hits:
            docs = [{"id": str(i), "contents": self.contents[i]} for i, _ in row]
            result.append(
                [{"document": d, "score": s} for d, (_, s) in zip(docs, row, strict=True)] if with_scores else docs
            )
        return {"result": result}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        limits = self.limits

        class Handler(BaseHTTPRequestHandler):
            timeout = limits.request_timeout  # StreamRequestHandler: socket timeout of every read and write

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/retrieve":
                    self.close_connection = True
                    return self._send(404, {"error": f"unknown path {self.path}; POST /retrieve"})
                try:
                    raw = self._read_body()
                    try:
                        body = json.loads(raw or b"{}")
                    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                        raise _RequestError(400, f"malformed JSON: {str(exc)[:200]}") from exc
                    reply = server._answer(body)
                except _RequestError as exc:
                    return self._send(exc.code, exc.body)
                except Exception as exc:  # noqa: BLE001 - answer, never drop the connection silently
                    return self._send(500, {"error": f"internal error: {type(exc).__name__}: {str(exc)[:200]}"})
                self._send(200, reply)

            def _read_body(self) -> bytes:
                header = self.headers.get("Content-Length")
                if header is None:
                    return b""
                try:
                    length = int(header)
                except ValueError:
                    length = -1
                if length < 0:
                    self.close_connection = True
                    raise _RequestError(400, f"bad Content-Length {header[:40]!r}")
                if length > limits.max_body_bytes:
                    self._refused_bytes = length
                    raise _RequestError(
                        413,
                        f"request body of {length} bytes; at most max_body_bytes={limits.max_body_bytes}",
                        "max_body_bytes",
                        limits.max_body_bytes,
                        length,
                    )
                deadline = time.monotonic() + limits.request_timeout
                chunks, left = [], length
                try:
                    while left > 0:
                        if time.monotonic() > deadline:
                            raise TimeoutError
                        chunk = self.rfile.read1(min(left, 65536))
                        if not chunk:
                            break
                        chunks.append(chunk)
                        left -= len(chunk)
                except TimeoutError:
                    self.close_connection = True
                    raise _RequestError(
                        408,
                        f"the request body did not arrive within request_timeout={limits.request_timeout} s "
                        f"({length - left} of {length} bytes)",
                        "request_timeout",
                        limits.request_timeout,
                        length - left,
                    ) from None
                if left > 0:
                    self.close_connection = True
                    raise _RequestError(400, f"the body ended after {length - left} of {length} bytes")
                return b"".join(chunks)

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:  # the client went away (or stalled past the timeout): nothing left to tell it
                    self.close_connection = True
                    return
                refused = getattr(self, "_refused_bytes", 0)
                if refused:
                    self.close_connection = True
                    self._discard(refused)

            def _discard(self, n: int) -> None:
                """Read and drop up to ``n`` bytes of a refused body (bounded by the timeout and _DRAIN_CAP).

                Closing with unread data makes the kernel reset the connection, and the client would then often
                see the reset instead of the 413; draining first lets it read the reply.
                """
                deadline = time.monotonic() + limits.request_timeout
                left = min(n, _DRAIN_CAP)
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                    while left > 0 and time.monotonic() < deadline:
                        chunk = self.rfile.read1(min(left, 65536))
                        if not chunk:
                            break
                        left -= len(chunk)
                except OSError:
                    pass

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
    documents: Iterable[str | dict | Passage],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: ServerLimits | None = None,
    **limit_kwargs: Any,
) -> BM25RetrievalServer:
    """Start a Search-R1-compatible BM25 server over ``documents`` in a background thread.

    Args:
        documents: ``contents`` strings (``"Title"\\ntext``), dicts with ``contents`` or ``title``/``text``, or
            :class:`Passage` objects.
        host: interface to bind (default localhost only).
        port: TCP port; 0 picks a free one (read ``server.url``).
        limits: per-request bounds (:class:`ServerLimits`); or pass its fields as keywords
            (``max_body_bytes=``, ``max_queries=``, ``max_topk=``, ``max_query_chars=``, ``request_timeout=``).

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
    return BM25RetrievalServer(contents, host, port, limits=limits, **limit_kwargs).start()


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
    """``python -m empg.envs.adapters.retriever --corpus corpus.jsonl [--host H] [--port P] [limits]``."""
    d = ServerLimits()
    parser = argparse.ArgumentParser(
        description="Serve a JSONL corpus (contents or title/text) over POST /retrieve (Search-R1 API). Requests over "
        "a limit get HTTP 413 (body size) or 400 (the others) with a JSON error naming the limit and the value."
    )
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL with 'contents' or 'title'+'text'")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body (default: %(default)s)"
    )
    parser.add_argument(
        "--max-queries", type=int, default=d.max_queries, help="most queries per request (default: %(default)s)"
    )
    parser.add_argument("--max-topk", type=int, default=d.max_topk, help="largest topk (default: %(default)s)")
    parser.add_argument(
        "--max-query-chars", type=int, default=d.max_query_chars, help="longest query in chars (default: %(default)s)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=d.request_timeout,
        help="seconds a client may stall on the socket, and the most its body may take (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        limits = ServerLimits(
            args.max_body_bytes, args.max_queries, args.max_topk, args.max_query_chars, args.request_timeout
        )
    except ValueError as exc:
        parser.error(str(exc))
    server = serve_bm25(_read_corpus(args.corpus), args.host, args.port, limits=limits)
    print(f"serving {len(server.contents)} documents at {server.url} ({limits})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
