"""The vLLM backend: pure helpers and the config check always; the engine itself only where vLLM and a GPU are."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from empg.policy.vllm import finish_reason, make_policy, sampling_kwargs, vllm_available, weight_chunks


def test_sampling_kwargs_mirror_the_hf_backend():
    kw = sampling_kwargs(temperature=0.7, top_p=0.9, max_new_tokens=32, greedy=False, seed=5, stop="</action>")
    assert kw == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "n": 1,
        "seed": 5,
        "detokenize": True,
        "stop": ["</action>"],
        "include_stop_str_in_output": True,  # the parser needs the closing tag, as the HF backend keeps it
    }
    greedy = sampling_kwargs(temperature=0.7, top_p=0.9, max_new_tokens=8, greedy=True, seed=None, stop=None)
    assert (greedy["temperature"], greedy["top_p"], "stop" in greedy) == (0.0, 1.0, False)
    with pytest.raises(ValueError, match="temperature"):
        sampling_kwargs(temperature=0.0, top_p=1.0, max_new_tokens=8, greedy=False, seed=None)
    with pytest.raises(ValueError, match="top_p"):
        sampling_kwargs(temperature=1.0, top_p=0.0, max_new_tokens=8, greedy=False, seed=None)


def test_finish_reason_mapping():
    assert finish_reason(SimpleNamespace(finish_reason="length", stop_reason=None)) == "length"
    assert finish_reason(SimpleNamespace(finish_reason="stop", stop_reason="</action>"), "</action>") == "stop"
    assert finish_reason(SimpleNamespace(finish_reason="stop", stop_reason=None)) == "eos"  # EOS token
    assert finish_reason(SimpleNamespace(finish_reason="stop", stop_reason=2)) == "eos"  # a stop token id


def test_weight_chunks_respect_the_size_cap_and_copy_to_cpu():
    tensors = [("a", torch.zeros(10)), ("b", torch.zeros(10)), ("c", torch.zeros(40)), ("d", torch.zeros(5))]
    # float32: 40, 40, 160, 20 bytes; cap 100 -> [a, b] (80) | [c] alone (over the cap) | [d]
    chunks = list(weight_chunks(iter(tensors), max_bytes=100))
    assert [[n for n, _ in c] for c in chunks] == [["a", "b"], ["c"], ["d"]]
    p = torch.nn.Parameter(torch.ones(3))
    (name, t), = next(weight_chunks(iter([("p", p)]), 1 << 20))  # fmt: skip
    assert name == "p" and not t.requires_grad and t.device.type == "cpu" and t.is_contiguous()


def test_backend_switch():
    sentinel = object()
    assert make_policy(sentinel, "hf") is sentinel
    with pytest.raises(ValueError, match="model.backend='tpu'"):
        make_policy(sentinel, "tpu")
    if not vllm_available():
        with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
            make_policy(sentinel, "vllm")


def test_backend_vllm_without_vllm_stops_before_any_work(tmp_path, monkeypatch, capsys):
    from empg.cli import main
    from empg.train.config import ConfigError, load_config

    monkeypatch.setitem(sys.modules, "vllm", None)  # as where vLLM is not installed (here it never is)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.backend=vllm"])
    assert e.value.field == "model.backend" and 'pip install -e ".[vllm]"' in e.value.fix
    run_dir = tmp_path / "run"
    assert main(["train", f"run_dir={run_dir}", "model.backend=vllm"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    # (the CLI prints errors as rich markup, which swallows "[vllm]": only the start of the fix is checked there)
    assert "model.backend" in err and "pip install -e" in err and "model.backend=hf" in err
    assert not run_dir.exists()  # nothing was started


def _engine_ready() -> None:
    pytest.importorskip("vllm", reason="needs the [vllm] extra")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")


def test_vllm_greedy_matches_hf_and_follows_weight_sync(tmp_path):
    from empg.policy import Policy
    from empg.rollout.corpus import env_corpus

    _engine_ready()

    policy = Policy.from_spec("tiny-1m", cache_dir=tmp_path, device="cuda", corpus=env_corpus)
    engine = make_policy(policy, "vllm", gpu_memory_utilization=0.2, dtype="float32")
    try:
        prompts = [policy.chat_prompt_ids([{"role": "user", "content": text}]) for text in ("go to fridge 1", "look")]
        hf = policy.generate(prompts, greedy=True, max_new_tokens=8, record=False)
        vl = engine.generate(prompts, greedy=True, max_new_tokens=8)
        assert [g.response_ids for g in vl] == [g.response_ids for g in hf]
        with torch.no_grad():  # change the trainer's weights: vLLM follows only after a sync
            for p in policy.model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        hf2 = policy.generate(prompts, greedy=True, max_new_tokens=8, record=False)
        assert engine.sync_weights() > 0 and engine.version == 1
        vl2 = engine.generate(prompts, greedy=True, max_new_tokens=8)
        assert [g.response_ids for g in vl2] == [g.response_ids for g in hf2]
    finally:
        engine.close()


def test_trainer_with_vllm_rollouts_syncs_weights_after_every_update(tmp_path, monkeypatch, fast):
    from empg.eval.runlog import read_metrics
    from empg.policy import vllm as vllm_backend
    from empg.train import rl
    from empg.train.config import load_config

    _engine_ready()
    engines = []
    real = vllm_backend.make_policy

    def spy(policy, backend, **kwargs):
        engines.append(real(policy, backend, gpu_memory_utilization=0.2, dtype="float32", **kwargs))
        return engines[-1]

    monkeypatch.setattr(vllm_backend, "make_policy", spy)
    overrides = fast(
        tmp_path / "run",
        "tiny-1m",
        f"model.cache_dir={tmp_path / 'cache'}",
        "model.device=cuda",
        "model.backend=vllm",
    )
    rl.train(load_config(None, overrides))
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2] and "eval_out/success" in rows[-1]
    (engine,) = engines
    assert engine.version == 2 and all("time/weight_sync" in r for r in rows)  # one sync per update
    assert "llm" not in engine.__dict__  # the engine was closed at the end
