"""Tests of the EMPG transform: golden values, METHOD §3 invariants (hypothesis), loop reference, duplicates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos import empg_transform, empg_transform_with_stats
from empg.algos.empg import EMPGParams


def loop_empg(adv, ent, traj, step, *, k=1.0, k_next=1.0, zeta=0.1, use_scaling=True, use_bonus=True,
              final_norm="mean", eps=1e-8):  # fmt: skip
    """Slow per-step reference in plain Python (rows assumed unique)."""
    n = len(adv)
    lo, hi = min(ent), max(ent)
    h = [(x - lo) / (hi - lo + eps) for x in ent]
    w = [math.exp(-k * x) for x in h]
    mean_w = sum(w) / n
    g = [x / (mean_w + eps) if use_scaling else 1.0 for x in w]
    row_of = {(traj[i], step[i]): i for i in range(n)}
    a_mod = []
    for i in range(n):
        j = row_of.get((traj[i], step[i] + 1))
        f = math.exp(-k_next * h[j]) if j is not None else 0.0
        a_mod.append(g[i] * adv[i] + (zeta if use_bonus else 0.0) * f)
    mean = sum(a_mod) / n
    if final_norm == "none":
        return a_mod
    if final_norm == "mean":
        return [x - mean for x in a_mod]
    if final_norm == "mean_std":
        std = math.sqrt(sum((x - mean) ** 2 for x in a_mod) / n)
        return [(x - mean) / (std + eps) for x in a_mod]
    per_traj: dict[int, list[float]] = {}
    for i in range(n):
        per_traj.setdefault(traj[i], []).append(a_mod[i])
    shift = sum(sum(v) / len(v) for v in per_traj.values()) / len(per_traj)
    return [x - shift for x in a_mod]


def T(x, dtype=torch.float64):  # noqa: N802
    return torch.tensor(x, dtype=dtype)


def L(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.long)


def test_golden_two_trajectories():
    # traj 0: steps 0, 1 with A = +1, H = 0, 1; traj 1: steps 0, 1 with A = -1, H = 0, 1 (rows shuffled)
    # h = [0, 1, 0, 1] (1 / (1 + 1e-8) ~ 1); exp(-h) = [1, e^-1, 1, e^-1]; mean = (1 + e^-1) / 2 = 0.683940
    # g(H=0) = 2 / (1 + e^-1) = 1.462117; g(H=1) = 2 e^-1 / (1 + e^-1) = 0.537883
    # f: step 0 of each traj -> next step has h = 1 -> e^-1 = 0.367879; last steps -> 0
    # a_mod = [1.462117 + 0.0367879, 0.537883, -1.462117 + 0.0367879, -0.537883]
    #       = [1.498905, 0.537883, -1.425329, -0.537883]; mean = 0.0735759 / 4 = 0.018394
    e = math.exp(-1)
    g0, g1 = 2 / (1 + e), 2 * e / (1 + e)
    a_mod = [g0 + 0.1 * e, g1, -g0 + 0.1 * e, -g1]
    mean = sum(a_mod) / 4
    expected = [x - mean for x in a_mod]
    assert abs(expected[0] - 1.480511) < 1e-5 and abs(expected[3] + 0.556277) < 1e-5
    order = [2, 0, 3, 1]  # any row order
    adv, ent, traj, step = T([1, 1, -1, -1]), T([0, 1, 0, 1]), L([0, 0, 1, 1]), L([0, 1, 0, 1])
    out, st_ = empg_transform_with_stats(adv[order], ent[order], traj[order], step[order])
    torch.testing.assert_close(out, T(expected)[order], atol=1e-7, rtol=0)
    torch.testing.assert_close(st_.g, T([g0, g1, g0, g1])[order], atol=1e-7, rtol=0)
    torch.testing.assert_close(st_.f, T([e, 0, e, 0])[order], atol=1e-7, rtol=0)
    assert st_.has_next.tolist() == [bool(x) for x in T([1, 0, 1, 0])[order].tolist()]
    torch.testing.assert_close(st_.a_mod, T(a_mod)[order], atol=1e-7, rtol=0)


def test_golden_final_norm_variants():
    # traj 5: 3 steps, A = -1, H = 0 each -> h = 0, g = 1, f = 1 for steps 0, 1; traj 9: 1 step, A = +2, H = 0
    # a_mod = [-1 + 0.1, -1 + 0.1, -1, 2] = [-0.9, -0.9, -1, 2]
    # "mean": mean = -0.8 / 4 = -0.2 -> [-0.7, -0.7, -0.8, 2.2]
    # "traj_mean": traj means -14/15 = -0.933333 and 2 -> shift (-0.933333 + 2) / 2 = 0.533333
    # "mean_std": centred [-0.7, -0.7, -0.8, 2.2], population std sqrt((0.49 + 0.49 + 0.64 + 4.84) / 4) = 1.270827
    args = (T([-1, -1, -1, 2]), T([0.5, 0.5, 0.5, 0.5]), L([5, 5, 5, 9]), L([0, 1, 2, 0]))
    torch.testing.assert_close(
        empg_transform(*args, EMPGParams(final_norm="none")), T([-0.9, -0.9, -1, 2]), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(empg_transform(*args), T([-0.7, -0.7, -0.8, 2.2]), atol=1e-7, rtol=0)
    shift = (-2.8 / 3 + 2) / 2
    torch.testing.assert_close(
        empg_transform(*args, EMPGParams(final_norm="traj_mean")), T([-0.9, -0.9, -1, 2]) - shift, atol=1e-7, rtol=0
    )
    std = math.sqrt((0.49 + 0.49 + 0.64 + 4.84) / 4)
    torch.testing.assert_close(
        empg_transform(*args, EMPGParams(final_norm="mean_std")), T([-0.7, -0.7, -0.8, 2.2]) / std, atol=1e-6, rtol=0
    )


def test_ablation_switches_and_dtype():
    adv, ent, traj, step = T([1, 1, -1]), T([0.0, 2.0, 1.0]), L([0, 0, 1]), L([0, 1, 0])
    plain = empg_transform(adv, ent, traj, step, EMPGParams(use_scaling=False, zeta=0.0, final_norm="none"))
    torch.testing.assert_close(plain, adv)  # both off: the base advantage untouched
    _, st_ = empg_transform_with_stats(adv, ent, traj, step, EMPGParams(use_scaling=False))
    assert torch.equal(st_.g, torch.ones(3, dtype=torch.float64))
    f_only = empg_transform(adv.float(), ent.float(), traj, step, EMPGParams(use_scaling=False, final_norm="none"))
    # h = [0, 1, 0.5]: step (0, 0) gets bonus 0.1 * exp(-1) = 0.0367879
    torch.testing.assert_close(f_only, torch.tensor([1.0367879, 1.0, -1.0]), atol=1e-6, rtol=0)
    assert f_only.dtype == torch.float32


def test_single_step_and_gaps():
    out, st_ = empg_transform_with_stats(T([3.0]), T([1.7]), L([4]), L([0]))
    assert out.tolist() == [0.0] and abs(float(st_.g[0]) - 1) < 1e-6 and st_.f.tolist() == [0.0]
    # step 1 is missing: step 0 has no next row, so no bonus (the next step is exactly step_idx + 1)
    _, st_ = empg_transform_with_stats(T([1.0, 1.0]), T([1.0, 1.0]), L([0, 0]), L([0, 2]))
    assert st_.has_next.tolist() == [False, False]


def test_duplicates_dedupe_and_conflict():
    adv, ent, traj, step = T([1, 1, -1, -1]), T([0.2, 1.0, 0.4, 3.0]), L([0, 0, 1, 1]), L([0, 1, 0, 1])
    ref = empg_transform(adv, ent, traj, step)
    dup = [0, 1, 2, 3, 1, 1, 3]  # rows 1 and 3 repeated
    out = empg_transform(adv[dup], ent[dup], traj[dup], step[dup])
    torch.testing.assert_close(out, ref[dup])
    bad_ent = torch.cat([ent, T([0.9])])
    with pytest.raises(ValueError, match="disagree on their step entropy"):
        empg_transform(torch.cat([adv, T([1])]), bad_ent, torch.cat([traj, L([0])]), torch.cat([step, L([1])]))
    with pytest.raises(ValueError, match="disagree on their advantage"):
        empg_transform(torch.cat([adv, T([5])]), torch.cat([ent, T([1.0])]), torch.cat([traj, L([0])]),
                       torch.cat([step, L([1])]))  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["advantages", "step_entropy"])
@pytest.mark.parametrize("final_norm", ["mean", "mean_std", "none", "traj_mean"])
@pytest.mark.parametrize("opts", [{}, {"use_scaling": False}, {"zeta": 0.0}, {"k": 3.0}])
@pytest.mark.parametrize("dup", [False, True])
def test_non_finite_input_is_named(bad, where, final_norm, opts, dup):
    # the transform finds a NaN/inf through the sum of A_mod (no separate pass), then names the input: every
    # option combination must still let it reach the sum; with duplicated rows (the sort path) it must not be
    # mistaken for disagreeing duplicates (NaN != NaN)
    adv, ent, traj, step = T([1.0, 2.0, -1.0, 0.5]), T([0.1, 0.2, 0.7, 0.3]), L([0, 0, 1, 1]), L([0, 1, 0, 1])
    (adv if where == "advantages" else ent)[2] = bad
    rows = [0, 1, 2, 3, 2] if dup else [0, 1, 2, 3]
    with pytest.raises(ValueError, match=f"{where} contains NaN or inf"):
        empg_transform(adv[rows], ent[rows], traj[rows], step[rows], EMPGParams(final_norm=final_norm, **opts))
    with pytest.raises(ValueError, match=f"{where} contains NaN or inf"):
        empg_transform_with_stats(
            adv[rows], ent[rows], traj[rows], step[rows], EMPGParams(final_norm=final_norm, **opts)
        )


def test_bad_inputs():
    ok = (T([1.0, 2.0]), T([0.1, 0.2]), L([0, 0]), L([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        empg_transform(ok[0], T([0.1, float("nan")]), ok[2], ok[3])
    with pytest.raises(ValueError, match="final_norm"):
        empg_transform(*ok, EMPGParams(final_norm="std"))
    with pytest.raises(ValueError, match="1-D"):
        empg_transform(ok[0], T([0.1]), ok[2], ok[3])
    with pytest.raises(ValueError, match="integer"):
        empg_transform(ok[0], ok[1], ok[2].double(), ok[3])
    with pytest.raises(ValueError, match="at least one step"):
        empg_transform(T([]), T([]), L([]), L([]))
    with pytest.raises(ValueError, match=">= 0"):
        empg_transform(*ok[:3], L([-1, 0]))


@st.composite
def batches(draw, equal_entropy=False):
    n_traj = draw(st.integers(1, 6))
    adv, ent, traj, step = [], [], [], []
    for i in range(n_traj):
        tid = draw(st.integers(0, 10_000))
        if tid in traj:
            continue
        length = draw(st.integers(1, 7))
        a = draw(st.floats(-3, 3, allow_subnormal=False))
        for t in range(length):
            adv.append(a)
            ent.append(1.3 if equal_entropy else draw(st.floats(0, 5, allow_subnormal=False)))
            traj.append(tid)
            step.append(t)
        del i
    perm = draw(st.permutations(range(len(adv))))
    return [adv[p] for p in perm], [ent[p] for p in perm], [traj[p] for p in perm], [step[p] for p in perm]


@settings(max_examples=80, deadline=None)
@given(b=batches(), norm=st.sampled_from(["mean", "mean_std", "none", "traj_mean"]), scaling=st.booleans(),
       bonus=st.booleans(), k=st.floats(0.1, 3))  # fmt: skip
def test_matches_loop_reference(b, norm, scaling, bonus, k):
    adv, ent, traj, step = b
    params = EMPGParams(k=k, k_next=k / 2, zeta=0.3 if bonus else 0.0, use_scaling=scaling, final_norm=norm)
    out = empg_transform(T(adv), T(ent), L(traj), L(step), params)
    ref = loop_empg(adv, ent, traj, step, k=k, k_next=k / 2, zeta=0.3, use_scaling=scaling, use_bonus=bonus,
                    final_norm=norm)  # fmt: skip
    torch.testing.assert_close(out, T(ref), atol=1e-9, rtol=1e-9)


@settings(max_examples=80, deadline=None)
@given(b=batches(), seed=st.integers(0, 10_000))
def test_invariants(b, seed):
    adv, ent, traj, step = T(b[0]), T(b[1]), L(b[2]), L(b[3])
    out, s = empg_transform_with_stats(adv, ent, traj, step)
    assert torch.isfinite(out).all()
    assert abs(float(s.g.mean()) - 1.0) < 1e-6  # mean_S g = 1
    assert abs(float(out.mean())) < 1e-9  # final_norm="mean" centres
    order = torch.argsort(ent)  # g non-increasing in H
    assert bool((s.g[order].diff() <= 1e-12).all())
    last = torch.zeros_like(traj, dtype=torch.bool)  # each trajectory's last step: no next, no bonus
    for tid in set(b[2]):
        rows = (traj == tid).nonzero().squeeze(-1)
        last[rows[step[rows].argmax()]] = True
    assert torch.equal(~s.has_next, last)
    assert bool((s.f[last] == 0).all()) and bool((s.f[~last] > 0).all())
    perm = torch.randperm(len(b[0]), generator=torch.Generator().manual_seed(seed))  # row-order invariance
    out_p = empg_transform(adv[perm], ent[perm], traj[perm], step[perm])
    torch.testing.assert_close(out_p, out[perm], atol=1e-12, rtol=0)
    dup = torch.cat([torch.arange(len(b[0])), perm[: max(1, len(b[0]) // 2)]])  # duplicates change nothing
    out_d = empg_transform(adv[dup], ent[dup], traj[dup], step[dup])
    torch.testing.assert_close(out_d, out[dup], atol=1e-12, rtol=0)
    sparse = empg_transform(adv, ent, traj * 1_000_003 - 10**12, step)  # sort path: negative, sparse ids
    torch.testing.assert_close(sparse, out, atol=1e-12, rtol=0)
    tm = empg_transform(adv, ent, traj, step, EMPGParams(final_norm="traj_mean"))  # mean of trajectory means is 0
    means = [float(tm[traj == tid].mean()) for tid in set(b[2])]
    assert abs(sum(means) / len(means)) < 1e-9


@settings(max_examples=40, deadline=None)
@given(b=batches(equal_entropy=True))
def test_equal_entropies_give_unit_g_and_f(b):
    adv, ent, traj, step = T(b[0]), T(b[1]), L(b[2]), L(b[3])
    out, s = empg_transform_with_stats(adv, ent, traj, step, EMPGParams(final_norm="none"))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(s.g, torch.ones_like(s.g), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.f[s.has_next], torch.ones_like(s.f[s.has_next]))
    torch.testing.assert_close(out, s.g * adv + 0.1 * s.has_next.double())


def test_metrics_summary():
    adv, ent, traj, step = T([1, 1, -1, -1]), T([0, 1, 0, 1]), L([0, 0, 1, 1]), L([0, 1, 0, 1])
    _, s = empg_transform_with_stats(adv, ent, traj, step)
    m = s.metrics(success=torch.tensor([True, True, False, False]))
    e = math.exp(-1)
    assert abs(m["empg/g_mean"] - 1) < 1e-7 and abs(m["empg/g_max"] - 2 / (1 + e)) < 1e-7
    assert abs(m["empg/f_min"] - e) < 1e-7 and abs(m["empg/f_max"] - e) < 1e-7  # f only over steps with a next
    # before: success steps (1.498905 + 0.537883) / 2 = 1.018394; after subtracting 0.018394 -> 1.0
    assert abs(m["empg/adv_success_before"] - 1.018394) < 1e-5 and abs(m["empg/adv_success_after"] - 1.0) < 1e-6


def test_params_are_validated_once_and_default_to_the_paper():
    p = EMPGParams()
    assert (p.k, p.k_next, p.zeta, p.use_scaling, p.final_norm) == (1.0, 1.0, 0.1, True, "mean")
    with pytest.raises(ValueError, match="final_norm='std' is not one of"):
        EMPGParams(final_norm="std")
    with pytest.raises(ValueError, match="k_next must be finite"):
        EMPGParams(k_next=float("inf"))
    with pytest.raises(ValueError, match="eps must be > 0"):
        EMPGParams(eps=0.0)


# ----------------------------------------------------------------------------- METHOD §6 and AEM variants
def loop_variant(adv, ent, traj, step, group, *, k=1.0, k_next=1.0, zeta=0.1, bonus_nonneg=False,
                 entropy_norm="batch", final_norm="mean", eps=1e-8):  # fmt: skip
    """Slow reference of the variants: per-group min-max and mean of g, the bonus only where A >= 0, per-group
    centring (rows assumed unique)."""
    n = len(adv)
    scope = [group[i] if entropy_norm == "group" else 0 for i in range(n)]
    lo = {s: min(ent[j] for j in range(n) if scope[j] == s) for s in scope}
    hi = {s: max(ent[j] for j in range(n) if scope[j] == s) for s in scope}
    h = [(ent[i] - lo[scope[i]]) / (hi[scope[i]] - lo[scope[i]] + eps) for i in range(n)]
    w = [math.exp(-k * x) for x in h]
    mean_w = {s: sum(w[j] for j in range(n) if scope[j] == s) / scope.count(s) for s in scope}
    g = [w[i] / (mean_w[scope[i]] + eps) for i in range(n)]
    row_of = {(traj[i], step[i]): i for i in range(n)}
    a_mod = []
    for i in range(n):
        j = row_of.get((traj[i], step[i] + 1))
        f = math.exp(-k_next * h[j]) if j is not None and (adv[i] >= 0 or not bonus_nonneg) else 0.0
        a_mod.append(g[i] * adv[i] + zeta * f)
    if final_norm == "group_mean":
        mean = {s: sum(a_mod[j] for j in range(n) if group[j] == s) / group.count(s) for s in group}
        return [a_mod[i] - mean[group[i]] for i in range(n)]
    total = sum(a_mod) / n
    return [x - total for x in a_mod]


@settings(max_examples=80, deadline=None)
@given(b=batches(), n_groups=st.integers(1, 3), bonus_nonneg=st.booleans(),
       entropy_norm=st.sampled_from(["batch", "group"]), final_norm=st.sampled_from(["mean", "group_mean"]),
       k=st.floats(0.1, 3))  # fmt: skip
def test_variants_match_the_loop_reference(b, n_groups, bonus_nonneg, entropy_norm, final_norm, k):
    adv, ent, traj, step = b
    group = [t % n_groups for t in traj]  # whole trajectories per group, groups of several trajectories
    params = EMPGParams(k=k, k_next=k / 2, zeta=0.3, final_norm=final_norm, bonus_nonneg=bonus_nonneg,
                        entropy_norm=entropy_norm)  # fmt: skip
    out, s = empg_transform_with_stats(T(adv), T(ent), L(traj), L(step), params, group_id=L(group))
    ref = loop_variant(adv, ent, traj, step, group, k=k, k_next=k / 2, zeta=0.3, bonus_nonneg=bonus_nonneg,
                       entropy_norm=entropy_norm, final_norm=final_norm)  # fmt: skip
    torch.testing.assert_close(out, T(ref), atol=1e-9, rtol=1e-9)
    if entropy_norm == "group":  # g has mean 1 inside every group
        for gid in set(group):
            rows = L([i for i, x in enumerate(group) if x == gid])
            assert abs(float(s.g[rows].mean()) - 1.0) < 1e-6
    if final_norm == "group_mean":  # every group is centred
        for gid in set(group):
            assert abs(float(out[L([i for i, x in enumerate(group) if x == gid])].sum())) < 1e-9


def test_variants_golden_and_their_defaults_are_the_paper():
    # two groups of one 2-step trajectory each: traj 0 (group 0) A = +1, H = 0, 1; traj 1 (group 1) A = -1, H = 2, 4
    adv, ent, traj, step, group = T([1, 1, -1, -1]), T([0, 1, 2, 4]), L([0, 0, 1, 1]), L([0, 1, 0, 1]), L([0, 0, 1, 1])
    # bonus_nonneg: traj 1's first step (A = -1) gets no bonus; batch min-max h = [0, .25, .5, 1]
    out, s = empg_transform_with_stats(adv, ent, traj, step, EMPGParams(bonus_nonneg=True, final_norm="none"))
    assert float(s.f[2]) == 0.0 and float(s.f[0]) == pytest.approx(math.exp(-0.25))
    # entropy_norm="group": each group's own min-max gives h = [0, 1, 0, 1] in both groups, so g is the same
    # [2/(1+e^-1), 2e^-1/(1+e^-1)] in each: traj 1's H = 2 counts as confident within its group
    _, s = empg_transform_with_stats(adv, ent, traj, step, EMPGParams(entropy_norm="group"), group_id=group)
    e = math.exp(-1)
    torch.testing.assert_close(s.g, T([2 / (1 + e), 2 * e / (1 + e)] * 2), atol=1e-7, rtol=0)
    # final_norm="group_mean": each group sums to 0 on its own
    out = empg_transform(adv, ent, traj, step, EMPGParams(final_norm="group_mean"), group_id=group)
    assert abs(float(out[:2].sum())) < 1e-12 and abs(float(out[2:].sum())) < 1e-12
    # the defaults need no groups and equal the paper's transform
    assert not EMPGParams().needs_groups and EMPGParams().bonus_nonneg is False


def test_variant_bad_inputs():
    ok = (T([1.0, 2.0, 0.0]), T([0.1, 0.2, 0.3]), L([0, 0, 1]), L([0, 1, 0]))
    with pytest.raises(ValueError, match="entropy_norm"):
        EMPGParams(entropy_norm="traj")
    with pytest.raises(ValueError, match="need each step's group_id"):
        empg_transform(*ok, EMPGParams(final_norm="group_mean"))
    with pytest.raises(ValueError, match="one entry per step"):
        empg_transform(*ok, EMPGParams(entropy_norm="group"), group_id=L([0, 0]))
    with pytest.raises(ValueError, match="one task group"):
        empg_transform(*ok, EMPGParams(final_norm="group_mean"), group_id=L([0, 1, 1]))
