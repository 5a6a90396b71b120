"""HttpRetriever against a Search-R1-compatible server that the test starts on localhost."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from empg.envs.adapters.retriever import (
    HttpRetriever,
    Passage,
    RetrieverError,
    format_passages,
    load_qa_jsonl,
    serve_bm25,
)

pytestmark = pytest.mark.real_envs

CORPUS = [
    '"Paris"\nParis is the capital of France.',
    '"Berlin"\nBerlin is the capital of Germany.',
    '"Rome"\nRome is a city in Italy.',
]


@pytest.fixture(scope="module")
def server():
    with serve_bm25(CORPUS) as s:
        yield s


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_server_speaks_the_search_r1_api(server):
    reply = _post(server.url, {"queries": ["germany", "capital"], "topk": 2, "return_scores": True})
    assert list(reply) == ["result"] and len(reply["result"]) == 2
    hit = reply["result"][0][0]
    assert hit["document"]["contents"] == CORPUS[1] and isinstance(hit["score"], float)
    bare = _post(server.url, {"queries": ["germany"], "topk": 1, "return_scores": False})
    assert bare == {"result": [[{"id": "1", "contents": CORPUS[1]}]]}


def test_bm25_scores_golden(server):
    # Tokens after English stop-word removal: 4 per document (e.g. paris, paris, capital, france) → dl = avgdl = 4.
    # bm25s "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf part = tf / (tf + k1 (1 - b + b dl/avgdl)),
    # k1 = 1.5, b = 0.75, N = 3. With tf = 1 and dl = avgdl the tf part is 1 / (1 + 1.5) = 0.4.
    germany = math.log(1 + 2.5 / 1.5) * 0.4  # df = 1 → 0.39233
    capital = math.log(1 + 1.5 / 2.5) * 0.4  # df = 2 → 0.18800
    client = HttpRetriever(server.url, topk=3)
    (hit,) = client.search("germany")
    assert hit == Passage("Berlin", "Berlin is the capital of Germany.", pytest.approx(germany, rel=1e-6))
    hits = client.search("capital of germany")
    assert [h.title for h in hits] == ["Berlin", "Paris"]  # Rome has neither term: left out (zero score)
    assert hits[0].score == pytest.approx(germany + capital, rel=1e-6)
    assert hits[1].score == pytest.approx(capital, rel=1e-6)
    assert len(client.search("capital", k=1)) == 1


def test_batch_and_text_observation(server):
    client = HttpRetriever(server.url.removesuffix("/retrieve"), topk=2)  # "/retrieve" is appended
    assert client.url == server.url
    rome, none = client.batch_search(["italy", "zzzz"])
    assert [p.title for p in rome] == ["Rome"] and none == []
    assert client.search_text("italy") == "Doc 1(Title: Rome) Rome is a city in Italy."
    assert client.search_text("zzzz") == "No results found."
    assert client.search_text("   ").startswith("Search failed: the query is empty")


def test_format_passages_golden():
    ps = [Passage("A", "alpha."), Passage("B", "beta.", 1.0)]
    assert format_passages(ps) == "Doc 1(Title: A) alpha.\nDoc 2(Title: B) beta."
    assert Passage.from_contents('"T"\nline one\nline two') == Passage("T", "line one\nline two")
    assert Passage.from_contents(Passage("T", "x").contents()) == Passage("T", "x")


# ----------------------------------------------------------------------------- failures become observations
class _Misbehaving(BaseHTTPRequestHandler):
    mode = "slow"

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "slow":
            time.sleep(1.0)
        code, body = {
            "slow": (200, b'{"result": [[]]}'),
            "error": (500, b"boom"),
            "garbage": (200, b"<html>"),
            "shape": (200, b'{"result": [[{"document": {"title": 3}}]]}'),
        }[self.mode]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def bad_server(request):
    handler = type("H", (_Misbehaving,), {"mode": request.param})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/retrieve"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("bad_server", "message"),
    [("slow", "timed out"), ("error", "HTTP 500"), ("garbage", "not JSON"), ("shape", "no 'contents'")],
    indirect=["bad_server"],
)
def test_server_failures_become_a_failed_search_observation(bad_server, message):
    client = HttpRetriever(bad_server, timeout=0.2, retries=0)
    obs = client.search_text("anything")
    assert obs.startswith("Search failed:") and message in obs
    with pytest.raises(RetrieverError, match=message):
        client.search("anything")


def test_unreachable_server_and_bad_arguments():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as tmp:
        port = tmp.server_address[1]  # a port that nothing listens on once closed
    client = HttpRetriever(f"http://127.0.0.1:{port}/retrieve", timeout=1, retries=1)
    assert "unreachable" in client.search_text("q") and client.search_text("q").startswith("Search failed:")
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpRetriever("localhost:8000")
    with pytest.raises(ValueError, match="topk >= 1"):
        HttpRetriever("http://x", topk=0)


def test_server_rejects_bad_requests(server):
    for body, code in [({"queries": "not a list"}, 400), ({"queries": [1, 2]}, 400)]:
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(server.url, body)
        assert err.value.code == code
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(server.url.replace("/retrieve", "/other"), {"queries": ["x"]})
    assert err.value.code == 404
    assert _post(server.url, {"queries": []}) == {"result": []}


# ----------------------------------------------------------------------------- QA data
def test_load_qa_jsonl(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"id": "h1", "question": "Who? ", "answers": ["A", "B"]}\n'
        "\n"
        '{"question": "Where?", "golden_answers": ["Paris"]}\n'
        '{"question": "When?", "answer": "1999"}\n'
    )
    items = load_qa_jsonl(path)
    assert [(q.id, q.question, q.answers) for q in items] == [
        ("h1", "Who?", ("A", "B")),
        ("3", "Where?", ("Paris",)),  # no id → line number
        ("4", "When?", ("1999",)),
    ]
    path.write_text('{"question": "ok", "answers": ["x"]}\n{"q": "missing"}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:2: expected a JSON object with 'question'"):
        load_qa_jsonl(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"qa.jsonl:1:"):
        load_qa_jsonl(path)
    path.write_text('{"question": "q", "answers": []}\n')
    with pytest.raises(ValueError, match="at least one answer"):
        load_qa_jsonl(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no QA records"):
        load_qa_jsonl(path)
