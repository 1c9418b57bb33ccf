"""Scale-out on Ray: one model-holding actor per GPU (or per CPU slot), objects
streamed to them, results back to the one driver that writes outputs and ledger.

Needs ``pip install 'holopart-infer[ray]'``. Used by :func:`holopart_infer.scale.batch.run_batch`
through :class:`RayExecutor` (``holopart-infer batch --ray auto|ADDRESS``); usable on its own:

    pool = RayPool("model_dir", address="auto")
    for job, result in pool.run(jobs):      # CompletionJob in, (job, result | error) out
        ...

Each actor runs :meth:`HoloPart.complete_many` on small groups of objects (so
parts of several objects still share batches on the actor). The driver keeps at
most two groups in flight per actor and reads jobs lazily. When an actor's
process dies (killed, out of memory, a crash in native code), the driver starts
a replacement and resubmits the unfinished objects of that actor one per task,
so an object that kills its worker again only fails itself; after
``max_attempts`` deaths it is reported as failed. Objects are sent as loaded
parts, not paths, so the workers need no shared file system.

Every wait is bounded: the driver waits for results in ticks of
``health_check_s`` and, between ticks and before starting a replacement actor,
checks that the cluster still has a live node able to host one. When it has
none (the node died: its raylet was killed, or out of memory took it down),
a cluster this pool started itself is restarted (up to ``max_cluster_restarts``
times) and the unfinished objects are redone there; on a cluster the pool only
joined, the unfinished and remaining objects fail with an error saying so (the
batch then exits 3, keeping what finished). Each object is yielded once.
"""
from __future__ import annotations

import collections
import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterable, Iterator

from holopart_infer.scale.batch import Executor
from holopart_infer.errors import EngineError, HoloPartError, InputError, missing_extra

log = logging.getLogger("holopart_infer")

#: groups of objects each actor may have queued or running
IN_FLIGHT_PER_WORKER = 2


class ClusterLost(EngineError):
    """The Ray cluster has no live node that can host a worker."""


def _ray():
    if importlib.util.find_spec("ray") is None:
        raise missing_extra("ray", "ray", "running on Ray (--ray)")
    import ray

    return ray


class _Worker:
    """The actor: holds one loaded model, completes groups of jobs."""

    def __init__(self, model_path: str, backend: str, device: str, threads: int | None,
                 hook: Callable | None):
        from holopart_infer.engines.registry import model_kind, resolve
        from holopart_infer.pipeline import load

        options = {}
        if threads:
            # one actor per CPU slot: keep the backend's threads to the slot's cores, where the
            # backend has that option (the registry table says which: ONNX Runtime)
            spec, dev = resolve(model_kind(model_path), backend, device)
            if dev == "cpu" and "threads" in spec.options:
                backend, device, options["threads"] = spec.name, dev, int(threads)
        self.model = load(model_path, backend=backend, device=device, **options)
        self.hook = hook
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> str:
        return f"{self.name} {self.model.backend_name}/{self.model.device}"

    def complete(self, jobs: list, parts_per_batch: int | None) -> list:
        from holopart_infer.pipeline import CompletionResult

        if self.hook is not None:
            self.hook([j.key for j in jobs])
        out = []
        for job, res in self.model.complete_many(jobs, parts_per_batch=parts_per_batch):
            if isinstance(res, CompletionResult):
                res.stats.worker = self.name
            out.append((job.key, res))
        return out


class _RunState:
    """The bookkeeping of one :meth:`RayPool.run`."""

    def __init__(self, source: Iterator, *, max_restarts: int):
        self.source = source
        self.retry: collections.deque = collections.deque()  # (jobs, attempt) to resubmit
        self.pending: dict = {}  # ObjectRef -> (slot, actor, jobs, attempt)
        self.answered: set = set()  # keys already yielded
        self.exhausted = False
        self.max_restarts = max_restarts


class RayPool:
    """Actors holding the model; :meth:`run` streams jobs through them.

    Args:
        model_path: model dir or checkpoint dir, readable on every node.
        address: ``"auto"`` (the cluster in ``RAY_ADDRESS`` or started on this
            machine, else a new local one), ``"local"`` (always a new local
            one) or a Ray address. When Ray is already initialized in this
            process, it is used as is (and not restarted: it is not the pool's).
        backend, device: as :func:`holopart_infer.load`, on each actor
            (``device="auto"``: cuda on GPU actors, cpu otherwise).
        num_workers: number of actors (default: one per GPU of the cluster,
            else one per CPU).
        parts_per_batch: passed to :meth:`HoloPart.complete_many`.
        objects_per_task: objects sent to an actor at a time (packed together there).
        max_attempts: an object whose worker died this many times is failed.
        hook: ``hook(keys)`` called on the actor before each group (picklable;
            the tests inject faults with it: tests/support.py's ``CrashOnce``, ``StallOnce``).
        health_check_s: longest single wait for results before the cluster's
            nodes are checked again.
        max_cluster_restarts: how often a local cluster this pool started is
            restarted after its node died, before the rest fails.
    """

    def __init__(self, model_path: str | os.PathLike, *, address: str = "auto", backend: str = "auto",
                 device: str = "auto", num_workers: int | None = None, parts_per_batch: int | None = None,
                 objects_per_task: int = 4, max_attempts: int = 2, hook: Callable | None = None,
                 health_check_s: float = 5.0, max_cluster_restarts: int = 2):
        ray = _ray()
        if num_workers is not None and int(num_workers) < 1:
            raise InputError(f"ray workers must be >= 1, got {num_workers!r}")
        if int(objects_per_task) < 1:
            raise InputError(f"objects_per_task must be >= 1, got {objects_per_task!r}")
        self.model_path = str(Path(model_path).resolve())
        self.backend, self.device = backend, device
        self.parts_per_batch = parts_per_batch
        self.objects_per_task = int(objects_per_task)
        self.max_attempts = int(max_attempts)
        self.hook = hook
        self.health_check_s = float(health_check_s)
        self.max_cluster_restarts = int(max_cluster_restarts)
        self.cluster_restarts = 0
        self.address = address
        self._owns_ray = False  # we called ray.init (and may shut it down)
        self._owns_cluster = False  # ... and it started a cluster of its own (which we may restart)
        if not ray.is_initialized():
            self._connect(ray, address)
        self.restarts = 0
        self._setup(ray, num_workers)

    _INIT = dict(include_dashboard=False, logging_level=logging.WARNING)

    def _connect(self, ray, address) -> None:
        """``auto``: the cluster in RAY_ADDRESS or one started on this machine, else a new local one
        (ours); ``local``: always a new local one (ours); else that address."""
        if address == "local":
            ray.init(address="local", **self._INIT)
            self._owns_cluster = True
        elif address in (None, "auto"):
            try:
                ray.init(address="auto", **self._INIT)
            except ConnectionError:  # no cluster to join: start our own
                ray.init(address="local", **self._INIT)
                self._owns_cluster = True
        else:
            ray.init(address=address, **self._INIT)
        self._owns_ray = True

    def _setup(self, ray, num_workers) -> None:
        device = self.device
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        if device == "cpu":
            gpus = 0
        if device == "cuda" and not gpus:
            raise InputError("device 'cuda' was asked for but the Ray cluster has no GPU")
        self.use_gpu = gpus > 0
        self.num_workers = int(num_workers or (gpus if self.use_gpu else max(1, cpus)))
        per = 1 if self.use_gpu else max(1, cpus // self.num_workers)
        self._options = dict(num_gpus=1, num_cpus=1) if self.use_gpu else dict(num_cpus=per)
        self._threads = None if self.use_gpu else per
        self._actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)
        self._num_workers_arg = num_workers
        self.actors = [self._start() for _ in range(self.num_workers)]
        log.info("ray: %d %s worker(s) for %s", self.num_workers, "GPU" if self.use_gpu else "CPU", self.model_path)

    def _start(self):
        dev = self.device if self.device != "auto" else ("cuda" if self.use_gpu else "cpu")
        return self._actor_cls.options(**self._options).remote(self.model_path, self.backend, dev, self._threads,
                                                               self.hook)

    def _can_host(self, ray) -> bool:
        """Whether a live node of the cluster has the resources of one worker (False when the
        cluster cannot even be asked)."""
        need = ("GPU", 1) if self.use_gpu else ("CPU", self._options.get("num_cpus", 1))
        try:
            nodes = ray.nodes()
        except Exception as e:  # the cluster's control plane is gone too
            log.warning("ray: cannot list the cluster's nodes: %s", e)
            return False
        return any(n.get("Alive") and n.get("Resources", {}).get(need[0], 0) >= need[1] for n in nodes)

    def _restart_cluster(self, ray) -> None:
        """Shut our own local cluster down and start a fresh one with new actors."""
        self.cluster_restarts += 1
        try:
            ray.shutdown()
        except Exception as e:  # its processes may already be gone
            log.debug("ray: shutdown of the lost cluster: %s", e)
        ray.init(address="local", **self._INIT)
        self._setup(ray, self._num_workers_arg)

    def run(self, jobs: Iterable, *, close: bool = True) -> Iterator[tuple]:
        """Complete ``jobs`` (:class:`CompletionJob`, each with a unique ``key``) on the actors.

        Yields ``(job, CompletionResult | HoloPartError)`` as groups finish, each job once.
        ``close=False`` keeps the actors for another run (then call :meth:`close`).
        """
        ray = _ray()
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

        st = _RunState(iter(jobs), max_restarts=3 * len(self.actors) + 2)
        pending, answered = st.pending, st.answered
        self._lost = False
        try:
            while True:
                self._dispatch(st)
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.health_check_s)
                if not ready:  # a bounded wait: nothing finished in this tick; is there still a cluster?
                    if not self._can_host(ray):
                        yield from self._cluster_lost(ray, st, "no live node left")
                        if self._lost:
                            return
                    continue
                ref = ready[0]
                slot, actor, group, attempt = pending.pop(ref)
                by_key = {j.key: j for j in group}
                try:
                    out = ray.get(ref, timeout=self.health_check_s * 12)
                except GetTimeoutError:  # ready but not fetched in time: wait for it again
                    pending[ref] = (slot, actor, group, attempt)
                    continue
                except (RayActorError, WorkerCrashedError) as e:
                    if not self._can_host(ray):  # not this worker: the node is gone
                        pending[ref] = (slot, actor, group, attempt)
                        yield from self._cluster_lost(ray, st, type(e).__name__)
                        if self._lost:
                            return
                        continue
                    yield from self._worker_died(ray, st, e, slot, actor, group, attempt)
                    continue
                except RayTaskError as e:  # the task raised (not the per-object errors: those are results)
                    yield from self._task_failed(st, e, group)
                    continue
                for key, res in out:
                    if key not in answered:
                        answered.add(key)
                        yield by_key[key], res
        finally:
            if not self._lost:
                self._cancel_pending(ray, st)
            if close:
                self.close()

    def _in_flight(self, st: "_RunState", slot: int) -> int:
        """Groups queued on the slot's current actor."""
        return sum(1 for s, a, *_ in st.pending.values() if s == slot and a is self.actors[slot])

    def _next_group(self, st: "_RunState"):
        """``(jobs, attempt)``: the next group to submit (a retry first), or None when none is left."""
        if st.retry:
            return st.retry.popleft()
        group = []
        while not st.exhausted and len(group) < self.objects_per_task:
            try:
                group.append(next(st.source))
            except StopIteration:
                st.exhausted = True
        return (group, 1) if group else None

    def _dispatch(self, st: "_RunState") -> None:
        """Fills every actor up to IN_FLIGHT_PER_WORKER groups, round-robin: every actor gets work first."""
        for depth in range(IN_FLIGHT_PER_WORKER):
            for slot in range(len(self.actors)):
                if self._in_flight(st, slot) > depth:
                    continue
                task = self._next_group(st)
                if task is None:
                    break
                group, attempt = task
                actor = self.actors[slot]
                ref = actor.complete.remote(group, self.parts_per_batch)
                st.pending[ref] = (slot, actor, group, attempt)

    def _unfinished(self, st: "_RunState") -> list:
        """Every job handed out and not answered (pending and queued for a retry), in order."""
        out = [j for _, _, group, _ in st.pending.values() for j in group]
        out += [j for group, _ in st.retry for j in group]
        seen, jobs_left = set(), []
        for j in out:
            if j.key not in st.answered and j.key not in seen:
                seen.add(j.key)
                jobs_left.append(j)
        return jobs_left

    def _cluster_lost(self, ray, st: "_RunState", reason: str):
        """No live node can host a worker: restart our own cluster, or fail what is left."""
        left = self._unfinished(st)
        st.pending.clear()
        st.retry.clear()
        if self._owns_cluster and self.cluster_restarts < self.max_cluster_restarts:
            log.warning("ray: the Ray node is lost (%s); restarting the local cluster (restart %d of %d) and "
                        "redoing %d unfinished object(s)", reason, self.cluster_restarts + 1,
                        self.max_cluster_restarts, len(left))
            self._restart_cluster(ray)
            for i in range(0, len(left), self.objects_per_task):  # not the objects' fault: attempts kept
                st.retry.append((left[i:i + self.objects_per_task], 1))
            return
        if self._owns_cluster:
            why = (f"the local Ray cluster this run started was lost again after {self.cluster_restarts} "
                   "restart(s)")
        else:
            why = (f"the Ray cluster at {self.address!r} has no live node that can run a worker any more "
                   "(a node died: killed, or out of memory)")
        rest = list(st.source)
        st.exhausted = True
        log.error("ray: %s (%s); %d object(s) not done", why, reason, len(left) + len(rest))
        self._lost = True
        for job in left + rest:
            st.answered.add(job.key)
            yield job, ClusterLost(f"{why}; {job.key!r} was not completed. Objects finished before are kept; "
                                   "run again when the cluster is back (finished objects are skipped)")

    def _worker_died(self, ray, st: "_RunState", e: Exception, slot: int, actor, group: list, attempt: int):
        """A group's actor died: replace the actor (once per death), resubmit the group's
        unanswered jobs one per task, or fail those that reached ``max_attempts``."""
        if self.actors[slot] is actor:  # the first of its failed groups: replace the actor
            self.restarts += 1
            if self.restarts > st.max_restarts:
                raise EngineError(f"Ray workers died {self.restarts} times (last: {e}); giving up. "
                                  "Check the workers' logs (out of memory? model unreadable?)") from e
            log.warning("ray: worker %d died (%s); starting a replacement", slot, type(e).__name__)
            ray.kill(actor, no_restart=True)
            self.actors[slot] = self._start()
        for job in group:
            if job.key in st.answered:
                continue
            if attempt >= self.max_attempts:
                st.answered.add(job.key)
                yield job, EngineError(
                    f"the worker process died {attempt} times while completing {job.key!r}; it is "
                    f"skipped (last: {type(e).__name__}). The object may exhaust memory or crash the "
                    "backend: try it alone with `holopart-infer run`")
            else:
                st.retry.append(([job], attempt + 1))  # alone: a poison object only fails itself

    def _task_failed(self, st: "_RunState", e: Exception, group: list):
        """The group's task raised (not the per-object errors: those are results): each
        unanswered job of the group fails with its cause."""
        cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
        for job in group:
            if job.key not in st.answered:
                st.answered.add(job.key)
                yield job, (cause if isinstance(cause, HoloPartError) else
                            EngineError(f"Ray task for {job.key!r} failed: {type(cause).__name__}: {cause}"))

    def _cancel_pending(self, ray, st: "_RunState") -> None:
        """Cancels the tasks still pending (the caller stopped early or an error ended the run)."""
        for ref in st.pending:
            try:
                ray.cancel(ref)
            except Exception as e:  # already finished / actor gone
                log.debug("ray: cancel: %s", e)

    def close(self) -> None:
        """Stop the actors (and Ray, when this pool started it)."""
        ray = _ray()
        for actor in self.actors if not getattr(self, "_lost", False) else []:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # already gone
                log.debug("ray: kill: %s", e)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False


class RayExecutor(Executor):
    """:func:`holopart_infer.scale.batch.run_batch` on Ray actors (a :class:`RayPool`, started on the
    first :meth:`run`: a run with nothing left to do needs no cluster).

    The driver reads each object's parts and sends them (``loads_parts``), so the actors need
    no shared file system; the model dir must be readable on every node.

    Args:
        address: ``"auto"``, ``"local"`` or a Ray address (:class:`RayPool`).
        workers: number of actors (default: one per GPU, else one per CPU).
        backend, device: on each actor (:func:`holopart_infer.load`); taken from the model
            when :func:`run_batch` is given a loaded one.
        parts_per_batch: parts per DiT / decoder batch on the actors, packed across objects.
        hook: ``hook(keys)`` on the actor before each group (fault injection in tests).
        pool_options: further :class:`RayPool` arguments (``health_check_s``, ``max_attempts``, ...).
    """

    loads_parts = True

    def __init__(self, address: str = "auto", *, workers: int | None = None, backend: str = "auto",
                 device: str = "auto", parts_per_batch: int | None = None, hook: Callable | None = None,
                 **pool_options):
        self.address, self.workers = address, workers
        self.backend, self.device = backend, device
        self.parts_per_batch, self.hook = parts_per_batch, hook
        self.pool_options = pool_options
        self.model_path: Path | None = None
        self.pool: RayPool | None = None

    def prepare(self, model):
        """The model's path and defaults (read from its files: the driver loads no graphs)."""
        from holopart_infer.pipeline import HoloPart, model_defaults

        if isinstance(model, HoloPart):
            self.model_path, self.backend, self.device = Path(model.path), model.backend_name, model.device
        else:
            self.model_path = Path(model)
        return self.model_path, model_defaults(self.model_path)

    def run(self, jobs: Iterable) -> Iterator[tuple]:
        if self.pool is None:
            self.pool = RayPool(self.model_path, address=self.address, backend=self.backend, device=self.device,
                                num_workers=self.workers, parts_per_batch=self.parts_per_batch, hook=self.hook,
                                **self.pool_options)
        return self.pool.run(jobs)

    @property
    def restarts(self) -> int:
        return self.pool.restarts if self.pool is not None else 0

    @property
    def cluster_restarts(self) -> int:
        return self.pool.cluster_restarts if self.pool is not None else 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()  # again after run() closed it: nothing left to stop


