"""The ``holopart-infer`` command: one module per subcommand, assembled here.

Exit codes: 0 success; 1 a failed check (verify mismatch, export validation,
every part empty) or an internal error; 2 bad input: an argument, an input
file, a model dir or checkpoint that cannot be used (the message names it and
says what to do); 130 / 143 interrupted by SIGINT/SIGTERM (nothing written).

SIGINT/SIGTERM handling is installed first, before any heavy import. The
torch-side subcommands (``export``, ``verify --backend reference``) live in
:mod:`holopart_infer.export` and are imported only when asked for, so the runtime never
imports torch. Backends are opened through :func:`holopart_infer.engines.open_backend` only.

A command is a module of this package listed in :data:`COMMANDS`, with the hook:

* ``NAME``, ``HELP`` (and optionally ``DESCRIPTION``): its name and ``--help`` text;
* ``add_arguments(parser, argv)``: declares its arguments on its subparser (``argv`` is
  the whole command line, for help that depends on it, e.g. ``run --model DIR --help``
  showing that model's defaults); the completion-option flags come from
  :mod:`holopart_infer.cli.options`, made from the option metadata;
* ``run(args) -> int``: does the work from the parsed arguments and returns the exit code;
  this is the only place that prints. The library modules it calls (``batch``, ``serve``,
  ``ray_runner``, ``pipeline``) take no argparse and print nothing.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from holopart_infer import fsafe
from holopart_infer.cli import options  # noqa: F401  (the shared option arguments)
from holopart_infer.cli.options import join_up_values
from holopart_infer.errors import BackendUnavailable, HoloPartError, InputError, Interrupted  # noqa: F401

log = logging.getLogger("holopart_infer")

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2

#: the subcommands' modules, in ``--help`` order
COMMANDS = ("run", "demo", "verify", "export", "batch", "serve", "inspect")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v / -q are accepted before or after the subcommand: the subparsers share
    # them with default=SUPPRESS so a flag given before is not reset after
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, no third-party warnings")
    p = argparse.ArgumentParser(
        prog="holopart-infer",
        description="HoloPart inference: complete the parts of a segmented 3D object into watertight solids.",
        epilog="Exit codes: 0 success; 1 failed check or internal error; 2 bad input (argument, input file, "
               "model dir or checkpoint); 130/143 interrupted by SIGINT/SIGTERM (nothing written).")
    # the main parser's own -v/-q (default False), not the shared ones: argparse shares a parent's
    # action objects, so set_defaults here would also reset what a flag before the subcommand set
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=False,
                   help="no progress bars, no third-party warnings")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"{__name__}.{name}")
        parser = sub.add_parser(command.NAME, parents=[common], help=command.HELP,
                                description=getattr(command, "DESCRIPTION", None))
        command.add_arguments(parser, argv)
        parser.set_defaults(func=command.run)
    return p


def _run(argv: list[str] | None) -> int:
    argv = join_up_values([str(a) for a in (sys.argv[1:] if argv is None else argv)])
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if args.quiet and not args.verbose:
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        if not isinstance(e, HoloPartError):
            raise
        print(f"error: {e}", file=sys.stderr)  # a failed check: EngineError, EmptyResult
        return EXIT_FAIL
    except (HoloPartError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the exit code (see the module docstring)."""
    with fsafe.signals_raise():  # first: before any heavy import
        try:
            code = _run(argv)
        except (Interrupted, KeyboardInterrupt) as e:
            return _interrupted(e)
        except Exception as e:  # internal error: say so, traceback with -v
            if fsafe.pending_signal() is not None:  # a dependency turned our interrupt into another error
                return _interrupted(Interrupted(fsafe.pending_signal()))
            log.debug("internal error", exc_info=True)
            print(f"internal error: {type(e).__name__}: {e} (run with -v for the traceback)", file=sys.stderr)
            return EXIT_FAIL
        if fsafe.pending_signal() is not None:  # swallowed by a dependency: still an interrupt
            return _interrupted(Interrupted(fsafe.pending_signal()))
        return code


def _interrupted(e: BaseException) -> int:
    fsafe.remove_temporaries()
    sig = e if isinstance(e, Interrupted) else Interrupted(2)
    print(f"{sig}", file=sys.stderr)
    return sig.exit_code

