"""search-v0 against a real retrieval server (Search-R1 API) that the test starts on localhost."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from empg.envs import check_env, make, split_seeds
from empg.envs.adapters.retriever import Passage, serve_bm25
from empg.envs.search import SearchEnv, build_kb


@pytest.fixture(scope="module")
def server():
    kb = build_kb(0)
    with serve_bm25([Passage(d.title, d.text) for d in kb.docs]) as srv:
        yield srv


@pytest.mark.parametrize("split", ["train", "eval_in", "eval_out"])
def test_expert_succeeds_through_the_http_retriever(server, split):
    env = make("search-v0", split=split, retriever="http", retriever_url=server.url)
    for seed in split_seeds(split, 3):
        obs, info = env.reset(seed=seed)
        done, reward = False, 0.0
        while not done:
            obs, reward, term, trunc, info = env.step(env.expert_action())
            assert info["valid"]
            done = term or trunc
        assert reward == 1.0 and info["won"], obs


def test_http_passages_match_in_process_bm25(server):
    local = SearchEnv("train")
    remote = SearchEnv("train", retriever="http", retriever_url=server.url)
    local.reset(seed=0)
    remote.reset(seed=0)
    query = local.expert_action()  # search[<exact title of the first hop>]
    a, b = local.step(query)[0], remote.step(query)[0]
    ours = [line.split(":")[0] for line in a.splitlines() if line.startswith("<doc")]
    theirs = [line.split(":")[0] for line in b.splitlines() if line.startswith("<doc")]
    # Same corpus, different BM25 tokenisation (the server indexes '"Title"\ntext' with its own tokenizer): the
    # exact-title query finds the same document first; lower ranks may differ.
    assert len(ours) == len(theirs) == 3 and ours[0] == theirs[0]


class _Broken(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.mode == "sleep":
            time.sleep(1.5)
        try:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
        except (BrokenPipeError, ConnectionResetError):  # the client already gave up (timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode", ["error", "sleep"])
def test_server_errors_and_timeouts_become_an_observation(mode):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    httpd.mode = mode
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/retrieve"
        env = SearchEnv("train", retriever="http", retriever_url=url, retriever_timeout=0.5)
        env.reset(seed=0)
        obs, reward, term, trunc, info = env.step("search[anything]")
        assert "Search failed" in obs and info["valid"] and not term and reward == 0.0
        obs, reward, term, _, info = env.step(f"answer[{env.question.answer}]")
        assert term and info["won"]  # the episode went on after the failed search
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_user_qa_jsonl_end_to_end(server, tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is item {j}?", "answers": [f"answer {j}", f"alias {j}"]} for j in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    env = SearchEnv("eval_in", retriever="http", retriever_url=server.url, qa_path=str(path))
    obs, info = env.reset(seed=18)  # second eval_in seed -> second eval_in record: record 18
    assert "What is item 18?" in obs and info["task_type"] == "qa"
    assert "Results for" in env.step("search[item 18]")[0]
    _, reward, term, _, info = env.step("answer[Alias 18]")  # any gold answer counts, after normalisation
    assert term and reward == 1.0 and info["f1"] == 1.0
    env.reset(seed=8)
    assert env.expert_action() == "answer[answer 8]"
    check_env(SearchEnv("train", retriever="http", retriever_url=server.url, qa_path=str(path)))


def test_bad_configuration_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="retriever_url"):
        SearchEnv("train", retriever="http")
    with pytest.raises(ValueError, match="retriever must be"):
        SearchEnv("train", retriever="e5")
    with pytest.raises(ValueError, match="qa_path"):
        SearchEnv("train", qa_path=str(tmp_path / "x.jsonl"))
