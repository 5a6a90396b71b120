"""Ray env workers on a local Ray (2 CPUs): same results as in-process envs, and a killed worker is survived."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from empg.envs import EpisodeOverError, make, split_seeds

ray = pytest.importorskip("ray", reason="needs the [ray] extra")

from empg.rollout.workers import RayEnvPool, make_envs, step_all  # noqa: E402

ENV_ID = "household-v0"
MAX_TURNS = 12


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def expert_transcripts(envs, seeds):
    """Drive every env with its expert until the episode ends; one list of (obs, reward, term, trunc, info) each."""
    out = []
    for env, seed in zip(envs, seeds, strict=True):
        obs, info = env.reset(seed=seed)
        rows = [(obs, info)]
        done = False
        while not done:
            obs, reward, term, trunc, info = env.step(env.expert_action())
            rows.append((obs, reward, term, trunc, info))
            done = term or trunc
        out.append(rows)
    return out


@pytest.fixture(scope="module")
def pool(local_ray):
    with RayEnvPool(ENV_ID, 4, n_workers=2, max_turns=MAX_TURNS, num_cpus_per_worker=0.5) as pool:
        yield pool


@pytest.fixture(scope="module")
def local_transcripts():
    seeds = split_seeds("train", 4)
    return seeds, expert_transcripts([make(ENV_ID, max_turns=MAX_TURNS) for _ in seeds], seeds)


def test_remote_envs_equal_in_process(pool, local_transcripts):
    seeds, local = local_transcripts
    assert pool[0].family == "household" and pool[0].max_turns == MAX_TURNS and pool[0].split == "train"
    assert [env.worker_index for env in pool] == [0, 1, 0, 1]
    assert expert_transcripts(list(pool), seeds) == local
    assert len(local[0]) > 2  # the expert takes several steps, so states really live in the workers

    # the batched, concurrent path gives the same transcripts
    assert pool.reset_many(seeds) == [t[0] for t in local]
    live, turn = set(range(len(seeds))), 1
    while live:
        actions = dict(zip(sorted(live), pool.expert_actions(sorted(live)), strict=True))
        for i, result in pool.step_many(actions).items():
            assert result == local[i][turn]
            if result[2] or result[3]:
                live.discard(i)
        turn += 1


@dataclass
class _Gen:
    response_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    entropies: list[float] | None = None


class _CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class _LookPolicy:
    """Always answers ``<action>look</action>``; tokens are characters."""

    tokenizer = _CharTokenizer()

    def chat_prompt_ids(self, messages):
        return [ord(c) for c in messages[-1]["content"][:8]]

    def generate(self, prompt_ids, **kwargs):
        text = "<think>x</think><action>look</action>"
        return [_Gen([ord(c) for c in text], text, [0.0] * len(text), [1.0] * len(text)) for _ in prompt_ids]


def test_collect_over_the_pool_equals_in_process_with_one_call_per_worker_per_turn(
    pool, local_transcripts, monkeypatch
):
    from empg.rollout import collect_with_envs

    seeds, _ = local_transcripts
    env_seeds = [seeds[0], seeds[0], seeds[1], seeds[1]]
    local = collect_with_envs(
        _LookPolicy(), [make(ENV_ID, max_turns=MAX_TURNS) for _ in env_seeds], env_seeds, max_turns=3
    )
    calls = []
    submit = pool._submit
    monkeypatch.setattr(pool, "_submit", lambda w, items: calls.append((w, [i[1] for i in items])) or submit(w, items))
    remote = collect_with_envs(_LookPolicy(), pool, env_seeds, max_turns=3)
    assert remote.steps == local.steps and remote.trajectories == local.trajectories
    # 4 resets (one call each), then per turn one call per worker carrying both of its envs' steps
    step_calls = [c for c in calls if c[1][0] == "step"]
    assert len(calls) == 4 + len(step_calls) and len(step_calls) == 3 * 2
    assert all(methods == ["step", "step"] for _, methods in step_calls)
    assert sorted(w for w, _ in step_calls) == [0, 0, 0, 1, 1, 1]


def test_a_submitted_step_that_is_not_collected_is_never_sent(pool, local_transcripts):
    seeds, local = local_transcripts
    env = pool[0]
    env.reset(seed=seeds[0])
    env.submit_step("go to fridge 1")
    assert env.reset(seed=seeds[0]) == local[0][0]  # reset dropped the queued step
    env.submit_step("go to fridge 1")
    first = env.expert_action()
    assert env.step(first) == local[0][1]  # another action: the queued one is dropped, this one runs
    pool._flush()  # nothing queued is left to send
    assert pool._queue == {}


def test_killed_worker_is_survived(pool, local_transcripts):
    from empg.rollout import collect_with_envs

    seeds, local = local_transcripts
    env_seeds = [seeds[0], seeds[0], seeds[1], seeds[1]]  # 2 groups x 2 copies
    pid = ray.get(pool.workers[1].pid.remote())
    lost_before = pool.lost_calls

    def kill_at_turn_one(turn, n_live):
        if turn == 1:
            pool.kill_worker(1)

    res = collect_with_envs(_LookPolicy(), pool, env_seeds, max_turns=3, progress=kill_at_turn_one)
    # envs 1 and 3 lived on worker 1: their episodes are marked failed after 1 step; envs 0 and 2 finish
    assert [t.failed for t in res.trajectories] == [False, True, False, True]
    assert [t.length for t in res.trajectories] == [3, 1, 3, 1]
    assert pool.lost_calls == lost_before + 2
    assert ray.get(pool.workers[1].pid.remote()) != pid  # restarted in a new process
    # a lost episode is over, as after any end: stepping it fails cleanly until the env is reset
    lost, alive = step_all([pool[1], pool[0]], ["look", "look"])  # env 0 is only capped by collect (3 < 12 turns)
    assert isinstance(lost, EpisodeOverError) and alive[0].startswith("You are in the middle of a room")
    # the run goes on: every env plays full episodes again, equal to in-process stepping
    assert expert_transcripts(list(pool), seeds) == local
    res2 = collect_with_envs(_LookPolicy(), pool, env_seeds, max_turns=3)
    assert [t.failed for t in res2.trajectories] == [False] * 4 and [t.length for t in res2.trajectories] == [3] * 4


def _pid_once_up(actor, timeout=180.0):
    """The actor's process id, waiting while Ray restarts it (slow on a busy machine)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(actor.pid.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_hung_worker_is_killed_after_the_step_timeout_and_survived(local_ray, local_transcripts):
    """A worker that stops answering (alive, stuck in a step) is treated as dead after ``step_timeout``: killed,
    restarted by Ray, its episodes marked failed; the other worker's episodes finish and the run goes on."""
    import time

    from empg.rollout import collect_with_envs

    seeds, local = local_transcripts
    env_seeds = [seeds[0], seeds[0], seeds[1], seeds[1]]
    timeout = 2.0
    with RayEnvPool(ENV_ID, 4, n_workers=2, max_turns=MAX_TURNS, num_cpus_per_worker=0.5, step_timeout=timeout) as p:
        pid = ray.get(p.workers[1].pid.remote())

        def hang_at_turn_one(turn, n_live):
            if turn == 1:
                p.stall_worker(1, 600.0)  # its next call sleeps far past the timeout, like a stuck simulator

        start = time.monotonic()
        res = collect_with_envs(_LookPolicy(), p, env_seeds, max_turns=3, progress=hang_at_turn_one)
        took = time.monotonic() - start
        assert [t.failed for t in res.trajectories] == [False, True, False, True]
        assert [t.length for t in res.trajectories] == [3, 1, 3, 1]
        assert p.hung_calls == 1 and p.lost_calls == 2  # one call timed out; both envs of the batch were lost
        assert timeout <= took < 60.0  # waited out the timeout once, not the 600 s stall
        # the hung process was killed and replaced; every env plays full episodes again, as in-process
        assert _pid_once_up(p.workers[1]) != pid
        assert expert_transcripts(list(p), seeds) == local
        res2 = collect_with_envs(_LookPolicy(), p, env_seeds, max_turns=3)
        assert [t.failed for t in res2.trajectories] == [False] * 4 and p.hung_calls == 1


def test_make_envs_in_process_and_bad_input(local_ray):
    envs = make_envs(ENV_ID, 3, env_workers=0, max_turns=5)
    assert len(envs) == 3 and envs[0].max_turns == 5
    with pytest.raises(ValueError, match="env_workers must be >= 0"):
        make_envs(ENV_ID, 3, env_workers=-1)
    with pytest.raises(ValueError, match="n_envs >= 1"):
        RayEnvPool(ENV_ID, 0, n_workers=1)
    with pytest.raises(ValueError, match="step_timeout must be > 0"):
        RayEnvPool(ENV_ID, 2, n_workers=1, step_timeout=0)
