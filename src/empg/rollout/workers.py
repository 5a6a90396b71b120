"""Environments stepped in Ray actors (extra ``ray``), behind the same interface as in-process envs.

A :class:`RayEnvPool` starts ``n_workers`` Ray actors (:class:`EnvWorker`), each holding a slice of the pool's
envs built with :func:`empg.envs.make` (env ``i`` lives on worker ``i % n_workers``). The pool is a sequence of
:class:`RemoteEnv` proxies with ``reset``/``step``/``expert_action``/``close`` and the attributes the rollout reads
(``env_id``, ``family``, ``split``, ``max_turns``), so ``empg.rollout.collect_with_envs(policy, pool, seeds, ...)``
runs unchanged. For throughput, :meth:`RemoteEnv.submit_step` lets a lock-step loop start every env's step before it
collects the first result: submitted steps are queued per worker and sent as **one call per worker** when the first
result is needed, so the N workers step their envs at the same time. ``collect_with_envs`` does that every turn;
:meth:`RayEnvPool.step_many` and :func:`step_all` do it for callers that drive the envs themselves.

Failure handling. Workers are Ray actors with ``max_restarts=-1``: a worker process that dies is restarted by Ray
(its envs rebuilt from scratch). Every worker incarnation has a fresh token; a proxy remembers the token of the
incarnation that reset it, so a call that was in flight when the worker died, or any later ``step`` of an episode
whose state was lost, raises :class:`EnvWorkerDied` (logged). ``collect_with_envs`` turns that exception into a
trajectory with ``failed=True``, which the trainer excludes from the batch; the next ``reset`` of the same proxy
works on the restarted worker, so the run goes on. Exceptions raised by the env itself (e.g. ``EpisodeOverError``)
are re-raised as they are, as with an in-process env. A worker that **hangs** (alive, but a call does not return
within ``step_timeout`` seconds) is treated as dead: the pool kills its process, Ray restarts it, and the episodes it
held fail in the same way (``hung_calls`` counts them). A hang therefore costs its iteration ``step_timeout`` plus
one worker restart, and only the episodes of that worker.

Ray pays off only when env steps are expensive (real simulators, web servers, Java engines): a step of the embedded
envs takes microseconds, far less than one Ray round trip (see ``benchmarks/bench_workers.py``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# A restart imports torch and transformers afresh: ~10 s on an idle 2-core machine, over 60 s on a busy one.
_RESTART_GRACE = 180.0  # added to step_timeout for a reset, which may wait for a restart
_RETRY_SECONDS = _RESTART_GRACE  # how long a reset keeps retrying a worker that is still restarting


class EnvWorkerDied(RuntimeError):
    """The Ray worker holding this env died; the episode's state is lost (reset the env to go on)."""


class _WorkerRestarting(EnvWorkerDied):
    """A reset found its worker still restarting (Ray's ``ActorUnavailableError``): retried, not yet lost."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("Ray env workers need the `ray` extra: pip install 'empg[ray]'") from err
    return ray


class EnvWorker:
    """Holds ``n_envs`` envs in one process. Wrapped with ``ray.remote`` by :class:`RayEnvPool`.

    Every method that touches an env returns ``(token, result)`` where ``token`` identifies this incarnation of the
    worker (a restarted worker has a new one) and ``result`` is the value or the exception the env raised.
    """

    def __init__(self, env_id: str, split: str, n_envs: int, max_turns: int | None, env_kwargs: dict):
        from empg.envs import make

        self.token = uuid.uuid4().hex
        self.envs = [make(env_id, split, max_turns=max_turns, **env_kwargs) for _ in range(n_envs)]
        self._stall = 0.0  # seconds the next call sleeps first (set by :meth:`stall`, for hang drills)

    def describe(self) -> dict:
        env = self.envs[0]
        return {
            "env_id": getattr(env, "env_id", "env"),
            "family": getattr(env, "family", "generic"),
            "split": getattr(env, "split", "train"),
            "max_turns": getattr(env, "max_turns", None),
        }

    def pid(self) -> int:
        import os

        return os.getpid()

    def call(self, items: list[tuple[int, str, tuple, dict]]) -> tuple[str, list[Any]]:
        """Run ``env[i].method(*args, **kwargs)`` for each item; exceptions are returned, not raised."""
        if self._stall:
            seconds, self._stall = self._stall, 0.0
            time.sleep(seconds)
        out: list[Any] = []
        for i, method, args, kwargs in items:
            try:
                out.append(getattr(self.envs[i], method)(*args, **kwargs))
            except Exception as err:  # noqa: BLE001 - handed back to the proxy, which re-raises it
                out.append(err)
        return self.token, out

    def stall(self, seconds: float) -> None:
        """Make the next :meth:`call` sleep ``seconds`` before it runs, as a hung env would (chaos drills)."""
        self._stall = float(seconds)

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclass
class _Batch:
    """One call to a worker carrying the queued steps of several envs (``result`` cached once fetched)."""

    ref: Any
    result: tuple[str, list[Any]] | None = None


@dataclass
class _Pending:
    """A step submitted with :meth:`RemoteEnv.submit_step`: queued until its worker's batch is sent."""

    action: str
    batch: _Batch | None = None  # None: still queued in the pool
    pos: int = 0  # index of this env's result in the batch
    cancelled: bool = False  # dropped before it was sent (reset, or a step with another action)


class RemoteEnv:
    """Proxy of one env living in an :class:`EnvWorker`; same interface as an in-process (``TimeLimit``) env."""

    def __init__(self, pool: RayEnvPool, worker: int, local: int, meta: dict):
        self._pool, self._worker, self._local = pool, worker, local
        self.env_id = meta["env_id"]
        self.family = meta["family"]
        self.split = meta["split"]
        self.max_turns = meta["max_turns"]
        self._token: str | None = None  # incarnation that reset this env (None: not reset / state lost)
        self._pending: _Pending | None = None  # from submit_step, collected by the next step

    @property
    def worker_index(self) -> int:
        return self._worker

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        self._drop_pending()
        deadline = time.monotonic() + _RETRY_SECONDS
        while True:
            try:
                token, result = self._pool._call(
                    self._worker, [(self._local, "reset", (), {"seed": seed, **_opt(options)})], grace=True
                )
            except EnvWorkerDied as err:  # dead, hung or (not counted as lost) still restarting
                if time.monotonic() > deadline:
                    if isinstance(err, _WorkerRestarting):
                        self._pool._lost(self._worker, f"still restarting after {_RETRY_SECONDS:.0f} s")
                    raise
                time.sleep(0.5)  # reset is deterministic, so retrying is safe
                continue
            self._token = token
            return _unwrap(result[0])

    def submit_step(self, action: str) -> None:
        """Queue ``step(action)`` without waiting; the next ``step(action)`` sends the queue (one call per worker,
        with the steps other envs submitted meanwhile) and collects this env's result."""
        self._drop_pending()
        self._pending = self._pool._enqueue(self._worker, (self._local, "step", (action,), {}), action)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        pending, self._pending = self._pending, None
        try:
            if pending is not None and pending.action == action:
                token, results = self._pool._collect(self._worker, pending)
                result = results[pending.pos]
            else:  # no submitted step, or one with another action (dropped if it was not sent yet)
                if pending is not None:
                    pending.cancelled = True
                token, (result,) = self._pool._call(self._worker, [(self._local, "step", (action,), {})])
        except EnvWorkerDied:
            self._token = None  # the episode is gone; the next reset starts on the restarted worker
            raise
        return _unwrap(self._check(token, result))

    def _drop_pending(self) -> None:
        """Forget a submitted step; one still queued is never sent (one already sent ran before what follows)."""
        if self._pending is not None:
            self._pending.cancelled = True
            self._pending = None

    def expert_action(self) -> str:
        token, result = self._pool._call(self._worker, [(self._local, "expert_action", (), {})])
        return _unwrap(self._check(token, result[0]))

    def close(self) -> None:
        """Envs are closed with their pool (:meth:`RayEnvPool.close`); per-env close is a no-op."""

    def _check(self, token: str, result: Any) -> Any:
        if self._token is not None and token != self._token:
            self._token = None
            self._pool._lost(self._worker, "restarted")
            raise EnvWorkerDied(f"env worker {self._worker} was restarted; this episode's state is lost, reset it")
        return result


def _opt(options: dict | None) -> dict:
    return {} if options is None else {"options": options}


def _unwrap(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


class RayEnvPool(Sequence):
    """``n_envs`` envs of ``env_id`` spread over ``n_workers`` Ray actors; a sequence of :class:`RemoteEnv`.

    Args:
        env_id: registered env id (or ``"pkg.module:Class"`` importable by the workers).
        n_envs: number of envs (e.g. ``n_tasks * group_size``).
        n_workers: number of Ray actors (``rollout.env_workers``).
        split: env split.
        max_turns: turn limit (default: the env's registered one).
        env_kwargs: extra env constructor arguments.
        num_cpus_per_worker: Ray CPU reservation of each actor (fractions allowed, e.g. 0.25 for cheap envs).
        max_restarts: Ray restarts per worker (-1 = unlimited).
        step_timeout: seconds a call may take before its worker counts as hung, is killed and restarted (its
            episodes fail); None waits forever. Set it well above the slowest honest step of the env.

    Ray must be initialised by the caller (``ray.init(...)``); otherwise ``ray`` starts a local instance.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        *,
        n_workers: int,
        split: str = "train",
        max_turns: int | None = None,
        env_kwargs: dict | None = None,
        num_cpus_per_worker: float = 1.0,
        max_restarts: int = -1,
        step_timeout: float | None = None,
    ):
        if n_envs < 1 or n_workers < 1:
            raise ValueError(f"need n_envs >= 1 and n_workers >= 1, got n_envs={n_envs}, n_workers={n_workers}")
        if step_timeout is not None and step_timeout <= 0:
            raise ValueError(f"step_timeout must be > 0 seconds (None = wait forever), got {step_timeout}")
        self.step_timeout = step_timeout
        ray = _ray()
        n_workers = min(n_workers, n_envs)
        actor_cls = ray.remote(num_cpus=num_cpus_per_worker, max_restarts=max_restarts, max_task_retries=0)(EnvWorker)
        sizes = [len(range(w, n_envs, n_workers)) for w in range(n_workers)]
        self.workers = [
            actor_cls.remote(env_id, split, sizes[w], max_turns, dict(env_kwargs or {})) for w in range(n_workers)
        ]
        meta = ray.get(self.workers[0].describe.remote())
        self.envs = [RemoteEnv(self, i % n_workers, i // n_workers, meta) for i in range(n_envs)]
        self.lost_calls = 0  # env calls that found their worker dead, restarted or hung (each logged)
        self.hung_calls = 0  # calls that timed out (step_timeout): their worker was killed and restarted
        self._queue: dict[int, list[tuple[_Pending, tuple]]] = {}  # submitted steps not sent yet, per worker

    # ------------------------------------------------------------------ sequence of envs
    def __len__(self) -> int:
        return len(self.envs)

    def __getitem__(self, i):  # type: ignore[override]
        return self.envs[i]

    def __iter__(self) -> Iterator[RemoteEnv]:
        return iter(self.envs)

    # ------------------------------------------------------------------ batched calls
    def reset_many(self, seeds: Sequence[int | None], indices: Sequence[int] | None = None) -> list[Any]:
        """Reset envs ``indices`` (default all) with ``seeds``; returns ``(obs, info)`` or the exception per env."""
        indices = list(range(len(self.envs))) if indices is None else list(indices)
        if len(indices) != len(seeds):
            raise ValueError(f"need one seed per env index, got {len(seeds)} seeds for {len(indices)} envs")
        out: list[Any] = []
        for i, seed in zip(indices, seeds, strict=True):  # reset retries across restarts; it is cheap and rare
            try:
                out.append(self.envs[i].reset(seed=seed))
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    def step_many(self, actions: dict[int, str]) -> dict[int, Any]:
        """Step ``{env_index: action}`` concurrently (one call per worker); value = 5-tuple or the exception."""
        for i, action in actions.items():
            self.envs[i].submit_step(action)
        out: dict[int, Any] = {}
        for i, action in actions.items():
            try:
                out[i] = self.envs[i].step(action)
            except Exception as err:  # noqa: BLE001
                out[i] = err
        return out

    def expert_actions(self, indices: Sequence[int] | None = None) -> list[Any]:
        """``expert_action()`` of envs ``indices`` (default all), one call per worker."""
        indices = list(range(len(self.envs))) if indices is None else list(indices)
        by_worker: dict[int, list[int]] = {}
        for i in indices:
            by_worker.setdefault(self.envs[i].worker_index, []).append(i)
        refs = {
            w: self._submit(w, [(self.envs[i]._local, "expert_action", (), {}) for i in idx])
            for w, idx in by_worker.items()
        }
        results: dict[int, Any] = {}
        for w, idx in by_worker.items():
            try:
                token, values = self._wait(w, refs[w])
            except EnvWorkerDied as err:
                values, token = [err] * len(idx), None
            for i, value in zip(idx, values, strict=True):
                try:
                    results[i] = self.envs[i]._check(token, value) if token is not None else value
                except EnvWorkerDied as err:
                    results[i] = err
        return [results[i] for i in indices]

    # ------------------------------------------------------------------ plumbing
    def _submit(self, worker: int, items: list) -> Any:
        return self.workers[worker].call.remote(items)

    def _enqueue(self, worker: int, item: tuple, action: str) -> _Pending:
        pending = _Pending(action)
        self._queue.setdefault(worker, []).append((pending, item))
        return pending

    def _flush(self) -> None:
        """Send every worker's queued steps, one call per worker (the workers then step in parallel)."""
        queue, self._queue = self._queue, {}
        for worker, entries in queue.items():
            live = [(p, item) for p, item in entries if not p.cancelled]
            if live:
                batch = _Batch(self._submit(worker, [item for _, item in live]))
                for pos, (p, _) in enumerate(live):
                    p.batch, p.pos = batch, pos

    def _collect(self, worker: int, pending: _Pending) -> tuple[str, list[Any]]:
        """``(token, results)`` of the call that carried ``pending`` (sending the queues first if needed)."""
        if pending.batch is None:
            self._flush()
        batch = pending.batch
        assert batch is not None
        if batch.result is None:  # a dead worker raises for every env of the batch (each counts as lost)
            batch.result = self._wait(worker, batch.ref)
        return batch.result

    def _wait(self, worker: int, ref: Any, *, grace: bool = False) -> tuple[str, list[Any]]:
        """The result of call ``ref``; raises :class:`EnvWorkerDied` if the worker died or hung (then kills it).
        ``grace``: the call may have to wait for the worker to restart first (reset), so it gets longer."""
        ray = _ray()
        timeout = self.step_timeout
        if timeout is not None and grace:
            timeout += _RESTART_GRACE
        try:
            return ray.get(ref, timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            if grace and isinstance(err, ray.exceptions.ActorUnavailableError):
                raise _WorkerRestarting(f"env worker {worker} is restarting") from err
            self._lost(worker, type(err).__name__)
            raise EnvWorkerDied(f"env worker {worker} died ({type(err).__name__}); Ray restarts it") from err
        except ray.exceptions.GetTimeoutError as err:
            self.hung_calls += 1
            self._lost(worker, f"no answer within {timeout} s")
            ray.kill(self.workers[worker], no_restart=False)  # the other calls of this batch now fail at once
            raise EnvWorkerDied(
                f"env worker {worker} hung (no answer within {timeout} s): killed, Ray restarts it"
            ) from err

    def _call(self, worker: int, items: list, *, grace: bool = False) -> tuple[str, list[Any]]:
        return self._wait(worker, self._submit(worker, items), grace=grace)

    def _lost(self, worker: int, why: str) -> None:
        self.lost_calls += 1
        logger.warning(
            "env worker %d lost (%s): the episode of that env is marked failed; Ray restarts it", worker, why
        )

    def kill_worker(self, worker: int, *, wait: bool = True, timeout: float = 180.0) -> None:
        """Kill one worker process, as a crash would (Ray restarts it): for tests and chaos drills.

        With ``wait`` the call returns once the restarted process answers, so the outcome of later calls is fixed.
        A restart imports torch and transformers afresh: ~10 s on an idle 2-core machine, over 60 s when four busy
        processes share it (seen in this project's test runs), hence the generous default ``timeout``.
        """
        ray = _ray()
        actor = self.workers[worker]
        old_pid = ray.get(actor.pid.remote())
        ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + timeout
        while wait:
            try:
                if ray.get(actor.pid.remote(), timeout=5) != old_pid:
                    return
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"env worker {worker} did not come back within {timeout} s")
            time.sleep(0.1)

    def stall_worker(self, worker: int, seconds: float) -> None:
        """Make one worker's next call hang for ``seconds`` (as a stuck env would): for tests and chaos drills."""
        _ray().get(self.workers[worker].stall.remote(seconds))

    def close(self) -> None:
        """Close the envs and stop the workers (idempotent)."""
        ray = _ray()
        for actor in getattr(self, "workers", []):
            try:
                ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
                pass
            ray.kill(actor, no_restart=True)
        self.workers = []

    def __enter__(self) -> RayEnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def step_all(envs: Sequence[Any], actions: Sequence[str]) -> list[Any]:
    """Step ``envs[i]`` with ``actions[i]`` for all i: concurrently for :class:`RemoteEnv`, in order otherwise.

    Returns the 5-tuple or the raised exception per env (never raises), so a lock-step loop can treat a dead worker
    like any failed env.
    """
    for env, action in zip(envs, actions, strict=True):
        if isinstance(env, RemoteEnv):
            env.submit_step(action)
    out: list[Any] = []
    for env, action in zip(envs, actions, strict=True):
        try:
            out.append(env.step(action))
        except Exception as err:  # noqa: BLE001
            out.append(err)
    return out


def make_envs(
    env_id: str,
    n_envs: int,
    *,
    env_workers: int = 0,
    split: str = "train",
    max_turns: int | None = None,
    env_kwargs: dict | None = None,
    **pool_kwargs: Any,
) -> list[Any] | RayEnvPool:
    """``n_envs`` envs: in-process (``env_workers == 0``) or a :class:`RayEnvPool` with ``env_workers`` actors.

    Both results can be passed to ``collect_with_envs``. The trainer's ``rollout.env_workers: N`` builds the same pool
    (:func:`empg.train.backends.make_env_pool`, one CPU per actor at most).
    """
    if env_workers < 0:
        raise ValueError(f"rollout.env_workers must be >= 0 (0 = in-process envs), got {env_workers}")
    if env_workers == 0:
        from empg.envs import make

        return [make(env_id, split, max_turns=max_turns, **(env_kwargs or {})) for _ in range(n_envs)]
    return RayEnvPool(
        env_id,
        n_envs,
        n_workers=env_workers,
        split=split,
        max_turns=max_turns,
        env_kwargs=env_kwargs,
        **pool_kwargs,
    )
