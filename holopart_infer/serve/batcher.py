"""Dynamic batching: requests that arrive close together are completed together.

One worker thread owns the model (a loaded model is not thread-safe; ONNX
Runtime releases the GIL, so the web event loop keeps answering meanwhile). It
waits for a first job, keeps collecting for at most ``max_wait_s`` or until
``max_batch_parts`` parts / ``max_batch_objects`` objects are gathered, and runs
them all through one :meth:`HoloPart.complete_many` call, whose packing puts
parts of different objects into the same DiT and decoder batches. The queue is
bounded: :meth:`Batcher.submit` raises :class:`QueueFull` (the app answers 503
with Retry-After). A job whose deadline passed before its batch starts is
failed with ``deadline_exceeded`` and not run.
"""
from __future__ import annotations

import collections
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("holopart_infer")

#: states a job goes through
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class _AllExpired(BaseException):
    """Raised from the progress callback to stop a batch whose every job's deadline has passed
    (a BaseException: the pipeline's per-batch error handling does not swallow it)."""


class QueueFull(Exception):
    """The bounded queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"queue full ({depth} jobs waiting)")
        self.depth = depth
        self.retry_after = retry_after


@dataclass(eq=False)
class ServeJob:
    """One object submitted to the service, from arrival to its result."""

    parts: Any  # holopart_infer.io.parts_io.Parts
    options: Any  # CompletionOptions
    deadline: float  # time.monotonic() by which the result must exist
    source: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.monotonic)
    state: str = QUEUED
    stage: str = "queued"
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    result: Any = None  # CompletionResult
    glb: bytes | None = None
    error: dict | None = None  # {"status", "kind", "message"}
    batch: dict = field(default_factory=dict)  # composition of the batch it ran in
    version: int = 0  # bumped on every change (long-polling clients wait for it)

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def finished_ok(self) -> bool:
        return self.state == DONE

    def fail(self, status: int, kind: str, message: str) -> None:
        self.error = {"status": status, "kind": kind, "message": message}
        self.state, self.stage, self.finished = FAILED, "failed", time.monotonic()
        self.version += 1

    def public(self) -> dict:
        """The JSON a client sees."""
        out = {"id": self.id, "state": self.state, "stage": self.stage, "done": self.done, "total": self.total,
               "parts": self.num_parts, "source": self.source,
               "elapsed_s": round((self.finished or time.monotonic()) - self.created, 3), "batch": self.batch}
        as_dict = getattr(self.options, "as_dict", None)
        if as_dict is not None:  # the resolved options it runs with (server defaults, then the request's)
            out["options"] = as_dict()
        if self.error:
            out["error"] = self.error
        if self.state == DONE and self.result is not None:
            out["timings"] = {k: round(v, 4) for k, v in self.result.timings.items()}
            out["faces"] = [int(len(p.faces)) for p in self.result.parts]
            # how much to trust each part (holopart_infer.postprocess.quality): status + scores, in part order
            from holopart_infer.postprocess.quality import status

            out["quality"] = [{"name": p.name, "status": status(p.quality),
                               **({} if p.quality is None else p.quality.as_extras())} for p in self.result.parts]
        return out


def encode_glb(result) -> bytes:
    """A CompletionResult as glb bytes (through the library's scene writer)."""
    with tempfile.TemporaryDirectory(prefix="holopart-serve-out-") as tmp:
        path = Path(tmp) / "completed.glb"
        result.save(path)
        return path.read_bytes()


RunBatch = Callable[[list[ServeJob], Callable[[str, int, int], None]], Iterator[tuple[ServeJob, Any]]]


def complete_many_runner(model, parts_per_batch: int | None) -> RunBatch:
    """The one place a batch meets the model: ``complete_many`` packs the parts of
    all jobs of the batch into shared DiT / decoder batches."""
    from holopart_infer.pipeline import CompletionJob

    def run(jobs: list[ServeJob], progress) -> Iterator[tuple[ServeJob, Any]]:
        work = [CompletionJob(parts=j.parts, options=j.options, key=j) for j in jobs]
        for cjob, outcome in model.complete_many(work, parts_per_batch=parts_per_batch, progress=progress):
            yield cjob.key, outcome

    return run


class Batcher:
    """The bounded queue and the one inference thread.

    Args:
        run_batch: ``run_batch(jobs, progress)`` yielding ``(job, CompletionResult |
            Exception)`` as each job finishes (:func:`complete_many_runner`).
        max_queue: jobs waiting at most (beyond: :class:`QueueFull`).
        max_wait_s: how long the first job of a batch waits for company.
        max_batch_parts: parts per dynamic batch at most (a single larger job
            still runs, alone).
        max_batch_objects: objects per dynamic batch at most (1 disables dynamic batching).
        on_batch / on_job_done: metric hooks.
    """

    def __init__(self, run_batch: RunBatch, *, max_queue: int = 16, max_wait_s: float = 0.05,
                 max_batch_parts: int = 32, max_batch_objects: int = 16,
                 on_batch: Callable[[list[ServeJob]], None] | None = None,
                 on_job_done: Callable[[ServeJob], None] | None = None):
        self.run_batch = run_batch
        self.max_queue = int(max_queue)
        self.max_wait_s = float(max_wait_s)
        self.max_batch_parts = int(max_batch_parts)
        self.max_batch_objects = int(max_batch_objects)
        self.on_batch = on_batch or (lambda jobs: None)
        self.on_job_done = on_job_done or (lambda job: None)
        self._queue: collections.deque[ServeJob] = collections.deque()
        self._running: list[ServeJob] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="holopart-inference", daemon=True)
        self._batch_seconds: collections.deque = collections.deque(maxlen=16)
        self.batches_run = 0

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        self.drop_expired()
        return self.alive and not self._stopping and len(self._queue) < self.max_queue

    def drop_expired(self) -> int:
        """Fail (504) and remove the queued jobs whose deadline has passed: nobody waits for
        them, and they must not hold a place in the queue. Returns how many."""
        now = time.monotonic()
        with self._cond:
            late = [j for j in self._queue if now > j.deadline]
            for job in late:
                self._queue.remove(job)
        for job in late:
            job.fail(504, "deadline_exceeded", "the request's deadline passed while it waited in the queue")
            self.on_job_done(job)
        return len(late)

    def submit(self, job: ServeJob) -> None:
        """Queue a job, or raise :class:`QueueFull` / RuntimeError (shutting down)."""
        self.drop_expired()
        with self._cond:
            if self._stopping or not self.alive:
                raise RuntimeError("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(len(self._queue), self.retry_after())
            self._queue.append(job)
            self._cond.notify_all()

    def retry_after(self) -> int:
        """Seconds until the queue has probably moved: a typical batch time."""
        times = sorted(self._batch_seconds)
        typical = times[len(times) // 2] if times else 5.0
        return max(1, int(round(typical)))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, finish the queued and running ones, join the thread.
        Returns whether the worker finished within ``timeout``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker
    def _collect(self) -> list[ServeJob] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            parts = batch[0].num_parts
            until = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_objects and parts < self.max_batch_parts:
                if self._queue:
                    if parts + self._queue[0].num_parts > self.max_batch_parts:
                        break
                    job = self._queue.popleft()
                    batch.append(job)
                    parts += job.num_parts
                    continue
                left = until - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            self._running = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException:  # never let the worker die: fail the batch's jobs instead
                log.exception("serve: a batch failed unexpectedly")
                for job in batch:
                    if job.state not in (DONE, FAILED):
                        job.fail(500, "internal_error", "the batch this request was in failed; see the server log")
                        self.on_job_done(job)
            finally:
                with self._cond:
                    self._running = []

    def _run(self, batch: list[ServeJob]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if now > job.deadline:
                job.fail(504, "deadline_exceeded", "the request's deadline passed while it waited in the queue")
                self.on_job_done(job)
            else:
                live.append(job)
        if not live:
            return
        comp = {"objects": len(live), "parts": sum(j.num_parts for j in live)}
        for job in live:
            job.state, job.stage, job.started, job.batch = RUNNING, "starting", now, dict(comp)
            job.version += 1
        self.on_batch(live)
        self.batches_run += 1

        def progress(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            running = [job for job in live if job.state == RUNNING]
            if running and all(now > job.deadline for job in running):
                raise _AllExpired()  # nobody waits for this batch any more: stop between stages
            for job in running:
                job.stage, job.done, job.total = stage, int(done), int(total)
                job.version += 1

        t0 = time.monotonic()
        seen = set()
        try:
            for job, outcome in self.run_batch(live, progress):
                seen.add(id(job))
                self._settle(job, outcome)
        except _AllExpired:
            log.info("serve: stopped a batch of %d job(s) whose deadlines all passed", len(live))
            for job in live:
                if id(job) not in seen and job.state == RUNNING:
                    seen.add(id(job))
                    job.fail(504, "deadline_exceeded", "the request's deadline passed while it was being "
                             "completed; its work was stopped")
                    self.on_job_done(job)
        for job in live:
            if id(job) not in seen:
                job.fail(500, "internal_error", "the batch ended without a result for this request")
                self.on_job_done(job)
        self._batch_seconds.append(time.monotonic() - t0)

    def _settle(self, job: ServeJob, outcome) -> None:
        """Record one job's outcome from the batch (result, error or a passed deadline)."""
        if isinstance(outcome, BaseException):
            status = 422 if isinstance(outcome, ValueError) else 500
            job.fail(status, "invalid_input" if status == 422 else "internal_error", str(outcome))
        elif time.monotonic() > job.deadline:
            job.fail(504, "deadline_exceeded", "the request's deadline passed while it was being completed")
        else:
            try:
                job.glb = encode_glb(outcome)
            except Exception as e:  # a writer failure fails this job only
                log.exception("serve: encoding job %s failed", job.id)
                job.fail(500, "internal_error", f"writing the result failed: {type(e).__name__}: {e}")
            else:
                job.result = outcome
                job.batch["dit_batch_sizes"] = list(outcome.stats.batch_sizes)
                job.state, job.stage, job.finished = DONE, "done", time.monotonic()
                job.version += 1
        self.on_job_done(job)


class JobStore:
    """Jobs by id; finished ones are kept ``ttl_s`` seconds (at most ``max_kept``) for
    their results to be fetched, then forgotten."""

    def __init__(self, ttl_s: float = 900.0, max_kept: int = 64):
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self._jobs: dict[str, ServeJob] = {}
        self._lock = threading.Lock()

    def add(self, job: ServeJob) -> None:
        with self._lock:
            self._prune()
            self._jobs[job.id] = job

    def get(self, job_id: str) -> ServeJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _prune(self) -> None:
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for j in finished:
            if now - j.finished > self.ttl_s:
                del self._jobs[j.id]
        finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished)
        for j in finished[:max(0, len(finished) - self.max_kept)]:
            del self._jobs[j.id]


def private_tempdir() -> str:
    """A fresh folder only this user can read (uploads are written there for the readers)."""
    path = tempfile.mkdtemp(prefix="holopart-serve-")
    os.chmod(path, 0o700)
    return path
