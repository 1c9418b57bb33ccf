"""``holopart-infer serve``: an HTTP service with dynamic batching, limits and a web page.

Needs the ``[serve]`` extra (Starlette, uvicorn, prometheus-client,
python-multipart); see docs/serving.md. The CLI registers the subcommand with
:func:`add_subcommand`, which imports none of them: they are imported when the
command runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal

from holopart_infer.engines.registry import DEVICES, MODEL_DIR, backend_names

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


def add_subcommand(sub, common=None) -> argparse.ArgumentParser:
    """Register ``serve`` on the CLI's subparsers (the CLI's only hook into this package);
    ``common`` is the CLI's shared -v/-q parent parser."""
    from holopart_infer.serve.limits import Limits

    d = Limits()
    s = sub.add_parser("serve", parents=[common] if common is not None else [],
                       help="HTTP service: dynamic batching, limits, metrics, a web page (needs [serve])",
                       description="Serve completions over HTTP. See docs/serving.md.")
    s.add_argument("--model", help="exported model dir (default: the embedded holopart-mini with the demo's "
                                   "quicker options)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${TOKEN_ENV} "
                                   "when set, else no token)")
    s.add_argument("--backend", choices=backend_names(MODEL_DIR), default="auto")
    s.add_argument("--device", choices=DEVICES, default="auto")
    s.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="server default completion option (repeatable), e.g. --option steps=30")
    g = s.add_argument_group("batching")
    g.add_argument("--max-queue", type=int, default=16, help="jobs waiting at most; then 503 (default 16)")
    g.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="how long a batch waits for more requests (default 50 ms)")
    g.add_argument("--max-batch-parts", type=int, default=32, help="parts per dynamic batch (default 32)")
    g.add_argument("--max-batch-objects", type=int, default=16, help="objects per dynamic batch (default 16)")
    g.add_argument("--no-batching", action="store_true", help="one request at a time (no dynamic batching)")
    g.add_argument("--parts-per-batch", type=int, help="parts per DiT/decoder batch (default: the options')")
    lim = s.add_argument_group("limits")
    lim.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20,
                     help=f"request body (default {d.max_body_bytes / 2**20:g} MiB; 413 beyond)")
    lim.add_argument("--max-inflight-mb", type=float, default=d.max_inflight_bytes / 2**20,
                     help=f"upload bytes held at once over all requests, from the first byte until the job is "
                          f"done (default {d.max_inflight_bytes / 2**20:g} MiB; 503 + Retry-After beyond)")
    lim.add_argument("--max-parts", type=int, default=d.max_parts, help=f"default {d.max_parts} (422 beyond)")
    lim.add_argument("--max-faces", type=int, default=d.max_faces, help=f"default {d.max_faces} (422 beyond)")
    lim.add_argument("--max-vertices", type=int, default=d.max_vertices, help=f"default {d.max_vertices}")
    lim.add_argument("--max-steps", type=int, default=d.max_steps, help=f"largest steps a request may ask "
                                                                          f"(default {d.max_steps})")
    lim.add_argument("--max-depth", type=int, default=d.max_depth, help=f"largest depth (default {d.max_depth})")
    lim.add_argument("--deadline", type=float, default=d.deadline_s,
                     help=f"seconds from arrival to result (default {d.deadline_s:g}; 504 beyond)")
    lim.add_argument("--body-idle-timeout", type=float, default=d.body_idle_s,
                     help=f"seconds between pieces of a body (default {d.body_idle_s:g}; 408 beyond)")
    lim.add_argument("--body-timeout", type=float, default=d.body_total_s,
                     help=f"seconds to receive a whole body (default {d.body_total_s:g}; 408 beyond)")
    lim.add_argument("--drain-timeout", type=float, default=600.0,
                     help="on SIGTERM, how long queued jobs may still run (default 600 s)")
    s.set_defaults(func=cmd_serve)
    return s


def _parse_option(text: str):
    from holopart_infer.errors import InputError
    from holopart_infer.pipeline import CompletionOptions

    name, sep, value = text.partition("=")
    fields = CompletionOptions.__dataclass_fields__
    if not sep or name not in fields:
        raise InputError(f"--option {text!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
    if value.lower() in ("none", "null"):
        return name, None
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    try:
        return name, int(value)
    except ValueError:
        try:
            return name, float(value)
        except ValueError:
            raise InputError(f"--option {text!r}: value must be a number, true/false or none") from None


def is_embedded_model(path) -> bool:
    """``path`` is None or names the embedded holopart-mini (through any relative path or link)."""
    from holopart_infer import assets

    if path is None:
        return True
    try:
        return os.path.samefile(path, assets.demo_model_path())
    except OSError:
        return False


def build_service(args):
    """The :class:`Service` described by parsed ``serve`` arguments (loads the model)."""
    from dataclasses import asdict

    from holopart_infer import assets
    from holopart_infer.errors import InputError
    from holopart_infer.pipeline import CompletionOptions, load
    from holopart_infer.serve.app import Service
    from holopart_infer.serve.limits import Limits

    model = load(args.model or assets.demo_model_path(), backend=args.backend, device=args.device)
    opts = asdict(model.default_options())
    if is_embedded_model(args.model):  # one model, one set of defaults, however it was named
        opts.update(assets.DEMO_PRESET)
    opts.update(dict(_parse_option(o) for o in args.option))
    defaults = CompletionOptions(**opts)
    defaults.validate()
    for name in ("max_queue", "max_batch_parts", "max_batch_objects", "max_parts", "max_faces", "max_vertices"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_parts=args.max_parts,
                    max_faces=args.max_faces, max_vertices=args.max_vertices, body_idle_s=args.body_idle_timeout,
                    body_total_s=args.body_timeout, deadline_s=args.deadline, max_steps=args.max_steps,
                    max_depth=args.max_depth, max_inflight_bytes=int(args.max_inflight_mb * 2**20))
    if limits.max_inflight_bytes < limits.max_body_bytes:
        raise InputError(f"--max-inflight-mb {args.max_inflight_mb:g} is below --max-body-mb {args.max_body_mb:g}: "
                         "no upload of the largest allowed size could ever be accepted; raise it")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    return Service(model, defaults, limits, token, max_queue=args.max_queue,
                   max_wait_s=0.0 if args.no_batching else args.batch_wait_ms / 1000.0,
                   max_batch_parts=args.max_batch_parts,
                   max_batch_objects=1 if args.no_batching else args.max_batch_objects,
                   parts_per_batch=args.parts_per_batch, drain_timeout_s=args.drain_timeout)


def cmd_serve(args) -> int:
    check_installed()
    import uvicorn

    service = build_service(args)
    config = uvicorn.Config(service.asgi(), host=args.host, port=args.port, log_level="info" if args.verbose
                            else "warning", server_header=False, timeout_keep_alive=5,
                            limit_concurrency=service.batcher.max_queue + 64,
                            timeout_graceful_shutdown=args.drain_timeout)
    server = uvicorn.Server(config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and service.token is None:
        log.warning("serve: listening on %s without a token; pass --token or set %s", args.host, TOKEN_ENV)

    # say where we listen once the socket is bound (the port may have been 0)
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        for srv in getattr(server, "servers", []):
            for sock in srv.sockets:
                host, port = sock.getsockname()[:2]
                print(f"holopart-infer serve: listening on http://{host}:{port} "
                      f"({service.model.backend_name} on {service.model.device})", flush=True)

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


__all__ = ["add_subcommand", "check_installed", "cmd_serve", "build_service"]
