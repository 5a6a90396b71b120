"""Phases of the RL loop in isolation: advantages (golden values), DAPO dynamic sampling, micro-batch accumulation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from empg.eval.runlog import read_metrics
from empg.rollout.types import RolloutResult, StepRecord, TrajectorySummary
from empg.train import advantage, rl
from empg.train.config import load_config


def _step(traj_id, step_idx, group_id=0, is_last=False):
    return StepRecord(
        group_id,
        traj_id,
        step_idx,
        is_last,
        "household-v0",
        0,
        "t",
        [1, 2],
        [3, 4],
        "x",
        "a",
        True,
        True,
        0.0,
        False,
        is_last,
        False,
    )


def _traj(traj_id, group_id, outcome, n_invalid, length, seed=0):
    return TrajectorySummary(
        group_id, traj_id, "household-v0", seed, "t", length, float(outcome), bool(outcome), n_invalid, False
    )


def _golden_batch():
    """Trajectory 0 succeeds in 2 steps; trajectory 1 fails in 1 step with 1 invalid action; same group.

    Token entropies (2 response tokens per step): step (0,0) → [0, 0], step (0,1) → [1, 1], step (1,0) → [0.2, 0.8],
    so the step entropies (mean over response tokens) are H = [0, 1, 0.5].
    """
    steps = [_step(0, 0), _step(0, 1, is_last=True), _step(1, 0, is_last=True)]
    trajs = [_traj(0, 0, 1, 0, 2), _traj(1, 0, 0, 1, 1)]
    mask = torch.tensor([[0.0, 1, 1], [0, 1, 1], [0, 1, 1]])
    ent = torch.tensor([[9.0, 0, 0], [9.0, 1, 1], [float("nan"), 0.2, 0.8]])  # position 0 is prompt: never used
    batch = SimpleNamespace(
        response_mask=mask,
        token_entropy=ent,
        action_mask=torch.zeros(3, 3),
        traj_id=torch.tensor([0, 0, 1]),
        step_idx=torch.tensor([0, 1, 0]),
    )
    return batch, steps, trajs


def _advantages(cfg, batch, steps, trajs, it, **kw):
    """The advantage phase on the step table of a (golden) batch, as the training loop calls it."""
    return advantage.advantage_phase(cfg, advantage.step_table(cfg, batch, steps, trajs), it, **kw)


def test_step_table_golden_and_cat_of_shards_equals_the_whole():
    batch, steps, trajs = _golden_batch()
    cfg = load_config(None, ["algo.empg=true"])
    table = advantage.step_table(cfg, batch, steps, trajs)
    assert table.entropy.tolist() == pytest.approx([0.0, 1.0, 0.5])  # H = mean over response tokens (docstring)
    assert table.traj.tolist() == [0, 0, 1] and table.is_last.tolist() == [False, True, True]
    assert table.returns.tolist() == pytest.approx([10.0, -0.1]) and table.success.tolist() == [True, False]
    # two shards (trajectory 0 | trajectory 1) joined: the trajectory index of shard 2 is offset by shard 1's T
    first = advantage.step_table(
        cfg, SimpleNamespace(**{k: v[:2] for k, v in vars(batch).items()}), steps[:2], trajs[:1]
    )
    second = advantage.step_table(
        cfg, SimpleNamespace(**{k: v[2:] for k, v in vars(batch).items()}), steps[2:], trajs[1:]
    )
    joined = advantage.StepTable.cat([first, second])
    for name in vars(table):
        torch.testing.assert_close(getattr(joined, name), getattr(table, name))


def test_grpo_advantages_golden():
    batch, steps, trajs = _golden_batch()
    cfg = load_config(None, ["algo.empg=false"])
    adv, m = _advantages(cfg, batch, steps, trajs, 0)
    # R = [10*1 - 0.1*0, 10*0 - 0.1*1] = [10, -0.1]; mean 4.95; unbiased std = 5.05*sqrt(2) = 7.1418
    # A = ±5.05 / (7.1418 + 1e-6) = ±0.707107, each step of a trajectory gets its trajectory's advantage
    assert adv.tolist() == pytest.approx([0.707107, 0.707107, -0.707107], abs=1e-6)
    assert m["adv/success_before"] == pytest.approx(0.707107, abs=1e-6)
    assert m["adv/failure_after"] == pytest.approx(-0.707107, abs=1e-6)
    dr = load_config(None, ["algo.empg=false", "algo.norm_by_std=false"])
    assert _advantages(dr, batch, steps, trajs, 0)[0].tolist() == pytest.approx([5.05, 5.05, -5.05])


def test_empg_advantages_golden():
    batch, steps, trajs = _golden_batch()
    cfg = load_config(None, ["algo.empg=true"])
    adv, m = _advantages(cfg, batch, steps, trajs, 0)
    # H = [0, 1, 0.5] → H̃ = [0, 1, 0.5]; exp(-H̃) = [1, 0.367879, 0.606531], mean 0.658137
    # g = [1.519441, 0.558971, 0.921588]; f only for step (0,0): exp(-H̃(0,1)) = exp(-1) = 0.367879
    # A_mod = [1.519441*0.707107 + 0.1*0.367879, 0.558971*0.707107, -0.921588*0.707107]
    #       = [1.111195, 0.395252, -0.651661]; mean 0.284929 → A_final = A_mod - mean
    assert adv.tolist() == pytest.approx([0.826266, 0.110323, -0.936590], abs=1e-5)
    assert m["empg/g_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["empg/g_max"] == pytest.approx(1.519441, abs=1e-5)
    assert m["empg/f_mean"] == pytest.approx(0.367879, abs=1e-5)
    assert m["adv/success_before"] == pytest.approx((1.111195 + 0.395252) / 2, abs=1e-5)
    assert m["adv/success_after"] == pytest.approx((0.826266 + 0.110323) / 2, abs=1e-5)
    # step_entropy="action" with no action tokens falls back to the mean: same result
    cfg_a = load_config(None, ["algo.empg=true", "algo.step_entropy=action"])
    assert _advantages(cfg_a, batch, steps, trajs, 0)[0].tolist() == pytest.approx(adv.tolist(), abs=1e-6)


def test_advantage_details_expose_the_per_step_terms_without_changing_them():
    batch, steps, trajs = _golden_batch()
    cfg = load_config(None, ["algo.empg=true"])
    details: dict = {}
    adv, m = _advantages(cfg, batch, steps, trajs, 0, details=details)
    assert adv.tolist() == pytest.approx([0.826266, 0.110323, -0.936590], abs=1e-5)  # the golden values above
    assert details["final"].tolist() == adv.tolist()
    assert details["base"].tolist() == pytest.approx([0.707107, 0.707107, -0.707107], abs=1e-6)
    assert details["h"].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert details["g"].tolist() == pytest.approx([1.519441, 0.558971, 0.921588], abs=1e-5)
    assert details["f"].tolist() == pytest.approx([0.367879, 0.0, 0.0], abs=1e-5)  # 0 without a next step
    plain: dict = {}
    _advantages(load_config(None, ["algo.empg=false"]), batch, steps, trajs, 0, details=plain)
    assert set(plain) == {"base", "final"}


def test_invalid_step_penalty_hits_only_the_invalid_step():
    batch, steps, trajs = _golden_batch()
    steps[1].valid = False  # trajectory 0's second step (the successful trajectory)
    plain = _advantages(load_config(None, ["algo.empg=false"]), batch, steps, trajs, 0)[0]
    cfg = load_config(None, ["algo.empg=false", "algo.invalid_step_penalty=0.5"])
    adv = _advantages(cfg, batch, steps, trajs, 0)[0]
    # the returns come from the summaries (unchanged); only row 1 moves, by exactly -0.5
    assert (adv - plain).tolist() == pytest.approx([0.0, -0.5, 0.0])


def test_invalid_credit_false_caps_invalid_steps_at_zero():
    batch, steps, trajs = _golden_batch()
    steps[1].valid = False  # an invalid step of the successful trajectory: no credit
    steps[2].valid = False  # an invalid step of the failed one: keeps its blame
    cfg = load_config(None, ["algo.empg=false", "algo.invalid_credit=false"])
    adv = _advantages(cfg, batch, steps, trajs, 0)[0]
    assert adv.tolist() == pytest.approx([0.707107, 0.0, -0.707107], abs=1e-6)


def test_gigpo_step_credit_golden():
    batch, steps, trajs = _golden_batch()
    steps[2].valid = False  # trajectory 1's one invalid step (its summary counts it)
    steps[0].state_key = steps[2].state_key = 5  # both first steps act on the group's initial state
    steps[1].state_key = 6
    cfg = load_config(None, ["algo.empg=false", "algo.gigpo_weight=1"])
    adv, m = _advantages(cfg, batch, steps, trajs, 0)
    # step rewards: (0,0) 0, (0,1) 10 (last step of a success), (1,0) -0.1 (invalid, last step of a failure);
    # returns to go at gamma 0.95: 9.5, 10, -0.1. State 5: {9.5, -0.1}, mean 4.7, unbiased std 4.8*sqrt(2)
    # -> A_step = +-0.707107; state 6 is seen once -> 0. Added to the GRPO advantages [0.707107, 0.707107, -0.707107].
    assert adv.tolist() == pytest.approx([1.414214, 0.707107, -1.414214], abs=1e-5)
    assert m["gigpo/shared_state_frac"] == pytest.approx(2 / 3) and m["gigpo/informative_frac"] == pytest.approx(2 / 3)
    half = load_config(None, ["algo.empg=false", "algo.gigpo_weight=0.5"])
    assert _advantages(half, batch, steps, trajs, 0)[0].tolist() == pytest.approx(
        [1.06066, 0.707107, -1.06066], abs=1e-5
    )
    assert "gigpo/shared_state_frac" not in _advantages(load_config(None, []), batch, steps, trajs, 0)[1]
    for bad in ("algo.gigpo_gamma=1.5", "algo.gigpo_weight=-1"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_negative_weight_scales_only_negative_advantages():
    batch, steps, trajs = _golden_batch()
    cfg = load_config(None, ["algo.empg=true", "algo.negative_weight=0.25"])
    adv = _advantages(cfg, batch, steps, trajs, 0)[0]
    # the EMPG golden values [0.826266, 0.110323, -0.936590] with the negative one times 0.25
    assert adv.tolist() == pytest.approx([0.826266, 0.110323, -0.234148], abs=1e-5)
    zero = load_config(None, ["algo.empg=false", "algo.negative_weight=0"])
    assert _advantages(zero, batch, steps, trajs, 0)[0].tolist() == pytest.approx([0.707107, 0.707107, 0.0])
    with pytest.raises(ValueError, match="algo.negative_weight"):
        load_config(None, ["algo.negative_weight=1.5"])


class FakeCollect:
    """Outcomes by seed: seeds in ``informative`` give one success and one failure per group, others all fail."""

    def __init__(self, informative):
        self.informative = set(informative)
        self.calls = []

    def __call__(self, policy, env_id, seeds, *, group_size, **kwargs):
        self.calls.append(list(seeds))
        steps, trajs = [], []
        for g, seed in enumerate(seeds):
            for j in range(group_size):
                tid = g * group_size + j
                won = seed in self.informative and j == 0
                steps.append(_step(tid, 0, group_id=g, is_last=True))
                trajs.append(_traj(tid, g, int(won), 0, 1, seed=seed))
        return RolloutResult(steps, trajs)


def _fake_run(overrides, pool):
    cfg = load_config(None, ["rollout.n_tasks=2", "rollout.group_size=2", *overrides])
    return SimpleNamespace(cfg=cfg, policy=None, generating_policy=None, train_pool=pool, env_pool=None)


def test_dynamic_sampling_resamples_until_enough_informative_groups(monkeypatch):

    fake = FakeCollect(informative={0, 3, 5})
    monkeypatch.setattr(rl, "collect", fake)  # the name collect_round calls
    run = _fake_run(["algo.base=dapo", "algo.max_resample_rounds=10"], pool=list(range(8)))
    steps, trajs, m = rl.rollout_phase(run, 0)
    assert m["dapo/kept_groups"] == 2 and len({t.group_id for t in trajs}) == 2
    assert {t.seed for t in trajs} <= {0, 3, 5}
    assert m["dapo/rounds"] == len(fake.calls) >= 1
    # ids are unique across rounds and steps follow their trajectories
    assert len({t.traj_id for t in trajs}) == len(trajs) == 4
    assert {s.traj_id for s in steps} == {t.traj_id for t in trajs}
    for t in trajs:  # each kept group has one success and one failure
        assert sorted(u.success for u in trajs if u.group_id == t.group_id) == [False, True]


def test_dynamic_sampling_gives_up_after_max_rounds(monkeypatch):

    fake = FakeCollect(informative=set())
    monkeypatch.setattr(rl, "collect", fake)  # the name collect_round calls
    run = _fake_run(["algo.base=dapo", "algo.max_resample_rounds=3"], pool=list(range(8)))
    steps, trajs, m = rl.rollout_phase(run, 0)
    assert steps == [] and trajs == [] and len(fake.calls) == 4 and m["dapo/rounds"] == 4
    assert m["train/success"] == 0.0
    # GRPO keeps everything in one round
    grpo = _fake_run(["algo.base=grpo"], pool=list(range(8)))
    steps, trajs, m = rl.rollout_phase(grpo, 0)
    assert len(trajs) == 4 and m["dapo/rounds"] == 1


def test_task_sampling_is_a_function_of_seed_and_iteration():
    pool = list(range(100))
    a = rl.sample_tasks(pool, 5, rl.generator_for(0, 3, "tasks"))
    b = rl.sample_tasks(pool, 5, rl.generator_for(0, 3, "tasks"))
    c = rl.sample_tasks(pool, 5, rl.generator_for(0, 4, "tasks"))
    assert a == b != c and len(set(a)) == 5


def test_micro_batches_accumulate_to_the_full_batch(tmp_path, tiny_model_dir, fast):
    """micro_batch_size 1 and 64 give the same loss and the same parameters (global token denominator).

    Plain GRPO: with EMPG the batch min-max normalisation of a random model's nearly equal step entropies magnifies
    the ~5e-7 float differences between a row computed alone and in a padded micro-batch into ~1e-4 in g."""
    from safetensors.torch import load_file

    out = {}
    for micro in (1, 64):
        run_dir = tmp_path / f"m{micro}"
        cfg = load_config(
            None,
            fast(
                run_dir,
                tiny_model_dir,
                "iterations=1",
                "algo.empg=false",
                "eval.every=0",
                f"optim.micro_batch_size={micro}",
            ),
        )
        rl.train(cfg)
        out[micro] = (read_metrics(run_dir)[0], load_file(str(run_dir / "checkpoints/iter_0001/model.safetensors")))
    (m1, p1), (m64, p64) = out[1], out[64]
    assert m1["loss/pg"] == pytest.approx(m64["loss/pg"], rel=1e-4, abs=1e-7)
    for k in p1:
        torch.testing.assert_close(p1[k], p64[k], rtol=1e-4, atol=5e-5)  # Adam: ~lr*sign(g) for tiny g


def test_scoring_fills_entropies_and_renyi2(tmp_path, tiny_model_dir, fast):
    """One rollout + scoring: Rényi-2 ≤ Shannon entropy per token (H₂ ≤ H₁), both 0 off the response mask."""
    cfg = load_config(None, fast(tmp_path / "run", tiny_model_dir, "algo.empg=true", "algo.step_entropy=renyi2"))
    run = rl.setup_run(cfg)
    steps, trajs, _ = rl.rollout_phase(run, 0)
    batch = rl.pack_steps(run.policy, steps)
    assert rl.score_phase(run, batch, 0) is not None  # kl_coef defaults to 0.01: reference log-probs
    m = batch.response_mask != 0
    h1, h2 = batch.token_entropy, batch.token_renyi2
    assert bool((h2[m] > 0).all()) and bool((h2[m] <= h1[m] + 1e-5).all())
    assert bool((h1[~m] == 0).all()) and bool((h2[~m] == 0).all()) and bool((batch.old_logprobs[~m] == 0).all())
    assert bool((batch.old_logprobs[m] < 0).all())
    h_step = advantage.step_entropies(cfg, batch)
    assert h_step.shape == (len(steps),)
    torch.testing.assert_close(h_step, h2.sum(-1) / m.sum(-1))
    # slow reference: each row alone at the batch's full width (the micro-batched code trims padding columns)
    from empg.algos.entropy import token_renyi2

    P, ref = batch.response_start, torch.zeros_like(h2)
    with torch.no_grad():
        for b in range(batch.input_ids.shape[0]):
            ids, att = batch.input_ids[b : b + 1], batch.attention_mask[b : b + 1]
            logits = run.policy.model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(-1) - 1).clamp_min(0))
            ref[b, P:] = token_renyi2(logits.logits[0, P - 1 : -1].float(), temperature=cfg.rollout.temperature)
    torch.testing.assert_close(h2, torch.where(m, ref, torch.zeros_like(ref)), atol=1e-5, rtol=1e-4)


def test_update_raises_positive_and_lowers_negative_advantage_responses(tmp_path, tiny_model_dir, fast):
    """The direction of learning: after one PPO step, every response pushed up (A = +1) is more likely than
    before on average and every response pushed down (A = -1) less likely, by the update of this very code."""
    cfg = load_config(
        None, fast(tmp_path / "run", tiny_model_dir, "algo.kl_coef=0", "optim.lr=1e-3", "rollout.rescore=true")
    )  # rescore: score_phase recomputes the log-probs with the updated model (here the measuring instrument)
    run = rl.setup_run(cfg)
    steps, _, _ = rl.rollout_phase(run, 0)
    batch = rl.pack_steps(run.policy, steps)
    rl.score_phase(run, batch, 0)
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(steps))])
    batch.advantages = advantage.to_tokens(sign, batch.response_mask)
    before = batch.old_logprobs.clone()
    rl.update_phase(run, batch, None, 0)
    rl.score_phase(run, batch, 0)
    change = ((batch.old_logprobs - before) * batch.response_mask).sum(-1)  # (S,) sequence log-prob change
    assert float(change[sign > 0].mean()) > 0 > float(change[sign < 0].mean()), change


@pytest.mark.parametrize("mode", ["renyi2", "action", "weighted"])
def test_step_entropy_modes_train(mode, tmp_path, tiny_model_dir, fast):
    cfg = load_config(
        None,
        fast(
            tmp_path / "run",
            tiny_model_dir,
            "iterations=1",
            "eval.every=0",
            "algo.empg=true",
            f"algo.step_entropy={mode}",
        ),
    )
    row = rl.train(cfg)[-1]
    assert row["empg/g_mean"] == pytest.approx(1.0, abs=1e-5)


def test_overlong_punishment_shapes_the_return_per_step():
    """max_new_tokens 16, buffer 4: steps of 12 or fewer tokens cost nothing, 14 tokens -0.5, 16 tokens -1 (x 2)."""
    from dataclasses import replace

    cfg = load_config(None, ["rollout.max_new_tokens=16", "algo.overlong_buffer=4", "algo.overlong_penalty=2",
                             "algo.invalid_penalty=0"])  # fmt: skip
    trajs = [
        replace(_traj(0, 0, 1, 0, 2), response_lengths=(12, 14)),
        replace(_traj(1, 0, 0, 0, 2), response_lengths=(16, 3)),
        _traj(2, 0, 0, 0, 0),  # no steps recorded: no shaping
    ]
    returns, _ = advantage.episode_returns(cfg, trajs)
    assert returns.tolist() == pytest.approx([10.0 - 2 * 0.5, 0.0 - 2 * 1.0, 0.0])
    off, _ = advantage.episode_returns(load_config(None, ["algo.invalid_penalty=0"]), trajs)
    assert off.tolist() == [10.0, 0.0, 0.0]


def _update_once(cfg, batch, ref_logp):
    """One update_phase from a fresh run of the base model; returns (metrics, the gradients it stepped with)."""
    run = rl.setup_run(cfg)
    metrics = rl.update_phase(run, batch, ref_logp, 0)
    return metrics, [p.grad.clone() for p in run.trained_model.parameters()]


def test_merged_duplicate_rows_give_the_unmerged_loss_and_gradient(tmp_path, tiny_model_dir, fast):
    """Repeated rows are computed once with their positive and negative advantages summed apart: the PPO loss, the
    count-weighted KL and entropy terms and the gradient equal the unmerged batch's."""
    common = ("algo.kl_coef=0.5", "algo.entropy_coef=0.1", "optim.lr=1e-4", "optim.grad_clip=0", "optim.mini_batches=1")
    cfg = load_config(None, fast(tmp_path / "a", tiny_model_dir, *common))
    run = rl.setup_run(cfg)
    steps, _, _ = rl.rollout_phase(run, 0)
    base = rl.pack_steps(run.policy, steps)
    assert base.batch_size >= 3
    rows = [0, 1, 2, 0, 0, 1]  # row 0 three times (+, +, -), row 1 twice (-, -)
    batch = base.select(rows)
    batch.advantages = advantage.to_tokens(torch.tensor([1.0, -0.5, 2.0, 0.7, -0.3, -1.2]), batch.response_mask)
    ref = batch.old_logprobs - 0.05 * batch.response_mask  # a reference model that differs: a non-zero KL term

    merged, first = batch.merge_duplicates()
    assert first.tolist() == [0, 1, 2] and merged.row_weight.tolist() == [3.0, 2.0, 1.0]
    row_pos = (merged.advantages * merged.response_mask).amax(-1)
    row_neg = (merged.advantages_neg * merged.response_mask).amin(-1)
    assert row_pos.tolist() == pytest.approx([1.7, 0.0, 2.0]) and row_neg.tolist() == pytest.approx([-0.3, -1.7, 0.0])
    again, again_first = merged.merge_duplicates()  # merging a merged batch keeps what each row stands for
    assert again_first.tolist() == [0, 1, 2] and again.row_weight.tolist() == [3.0, 2.0, 1.0]
    torch.testing.assert_close(again.advantages_neg, merged.advantages_neg)

    plain, g_plain = _update_once(
        load_config(None, fast(tmp_path / "b", tiny_model_dir, *common, "optim.merge_duplicates=false")), batch, ref
    )
    once, g_once = _update_once(load_config(None, fast(tmp_path / "c", tiny_model_dir, *common)), batch, ref)
    assert once["update/distinct_rows"] == pytest.approx(3 / 6) and "update/distinct_rows" not in plain
    for key in ("loss/pg", "loss/kl", "loss/entropy", "loss/total"):
        assert once[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(g_once, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_merge_duplicates_without_duplicates_is_the_identity(tmp_path, tiny_model_dir, fast):
    cfg = load_config(None, fast(tmp_path / "run", tiny_model_dir))
    run = rl.setup_run(cfg)
    steps, _, _ = rl.rollout_phase(run, 0)
    batch = rl.pack_steps(run.policy, steps)
    batch.advantages = advantage.to_tokens(torch.linspace(-1, 1, batch.batch_size), batch.response_mask)
    distinct = {tuple(r.tolist()) for r in batch.input_ids}
    merged, first = batch.merge_duplicates()
    assert len(merged) == len(distinct) and float(merged.row_weight.sum()) == batch.batch_size
    if len(distinct) == batch.batch_size:
        assert first.tolist() == list(range(batch.batch_size))
        torch.testing.assert_close(merged.advantages + merged.advantages_neg, batch.advantages)
        assert bool((merged.advantages >= 0).all()) and bool((merged.advantages_neg <= 0).all())
