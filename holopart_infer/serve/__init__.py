"""``holopart-infer serve``: an HTTP service with dynamic batching, limits and a web page.

Needs the ``[serve]`` extra (Starlette, uvicorn, prometheus-client,
python-multipart); see docs/serving.md. :func:`build_service` makes the service,
:func:`serve_forever` runs it; neither parses arguments nor prints (the
``holopart-infer serve`` command, :mod:`holopart_infer.cli.serve`, does). None of the
extra's modules is imported until the service is built.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
from typing import Callable

log = logging.getLogger("holopart_infer")

#: module -> why it is needed; all come with ``pip install 'holopart-infer[serve]'``
REQUIRED = {"starlette": "the web app", "uvicorn": "the HTTP server", "prometheus_client": "/metrics",
            "multipart": "multipart uploads"}
TOKEN_ENV = "HOLOPART_SERVE_TOKEN"


def check_installed() -> None:
    """Raise :class:`BackendUnavailable` with the install hint when a serve dependency is missing."""
    from holopart_infer.errors import missing_extra

    for module, why in REQUIRED.items():
        if importlib.util.find_spec(module) is None:
            raise missing_extra(module, "serve", f"holopart-infer serve ({why})")


def is_embedded_model(path) -> bool:
    """``path`` is None or names the embedded holopart-mini (through any relative path or link)."""
    from holopart_infer import assets

    if path is None:
        return True
    try:
        return os.path.samefile(path, assets.demo_model_path())
    except OSError:
        return False


def build_service(model=None, *, backend: str = "auto", device: str = "auto", options: dict | None = None,
                  token: str | None = None, limits=None, max_queue: int = 16, max_wait_s: float = 0.05,
                  max_batch_parts: int = 32, max_batch_objects: int = 16, drain_timeout_s: float = 600.0):
    """A :class:`Service` for a model dir (loads the model).

    Args:
        model: exported model dir; None: the embedded holopart-mini, which (however it is
            named) serves with the demo's quicker options (:data:`holopart_infer.assets.DEMO_PRESET`).
        backend, device: as :func:`holopart_infer.load`.
        options: the server's default completion options, over the model's defaults
            (merged and checked by :meth:`CompletionOptions.replace`).
        token: bearer token required on the API (None: :data:`TOKEN_ENV` when set, else none).
        limits: :class:`holopart_infer.serve.limits.Limits` (default: its defaults).
        max_queue, max_wait_s, max_batch_parts, max_batch_objects, drain_timeout_s: as
            :class:`holopart_infer.serve.app.Service` (``max_batch_objects=1``: no dynamic batching).

    Raises:
        InputError: a bad option or limit; the model's load errors.
    """
    from holopart_infer import assets
    from holopart_infer.errors import InputError
    from holopart_infer.pipeline import load, model_defaults
    from holopart_infer.serve.app import Service
    from holopart_infer.serve.limits import Limits

    for name, value in (("max_queue", max_queue), ("max_batch_parts", max_batch_parts),
                        ("max_batch_objects", max_batch_objects)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    limits = limits or Limits()
    if limits.max_inflight_bytes < limits.max_body_bytes:
        raise InputError(f"max_inflight_bytes {limits.max_inflight_bytes} is below max_body_bytes "
                         f"{limits.max_body_bytes}: no upload of the largest allowed size could ever be accepted")
    loaded = load(model or assets.demo_model_path(), backend=backend, device=device)
    try:
        defaults = model_defaults(loaded)
        if is_embedded_model(model):  # one model, one set of defaults, however it was named
            defaults = defaults.replace(**assets.DEMO_PRESET)
        defaults = defaults.replace(**(options or {}))
    except Exception:
        loaded.close()
        raise
    token = token or os.environ.get(TOKEN_ENV) or None
    return Service(loaded, defaults, limits, token, max_queue=max_queue, max_wait_s=max_wait_s,
                   max_batch_parts=max_batch_parts, max_batch_objects=max_batch_objects,
                   drain_timeout_s=drain_timeout_s)


def serve_forever(service, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
                  on_listening: Callable[[str, int], None] | None = None) -> int:
    """Run ``service`` under uvicorn until SIGINT / SIGTERM; returns 0 when the queue drained.

    Args:
        on_listening: called with each bound (host, port) once the socket is bound (the
            port may have been 0: the command prints where it listens).
    """
    check_installed()
    import uvicorn

    config = uvicorn.Config(service.asgi(), host=host, port=port, log_level=log_level, server_header=False,
                            timeout_keep_alive=5, limit_concurrency=service.batcher.max_queue + 64,
                            timeout_graceful_shutdown=service.drain_timeout_s)
    server = uvicorn.Server(config)
    if host not in ("127.0.0.1", "localhost", "::1") and service.token is None:
        log.warning("serve: listening on %s without a token; pass --token or set %s", host, TOKEN_ENV)

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        for srv in getattr(server, "servers", []):
            for sock in srv.sockets:
                bound_host, bound_port = sock.getsockname()[:2]
                if on_listening is not None:
                    on_listening(bound_host, bound_port)

    server.startup = startup
    # uvicorn handles SIGTERM (stop accepting, finish in-flight requests, drain the
    # queue in the app's shutdown) and re-raises it afterwards for the previous
    # handler: make that one a no-op so a graceful stop exits 0
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if service.batcher.stop(0) else 1


__all__ = ["check_installed", "build_service", "serve_forever", "is_embedded_model", "TOKEN_ENV"]
