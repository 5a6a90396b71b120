"""Tests of empg.algos.losses: golden values, clip-higher, dual clip, masking, gradients, micro-batch equivalence."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import AGG_MODES, agg_loss, entropy_loss, kl_penalty, policy_loss

NAN = float("nan")


def golden_inputs():
    # log-ratios ln 1.25, ln 0.5, 0 and a masked NaN token; A = [1, -1, 1, NaN (masked)]
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.25), math.log(0.5), 0.0, NAN]])
    adv = torch.tensor([[1.0, -1.0, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    return logp, old, adv, mask


def test_policy_loss_golden_clip_higher():
    logp, old, adv, mask = golden_inputs()
    # eps_high 0.28: tok0 ratio 1.25 < 1.28 not clipped -> -1.25; tok1 ratio 0.5, A = -1: max(0.5, 0.8) = 0.8
    # (clipped low); tok2 -> -1. token-mean = (-1.25 + 0.8 - 1) / 3 = -0.483333
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert abs(float(loss) + 1.45 / 3) < 1e-6
    assert m["actor/clipfrac_high"] == 0.0 and abs(m["actor/clipfrac_low"] - 1 / 3) < 1e-9
    # approx_kl = mean(r - 1 - ln r) = (0.25 - 0.223144 + (-0.5 + 0.693147) + 0) / 3 = 0.073334
    assert abs(m["actor/approx_kl"] - 0.0733344) < 1e-6
    assert abs(m["actor/ratio_mean"] - 2.75 / 3) < 1e-6 and m["actor/ratio_max"] == pytest.approx(1.25)
    # eps_high 0.2: tok0 clipped to 1.2 -> (-1.2 + 0.8 - 1) / 3 = -0.466667
    loss2, m2 = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    assert abs(float(loss2) + 1.4 / 3) < 1e-6
    assert abs(m2["actor/clipfrac_high"] - 1 / 3) < 1e-9 and abs(m2["actor/clipfrac"] - 2 / 3) < 1e-9
    assert torch.isfinite(loss2) and m2["actor/pg_loss"] == pytest.approx(float(loss2))


def test_dual_clip_golden():
    # A = -1, ratio 5: max(5, 1.2) = 5 -> dual clip c = 3 bounds it at 3; A = +1 with ratio 5 is not affected
    logp = torch.tensor([[math.log(5.0), math.log(5.0)]])
    adv = torch.tensor([[-1.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, m = policy_loss(logp, torch.zeros(1, 2), adv, mask, dual_clip=3.0, agg="seq-mean-token-sum-norm")
    # tok1: min(-5, -1.2) -> max picks -1.2; row sum (3 - 1.2) / max_len 2 = 0.9
    assert abs(float(loss) - 0.9) < 1e-6 and m["actor/dual_clipfrac"] == 0.5
    loss_nodual, _ = policy_loss(logp, torch.zeros(1, 2), adv, mask, agg="seq-mean-token-sum-norm")
    assert abs(float(loss_nodual) - (5 - 1.2) / 2) < 1e-6
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, torch.zeros(1, 2), adv, mask, dual_clip=1.0)


def test_log_ratio_clamped():
    logp = torch.tensor([[100.0]])
    loss, m = policy_loss(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert math.isfinite(float(loss)) and m["actor/ratio_max"] == pytest.approx(math.exp(20), rel=1e-5)


def test_agg_golden():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN], [NAN, NAN, NAN, NAN]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert float(agg_loss(loss_mat, mask, "token-mean")) == pytest.approx(2.5)
    # seq-mean-token-mean: mean over all 3 rows, the empty row counts 0: (6/3 + 4/1 + 0) / 3 = 2
    assert float(agg_loss(loss_mat, mask, "seq-mean-token-mean")) == pytest.approx(2.0)
    # seq-mean-token-sum-norm: row sums / T = 4, mean over all 3 rows: (6/4 + 4/4 + 0) / 3 = 0.833333
    assert float(agg_loss(loss_mat, mask, "seq-mean-token-sum-norm")) == pytest.approx(2.5 / 3)
    assert float(agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", max_len=2)) == pytest.approx(5.0 / 3)
    assert float(agg_loss(loss_mat, mask, "token-mean", denominator=8)) == pytest.approx(10 / 8)
    assert float(agg_loss(loss_mat, torch.zeros(3, 4), "token-mean")) == 0.0
    with pytest.raises(ValueError, match="not one of"):
        agg_loss(loss_mat, mask, "sum")
    with pytest.raises(ValueError, match="shape"):
        agg_loss(loss_mat, mask[:, :2], "token-mean")


def test_kl_golden_and_masking():
    logp = torch.tensor([[0.0, math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.5), 0.0, 30.0]])
    # diff = ref - logp = [-ln 2, ln 2, 30]
    # k3 = e^d - d - 1: [0.5 + 0.693147 - 1, 2 - 0.693147 - 1, clamp(huge) = 10] = [0.193147, 0.306853, 10]
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([[0.193147, 0.306853, 10.0]]), atol=1e-6,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[0.693147, -0.693147, -30.0]]), atol=1e-6,
                               rtol=0)  # fmt: skip
    # k2 = d^2 / 2 = 0.480453 / 2 = 0.240227
    torch.testing.assert_close(kl_penalty(logp, ref, "k2")[0, :2], torch.tensor([0.240227, 0.240227]), atol=1e-6,
                               rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="not one of"):
        kl_penalty(logp, ref, "k4")
    # NaN in the reference at a padded position: no NaN in values or gradients, with or without a mask
    ref_nan = torch.tensor([[math.log(0.5), NAN, 0.0]])
    for mask in (None, torch.tensor([[1, 0, 1]])):
        lp = logp.clone().requires_grad_(True)
        kl = kl_penalty(lp, ref_nan, "k3", mask=mask)
        agg_loss(kl, torch.tensor([[1, 0, 1]]), "token-mean").backward()
        assert torch.isfinite(kl).all() and torch.isfinite(lp.grad).all() and lp.grad[0, 1] == 0


def test_entropy_loss_golden():
    ent = torch.tensor([[1.0, 3.0, NAN]])
    assert float(entropy_loss(ent, torch.tensor([[1, 1, 0]]))) == pytest.approx(2.0)  # (1 + 3) / 2


def test_nan_at_masked_positions_changes_nothing_and_gradients_stay_unmasked():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=gen)
    old = logp + 0.3 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.rand(3, 5, generator=gen) > 0.4
    mask[0, 0] = True
    for agg in AGG_MODES:
        clean = logp.clone().requires_grad_(True)
        loss_c, m_c = policy_loss(clean, old, adv, mask, clip_high=0.28, dual_clip=3.0, agg=agg)
        loss_c.backward()
        dirty = torch.where(mask, logp, torch.full_like(logp, NAN)).requires_grad_(True)
        old_d = torch.where(mask, old, torch.full_like(old, math.inf))
        adv_d = torch.where(mask, adv, torch.full_like(adv, NAN))
        loss_d, m_d = policy_loss(dirty, old_d, adv_d, mask, clip_high=0.28, dual_clip=3.0, agg=agg)
        loss_d.backward()
        assert float(loss_d.detach()) == pytest.approx(float(loss_c.detach())) and m_d == pytest.approx(m_c)
        torch.testing.assert_close(dirty.grad, clean.grad)
        assert bool((clean.grad[~mask] == 0).all())


def test_per_row_advantages_broadcast():
    logp = torch.tensor([[0.1, -0.1], [0.0, 0.2]])
    mask = torch.ones(2, 2)
    a, _ = policy_loss(logp, torch.zeros(2, 2), torch.tensor([1.0, -2.0]), mask)
    b, _ = policy_loss(logp, torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [-2.0, -2.0]]), mask)
    assert float(a) == float(b)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(AGG_MODES), split=st.integers(1, 5))
def test_micro_batch_accumulation_equals_full_batch(seed, agg, split):
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 7
    logp0 = -torch.rand(b, t, generator=gen, dtype=torch.float64)
    old = logp0 + 0.2 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) > 0.3
    mask[seed % b] = False  # one row without tokens
    full_p = logp0.clone().requires_grad_(True)
    full, _ = policy_loss(full_p, old, adv, mask, clip_high=0.28, agg=agg)
    full.backward()
    denom = float(mask.sum()) if agg == "token-mean" else float(b)
    micro_p = logp0.clone().requires_grad_(True)
    total = 0.0
    for idx in (torch.arange(0, split), torch.arange(split, b)):
        part, _ = policy_loss(micro_p[idx], old[idx], adv[idx], mask[idx], clip_high=0.28, agg=agg,
                              denominator=denom, max_len=t)  # fmt: skip
        part.backward()
        total += float(part.detach())
    assert total == pytest.approx(float(full.detach()), abs=1e-12)
    torch.testing.assert_close(micro_p.grad, full_p.grad, atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(AGG_MODES), copies=st.integers(2, 5), dual=st.booleans())
def test_duplicate_rows_merged_into_summed_signed_advantages_give_the_same_loss_and_gradient(seed, agg, copies, dual):
    """``copies`` rows with one ratio and advantages of both signs (ratios far outside the clip range included): one
    row with the positive advantages summed plus ``advantages_neg`` = the negative ones summed has their loss and
    gradient, given the rows' denominator (StepBatch.merge_duplicates's identity)."""
    gen = torch.Generator().manual_seed(seed)
    t = 6
    logp0 = -torch.rand(1, t, generator=gen, dtype=torch.float64)
    old = logp0 + 0.6 * torch.randn(1, t, generator=gen, dtype=torch.float64)  # ratios ~ e^±0.6: often clipped
    adv = torch.randn(copies, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(1, t, generator=gen) > 0.2
    denom = float(mask.sum()) * copies if agg == "token-mean" else float(copies)
    kw = dict(clip_high=0.28, agg=agg, denominator=denom, max_len=t, dual_clip=3.0 if dual else None)
    rows_p = logp0.clone().requires_grad_(True)
    rows, _ = policy_loss(rows_p.expand(copies, t), old.expand(copies, t), adv, mask.expand(copies, t), **kw)
    rows.backward()
    one_p = logp0.clone().requires_grad_(True)
    pos, neg = adv.clamp(min=0).sum(0, keepdim=True), adv.clamp(max=0).sum(0, keepdim=True)
    one, m = policy_loss(one_p, old, pos, mask, advantages_neg=neg, **kw)
    one.backward()
    assert float(one.detach()) == pytest.approx(float(rows.detach()), abs=1e-12)
    torch.testing.assert_close(one_p.grad, rows_p.grad, atol=1e-12, rtol=0)
    assert 0.0 <= m["actor/clipfrac"] <= 1.0
