"""The trainer's differentiable forward (:mod:`empg.train.forward`): against an unpadded full-logits reference, against
the log-probs and entropies recorded while generating, and at a micro-batch's own width."""

import pytest
import torch

import empg.train.forward as fwd
from empg.policy import SamplingParams
from empg.rollout.prompts import build_messages
from empg.train.batch import pack
from empg.train.forward import response_logprobs


def _prompts(policy, n=4):
    msgs = [
        build_messages("household", f"put a pen {i} in desk 1.", "You arrive at desk 1.", [], i, None) for i in range(n)
    ]
    return [policy.chat_prompt_ids(m)[: 30 + 7 * i] for i, m in enumerate(msgs)]  # different lengths → left padding


def test_generate_is_deterministic_and_its_recorded_logprobs_match_the_forward(tiny):
    prompts = _prompts(tiny)
    kw = dict(sampling=SamplingParams(temperature=0.7, max_new_tokens=12))
    a = tiny.generate(prompts, generator=torch.Generator().manual_seed(3), **kw)
    b = tiny.generate(prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert all(1 <= len(g.response_ids) <= 12 and len(g.logprobs) == len(g.response_ids) for g in a)
    batch = pack(prompts, [g.response_ids for g in a], tiny.pad_id)
    with torch.no_grad():
        logp, ent_all = response_logprobs(tiny.model, batch, temperature=0.7, with_entropy=True)
    P = batch.response_start
    for i, g in enumerate(a):
        lp, ent = logp[i, P : P + len(g.response_ids)], ent_all[i, P : P + len(g.response_ids)]
        torch.testing.assert_close(lp, torch.tensor(g.logprobs), atol=1e-4, rtol=0)
        torch.testing.assert_close(ent, torch.tensor(g.entropies), atol=1e-4, rtol=0)
        assert (lp <= 0).all() and (ent >= 0).all()
        assert ent.max() <= torch.log(torch.tensor(float(len(tiny.tokenizer)))) + 1e-4


def test_response_logprobs_matches_unpadded_reference_and_is_masked(tiny):
    prompts = _prompts(tiny, 3)
    responses = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    batch = pack(prompts, responses, tiny.pad_id)
    tiny.model.zero_grad()
    logp, ent = response_logprobs(tiny.model, batch, temperature=1.3, with_entropy=True)
    assert logp.shape == ent.shape == batch.input_ids.shape
    assert (logp[batch.response_mask == 0] == 0).all() and (ent[batch.response_mask == 0] == 0).all()
    P = batch.response_start
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():  # slow reference: one unpadded row, full logits
            logits = tiny.model(torch.tensor([p + r])).logits[0] / 1.3
        logz = torch.log_softmax(logits, -1)[len(p) - 1 : -1]
        ref = logz.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        torch.testing.assert_close(logp[i, P : P + len(r)].detach(), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[i, P : P + len(r)], -(logz.exp() * logz).sum(-1), atol=1e-5, rtol=0)
    logp.sum().backward()
    assert tiny.model.model.embed_tokens.weight.grad.abs().sum() > 0
    tiny.model.zero_grad()


def test_response_logprobs_of_a_narrow_micro_batch_skips_its_padding_columns(tiny, monkeypatch):
    """Rows selected from a wider batch are computed at their own width (leading and trailing all-padding columns
    dropped) and give the same per-token results, laid out at the batch's columns."""
    prompts = _prompts(tiny, 4)
    prompts[0] = prompts[0] + prompts[1]  # the longest prompt and ...
    responses = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14, 15, 16]]  # ... the longest response are left out below
    batch = pack(prompts, responses, tiny.pad_id)
    full_lp, full_ent = response_logprobs(tiny.model, batch, with_entropy=True)
    widths = []
    real = fwd.forward_logits
    monkeypatch.setattr(
        fwd, "forward_logits", lambda m, ids, *a, **k: widths.append(ids.shape[1]) or real(m, ids, *a, **k)
    )
    micro = batch.select([1, 2])
    lp, ent = response_logprobs(tiny.model, micro, with_entropy=True)
    lo = batch.response_start - max(len(prompts[1]), len(prompts[2]))
    assert widths == [batch.input_ids.shape[1] - lo - (len(responses[3]) - 2)]
    assert lp.shape == ent.shape == micro.input_ids.shape
    torch.testing.assert_close(lp, full_lp[[1, 2]].detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, full_ent[[1, 2]].detach(), atol=1e-5, rtol=0)


def test_columns_after_the_last_choice_are_not_computed_and_read_as_forced(tiny, monkeypatch):
    """Constrained rows whose last tokens were forced (one allowed id): the forward stops after the last token with a
    choice in any row, and the skipped tokens read log-prob 0 and entropy 0, as under their one-id mask."""
    prompts = _prompts(tiny, 2)
    responses = [[5, 6, 7, 8], [9, 10, 11]]
    allowed = [[[5, 20], [6], [7], [8]], [[9, 21, 22], [10, 23], [11]]]  # choices at offsets 0 and 0, 1
    batch = pack(prompts, responses, tiny.pad_id, allowed=allowed)
    P = batch.response_start
    assert fwd.last_choice_column(batch) == P + 2
    widths = []
    real = fwd.forward_logits
    monkeypatch.setattr(
        fwd, "forward_logits", lambda m, ids, *a, **k: widths.append(ids.shape[1]) or real(m, ids, *a, **k)
    )
    with torch.no_grad():
        lp, ent = response_logprobs(tiny.model, batch, temperature=0.8, with_entropy=True)
    lo = P - max(len(p) for p in prompts)
    assert widths == [P + 2 - lo]
    for i, (p, r, a) in enumerate(zip(prompts, responses, allowed, strict=True)):
        with torch.no_grad():  # slow reference: the unpadded row, full logits restricted to each allowed set
            logits = tiny.model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1] / 0.8
        for j, ids in enumerate(a):
            logz = torch.log_softmax(logits[j, ids], -1)
            assert float(lp[i, P + j]) == pytest.approx(float(logz[ids.index(r[j])]), abs=1e-5)
            assert float(ent[i, P + j]) == pytest.approx(float(-(logz.exp() * logz).sum()), abs=1e-5)
    assert float(lp[0, P + 1 :].abs().max()) == 0.0 and float(ent[1, P + 2 :].abs().max()) == 0.0
