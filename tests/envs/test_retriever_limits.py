"""The BM25 retrieval server's request limits: each over-limit or malformed request gets a JSON error, the server
keeps answering, and a stalled client is dropped after the per-request timeout."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from empg.envs.adapters.retriever import HttpRetriever, RetrieverError, ServerLimits, main, serve_bm25

pytestmark = pytest.mark.real_envs

CORPUS = [
    '"Paris"\nParis is the capital of France.',
    '"Berlin"\nBerlin is the capital of Germany.',
    '"Rome"\nRome is a city in Italy.',
]
LIMITS = ServerLimits(max_body_bytes=4096, max_queries=4, max_topk=5, max_query_chars=100, request_timeout=0.5)
GOOD = {"queries": ["germany"], "topk": 1, "return_scores": False}


@pytest.fixture(scope="module")
def server():
    with serve_bm25(CORPUS, limits=LIMITS) as s:
        yield s


def _port(server) -> int:
    return server._httpd.server_address[1]


def _post(server, body: bytes, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=timeout)
    try:
        conn.request("POST", "/retrieve", body, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _post_json(server, obj) -> tuple[int, dict]:
    return _post(server, json.dumps(obj).encode())


def _assert_still_serving(server) -> None:
    code, reply = _post_json(server, GOOD)
    assert code == 200 and reply == {"result": [[{"id": "1", "contents": CORPUS[1]}]]}


@pytest.mark.parametrize(
    ("body", "limit", "received"),
    [
        ({"queries": ["q"] * 5}, "max_queries", 5),
        ({"queries": ["capital"], "topk": 6}, "max_topk", 6),
        ({"queries": ["capital"], "topk": 10**40}, "max_topk", None),  # huge: reported shortened
        ({"queries": ["capital"], "topk": 0}, "max_topk", 0),
        ({"queries": ["ok", "x" * 101]}, "max_query_chars", 101),
    ],
)
def test_over_limit_requests_get_400_naming_the_limit(server, body, limit, received):
    code, reply = _post_json(server, body)
    assert code == 400
    assert reply["limit"] == limit and reply["max"] == getattr(LIMITS, limit) and limit in reply["error"]
    if received is not None:
        assert reply["received"] == received
    else:
        assert "41 digits" in reply["received"]
    _assert_still_serving(server)


def test_oversize_body_gets_413_without_being_parsed(server):
    body = json.dumps({"queries": ["capital " * 600]}).encode()  # > 4096 bytes
    code, reply = _post(server, body)
    assert code == 413
    assert reply["limit"] == "max_body_bytes" and reply["max"] == 4096 and reply["received"] == len(body)
    _assert_still_serving(server)


def test_oversize_content_length_is_refused_before_the_body_arrives(server):
    """A client announcing 1 GB gets 413 at once (the server does not wait for, or buffer, the body)."""
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
        sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
        t0 = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 413") and json.loads(payload)["received"] == 10**9
    assert time.monotonic() - t0 < 2.0  # drained for at most request_timeout, then closed
    _assert_still_serving(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"queries": ["a"]',  # truncated
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[" * 2000 + b"]" * 2000,  # nesting deeper than the JSON decoder recursion limit
        b"[[[[[[[[[[]]]]]]]]]]",  # valid JSON, not an object
        b'"just a string"',
        b'{"queries": "one string"}',
        b'{"queries": ["a", 3]}',
        b'{"queries": ["a"], "topk": "3"}',
        b'{"queries": ["a"], "topk": 2.5}',
        b'{"queries": ["a"], "topk": NaN}',
    ],
)
def test_malformed_requests_get_400_json(server, raw):
    code, reply = _post(server, raw)
    if len(raw) > LIMITS.max_body_bytes:
        assert code == 413
    else:
        assert code == 400 and isinstance(reply["error"], str) and reply["error"]
    _assert_still_serving(server)


def test_deeply_nested_json_is_malformed_not_a_crash():
    with serve_bm25(CORPUS, max_body_bytes=1 << 20) as s:
        code, reply = _post(s, b"[" * 200_000 + b"]" * 200_000)
        assert code == 400 and reply["error"].startswith("malformed JSON")
        code, _ = _post_json(s, GOOD)
        assert code == 200


def test_bad_content_length_and_short_body(server):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
        sock.sendall(b"POST /retrieve HTTP/1.0\r\nContent-Length: -5\r\n\r\n")
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    assert data.startswith(b"HTTP/1.0 400") and b"Content-Length" in data
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
        sock.sendall(b"POST /retrieve HTTP/1.0\r\nContent-Length: 50\r\n\r\n{}")
        sock.shutdown(socket.SHUT_WR)  # the body ends after 2 of 50 bytes
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    assert data.startswith(b"HTTP/1.0 400") and b"2 of 50" in data
    _assert_still_serving(server)


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Len",  # stalls inside the headers
        b'POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{"queries": [',  # inside the body
    ],
)
def test_slow_client_does_not_hold_the_server(server, partial):
    stalled = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
    try:
        stalled.sendall(partial)
        t0 = time.monotonic()
        _assert_still_serving(server)  # answered while the other client stalls
        assert time.monotonic() - t0 < LIMITS.request_timeout
        # the server drops the stalled client after about request_timeout (408 if it stalled inside the body)
        data = b"".join(iter(lambda: stalled.recv(65536), b""))
        waited = time.monotonic() - t0
        assert LIMITS.request_timeout * 0.8 <= waited < LIMITS.request_timeout + 2.0
        if b"\r\n\r\n" in partial:
            head, _, payload = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 408") and json.loads(payload)["limit"] == "request_timeout"
        else:
            assert data == b""  # http.server closes a connection whose request line/headers timed out
    finally:
        stalled.close()
    _assert_still_serving(server)


def test_trickling_body_is_cut_at_the_deadline(server):
    """A client that sends one byte every 0.2 s never hits the per-read timeout but still gets 408 on time."""
    body = b'{"queries": ["germany"]}'
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as sock:
        sock.sendall(b"POST /retrieve HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body))
        t0 = time.monotonic()
        try:
            for b in body:
                sock.sendall(bytes([b]))
                time.sleep(0.2)
                if time.monotonic() - t0 > 3:
                    break
        except OSError:
            pass  # the server closed the connection: expected
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    assert data.startswith(b"HTTP/1.0 408")
    _assert_still_serving(server)


def test_many_concurrent_stalled_clients_then_good_requests(server):
    stalled = [socket.create_connection(("127.0.0.1", _port(server)), timeout=5) for _ in range(20)]
    try:
        for s in stalled:
            s.sendall(b"POST /retrieve HTTP/1.1\r\n")
        results = []
        threads = [threading.Thread(target=lambda: results.append(_post_json(server, GOOD))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(results) == 8 and all(code == 200 for code, _ in results)
    finally:
        for s in stalled:
            s.close()
    _assert_still_serving(server)


def test_client_reports_the_servers_error_message(server):
    client = HttpRetriever(server.url, topk=50, retries=0)
    with pytest.raises(RetrieverError, match=r"HTTP 400 .*max_topk=5"):
        client.search("capital")
    assert "max_topk" in client.search_text("capital")


def test_limits_validation_and_cli_help(capsys):
    with pytest.raises(ValueError, match="max_topk"):
        ServerLimits(max_topk=0)
    with pytest.raises(ValueError, match="request_timeout"):
        ServerLimits(request_timeout=0)
    with pytest.raises(ValueError, match="not both"):
        serve_bm25(CORPUS, limits=LIMITS, max_topk=3)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--max-body-bytes", "--max-queries", "--max-topk", "--max-query-chars", "--request-timeout"):
        assert flag in out
    assert "(default: 1048576)" in out and "(default: 10.0)" in out
