"""The HTTP service: a Starlette (ASGI) app over the dynamic :class:`Batcher`.

Routes (``/healthz``, ``/readyz``, ``/`` and ``/static/*`` are open; the rest
need ``Authorization: Bearer TOKEN`` when the service has a token):

=========================================  =================================================
``POST /v1/complete``                      upload -> completed glb (waits for the result)
``POST /v1/jobs``                          upload -> 202 + job id (poll it)
``GET /v1/jobs/{id}[?wait=S]``             state / stage / progress (long-poll up to S s)
``GET /v1/jobs/{id}/result.glb``           the completed glb
``GET /v1/jobs/{id}/preview.png``          a preview image of the result
``GET /v1/jobs/{id}/meshes.json?which=``   input or output parts for the page's viewer
``GET /v1/demo-objects``                   the embedded objects (``?demo=NAME`` uploads one)
``GET /metrics``                           Prometheus text format
=========================================  =================================================

An upload is a raw ``.glb`` body, or multipart/form-data with ``file`` (a
``.glb``/``.gltf`` scene, or one mesh with ``labels``), ``labels`` (``.npy``
per-face integers) and ``options`` (JSON). Options also come as query
parameters: ``seed steps guidance depth decimate min_component close_at_bounds guard``,
plus ``deadline`` (seconds) and, on ``/v1/complete``, ``preview=1``. ``up``
(query parameter or a key of ``options``: ``+x -x +y -y +z -z``, ``z`` for
``+z``) overrides glTF's +Y up for a file authored otherwise; results are
returned in the upload's own frame.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from holopart_infer.errors import InputError
from holopart_infer.io.gltf_json import GLB_MAGIC
from holopart_infer.serve.batcher import (DONE, FAILED, Batcher, JobStore, QueueFull, ServeJob, complete_many_runner,
                                          private_tempdir)
from holopart_infer.serve.limits import (ByteBudget, Hold, Limits, RequestRefused, check_counts, check_gltf,
                                         load_labels, write_geometry_only)
from holopart_infer.serve.metrics import Metrics

log = logging.getLogger("holopart_infer")

STATIC_DIR = Path(__file__).with_name("static")

#: options a request may set, with their parsers (the rest are the server's)
REQUEST_OPTIONS = {
    "seed": int, "steps": int, "guidance": float, "depth": int, "min_component": float,
    "decimate": lambda s: None if str(s).lower() in ("none", "null", "0") else int(s),
    "close_at_bounds": lambda s: s if isinstance(s, bool) else str(s).lower() in ("1", "true", "yes"),
    # guard=0 keeps implausible parts as the model made them (holopart_infer.postprocess.quality)
    "guard": lambda s: s if isinstance(s, bool) else str(s).lower() in ("1", "true", "yes"),
}
_DRAIN_AFTER_LIMIT_S = 2.0  # read and drop the rest of a too-large body this long, so the 413 reaches the client
_CLOSE = {"Connection": "close"}  # after a refusal mid-body: do not wait for the rest of it


def error_body(kind: str, message: str, **details) -> dict:
    """The one shape of every error answer: ``{"error": {"kind", "message", ...details}}``."""
    return {"error": {"kind": kind, "message": message, **details}}


class Service:
    """Everything one server process holds: model, batcher, jobs, limits, metrics.

    Args:
        model: a loaded :class:`holopart_infer.HoloPart`.
        defaults: the server's :class:`CompletionOptions` (requests override
            :data:`REQUEST_OPTIONS` within ``limits``).
        limits: :class:`Limits`.
        token: bearer token required on the API (None: no token).
        max_queue / max_wait_s / max_batch_parts / max_batch_objects: batching
            (``max_batch_objects=1`` turns dynamic batching off).
        parts_per_batch: parts per DiT / decoder batch (default: ``defaults``').
    """

    def __init__(self, model, defaults, limits: Limits | None = None, token: str | None = None, *,
                 max_queue: int = 16, max_wait_s: float = 0.05, max_batch_parts: int = 32,
                 max_batch_objects: int = 16, parts_per_batch: int | None = None, drain_timeout_s: float = 600.0):
        self.model = model
        self.defaults = defaults
        self.limits = limits or Limits()
        self.token = token or None
        self.drain_timeout_s = drain_timeout_s
        self.store = JobStore()
        self.batcher = Batcher(complete_many_runner(model, parts_per_batch or defaults.parts_per_batch),
                               max_queue=max_queue, max_wait_s=max_wait_s, max_batch_parts=max_batch_parts,
                               max_batch_objects=max_batch_objects, on_batch=self._on_batch,
                               on_job_done=self._on_job_done)
        self.metrics = Metrics(lambda: self.batcher.depth, lambda: self.batcher.inflight)
        self.draining = False
        self.budget = ByteBudget(self.limits.max_inflight_bytes)

    # ------------------------------------------------------------------ hooks from the worker
    def _on_batch(self, jobs: list[ServeJob]) -> None:
        m = self.metrics
        m.batches.inc()
        m.batch_objects.observe(len(jobs))
        m.batch_parts.observe(sum(j.num_parts for j in jobs))
        now = time.monotonic()
        for j in jobs:
            m.queue_wait.observe(now - j.created)

    def _on_job_done(self, job: ServeJob) -> None:
        hold = getattr(job, "hold", None)
        if hold is not None:  # its upload no longer counts against the in-flight budget
            hold.release()
        if job.state == DONE:
            self.metrics.job_done(job.finished - job.created, job.num_parts)
            if any(size > job.num_parts for size in job.batch.get("dit_batch_sizes", [])):
                self.metrics.shared.inc()
        elif job.state == FAILED:
            self.metrics.errors.labels(job.error["kind"]).inc()

    # ------------------------------------------------------------------ ASGI app
    def asgi(self):
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            log.info("serve: ready (%s on %s)", self.model.backend_name, self.model.device)
            try:
                yield
            finally:
                # uvicorn has stopped accepting and waited for in-flight requests
                self.draining = True
                await self._drain()

        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/v1/demo-objects", self.demo_objects, methods=["GET"]),
            Route("/v1/complete", self.complete, methods=["POST"]),
            Route("/v1/jobs", self.submit, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self.job_status, methods=["GET"]),
            Route("/v1/jobs/{job_id}/result.glb", self.job_result, methods=["GET"]),
            Route("/v1/jobs/{job_id}/preview.png", self.job_preview, methods=["GET"]),
            Route("/v1/jobs/{job_id}/meshes.json", self.job_meshes, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
        ]
        async def not_found(request, exc):
            from starlette.responses import JSONResponse

            status = getattr(exc, "status_code", 404)
            if status == 405:
                body = error_body("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
            else:
                body = error_body("not_found", f"no route {request.url.path}; the API is under /v1 "
                                  "(docs/serving.md)")
            self.metrics.requests.labels("(unknown)" if status == 404 else request.url.path, str(status)).inc()
            return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})

    async def _drain(self) -> None:
        """Finish the queued and running jobs (up to ``drain_timeout_s``), saying so in the log."""
        loop = asyncio.get_running_loop()
        queued, running = self.batcher.depth, self.batcher.inflight
        log.info("serve: shutting down: finishing %d queued and %d running job(s) (up to %g s)", queued, running,
                 self.drain_timeout_s)
        stop = loop.run_in_executor(None, self.batcher.stop, self.drain_timeout_s)
        while True:
            done, _ = await asyncio.wait({stop}, timeout=5.0)
            if done:
                break
            log.info("serve: draining: %d queued, %d running", self.batcher.depth, self.batcher.inflight)
        finished = stop.result()
        if finished:
            log.info("serve: stopped (queue drained)")
        else:
            log.warning("serve: stopped with %d job(s) unfinished (--drain-timeout %g s passed)",
                        self.batcher.depth + self.batcher.inflight, self.drain_timeout_s)

    # ------------------------------------------------------------------ helpers
    def _json(self, route: str, payload: dict, status: int = 200, headers: dict | None = None):
        from starlette.responses import JSONResponse

        self.metrics.requests.labels(route, str(status)).inc()
        return JSONResponse(payload, status_code=status, headers=headers)

    def _refused(self, route: str, e: RequestRefused, headers: dict | None = None):
        self.metrics.errors.labels(e.kind).inc()
        headers = {**(headers or {}), **getattr(e, "headers", {})}
        return self._json(route, e.as_json(), e.status, headers or None)

    def _auth(self, request) -> None:
        if self.token is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        # the auth scheme is case-insensitive (RFC 7235 2.1); the token is compared in constant time
        if not (scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(),
                                                                   self.token.encode())):
            raise RequestRefused(401, "unauthorized", "this service needs 'Authorization: Bearer TOKEN' "
                                 "(the token given to `holopart-infer serve --token` / HOLOPART_SERVE_TOKEN)")

    def _job(self, request) -> ServeJob:
        job = self.store.get(request.path_params["job_id"])
        if job is None:
            raise RequestRefused(404, "unknown_job", f"no job {request.path_params['job_id']!r} (finished jobs "
                                 f"are kept {self.store.ttl_s:.0f} s)")
        return job

    def _busy(self, n: int) -> RequestRefused:
        e = RequestRefused(503, "busy", f"{self.budget.used} bytes of uploads are in flight and this one needs "
                           f"{n}; the limit is {self.budget.limit} (--max-inflight-mb); retry later",
                           limit=self.budget.limit, actual=self.budget.used + n)
        retry = self.batcher.retry_after()
        e.headers = {"Retry-After": str(retry), **_CLOSE}
        return e

    async def _read_body(self, request, hold: Hold, path: Path) -> int:
        """Stream the body into ``path`` (a private file), counted as it arrives (Content-Length
        is not trusted), within the byte limit, the in-flight budget (``hold`` grows with it) and
        the idle / total time limits. Returns its length.

        A body refused on the way (too large, over the budget) is still read, and dropped, for up
        to a couple of seconds so that the client, busy sending, gets the answer."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        refusal = None
        if declared.isdigit() and int(declared) > limit:
            refusal = RequestRefused(413, "body_too_large", f"request body of {int(declared)} bytes "
                                     f"(Content-Length); the limit is {limit}", limit=limit, actual=int(declared))
        elif declared.isdigit() and not hold.grow_to(int(declared)):
            refusal = self._busy(int(declared))
        with open(path, "wb") as sink:
            return await self._stream_body(request, hold, sink, limit, refusal)

    async def _stream_body(self, request, hold: Hold, sink, limit: int, refusal: RequestRefused | None) -> int:
        n, t0 = 0, time.monotonic()
        refused_at = None if refusal is None else t0
        complete = False
        while True:
            left = min(self.limits.body_idle_s, self.limits.body_total_s - (time.monotonic() - t0))
            if refused_at is not None:
                left = min(left, refused_at + _DRAIN_AFTER_LIMIT_S - time.monotonic())
            if left <= 0:
                break
            try:
                message = await asyncio.wait_for(request.receive(), left)
            except asyncio.TimeoutError:
                break
            if message["type"] == "http.disconnect":
                raise RequestRefused(400, "client_disconnected", "the client went away during the upload")
            chunk = message.get("body", b"")
            n += len(chunk)
            if refusal is None and n > limit:
                refusal = RequestRefused(413, "body_too_large", f"request body exceeds {limit} bytes (counted as "
                                         "it arrived)", limit=limit, actual_at_least=n)
            elif refusal is None and not hold.grow_to(n):
                refusal = self._busy(n)
            if refusal is not None:
                refused_at = refused_at or time.monotonic()
                hold.release()  # nothing of this body is kept
            else:
                sink.write(chunk)
            if not message.get("more_body", False):
                complete = True
                break
            if n > 4 * limit:
                break
        if refusal is not None:
            refusal.headers = {**getattr(refusal, "headers", {}), **_CLOSE}
            raise refusal
        if not complete:
            e = RequestRefused(408, "body_timeout",
                               f"the request body did not arrive in time ({n} bytes received in "
                               f"{time.monotonic() - t0:.1f} s; limits: {self.limits.body_idle_s:g} s between "
                               f"pieces, {self.limits.body_total_s:g} s in all)")
            e.headers = dict(_CLOSE)
            raise e
        return n

    def _options(self, params: dict):
        given = {}
        for name, raw in params.items():
            if name not in REQUEST_OPTIONS:
                raise RequestRefused(422, "unknown_option", f"option {name!r} cannot be set per request; "
                                     f"allowed: {', '.join([*REQUEST_OPTIONS, 'deadline'])} (and, as query "
                                     "parameters, preview on /v1/complete and demo)", option=name)
            try:
                given[name] = REQUEST_OPTIONS[name](raw)
            except (TypeError, ValueError):
                raise RequestRefused(422, "invalid_option", f"option {name}={raw!r} is not a valid "
                                     f"{getattr(REQUEST_OPTIONS[name], '__name__', 'value')}", option=name) from None
        for name, most in (("steps", self.limits.max_steps), ("depth", self.limits.max_depth)):
            if name in given and given[name] > most:
                raise RequestRefused(422, "option_over_limit", f"option {name}={given[name]} is over this "
                                     f"service's limit {most}", option=name, limit=most, actual=given[name])
        try:  # the one merge: its message names the option, what it accepts and what it got
            return self.defaults.replace(**given)
        except InputError as e:
            raise RequestRefused(422, "invalid_option", str(e)) from None

    async def _submission(self, request, hold: Hold) -> ServeJob:
        """Read, check and parse an upload into a queued-to-be :class:`ServeJob`.

        The body is streamed into a private temporary folder (removed before this returns);
        ``hold`` keeps its bytes counted against the in-flight budget."""
        from starlette.concurrency import run_in_threadpool

        tmp = Path(private_tempdir())
        try:
            return await self._submission_in(request, hold, tmp)
        finally:
            await run_in_threadpool(shutil.rmtree, tmp, True)

    async def _submission_in(self, request, hold: Hold, tmp: Path) -> ServeJob:
        from starlette.concurrency import run_in_threadpool

        from holopart_infer import assets
        from holopart_infer.io.parts_io import load_parts

        query = dict(request.query_params)
        deadline_s = self.limits.deadline_s
        if "deadline" in query:
            try:
                deadline_s = min(deadline_s, float(query.pop("deadline")))
            except ValueError:
                raise RequestRefused(422, "invalid_option", "deadline must be a number of seconds") from None
            if not deadline_s > 0:
                raise RequestRefused(422, "invalid_option", "deadline must be > 0 seconds")
        query.pop("preview", None)
        demo = query.pop("demo", None)
        arrived = time.monotonic()
        body = tmp / "body"
        size = await self._read_body(request, hold, body)
        obj, labels_raw, form_opts, name = body, None, {}, "upload"
        ctype = request.headers.get("content-type", "")
        if demo is None and ctype.startswith("multipart/form-data") and size:
            obj, labels_raw, form_opts, name = await self._parse_form(request, body, tmp)
        params = {**query, **form_opts}
        up = self._up(params.pop("up", None))
        options = self._options(params)
        if demo is not None:
            if size:
                raise RequestRefused(422, "invalid_request", "?demo=NAME takes no upload")
            if demo not in assets.DEMO_OBJECTS:
                raise RequestRefused(422, "unknown_demo", f"no embedded object {demo!r}; choose one of "
                                     f"{', '.join(assets.DEMO_OBJECTS)}")
            parts = await run_in_threadpool(load_parts, assets.demo_object_path(demo), None, "auto", up)
            source = f"demo:{demo}"
        else:
            if not obj.stat().st_size:
                raise RequestRefused(422, "empty_upload", "no object uploaded: send a .glb as the body, or "
                                     "multipart with a 'file' field (or use ?demo=NAME)")
            parts = await run_in_threadpool(self._parse_upload, obj, labels_raw, name, tmp, up)
            source = name
        check_counts(len(parts), sum(len(p.faces) for p in parts), sum(len(p.vertices) for p in parts),
                     self.limits, source)
        return ServeJob(parts=parts, options=options, deadline=arrived + deadline_s, source=source)

    async def _parse_form(self, request, body: Path, tmp: Path):
        """The multipart fields; the object is copied into ``tmp`` piece by piece (never whole in memory)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def replay():
            with open(body, "rb") as f:
                while chunk := await run_in_threadpool(f.read, 1 << 20):
                    yield chunk
            yield b""

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=2, max_fields=4).parse()
        except MultiPartException as e:
            raise RequestRefused(422, "invalid_form", f"multipart body: {e.message}") from None
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise RequestRefused(422, "empty_upload", "multipart upload needs a 'file' field with the object")
            obj = tmp / "object"

            def copy_out():
                file.file.seek(0)
                with open(obj, "wb") as out:
                    shutil.copyfileobj(file.file, out, 1 << 20)

            await run_in_threadpool(copy_out)
            name = Path(file.filename or "upload.glb").name
            labels = form.get("labels")
            labels_raw = await labels.read() if isinstance(labels, UploadFile) else None
            opts = form.get("options")
            form_opts = {}
            if opts:
                try:
                    form_opts = json.loads(opts if isinstance(opts, str) else (await opts.read()).decode())
                except (ValueError, UnicodeDecodeError) as e:
                    raise RequestRefused(422, "invalid_option", f"'options' field is not JSON ({e})") from None
                if not isinstance(form_opts, dict):
                    raise RequestRefused(422, "invalid_option", "'options' field must be a JSON object")
            return obj, labels_raw, form_opts, name
        finally:
            await form.close()

    @staticmethod
    def _up(raw):
        """The request's ``up`` (None: glTF's +Y)."""
        from holopart_infer.io.frames import check_up

        if raw is None:
            return None
        try:
            return check_up(raw)
        except InputError as e:
            raise RequestRefused(422, "invalid_option", str(e), option="up") from None

    def _parse_upload(self, obj: Path, labels_raw: bytes | None, name: str, tmp: Path, up: str | None = None):
        """Safety checks, then the library's reader on a geometry-only copy (worker thread).
        The upload is mapped, not read: only its header and JSON are touched here."""
        import mmap

        from holopart_infer.io.parts_io import load_parts

        with open(obj, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            summary = check_gltf(data, self.limits, name)
            labels = None
            if labels_raw is not None:
                labels = load_labels(labels_raw, self.limits, f"{name} labels")
                if summary.mesh_nodes != 1:
                    raise RequestRefused(422, "invalid_input", f"{name}: labels need one mesh; it has "
                                         f"{summary.mesh_nodes} mesh nodes")
            path = tmp / ("upload.glb" if data[:4] == GLB_MAGIC else "upload.gltf")
            with open(path, "wb") as out:
                write_geometry_only(data, out, source=f)
        obj.unlink()  # the checked copy is all the reader needs
        try:
            parts = load_parts(path, labels=labels, up=up)
        except InputError as e:
            raise RequestRefused(422, "invalid_input", str(e).replace(str(path), name)) from None
        except Exception as e:  # the reader choked on a file the checks let through: still the upload's fault
            log.debug("serve: reader failed on %s", name, exc_info=True)
            raise RequestRefused(422, "invalid_input", f"{name}: the glTF reader could not read it "
                                 f"({type(e).__name__}: {e})") from None
        parts.source = name
        parts.input_paths = ()
        return parts

    async def _wait(self, job: ServeJob, until: float, version: int | None = None) -> None:
        while job.state not in (DONE, FAILED) and time.monotonic() < until:
            if version is not None and job.version != version:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ routes
    async def page(self, request):
        from starlette.responses import FileResponse

        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    async def healthz(self, request):
        ok = self.batcher.alive or self.draining
        return self._json("/healthz", {"status": "ok" if ok else "inference worker stopped"}, 200 if ok else 503)

    async def readyz(self, request):
        if self.draining:
            reason = "shutting down"
        elif not self.batcher.alive:
            reason = "inference worker not running"
        elif not self.batcher.accepting:
            reason = f"queue full ({self.batcher.depth} jobs)"
        else:
            return self._json("/readyz", {"status": "ready", "backend": self.model.backend_name,
                                          "device": self.model.device, "queue": self.batcher.depth})
        return self._json("/readyz", {"status": "not ready", "reason": reason}, 503)

    async def metrics_route(self, request):
        from starlette.responses import Response

        try:
            self._auth(request)
        except RequestRefused as e:
            return self._refused("/metrics", e)
        body, ctype = self.metrics.render()
        return Response(body, media_type=ctype)

    async def demo_objects(self, request):
        from holopart_infer import assets

        try:
            self._auth(request)
        except RequestRefused as e:
            return self._refused("/v1/demo-objects", e)
        return self._json("/v1/demo-objects", {"objects": [
            {"name": n, "description": assets.DEMO_OBJECT_DESCRIPTIONS.get(n, "")} for n in assets.DEMO_OBJECTS]})

    async def _accept(self, request, route: str):
        """Auth, read, check, queue. Returns the job or an error response."""
        hold = Hold(self.budget)
        try:
            self._auth(request)
            if self.draining:
                raise RequestRefused(503, "shutting_down", "the service is shutting down")
            if not self.batcher.accepting and self.batcher.alive:
                # refuse before reading the body when the queue is already full
                raise QueueFull(self.batcher.depth, self.batcher.retry_after())
            job = await self._submission(request, hold)
            job.hold = hold  # given back when the job is done (Service._on_job_done)
            self.batcher.submit(job)
        except RequestRefused as e:
            hold.release()
            return None, self._refused(route, e)
        except QueueFull as e:
            hold.release()
            self.metrics.errors.labels("queue_full").inc()
            return None, self._json(route, error_body("queue_full", f"{e}; retry later", retry_after_s=e.retry_after),
                                    503, {"Retry-After": str(e.retry_after)})
        except RuntimeError as e:
            hold.release()
            self.metrics.errors.labels("shutting_down").inc()
            return None, self._json(route, error_body("shutting_down", str(e)), 503)
        except Exception as e:  # a bug, not the upload: say so as JSON, keep the traceback in the log
            hold.release()
            log.exception("serve: %s failed unexpectedly", route)
            self.metrics.errors.labels("internal_error").inc()
            return None, self._json(route, error_body("internal_error", f"the service failed on this request "
                                                      f"({type(e).__name__}); see the server log"), 500)
        self.store.add(job)
        return job, None

    async def complete(self, request):
        from starlette.responses import Response

        route = "/v1/complete"
        job, refused = await self._accept(request, route)
        if refused is not None:
            return refused
        await self._wait(job, job.deadline + 0.5)
        if job.state not in (DONE, FAILED):  # the worker marks (and counts) it when it gets to it
            return self._json(route, error_body("deadline_exceeded", "the request's deadline passed before its "
                                                "result was ready"), 504, {"X-HoloPart-Job": job.id})
        if job.state == FAILED:
            err = {k: v for k, v in job.error.items() if k != "status"}
            return self._json(route, {"error": err}, job.error["status"], {"X-HoloPart-Job": job.id})
        headers = {"X-HoloPart-Job": job.id, "X-HoloPart-Batch-Objects": str(job.batch.get("objects", 1)),
                   "Content-Disposition": 'attachment; filename="completed.glb"'}
        if request.query_params.get("preview", "") in ("1", "true", "yes"):
            await self._preview_bytes(job)
            headers["X-HoloPart-Preview"] = f"/v1/jobs/{job.id}/preview.png"
        self.metrics.requests.labels(route, "200").inc()
        return Response(job.glb, media_type="model/gltf-binary", headers=headers)

    async def submit(self, request):
        route = "/v1/jobs"
        job, refused = await self._accept(request, route)
        if refused is not None:
            return refused
        return self._json(route, job.public(), 202, {"Location": f"/v1/jobs/{job.id}"})

    async def job_status(self, request):
        route = "/v1/jobs/{id}"
        try:
            self._auth(request)
            job = self._job(request)
            wait = float(request.query_params.get("wait", "0") or 0)
        except RequestRefused as e:
            return self._refused(route, e)
        except ValueError:
            return self._refused(route, RequestRefused(422, "invalid_option", "wait must be a number of seconds"))
        if wait > 0:
            await self._wait(job, time.monotonic() + min(wait, 30.0), job.version)
        return self._json(route, job.public())

    async def job_result(self, request):
        from starlette.responses import Response

        route = "/v1/jobs/{id}/result.glb"
        job, refused = self._done_job(request, route)
        if refused is not None:
            return refused
        self.metrics.requests.labels(route, "200").inc()
        return Response(job.glb, media_type="model/gltf-binary",
                        headers={"Content-Disposition": 'attachment; filename="completed.glb"'})

    def _done_job(self, request, route: str):
        """(the finished job a result route asks for, None) or (None, the refusal to send)."""
        try:
            self._auth(request)
            job = self._job(request)
            self._need_done(job)
        except RequestRefused as e:
            return None, self._refused(route, e)
        return job, None

    @staticmethod
    def _need_done(job: ServeJob) -> None:
        if job.state == FAILED:
            raise RequestRefused(409, "job_failed", f"job {job.id} failed: {job.error['message']}")
        if job.state != DONE:
            raise RequestRefused(409, "not_ready", f"job {job.id} is {job.state}; poll /v1/jobs/{job.id}")

    async def _preview_bytes(self, job: ServeJob) -> bytes:
        from starlette.concurrency import run_in_threadpool

        cached = getattr(job, "_preview", None)
        if cached is None:
            def render():
                tmp = private_tempdir()
                try:
                    path = Path(tmp) / "preview.png"
                    job.result.preview(path)
                    return path.read_bytes()
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)

            cached = await run_in_threadpool(render)
            job._preview = cached
        return cached

    async def job_preview(self, request):
        from starlette.responses import Response

        route = "/v1/jobs/{id}/preview.png"
        job, refused = self._done_job(request, route)
        if refused is not None:
            return refused
        data = await self._preview_bytes(job)
        self.metrics.requests.labels(route, "200").inc()
        return Response(data, media_type="image/png")

    async def job_meshes(self, request):
        from holopart_infer.io.frames import up_rotation
        from holopart_infer.io.parts_io import part_colors

        route = "/v1/jobs/{id}/meshes.json"
        which = request.query_params.get("which", "input")
        try:
            self._auth(request)
            job = self._job(request)
            if which == "output":
                self._need_done(job)
                meshes = [(p.name, p.vertices, p.faces) for p in job.result.parts]
            elif which == "input":
                meshes = [(p.name, p.vertices, p.faces) for p in job.parts]
            else:
                raise RequestRefused(422, "invalid_option", "which must be 'input' or 'output'")
        except RequestRefused as e:
            return self._refused(route, e)
        # the page's viewer is Y-up (WebGL, glTF): an upload sent with another ``up`` is turned for it
        # (exactly, winding kept); the glb and its preview stay in the upload's own frame
        turn = up_rotation(getattr(job.parts, "up", None) or "+y", "+y")
        colors = part_colors(len(job.parts))
        out = []
        for (name, v, f), c in zip(meshes, colors):
            v = turn.apply(np.asarray(v))
            out.append({"name": name, "color": [int(x) for x in c[:3]],
                        "positions": base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode(),
                        "indices": base64.b64encode(np.ascontiguousarray(f, "<u4").tobytes()).decode()})
        return self._json(route, {"which": which, "parts": out})
