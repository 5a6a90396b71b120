"""The verl plugin against verl's own ``DataProto`` (installed verl package, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.integrations.verl import (
    EMPGVerlConfig,
    add_turn_ids_from_mask,
    compute_empg_advantage,
    compute_empg_outcome_advantage,
    empg_token_advantages,
    register_estimator,
    wrap_compute_advantage,
    wrap_compute_old_log_prob,
)

protocol = pytest.importorskip("verl.protocol", reason="needs the [verl] extra")
DataProto = protocol.DataProto


# ------------------------------------------------------------------------------------------- slow reference
def reference_empg(steps, *, k=1.0, k_next=1.0, zeta=0.1, norm_by_std=True):
    """Per-step loop over METHOD §2-§3. steps: list of dicts group, traj, t, h, ret. Returns {(traj, t): A_final}."""
    trajs = {}
    for s in steps:
        trajs[s["traj"]] = (s["group"], s["ret"])
    adv = {}
    for traj, (group, ret) in trajs.items():
        rs = [r for g, r in trajs.values() if g == group]
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1)) if len(rs) > 1 else 1.0
        adv[traj] = (ret - mean) / (std + 1e-6) if norm_by_std else ret - mean
    uniq = {(s["traj"], s["t"]): s["h"] for s in steps}
    lo, hi = min(uniq.values()), max(uniq.values())
    hn = {key: (h - lo) / (hi - lo + 1e-8) for key, h in uniq.items()}
    w_mean = sum(math.exp(-k * v) for v in hn.values()) / len(hn)
    a_mod = {}
    for (traj, t), v in hn.items():
        g = math.exp(-k * v) / (w_mean + 1e-8)
        f = math.exp(-k_next * hn[(traj, t + 1)]) if (traj, t + 1) in hn else 0.0
        a_mod[(traj, t)] = g * adv[traj] + zeta * f
    mu = sum(a_mod.values()) / len(a_mod)
    return {key: v - mu for key, v in a_mod.items()}


def make_steps(seed: int, n_groups=3, group_size=3, max_len=4):
    rng = np.random.default_rng(seed)
    steps, traj = [], 0
    for g in range(n_groups):
        for _ in range(group_size):
            ret = float(rng.integers(0, 2)) * 10.0 - 0.1 * float(rng.integers(0, 3))
            for t in range(int(rng.integers(1, max_len + 1))):
                n_tok = int(rng.integers(1, 5))
                ent = rng.uniform(0.0, 3.0, size=n_tok).tolist()
                steps.append(dict(group=f"g{g}", traj=f"tr{traj}", t=t, ent=ent, h=float(np.mean(ent)), ret=ret))
            traj += 1
    return steps


def step_rows(steps, width=6) -> DataProto:
    """verl-agent layout: one row per step, left-aligned response, score on the last model token, NaN planted."""
    b = len(steps)
    mask = torch.zeros(b, width)
    ent = torch.full((b, width), float("nan"))
    rew = torch.zeros(b, width)
    for i, s in enumerate(steps):
        n = len(s["ent"])
        mask[i, :n] = 1
        ent[i, :n] = torch.tensor(s["ent"])
        rew[i, n - 1] = s["ret"]
    return DataProto.from_dict(
        tensors={"token_level_rewards": rew, "response_mask": mask, "entropys": ent},
        non_tensors={
            "uid": np.array([s["group"] for s in steps], dtype=object),
            "traj_uid": np.array([s["traj"] for s in steps], dtype=object),
            "step_idx": np.array([s["t"] for s in steps]),
        },
    )


def traj_rows(steps, obs_len=2) -> tuple[DataProto, list[list[tuple[int, int]]]]:
    """Whole-trajectory layout: turns concatenated with ``obs_len`` observation tokens (mask 0) in between."""
    by_traj: dict[str, list] = {}
    for s in steps:
        by_traj.setdefault(s["traj"], []).append(s)
    names = sorted(by_traj)
    width = max(sum(len(s["ent"]) + obs_len for s in by_traj[n]) for n in names)
    b = len(names)
    mask, ent, rew = torch.zeros(b, width), torch.full((b, width), float("nan")), torch.zeros(b, width)
    turn = torch.full((b, width), -7, dtype=torch.long)  # junk at masked positions must be ignored
    spans = []
    for i, name in enumerate(names):
        pos, row_spans = 0, []
        for s in sorted(by_traj[name], key=lambda s: s["t"]):
            n = len(s["ent"])
            mask[i, pos : pos + n] = 1
            ent[i, pos : pos + n] = torch.tensor(s["ent"])
            turn[i, pos : pos + n] = 10 * s["t"] + 3  # any increasing ids work
            row_spans.append((pos, pos + n))
            pos += n + obs_len
        rew[i, row_spans[-1][1] - 1] = by_traj[name][0]["ret"]
        spans.append(row_spans)
    proto = DataProto.from_dict(
        tensors={"token_level_rewards": rew, "response_mask": mask, "entropys": ent, "turn_ids": turn},
        non_tensors={
            "uid": np.array([by_traj[n][0]["group"] for n in names], dtype=object),
            "traj_uid": np.array(names, dtype=object),
        },
    )
    return proto, spans


# ------------------------------------------------------------------------------------------- golden values
def test_golden_two_trajectories_by_hand():
    # One group: traj a (R=1) has steps with entropy 0 and 1; traj b (R=0) one step with entropy 0.5.
    # GRPO: mean 0.5, unbiased std sqrt(0.5) = 0.707107 -> A_a = 0.5 / (0.707107 + 1e-6) = 0.7071058, A_b = -A_a.
    # H~ = [0, 1, 0.5]; exp(-H~) = [1, 0.367879, 0.606531], mean 0.658137 -> g = [1.519441, 0.558971, 0.921588].
    # f: only (a, 0) has a next step: exp(-1) = 0.367879. A_mod = [1.519441*0.7071058 + 0.0367879 = 1.111194,
    #   0.558971*0.7071058 = 0.395252, -0.921588*0.7071058 = -0.651660]; mean 0.284929.
    # A_final = [0.826265, 0.110323, -0.936588], broadcast over each step's model tokens only.
    rew = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    ent = torch.tensor([[0.0, 0.0, 9.0], [1.0, float("nan"), 5.0], [0.25, 0.75, 0.5]])
    adv, metrics = empg_token_advantages(
        rew, mask, ent, ["g", "g", "g"], ["a", "a", "b"], step_idx=[0, 1, 0], cfg=EMPGVerlConfig()
    )
    expected = torch.tensor([[0.826265, 0.826265, 0.0], [0.110323, 0.0, 0.0], [-0.936588] * 3])
    torch.testing.assert_close(adv, expected, atol=2e-6, rtol=0)
    assert metrics["empg/g_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["empg/f_max"] == pytest.approx(math.exp(-1), abs=1e-6)


def test_add_turn_ids_from_mask_golden():
    proto = DataProto.from_dict(tensors={"response_mask": torch.tensor([[1, 1, 0, 0, 1, 0, 1], [0, 1, 0, 1, 1, 0, 0]])})
    add_turn_ids_from_mask(proto)
    # runs of ones: row 0 -> turns 0,0 | 1 | 2 ; row 1 -> 0 | 1,1 (masked positions carry the previous id, or 0)
    assert proto.batch["turn_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 1, 1]]


# ------------------------------------------------------------------------------------------- equivalences
def _per_step(proto: DataProto) -> dict[tuple[str, int], float]:
    adv, mask = proto.batch["advantages"], proto.batch["response_mask"] > 0
    out = {}
    for i in range(len(proto)):
        vals = adv[i][mask[i]]
        assert torch.allclose(vals, vals[0].expand_as(vals)), "one value per step"
        assert bool((adv[i][~mask[i]] == 0).all()), "no advantage outside the model's tokens"
        key = (proto.non_tensor_batch["traj_uid"][i], int(proto.non_tensor_batch["step_idx"][i]))
        assert out.setdefault(key, float(vals[0])) == float(vals[0]), "duplicated rows get the same advantage"
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", [True, False])
def test_step_layout_matches_loop_reference(seed, norm):
    steps = make_steps(seed)
    proto = compute_empg_advantage(step_rows(steps), {"norm_adv_by_std_in_grpo": norm})
    ref = reference_empg(steps, norm_by_std=norm)
    got = _per_step(proto)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5), key
    torch.testing.assert_close(proto.batch["returns"], proto.batch["advantages"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_dup=st.integers(0, 6), k=st.floats(0.0, 3.0), zeta=st.floats(0.0, 0.5))
def test_property_any_order_and_duplicates_match_the_reference(seed, n_dup, k, zeta):
    steps = make_steps(seed, n_groups=2, group_size=3, max_len=3)
    rng = np.random.default_rng(seed)
    rows = list(rng.permutation(len(steps))) + list(rng.integers(0, len(steps), size=n_dup))
    proto = step_rows(steps).select_idxs(np.array(rows))
    got = _per_step(compute_empg_advantage(proto, {"empg": {"k": k, "zeta": zeta}}))
    ref = reference_empg(steps, k=k, zeta=zeta)
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-5)
    assert sum(ref.values()) == pytest.approx(0.0, abs=1e-9)  # final_norm="mean" over distinct steps


def test_step_layout_reordered_and_duplicated_rows():
    steps = make_steps(3)
    base = _per_step(compute_empg_advantage(step_rows(steps)))
    perm = np.random.default_rng(0).permutation(len(steps))
    shuffled = step_rows(steps).select_idxs(perm)
    padded, pad = protocol.pad_dataproto_to_divisor(shuffled, len(steps) + 5)  # verl repeats leading rows
    assert pad == 5 and len(padded) == len(steps) + 5
    out = compute_empg_advantage(padded)
    adv, mask = out.batch["advantages"], out.batch["response_mask"] > 0
    for i in range(len(out)):
        key = (out.non_tensor_batch["traj_uid"][i], int(out.non_tensor_batch["step_idx"][i]))
        assert float(adv[i][mask[i]][0]) == pytest.approx(base[key], abs=1e-6)


def test_trajectory_layout_equals_step_layout_and_survives_padding():
    steps = make_steps(4)
    per_step = _per_step(compute_empg_advantage(step_rows(steps)))
    proto, spans = traj_rows(steps)
    perm = np.random.default_rng(1).permutation(len(proto))
    proto = proto.select_idxs(perm)
    spans = [spans[i] for i in perm]
    padded, _ = protocol.pad_dataproto_to_divisor(proto, len(proto) + 3)
    spans = spans + spans[: len(padded) - len(spans)]
    out = compute_empg_advantage(padded, {"empg": {"layout": "trajectory"}})
    adv, mask = out.batch["advantages"], out.batch["response_mask"] > 0
    assert bool((adv[~mask] == 0).all())
    for i in range(len(out)):
        name = out.non_tensor_batch["traj_uid"][i]
        for t, (lo, hi) in enumerate(spans[i]):
            torch.testing.assert_close(adv[i, lo:hi], torch.full((hi - lo,), per_step[(name, t)]), atol=1e-5, rtol=0)


def test_nan_and_values_at_masked_positions_change_nothing():
    steps = make_steps(5)
    proto = step_rows(steps)
    a = compute_empg_advantage(proto).batch["advantages"].clone()
    proto2 = step_rows(steps)
    masked = proto2.batch["response_mask"] == 0
    proto2.batch["entropys"][masked] = 1e6
    torch.testing.assert_close(compute_empg_advantage(proto2).batch["advantages"], a)


# ------------------------------------------------------------------------------------------- config and errors
def test_config_from_algorithm_dictconfig_and_errors():
    from omegaconf import OmegaConf

    algo = OmegaConf.create({"adv_estimator": "empg", "norm_adv_by_std_in_grpo": False, "empg": {"k": 2.0}})
    cfg = EMPGVerlConfig.from_algorithm_config(algo)
    assert (cfg.k, cfg.k_next, cfg.zeta, cfg.norm_adv_by_std) == (2.0, 1.0, 0.1, False)
    with pytest.raises(ValueError, match="unknown algorithm.empg keys.*'kk'"):
        EMPGVerlConfig.from_algorithm_config({"empg": {"kk": 1}})
    with pytest.raises(ValueError, match="layout"):
        EMPGVerlConfig(layout="rows")


def test_k_and_zeta_reach_the_transform():
    steps = make_steps(6)
    got = _per_step(compute_empg_advantage(step_rows(steps), {"empg": {"k": 2.5, "k_next": 0.5, "zeta": 0.3}}))
    ref = reference_empg(steps, k=2.5, k_next=0.5, zeta=0.3)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5)


def test_clear_errors():
    steps = make_steps(7)
    proto = step_rows(steps)
    proto.batch.pop("entropys")
    with pytest.raises(KeyError, match="install"):
        compute_empg_advantage(proto)
    proto = step_rows(steps)
    proto.non_tensor_batch.pop("step_idx")
    with pytest.raises(KeyError, match="step index field 'step_idx'"):
        compute_empg_advantage(proto)
    proto = step_rows(steps)
    proto.batch["token_level_rewards"][0, 0] += 3.0  # one row of a trajectory now disagrees on the episode score
    with pytest.raises(ValueError, match="return_mode"):
        compute_empg_advantage(proto)
    dup = DataProto.concat([step_rows(steps), step_rows(steps)[:1]])
    dup.batch["entropys"][-1, 0] += 1.0  # a duplicated step row that is not an exact copy
    with pytest.raises(ValueError, match="disagree"):
        compute_empg_advantage(dup)


def test_sum_return_mode():
    steps = make_steps(8)
    proto = step_rows(steps)
    # spread each episode score over its steps: row score = ret / n_steps; sum mode must give the same result
    n_steps = {}
    for s in steps:
        n_steps[s["traj"]] = n_steps.get(s["traj"], 0) + 1
    for i, s in enumerate(steps):
        proto.batch["token_level_rewards"][i] /= n_steps[s["traj"]]
    got = _per_step(compute_empg_advantage(proto, {"empg": {"return_mode": "sum"}}))
    ref = reference_empg(steps)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-4)


# ------------------------------------------------------------------------------------------- verl hooks
def test_registered_estimator_uses_verl_signature():
    from verl.trainer.ppo import core_algos

    register_estimator()
    register_estimator()  # idempotent
    fn = core_algos.get_adv_estimator_fn("empg")
    assert fn is compute_empg_outcome_advantage
    proto = step_rows(make_steps(9))
    adv, ret = fn(
        token_level_rewards=proto.batch["token_level_rewards"],
        response_mask=proto.batch["response_mask"],
        index=proto.non_tensor_batch["uid"],
        config=None,
        batch=proto.batch,
        non_tensor_batch=proto.non_tensor_batch,
    )
    torch.testing.assert_close(adv, compute_empg_advantage(proto).batch["advantages"])
    with pytest.raises(ValueError, match="install"):
        fn(token_level_rewards=adv, response_mask=adv, index=None, config=None)


def test_wrapped_compute_advantage_routes_only_empg():
    calls = []

    def compute_advantage(
        data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True, config=None
    ):
        calls.append(adv_estimator)
        return data

    wrapped = wrap_compute_advantage(compute_advantage)
    assert wrap_compute_advantage(wrapped) is wrapped
    steps = make_steps(10)
    proto = step_rows(steps)
    assert wrapped(proto, "grpo") is proto and calls == ["grpo"]
    out = wrapped(proto, "empg", norm_adv_by_std_in_grpo=False, config={"empg": {"zeta": 0.2}})
    assert calls == ["grpo"]
    ref = reference_empg(steps, zeta=0.2, norm_by_std=False)
    got = _per_step(out)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5)


def test_entropies_survive_the_old_log_prob_pass():
    class Trainer:
        def _compute_old_log_prob(self, batch):
            return DataProto.from_dict(tensors={"old_log_probs": batch, "entropys": batch + 1}), 0.5

    Trainer._compute_old_log_prob = wrap_compute_old_log_prob(Trainer._compute_old_log_prob)
    old, mfu = Trainer()._compute_old_log_prob(torch.zeros(2, 3))
    old.batch.pop("entropys")  # what verl's fit() does next
    assert mfu == 0.5 and old.batch["empg_entropys"].tolist() == [[1.0] * 3] * 2


def test_launcher_adds_the_ray_setup_hook(monkeypatch):
    import sys
    import types

    import empg.integrations.verl as plugin

    calls, installs = [], []
    fake = types.ModuleType("verl.trainer.main_ppo")
    fake.main = lambda: calls.append(list(sys.argv[1:]))
    monkeypatch.setitem(sys.modules, "verl.trainer.main_ppo", fake)
    monkeypatch.setattr("verl.trainer.main_ppo", fake, raising=False)
    monkeypatch.setattr(plugin, "install", lambda: installs.append(True))
    monkeypatch.setattr(sys, "argv", ["empg-verl"])
    plugin.main(["algorithm.adv_estimator=empg"])
    user_hook = "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=my.hook"
    plugin.main([user_hook])  # a hook the user set is kept, not doubled
    assert installs == [True, True]
    assert calls == [["algorithm.adv_estimator=empg", plugin.SETUP_HOOK_OVERRIDE], [user_hook]]
