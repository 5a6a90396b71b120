"""Tests of empg.algos.entropy: golden values, chunked vs float64 naive, masking (planted NaN), gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import (
    broadcast_to_tokens,
    logprobs_and_entropy,
    step_entropy,
    token_entropy,
    token_logprobs,
    token_renyi2,
)

LN3 = math.log(3.0)


def naive(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """Float64 reference: full softmax, no chunking."""
    z = logits.double() / temperature
    p = torch.softmax(z, -1)
    logp = torch.log_softmax(z, -1)
    ent = -(p * logp).sum(-1)
    renyi2 = -torch.log((p * p).sum(-1))
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), ent, renyi2


def test_golden_entropy_renyi_logprob():
    # row 0: uniform over 4 -> H = H2 = ln 4 = 1.386294
    # row 1: logits [0, ln 3, -inf, -inf] -> p = [0.25, 0.75, 0, 0]
    #   H = 0.25 ln 4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335; H2 = -ln(0.0625 + 0.5625) = 0.470004
    #   log p(label 1) = ln 0.75 = -0.287682 (the -inf logits give no NaN)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, LN3, -math.inf, -math.inf]])
    torch.testing.assert_close(token_entropy(logits), torch.tensor([1.386294, 0.562335]), atol=1e-6, rtol=0)
    torch.testing.assert_close(token_renyi2(logits), torch.tensor([1.386294, 0.470004]), atol=1e-6, rtol=0)
    lp = token_logprobs(logits, torch.tensor([2, 1]))
    torch.testing.assert_close(lp, torch.tensor([-1.386294, -0.287682]), atol=1e-6, rtol=0)


def test_temperature_divides_logits():
    # logits [0, 2 ln 3] at T = 2 are [0, ln 3] at T = 1: p = [0.25, 0.75] -> H = 0.562335
    logits = torch.tensor([[0.0, 2 * LN3]])
    torch.testing.assert_close(token_entropy(logits, temperature=2.0), torch.tensor([0.562335]), atol=1e-6, rtol=0)
    lp, ent = logprobs_and_entropy(logits, torch.tensor([0]), temperature=2.0)
    torch.testing.assert_close(lp, torch.tensor([math.log(0.25)]))
    torch.testing.assert_close(ent, torch.tensor([0.562335]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_naive_float64(chunk, temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 37, generator=gen) * 4  # leading dims (3, 5) flattened to 15 rows
    labels = torch.randint(0, 37, (3, 5), generator=gen)
    ref_lp, ref_h, ref_h2 = naive(logits, labels, temperature)
    kw = {"temperature": temperature, "chunk_size": chunk}
    torch.testing.assert_close(token_entropy(logits, **kw).double(), ref_h, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_renyi2(logits, **kw).double(), ref_h2, atol=1e-5, rtol=0)
    lp, h = logprobs_and_entropy(logits, labels, **kw)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(h.double(), ref_h, atol=1e-5, rtol=0)
    assert lp.shape == (3, 5) and h.dtype == torch.float32
    bf = token_entropy(logits.bfloat16(), **kw)  # low-precision logits are upcast per chunk
    torch.testing.assert_close(bf.double(), naive(logits.bfloat16().float(), labels, temperature)[1], atol=1e-4, rtol=0)


def test_non_contiguous_logits_slice():
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(3, 6, 13, generator=gen)
    sliced = full[:, :-1]  # the trainer's shifted logits: not viewable as (N, V)
    labels = torch.randint(0, 13, (3, 5), generator=gen)
    ref_lp, ref_h, ref_h2 = naive(sliced.contiguous(), labels)
    lp, h = logprobs_and_entropy(sliced, labels, chunk_size=4)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(h.double(), ref_h, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_renyi2(sliced, chunk_size=4).double(), ref_h2, atol=1e-5, rtol=0)


@settings(max_examples=50, deadline=None)
@given(v=st.integers(1, 20), scale=st.floats(0.01, 30), seed=st.integers(0, 10_000))
def test_entropy_bounds(v, scale, seed):
    logits = torch.randn(6, v, generator=torch.Generator().manual_seed(seed)) * scale
    h, h2 = token_entropy(logits, chunk_size=4), token_renyi2(logits, chunk_size=4)
    assert bool((h >= -1e-6).all()) and bool((h <= math.log(v) + 1e-5).all())
    assert bool((h2 <= h + 1e-5).all()) and bool((h2 >= -1e-6).all())  # Rényi-2 <= Shannon


def test_logprob_gradients_match_naive_and_stay_in_unmasked_rows():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 4, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 4), generator=gen)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    a = base.clone().requires_grad_(True)
    lp = token_logprobs(a, labels, chunk_size=3)
    torch.where(mask, lp, torch.zeros_like(lp)).sum().backward()
    b = base.double().clone().requires_grad_(True)
    ref = naive(b, labels)[0]
    torch.where(mask, ref, torch.zeros_like(ref)).sum().backward()
    torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-6, rtol=0)
    assert bool((a.grad[~mask] == 0).all()) and bool((a.grad[mask].abs().sum(-1) > 0).all())


def test_entropy_grad_switch():
    logits = torch.randn(2, 3, 5).requires_grad_(True)
    labels = torch.zeros(2, 3, dtype=torch.long)
    _, ent = logprobs_and_entropy(logits, labels)
    assert not ent.requires_grad  # behaviour entropy: no autograd buffers
    _, ent = logprobs_and_entropy(logits, labels, entropy_grad=True, chunk_size=2)
    ent.sum().backward()
    b = logits.detach().double().requires_grad_(True)
    naive(b, labels)[1].sum().backward()
    torch.testing.assert_close(logits.grad.double(), b.grad, atol=1e-6, rtol=0)


def test_labels_and_bad_input():
    logits = torch.zeros(1, 3, 4)
    lp = token_logprobs(logits, torch.tensor([[0, -100, 3]]))  # -100: ignored -> 0
    torch.testing.assert_close(lp, torch.tensor([[-math.log(4), 0.0, -math.log(4)]]))
    with pytest.raises(ValueError, match="out of range"):
        token_logprobs(logits, torch.tensor([[0, 4, 1]]))
    with pytest.raises(ValueError, match="leading dims"):
        token_logprobs(logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(logits, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(logits, chunk_size=0)


def test_nan_logits_at_masked_position_do_not_leak():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 9, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    poisoned = logits.clone()
    poisoned[0, 3] = float("nan")
    poisoned[1, 2:] = float("inf")
    for fn in (token_entropy, token_renyi2):
        clean_h = step_entropy(fn(logits, chunk_size=3), mask)
        dirty_h = step_entropy(fn(poisoned, chunk_size=3), mask)
        torch.testing.assert_close(dirty_h, clean_h)
        assert torch.isfinite(dirty_h).all()


def test_step_entropy_golden():
    nan = float("nan")
    values = torch.tensor([[1.0, 2.0, 3.0, nan], [4.0, nan, nan, nan], [nan, nan, nan, nan]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # mean: (1 + 2 + 3) / 3 = 2; 4; empty row -> 0
    torch.testing.assert_close(step_entropy(values, mask), torch.tensor([2.0, 4.0, 0.0]))
    torch.testing.assert_close(step_entropy(values, mask, mode="renyi2"), torch.tensor([2.0, 4.0, 0.0]))
    weights = torch.tensor([[1.0, 1.0, 2.0, nan], [0.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    # weighted: (1*1 + 1*2 + 2*3) / (1 + 1 + 2) = 9 / 4 = 2.25; row 1: weight 0 on its only token -> mean 4
    torch.testing.assert_close(
        step_entropy(values, mask, mode="weighted", weights=weights), torch.tensor([2.25, 4.0, 0.0])
    )
    action = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    # action: row 0 only token 2 is action and model -> 3; row 1 no action model token -> falls back to mean 4
    torch.testing.assert_close(step_entropy(values, mask, mode="action", weights=action), torch.tensor([3.0, 4.0, 0.0]))
    with pytest.raises(ValueError, match="needs weights"):
        step_entropy(values, mask, mode="action")
    with pytest.raises(ValueError, match="not one of"):
        step_entropy(values, mask, mode="max")
    with pytest.raises(ValueError, match=">= 0"):
        step_entropy(values, mask, mode="weighted", weights=-torch.ones(3, 4))


def test_broadcast_golden_and_nan_isolation():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0, float("nan")]), mask)  # row 2 has no token: NaN stays out
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="must be"):
        broadcast_to_tokens(torch.zeros(2), mask)
