"""Scale-out on Ray: one model-holding actor per GPU (or per CPU slot), objects
streamed to them, results back to the one driver that writes outputs and ledger.

Needs ``pip install 'holopart-infer[ray]'``. Used by :func:`holopart_infer.batch.run_batch`
(``holopart-infer batch --ray auto|ADDRESS``); usable on its own:

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
"""
from __future__ import annotations

import collections
import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterable, Iterator

from holopart_infer.errors import EngineError, HoloPartError, InputError, missing_extra

log = logging.getLogger("holopart_infer")

#: groups of objects each actor may have queued or running
IN_FLIGHT_PER_WORKER = 2


def _ray():
    if importlib.util.find_spec("ray") is None:
        raise missing_extra("ray", "ray", "running on Ray (--ray)")
    import ray

    return ray


class _Worker:
    """The actor: holds one loaded model, completes groups of jobs."""

    def __init__(self, model_path: str, backend: str, device: str, threads: int | None,
                 hook: Callable | None):
        from holopart_infer.pipeline import load

        self.model = load(model_path, backend=backend, device=device)
        if threads and self.model.backend_name == "onnxruntime" and self.model.device == "cpu":
            # one actor per CPU slot: keep ONNX Runtime's threads to the slot's cores
            # (sessions are created on first use, so this applies to all of them)
            import onnxruntime as ort

            so = self.model.backend.session_options or ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
            self.model.backend.session_options = so
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
                res.stats["worker"] = self.name
            out.append((job.key, res))
        return out


class RayPool:
    """Actors holding the model; :meth:`run` streams jobs through them.

    Args:
        model_path: model dir or checkpoint dir, readable on every node.
        address: ``"auto"`` (``ray.init()``: the cluster in ``RAY_ADDRESS`` or
            started on this machine, else a new local one) or a Ray address.
            When Ray is already initialized in this process, it is used as is.
        backend, device: as :func:`holopart_infer.load`, on each actor
            (``device="auto"``: cuda on GPU actors, cpu otherwise).
        num_workers: number of actors (default: one per GPU of the cluster,
            else one per CPU).
        parts_per_batch: passed to :meth:`HoloPart.complete_many`.
        objects_per_task: objects sent to an actor at a time (packed together there).
        max_attempts: an object whose worker died this many times is failed.
        hook: ``hook(keys)`` called on the actor before each group (fault
            injection in tests: :class:`CrashOnce`).
    """

    def __init__(self, model_path: str | os.PathLike, *, address: str = "auto", backend: str = "auto",
                 device: str = "auto", num_workers: int | None = None, parts_per_batch: int | None = None,
                 objects_per_task: int = 4, max_attempts: int = 2, hook: Callable | None = None):
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
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, logging_level=logging.WARNING)
            ray.init(address=None if address in (None, "auto") else address, **kwargs)
            self._owns_ray = True
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
        self.actors = [self._start() for _ in range(self.num_workers)]
        self.restarts = 0
        log.info("ray: %d %s worker(s) for %s", self.num_workers, "GPU" if self.use_gpu else "CPU", self.model_path)

    def _start(self):
        dev = self.device if self.device != "auto" else ("cuda" if self.use_gpu else "cpu")
        return self._actor_cls.options(**self._options).remote(self.model_path, self.backend, dev, self._threads,
                                                               self.hook)

    def run(self, jobs: Iterable, *, close: bool = True) -> Iterator[tuple]:
        """Complete ``jobs`` (:class:`CompletionJob`, each with a unique ``key``) on the actors.

        Yields ``(job, CompletionResult | HoloPartError)`` as groups finish.
        ``close=False`` keeps the actors for another run (then call :meth:`close`).
        """
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        source = iter(jobs)
        retry: collections.deque = collections.deque()  # (jobs, attempt) to resubmit
        pending: dict = {}  # ObjectRef -> (slot, actor, jobs, attempt)

        def in_flight(slot):  # groups queued on the slot's current actor
            return sum(1 for s, a, *_ in pending.values() if s == slot and a is self.actors[slot])

        exhausted = False
        max_restarts = 3 * len(self.actors) + 2

        def next_group():
            nonlocal exhausted
            if retry:
                return retry.popleft()
            group = []
            while not exhausted and len(group) < self.objects_per_task:
                try:
                    group.append(next(source))
                except StopIteration:
                    exhausted = True
            return (group, 1) if group else None

        try:
            while True:
                for slot in range(len(self.actors)):
                    while in_flight(slot) < IN_FLIGHT_PER_WORKER:
                        task = next_group()
                        if task is None:
                            break
                        group, attempt = task
                        actor = self.actors[slot]
                        ref = actor.complete.remote(group, self.parts_per_batch)
                        pending[ref] = (slot, actor, group, attempt)
                if not pending:
                    return
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                slot, actor, group, attempt = pending.pop(ref)
                by_key = {j.key: j for j in group}
                try:
                    out = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as e:
                    if self.actors[slot] is actor:  # the first of its failed groups: replace the actor
                        self.restarts += 1
                        if self.restarts > max_restarts:
                            raise EngineError(f"Ray workers died {self.restarts} times (last: {e}); giving up. "
                                              "Check the workers' logs (out of memory? model unreadable?)") from e
                        log.warning("ray: worker %d died (%s); starting a replacement", slot, type(e).__name__)
                        ray.kill(actor, no_restart=True)
                        self.actors[slot] = self._start()
                    for job in group:
                        if attempt >= self.max_attempts:
                            yield job, EngineError(
                                f"the worker process died {attempt} times while completing {job.key!r}; it is "
                                f"skipped (last: {type(e).__name__}). The object may exhaust memory or crash the "
                                "backend: try it alone with `holopart-infer run`")
                        else:
                            retry.append(([job], attempt + 1))  # alone: a poison object only fails itself
                    continue
                except RayTaskError as e:  # the task raised (not the per-object errors: those are results)
                    cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
                    for job in group:
                        yield job, (cause if isinstance(cause, HoloPartError) else
                                    EngineError(f"Ray task for {job.key!r} failed: {type(cause).__name__}: {cause}"))
                    continue
                for key, res in out:
                    yield by_key[key], res
        finally:
            for ref in pending:  # the caller stopped early or an error ended the run
                try:
                    ray.cancel(ref)
                except Exception as e:  # already finished / actor gone
                    log.debug("ray: cancel: %s", e)
            if close:
                self.close()

    def close(self) -> None:
        """Stop the actors (and Ray, when this pool started it)."""
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # already gone
                log.debug("ray: kill: %s", e)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False


class CrashOnce:
    """Fault injection: the worker process that is handed ``key`` exits abruptly
    (``os._exit``), once across all processes: the first one to remove
    ``marker`` (a file the caller creates) crashes, later ones run normally."""

    def __init__(self, key, marker: str | os.PathLike):
        self.key = key
        self.marker = str(marker)

    def __call__(self, keys) -> None:
        if self.key in keys:
            try:
                os.unlink(self.marker)
            except FileNotFoundError:
                return
            os._exit(17)
