"""Bounded load test of the local BM25 retrieval server (``empg.envs.adapters.retriever``), loopback only.

    python benchmarks/retriever_load.py                  # 400 requests per client count, 1 and 8 clients
    python benchmarks/retriever_load.py --requests 2000 --clients 1 4 8 16

Starts the server on 127.0.0.1 (a free port) over a generated corpus, then for each client count sends a fixed
number of good ``POST /retrieve`` requests (one query, topk 3; one fresh connection each, as ``HttpRetriever`` does)
and prints requests/s and p50/p99 latency. Then it sends a mix of bad requests (malformed JSON, oversized body,
too many queries, huge topk, overlong query, a client that stalls mid-body) interleaved with good ones, checking each
bad one gets its error status and the next good one the right answer. It stops by itself (well under 60 s at the
defaults) and exits non-zero if the server ever fails to answer correctly.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import sys
import threading
import time

from empg.envs.adapters.retriever import ServerLimits, serve_bm25

WORDS = "river castle engine forest harbor violin glacier market comet lantern orchard canyon".split()


def make_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f'"Doc {i}"\n' + " ".join(rng.choice(WORDS) for _ in range(30)) + f" unique{i}" for i in range(n)]


def post(port: int, body: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def good_request(port: int, i: int) -> float:
    """One good request for document ``i``; returns its latency and raises AssertionError on a wrong answer."""
    body = json.dumps({"queries": [f"unique{i} river"], "topk": 3, "return_scores": False}).encode()
    t0 = time.perf_counter()
    code, reply = post(port, body)
    dt = time.perf_counter() - t0
    assert code == 200, (code, reply)
    assert reply["result"][0][0]["id"] == str(i), reply
    return dt


def run_load(port: int, n_docs: int, requests: int, clients: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                dt = good_request(port, i % n_docs)
            except Exception as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    return {
        "clients": clients,
        "requests": requests,
        "ok": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * p99,
    }


def stalled_body(port: int, timeout: float) -> int:
    """Send headers and half a body, then stall; return the status the server answers with after its timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout + 5) as sock:
        sock.sendall(b'POST /retrieve HTTP/1.0\r\nContent-Length: 100\r\n\r\n{"queries": [')
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return int(data.split(b" ", 2)[1]) if data else 0


def run_abuse(port: int, limits: ServerLimits, n_docs: int, rounds: int) -> dict:
    """``rounds`` of each bad request, each followed by a good one; returns counts and any failure."""
    bad = {
        "malformed": (b"{not json", 400),
        "not_utf8": (b"\xff\xfe{", 400),
        "oversized": (json.dumps({"queries": ["x" * (limits.max_body_bytes + 10)]}).encode(), 413),
        "too_many_queries": (json.dumps({"queries": ["river"] * (limits.max_queries + 1)}).encode(), 400),
        "huge_topk": (json.dumps({"queries": ["river"], "topk": 10**12}).encode(), 400),
        "long_query": (json.dumps({"queries": ["river " * limits.max_query_chars]}).encode(), 400),
    }
    failures: list[str] = []
    counts = dict.fromkeys([*bad, "slow"], 0)
    rng = random.Random(1)
    for r in range(rounds):
        for name, (body, want) in bad.items():
            code, reply = post(port, body)
            if code != want or "error" not in reply:
                failures.append(f"{name}: got {code} {reply}")
            counts[name] += 1
            try:
                good_request(port, rng.randrange(n_docs))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"good request after {name}: {exc!r}")
        if r < 2:  # each stall costs request_timeout seconds: two rounds are enough
            box: list[int] = []
            t = threading.Thread(target=lambda b=box: b.append(stalled_body(port, limits.request_timeout)))
            t.start()
            time.sleep(0.05)
            t0 = time.perf_counter()
            good_request(port, rng.randrange(n_docs))  # answered while the other client stalls
            if time.perf_counter() - t0 > limits.request_timeout:
                failures.append("a good request waited behind a stalled client")
            t.join()
            counts["slow"] += 1
            if box != [408]:
                failures.append(f"stalled client: got {box}")
    return {"counts": counts, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="corpus size")
    parser.add_argument("--requests", type=int, default=400, help="good requests per client count")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8], help="concurrent client counts")
    parser.add_argument("--abuse-rounds", type=int, default=5, help="rounds of the bad-request mix")
    parser.add_argument("--timeout", type=float, default=1.0, help="server request_timeout (s) for the stall test")
    args = parser.parse_args(argv)
    limits = ServerLimits(
        max_body_bytes=64 * 1024, max_queries=32, max_topk=50, max_query_chars=1000, request_timeout=args.timeout
    )
    t_start = time.perf_counter()
    ok = True
    with serve_bm25(make_corpus(args.docs), limits=limits) as server:
        port = server._httpd.server_address[1]
        print(f"server: {server.url}, {args.docs} docs, {limits}")
        print(f"{'clients':>8}{'requests':>10}{'ok':>7}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for clients in args.clients:
            res = run_load(port, args.docs, args.requests, clients)
            print(
                f"{res['clients']:>8}{res['requests']:>10}{res['ok']:>7}{res['req_per_s']:>10.1f}"
                f"{res['p50_ms']:>9.2f}{res['p99_ms']:>9.2f}"
            )
            if res["errors"]:
                ok = False
                print(f"  {len(res['errors'])} errors, first: {res['errors'][0]}")
        abuse = run_abuse(port, limits, args.docs, args.abuse_rounds)
        print("bad-request mix:", ", ".join(f"{k} x{v}" for k, v in abuse["counts"].items()))
        for failure in abuse["failures"]:
            ok = False
            print("  FAIL", failure)
        try:
            good_request(port, 0)
        except Exception as exc:  # noqa: BLE001
            ok = False
            print("  FAIL final good request:", repr(exc))
    verdict = "OK: every good request answered correctly" if ok else "FAILED"
    print(f"{verdict}; total {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
