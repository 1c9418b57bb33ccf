"""``holopart-infer serve``: the HTTP service (:mod:`holopart_infer.serve`, the ``[serve]`` extra).

The server's default completion options take the same flags as ``run`` and ``batch``
(``--steps 2 --no-decimate``, made from the option metadata); ``--option NAME=VALUE``
stays as an alias, read by the same per-option parser. Nothing of the extra is
imported to build the parser.
"""
from __future__ import annotations

from holopart_infer.cli.options import add_option_args, given_options, parse_option_assignment
from holopart_infer.errors import InputError
from holopart_infer.engines.registry import DEVICES, MODEL_DIR, backend_names

NAME = "serve"
HELP = "HTTP service: dynamic batching, limits, metrics, a web page (needs [serve])"
DESCRIPTION = "Serve completions over HTTP. See docs/serving.md."


def add_arguments(s, argv: list[str]) -> None:
    from holopart_infer.pipeline import CompletionOptions
    from holopart_infer.serve import TOKEN_ENV
    from holopart_infer.serve.limits import Limits

    d = Limits()
    s.add_argument("--model", help="exported model dir (default: the embedded holopart-mini with the demo's "
                                   "quicker options)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${TOKEN_ENV} "
                                   "when set, else no token)")
    s.add_argument("--backend", choices=backend_names(MODEL_DIR), default="auto")
    s.add_argument("--device", choices=DEVICES, default="auto")
    add_option_args(s, CompletionOptions().as_dict(),
                    "the library's; the model's manifest sets its own (the embedded model: the demo's quicker "
                    "options) and these flags win over them")
    s.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", type=parse_option_assignment,
                   help="alias of the option flags (repeatable), e.g. --option steps=30 for --steps 30; any "
                        "option name, also the API-only ones (band, chunk_points); a flag given as well wins")
    g = s.add_argument_group("batching")
    g.add_argument("--max-queue", type=int, default=16, help="jobs waiting at most; then 503 (default 16)")
    g.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="how long a batch waits for more requests (default 50 ms)")
    g.add_argument("--max-batch-parts", type=int, default=32, help="parts per dynamic batch (default 32)")
    g.add_argument("--max-batch-objects", type=int, default=16, help="objects per dynamic batch (default 16)")
    g.add_argument("--no-batching", action="store_true", help="one request at a time (no dynamic batching)")
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


def build_service(args):
    """The :class:`~holopart_infer.serve.app.Service` parsed ``serve`` arguments describe (loads the model)."""
    from holopart_infer import serve
    from holopart_infer.serve.limits import Limits

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
    options = given_options(args, dict(args.option))
    quality = getattr(args, "quality", None)
    if quality:  # the preset, then the explicit values (as run's options_from)
        from holopart_infer.pipeline import quality_preset

        options = {**quality_preset(quality), **options}
    return serve.build_service(args.model, backend=args.backend, device=args.device, options=options,
                               token=args.token, limits=limits, max_queue=args.max_queue,
                               max_wait_s=0.0 if args.no_batching else args.batch_wait_ms / 1000.0,
                               max_batch_parts=args.max_batch_parts,
                               max_batch_objects=1 if args.no_batching else args.max_batch_objects,
                               drain_timeout_s=args.drain_timeout)


def run(args) -> int:
    from holopart_infer import serve

    serve.check_installed()
    service = build_service(args)

    def listening(host: str, port: int) -> None:
        print(f"holopart-infer serve: listening on http://{host}:{port} "
              f"({service.model.backend_name} on {service.model.device})", flush=True)

    return serve.serve_forever(service, args.host, args.port, log_level="info" if args.verbose else "warning",
                               on_listening=listening)
