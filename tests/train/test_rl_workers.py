"""The trainer with Ray env workers (``rollout.env_workers=2`` on a local Ray with 2 CPUs).

Every run is the session's micro model, 2 tasks x group 2, 3 turns, 2 iterations (``fast``).
"""

from __future__ import annotations

import pytest

from empg.cli import main
from empg.eval.runlog import read_metrics
from empg.train import backends, rl
from empg.train.config import load_config

ray = pytest.importorskip("ray", reason="needs the [ray] extra")

VOLATILE = ("time/", "perf/")  # wall-clock metrics
POOL_ONLY = ("rollout/lost_env_calls", "rollout/hung_env_calls")  # logged only when envs live in Ray workers


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def pools(monkeypatch):
    """The env pools the trainer builds, with the env methods each of their worker calls carried."""
    made = []
    real = backends.make_env_pool

    def spy(cfg):
        pool = real(cfg)
        pool.methods = []
        submit = pool._submit
        pool._submit = lambda w, items: pool.methods.extend(i[1] for i in items) or submit(w, items)
        made.append(pool)
        return pool

    monkeypatch.setattr(backends, "make_env_pool", spy)
    return made


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE) and k not in POOL_ONLY} for r in rows]


def test_env_workers_reproduce_the_in_process_run(tmp_path, tiny_model_dir, fast, local_ray, pools):
    algo = ["algo.base=grpo", "algo.empg=true"]
    rl.train(load_config(None, fast(tmp_path / "local", tiny_model_dir, *algo)))
    in_process = read_metrics(tmp_path / "local")
    assert pools == []

    assert main(["train", *fast(tmp_path / "ray", tiny_model_dir, *algo, "rollout.env_workers=2")]) == 0
    remote = read_metrics(tmp_path / "ray")
    # The envs are reset with the same seeds in the same order and stepped with the same actions; generation batches
    # and sampling draws are identical, so every metric (success, returns, steps, advantages, losses, eval) is equal,
    # not just close. Only wall-clock metrics differ.
    assert _stable(remote) == _stable(in_process)
    assert [r["train/n_steps"] for r in remote] == [r["train/n_steps"] for r in in_process]
    assert all(r["rollout/lost_env_calls"] == 0.0 and r["train/failed_episodes"] == 0.0 for r in remote)
    (pool,) = pools
    n_steps = sum(r["train/ep_len"] * 4 for r in remote)  # 2 tasks x 2 copies per iteration
    assert pool.methods.count("reset") == 2 * 4 and pool.methods.count("step") == n_steps  # stepped in the actors
    assert pool.workers == [] and ray.is_initialized()  # the pool was shut down; Ray was not ours to stop


def test_a_dead_env_worker_fails_its_episodes_and_training_goes_on(
    tmp_path, tiny_model_dir, fast, local_ray, pools, monkeypatch
):
    import empg.rollout

    real = empg.rollout.collect_with_envs
    rounds = []

    def kill_worker_1_in_the_first_rollout(policy, envs, seeds, **kwargs):
        rounds.append(len(envs))
        if len(rounds) == 1:  # envs 1 and 3 live on worker 1; it dies after every env's first step
            kwargs["progress"] = lambda turn, n_live: turn == 1 and envs[0]._pool.kill_worker(1)
        return real(policy, envs, seeds, **kwargs)

    monkeypatch.setattr(rl, "collect_with_envs", kill_worker_1_in_the_first_rollout)
    rows = rl.train(load_config(None, fast(tmp_path / "run", tiny_model_dir, "rollout.env_workers=2")))
    first, second = rows
    assert first["train/failed_episodes"] == 2.0 and first["rollout/lost_env_calls"] == 2.0
    assert first["train/n_steps"] == 2 * first["train/ep_len"]  # only the 2 surviving episodes are in the batch
    assert "loss/pg" in first and "update/skipped" not in first  # and the update ran on them
    assert second["train/failed_episodes"] == 0.0 and second["rollout/lost_env_calls"] == 0.0  # worker restarted
    assert second["train/n_steps"] == 4 * second["train/ep_len"]
    assert (tmp_path / "run" / "checkpoints" / "iter_0002").is_dir()


def test_a_hung_env_worker_is_timed_out_and_training_goes_on(
    tmp_path, tiny_model_dir, fast, local_ray, pools, monkeypatch
):
    import time

    import empg.rollout

    real = empg.rollout.collect_with_envs
    rounds, took = [], []

    def hang_worker_1_in_the_first_rollout(policy, envs, seeds, **kwargs):
        rounds.append(len(envs))
        if len(rounds) == 1:  # worker 1 (envs 1 and 3) stops answering after every env's first step
            kwargs["progress"] = lambda turn, n_live: turn == 1 and envs[0]._pool.stall_worker(1, 600.0)
        start = time.monotonic()
        out = real(policy, envs, seeds, **kwargs)
        took.append(time.monotonic() - start)
        return out

    monkeypatch.setattr(rl, "collect_with_envs", hang_worker_1_in_the_first_rollout)
    overrides = fast(tmp_path / "run", tiny_model_dir, "rollout.env_workers=2", "rollout.env_step_timeout=3")
    first, second = rl.train(load_config(None, overrides))
    assert first["rollout/hung_env_calls"] == 1.0 and first["rollout/lost_env_calls"] == 2.0
    assert first["train/failed_episodes"] == 2.0 and "loss/pg" in first  # the survivors were trained on
    assert second["rollout/hung_env_calls"] == 0.0 and second["train/failed_episodes"] == 0.0
    assert 3.0 <= took[0] < 120.0  # the hang cost the timeout once (plus the restart on the next reset)
    (pool,) = pools
    assert pool.step_timeout == 3.0


def test_env_step_timeout_is_validated():
    with pytest.raises(ValueError, match="rollout.env_step_timeout"):
        load_config(None, ["rollout.env_step_timeout=-1"])


def test_the_pool_is_shut_down_when_training_fails(tmp_path, tiny_model_dir, fast, local_ray, pools, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(rl, "score_phase", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        rl.train(load_config(None, fast(tmp_path / "run", tiny_model_dir, "rollout.env_workers=2")))
    (pool,) = pools
    assert pool.workers == [] and "step" in pool.methods
