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
plus ``deadline`` (seconds) and, on ``/v1/complete``, ``preview=1``.
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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from holopart_infer.errors import InputError
from holopart_infer.serve.batcher import (DONE, FAILED, Batcher, JobStore, QueueFull, ServeJob, complete_many_runner,
                                          private_tempdir)
from holopart_infer.serve.limits import (Limits, RequestRefused, check_counts, check_gltf, geometry_only,
                                         load_labels)
from holopart_infer.serve.metrics import Metrics

log = logging.getLogger("holopart_infer")

STATIC_DIR = Path(__file__).with_name("static")

#: options a request may set, with their parsers (the rest are the server's)
REQUEST_OPTIONS = {
    "seed": int, "steps": int, "guidance": float, "depth": int, "min_component": float,
    "decimate": lambda s: None if str(s).lower() in ("none", "null", "0") else int(s),
    "close_at_bounds": lambda s: s if isinstance(s, bool) else str(s).lower() in ("1", "true", "yes"),
    # guard=0 keeps implausible parts as the model made them (holopart_infer.quality)
    "guard": lambda s: s if isinstance(s, bool) else str(s).lower() in ("1", "true", "yes"),
}
_DRAIN_AFTER_LIMIT_S = 2.0  # read and drop the rest of a too-large body this long, so the 413 reaches the client


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
                finished = await asyncio.get_running_loop().run_in_executor(
                    None, self.batcher.stop, self.drain_timeout_s)
                log.info("serve: stopped (%s)", "queue drained" if finished else "drain timed out")

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
        return Starlette(routes=routes, lifespan=lifespan)

    # ------------------------------------------------------------------ helpers
    def _json(self, route: str, payload: dict, status: int = 200, headers: dict | None = None):
        from starlette.responses import JSONResponse

        self.metrics.requests.labels(route, str(status)).inc()
        return JSONResponse(payload, status_code=status, headers=headers)

    def _refused(self, route: str, e: RequestRefused, headers: dict | None = None):
        self.metrics.errors.labels(e.kind).inc()
        return self._json(route, e.as_json(), e.status, headers)

    def _auth(self, request) -> None:
        if self.token is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), self.token.encode())):
            raise RequestRefused(401, "unauthorized", "this service needs 'Authorization: Bearer TOKEN' "
                                 "(the token given to `holopart-infer serve --token` / HOLOPART_SERVE_TOKEN)")

    def _job(self, request) -> ServeJob:
        job = self.store.get(request.path_params["job_id"])
        if job is None:
            raise RequestRefused(404, "unknown_job", f"no job {request.path_params['job_id']!r} (finished jobs "
                                 f"are kept {self.store.ttl_s:.0f} s)")
        return job

    async def _read_body(self, request) -> bytes:
        """The body, counted as it arrives (Content-Length is not trusted), within
        the byte limit and the idle / total time limits."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestRefused(413, "body_too_large", f"request body of {int(declared)} bytes (Content-Length); "
                                 f"the limit is {limit}", limit=limit, actual=int(declared))
        chunks, n, t0 = [], 0, time.monotonic()
        too_large_at = None
        complete = False
        while True:
            left = min(self.limits.body_idle_s, self.limits.body_total_s - (time.monotonic() - t0))
            if too_large_at is not None:
                left = min(left, too_large_at + _DRAIN_AFTER_LIMIT_S - time.monotonic())
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
            if n > limit and too_large_at is None:
                too_large_at = time.monotonic()
                chunks = []
            if too_large_at is None:
                chunks.append(chunk)
            if not message.get("more_body", False):
                complete = True
                break
            if n > 4 * limit:
                break
        if too_large_at is not None:
            raise RequestRefused(413, "body_too_large", f"request body exceeds {limit} bytes (counted as it "
                                 "arrived)", limit=limit, actual_at_least=n)
        if not complete:
            raise RequestRefused(408, "body_timeout",
                                 f"the request body did not arrive in time ({n} bytes received; limits: "
                                 f"{self.limits.body_idle_s:g} s between pieces, {self.limits.body_total_s:g} s "
                                 "in all)")
        return b"".join(chunks)

    def _options(self, params: dict):
        from holopart_infer.pipeline import CompletionOptions

        given = {}
        for name, raw in params.items():
            if name not in REQUEST_OPTIONS:
                raise RequestRefused(422, "unknown_option", f"option {name!r} cannot be set per request; "
                                     f"allowed: {', '.join(REQUEST_OPTIONS)}", option=name)
            try:
                given[name] = REQUEST_OPTIONS[name](raw)
            except (TypeError, ValueError):
                raise RequestRefused(422, "invalid_option", f"option {name}={raw!r} is not a valid "
                                     f"{getattr(REQUEST_OPTIONS[name], '__name__', 'value')}", option=name) from None
        for name, most in (("steps", self.limits.max_steps), ("depth", self.limits.max_depth)):
            if name in given and given[name] > most:
                raise RequestRefused(422, "option_over_limit", f"option {name}={given[name]} is over this "
                                     f"service's limit {most}", option=name, limit=most, actual=given[name])
        opts = CompletionOptions(**{**asdict(self.defaults), **given})
        try:
            opts.validate()
        except InputError as e:
            raise RequestRefused(422, "invalid_option", str(e)) from None
        return opts

    async def _submission(self, request) -> ServeJob:
        """Read, check and parse an upload into a queued-to-be :class:`ServeJob`."""
        from starlette.concurrency import run_in_threadpool

        from holopart_infer import assets
        from holopart_infer.parts_io import load_parts

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
        body = await self._read_body(request)
        obj, labels_raw, form_opts, name = body, None, {}, "upload"
        ctype = request.headers.get("content-type", "")
        if demo is None and ctype.startswith("multipart/form-data"):
            obj, labels_raw, form_opts, name = await self._parse_form(request, body)
        options = self._options({**query, **form_opts})
        if demo is not None:
            if body:
                raise RequestRefused(422, "invalid_request", "?demo=NAME takes no upload")
            if demo not in assets.DEMO_OBJECTS:
                raise RequestRefused(422, "unknown_demo", f"no embedded object {demo!r}; choose one of "
                                     f"{', '.join(assets.DEMO_OBJECTS)}")
            parts = await run_in_threadpool(load_parts, assets.demo_object_path(demo))
            source = f"demo:{demo}"
        else:
            if not obj:
                raise RequestRefused(422, "empty_upload", "no object uploaded: send a .glb as the body, or "
                                     "multipart with a 'file' field (or use ?demo=NAME)")
            parts = await run_in_threadpool(self._parse_upload, obj, labels_raw, name)
            source = name
        check_counts(len(parts), sum(len(p.faces) for p in parts), sum(len(p.vertices) for p in parts),
                     self.limits, source)
        return ServeJob(parts=parts, options=options, deadline=arrived + deadline_s, source=source)

    async def _parse_form(self, request, body: bytes):
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def replay():
            yield body
            yield b""

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=2, max_fields=4).parse()
        except MultiPartException as e:
            raise RequestRefused(422, "invalid_form", f"multipart body: {e.message}") from None
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise RequestRefused(422, "empty_upload", "multipart upload needs a 'file' field with the object")
            obj = await file.read()
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

    def _parse_upload(self, obj: bytes, labels_raw: bytes | None, name: str):
        """Safety checks, then the library's reader on a private copy (worker thread)."""
        from holopart_infer.parts_io import load_parts

        summary = check_gltf(obj, self.limits, name)
        labels = None
        if labels_raw is not None:
            labels = load_labels(labels_raw, self.limits, f"{name} labels")
            if summary.mesh_nodes != 1:
                raise RequestRefused(422, "invalid_input", f"{name}: labels need one mesh; it has "
                                     f"{summary.mesh_nodes} mesh nodes")
        suffix = ".glb" if obj[:4] == b"glTF" else ".gltf"
        tmp = private_tempdir()
        try:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(geometry_only(obj))
            try:
                parts = load_parts(path, labels=labels)
            except InputError as e:
                raise RequestRefused(422, "invalid_input", str(e).replace(str(path), name)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
        try:
            self._auth(request)
            if self.draining:
                raise RequestRefused(503, "shutting_down", "the service is shutting down")
            if not self.batcher.accepting and self.batcher.alive:
                # refuse before reading the body when the queue is already full
                raise QueueFull(self.batcher.depth, self.batcher.retry_after())
            job = await self._submission(request)
            self.batcher.submit(job)
        except RequestRefused as e:
            return None, self._refused(route, e)
        except QueueFull as e:
            self.metrics.errors.labels("queue_full").inc()
            return None, self._json(route, {"error": {"kind": "queue_full", "message": f"{e}; retry later",
                                                      "retry_after_s": e.retry_after}}, 503,
                                    {"Retry-After": str(e.retry_after)})
        except RuntimeError as e:
            self.metrics.errors.labels("shutting_down").inc()
            return None, self._json(route, {"error": {"kind": "shutting_down", "message": str(e)}}, 503)
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
            return self._json(route, {"error": {"status": 504, "kind": "deadline_exceeded", "message":
                                                "the request's deadline passed before its result was ready"},
                                      "job": job.id}, 504)
        if job.state == FAILED:
            return self._json(route, {"error": job.error, "job": job.id}, job.error["status"])
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
        from holopart_infer.parts_io import part_colors

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
        colors = part_colors(len(job.parts))
        out = []
        for (name, v, f), c in zip(meshes, colors):
            out.append({"name": name, "color": [int(x) for x in c[:3]],
                        "positions": base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode(),
                        "indices": base64.b64encode(np.ascontiguousarray(f, "<u4").tobytes()).decode()})
        return self._json(route, {"which": which, "parts": out})
