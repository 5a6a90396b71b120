"""Two CPU processes (gloo) reproduce one single-process update on the same batch: advantages, loss, parameters."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from empg.rollout.types import StepRecord, TrajectorySummary
from empg.train import advantage, rl
from empg.train.config import TrainConfig
from empg.train.distributed import (
    DistInfo,
    Reducer,
    fsdp_reducer,
    gather_cat,
    global_step_advantages,
    init_distributed,
    leave_process_group,
    reducer,
)

N_GROUPS, GROUP_SIZE, VOCAB = 3, 2, 40


def tiny_model() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.5,  # spread-out logits: step entropies differ, so min-max does not amplify float noise
    )
    return Qwen2ForCausalLM(cfg).eval()


def config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.algo.empg, cfg.algo.kl_coef, cfg.algo.entropy_coef, cfg.algo.ppo_epochs = True, 0.0, 0.01, 2
    cfg.algo.gigpo_weight = 1.0  # the step-level term needs every rank's steps too
    cfg.optim.lr, cfg.optim.micro_batch_size, cfg.optim.mini_batches, cfg.optim.grad_clip = 1e-2, 2, 1, 1.0
    return cfg


def rollout(group_offset: int, n_groups: int) -> tuple[list, list]:
    """Deterministic fake rollout of groups ``group_offset ...`` with local ids starting at 0 (as collect returns)."""
    steps, trajs = [], []
    for g_local in range(n_groups):
        g = group_offset + g_local
        for k in range(GROUP_SIZE):
            gen = torch.Generator().manual_seed(100 * g + k)
            n_steps = 1 + (g + k) % 3
            won = (g + k) % 2 == 0
            traj = g_local * GROUP_SIZE + k
            for t in range(n_steps):
                p_len, r_len = 3 + (t + k) % 4, 2 + (g + t) % 4
                last = t == n_steps - 1
                steps.append(
                    StepRecord(
                        group_id=g_local,
                        traj_id=traj,
                        step_idx=t,
                        is_last=last,
                        env_id="fake-v0",
                        seed=g,
                        task_type="x",
                        prompt_ids=torch.randint(1, VOCAB, (p_len,), generator=gen).tolist(),
                        response_ids=torch.randint(1, VOCAB, (r_len,), generator=gen).tolist(),
                        response_text="",
                        action="a",
                        valid=True,
                        parsed=True,
                        env_reward=float(won and last),
                        won=won and last,
                        terminated=last,
                        truncated=False,
                        action_token_mask=[0] + [1] * (r_len - 1),
                        state_key=t % 2,  # the group's first steps share a state
                    )
                )
            trajs.append(TrajectorySummary(g_local, traj, "fake-v0", g, "x", n_steps, float(won), won, 0, False))
    return rl.renumber_groups(steps, trajs, group_offset, GROUP_SIZE)


def one_update(steps, trajs, info: DistInfo, sharding: str = "ddp") -> dict:
    from empg.train import fsdp
    from empg.train.batch import StepBatch

    cfg, model = config(), tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    run = rl.Run(cfg, None, SimpleNamespace(model=model), opt, None, 0, [])
    if sharding == "fsdp":
        fsdp.shard_for_training(run, info)
    batch = StepBatch.from_records(steps, pad_id=0)
    rl.score_phase(run, batch, 0)
    adv, adv_metrics = global_step_advantages(cfg, advantage.step_table(cfg, batch, steps, trajs), 0, info)
    batch.advantages = advantage.to_tokens(adv, batch.response_mask)
    out = {}
    if sharding == "fsdp":  # rank 0 has 2 groups, rank 1 one: unequal micro-batch counts, padded to lock-step
        metrics = rl.update_phase(run, batch, None, 0, fsdp_reducer(info))
        fsdp.sync_rollout_weights(run)  # the unsharded copy (model) now holds the trained weights
        out["resharded_state_equal"] = _reshard_round_trip(run, info)
    else:
        metrics = rl.update_phase(run, batch, None, 0, reducer(info))  # the loop's own update, all-reduced
    keys = [(s.traj_id, s.step_idx) for s in steps]
    return out | {
        "adv": dict(zip(keys, adv.tolist(), strict=True)),
        "metrics": metrics,
        "adv_metrics": adv_metrics,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def _reshard_round_trip(run, info: DistInfo) -> bool:
    """Save the sharded AdamW state as a checkpoint (rank 0), restore it into a plain AdamW on every rank (as a
    resume does), shard again: the gathered state must equal the saved one, tensor for tensor."""
    from empg.train import checkpoint as ckpt
    from empg.train import fsdp

    saved = fsdp.full_optimizer(run).state_dict()
    root = os.environ["EMPG_TEST_DIR"]
    if info.is_main:
        no_model = SimpleNamespace(save=lambda path: path.mkdir())
        ckpt.save_checkpoint(root, 1, no_model, SimpleNamespace(state_dict=lambda: saved))
    torch.distributed.barrier()
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    ckpt.restore_checkpoint(ckpt.latest_checkpoint(root), opt)
    again = rl.Run(run.cfg, None, SimpleNamespace(model=model), opt, None, 0, [])
    fsdp.shard_for_training(again, info)
    back = fsdp.full_optimizer(again).state_dict()
    if not info.is_main:
        return True
    assert back["param_groups"][0]["lr"] == saved["param_groups"][0]["lr"] == run.cfg.optim.lr
    return saved["state"].keys() == back["state"].keys() and all(
        torch.equal(saved["state"][i][k], back["state"][i][k]) for i in saved["state"] for k in saved["state"][i]
    )


def _worker(rank: int, world: int, port: int, out_dir: str, overrides: list[str], sharding: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ["EMPG_TEST_DIR"] = os.path.join(out_dir, "reshard")
    torch.set_num_threads(1)
    info, finished = init_distributed("gloo"), False
    try:
        # A. one update on a fixed batch, sharded by groups
        lo, hi = Reducer(rank=info.rank, world_size=info.world_size).shard(N_GROUPS)
        steps, trajs = rollout(lo, hi - lo)
        result = one_update(steps, trajs, info, sharding)
        result["gathered"] = gather_cat(torch.arange(hi - lo) + 10 * rank, info)
        # B. the whole loop (rollout, scoring, advantages, update, eval, log, checkpoint) on the tiny model
        from empg.train.config import load_config

        result["history"] = rl.train(load_config(None, [*overrides, f"optim.sharding={sharding}"]), info=info)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        finished = True
    finally:
        leave_process_group(info, wait=finished)  # on success, no rank closes its connections before the others


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reducer_shard_covers_everything_once():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            parts = [Reducer(rank=r, world_size=world).shard(n) for r in range(world)]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_renumber_groups_gives_global_ids():
    steps, trajs = rollout(2, 1)  # group 2 of the global batch, alone on a rank
    assert {t.group_id for t in trajs} == {2} and sorted(t.traj_id for t in trajs) == [4, 5]
    assert {s.traj_id for s in steps} == {4, 5}


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, tiny_model_dir, fast, sharding):
    steps, trajs = rollout(0, N_GROUPS)
    single = one_update(steps, trajs, DistInfo())
    run_dir = tmp_path / "run"
    overrides = fast(run_dir, tiny_model_dir, "algo.base=grpo", "algo.empg=true", "rollout.n_tasks=3")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), overrides, sharding), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # rank 0 holds groups 0-1, rank 1 group 2 (uneven shards); gathered in rank order
    assert ranks[0]["gathered"].tolist() == [0, 1, 10] and ranks[1]["gathered"].tolist() == [0, 1, 10]
    # advantages: batch-global GRPO + EMPG, each rank's rows equal the single-process rows
    merged = {**ranks[0]["adv"], **ranks[1]["adv"]}
    assert merged.keys() == single["adv"].keys()
    for key, value in single["adv"].items():  # each rank packs its own rows (narrower padding): float noise only
        assert merged[key] == pytest.approx(value, abs=1e-5)
    assert ranks[0]["adv_metrics"]["empg/g_mean"] == pytest.approx(1.0, abs=1e-6)
    assert ranks[0]["adv_metrics"]["gigpo/informative_frac"] > 0  # GiGPO's term is in the compared advantages
    # the loss summed over ranks and the parameters after the update equal the single process, on both ranks
    if sharding == "fsdp":  # sharded AdamW state -> checkpoint -> plain AdamW -> sharded again: nothing lost
        assert all(r["resharded_state_equal"] for r in ranks)
    # and so does the gradient norm (AdamW's step is blind to a gradient scale, so the parameters alone would not
    # show gradients averaged instead of summed over ranks)
    for key in ("loss/pg", "loss/entropy", "loss/total", "actor/grad_norm"):
        for r in ranks:
            assert r["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-5), key
    before = tiny_model().state_dict()
    for name, p in single["params"].items():
        assert not torch.equal(p, before[name]), f"{name} did not change: the test would not see a wrong gradient"
        for r in ranks:
            torch.testing.assert_close(r["params"][name], p, atol=1e-5, rtol=0)

    # B. the one training loop ran 2 iterations on both ranks; rank 0 alone wrote metrics and checkpoints
    from empg.eval.runlog import read_metrics
    from empg.train.checkpoint import latest_checkpoint

    assert ranks[1]["history"] == []
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2] == [h["iteration"] for h in ranks[0]["history"]]
    assert all(r["dist/world_size"] == 2.0 for r in rows) and "eval_out/success" in rows[-1]
    trained = [r for r in rows if r["train/n_steps"] > 0]
    assert len(trained) == 2 and all(
        r["empg/g_mean"] == pytest.approx(1.0, abs=1e-5) and "loss/pg" in r for r in trained
    )
    assert latest_checkpoint(run_dir).name.endswith("2")
    # the optimizer state is saved whole, in the single-process layout, whatever the sharding
    from safetensors.torch import load_file

    from empg.policy import Policy

    saved = load_file(str(latest_checkpoint(run_dir) / "optimizer.safetensors"))
    params = [p for p in Policy.load(latest_checkpoint(run_dir)).model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        assert saved[f"state/{i}/exp_avg"].shape == p.shape and saved[f"state/{i}/exp_avg"].abs().sum() > 0


@pytest.mark.parametrize(("section", "name", "value"), [("rollout", "env_workers", 2), ("model", "backend", "vllm")])
def test_single_process_scale_out_options_are_refused_under_torchrun(section, name, value, tmp_path):
    from empg.train.config import ConfigError

    cfg = TrainConfig(run_dir=str(tmp_path / "run"))
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError, match="not wired into multi-process"):
        rl.train(cfg, info=DistInfo(rank=0, world_size=2))  # refused before any collective or file
    assert not (tmp_path / "run").exists()
