"""The ``holopart-infer`` command.

Exit codes: 0 success, 1 failure of a check or an internal error, 2 bad input
(the message names it). The torch-side subcommands (``export``, ``verify
--backend torch``) live in the ``export`` package and are imported only when
asked for, so the runtime never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

from holopart_infer.errors import BackendUnavailable, HoloPartError, InputError, missing_extra

log = logging.getLogger("holopart_infer")

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _torch_side(module: str, what: str):
    """Import an ``export`` module, or raise the install hint if torch is missing."""
    if importlib.util.find_spec("torch") is None:
        raise missing_extra("torch", "torch", what)
    return importlib.import_module(module)


# --------------------------------------------------------------------------- verify
def _make_verify_backend(args, weights: Path, tmp: Path):
    if args.backend == "torch":
        tb = _torch_side("export.torch_backend", "verify --backend torch")
        return tb.TorchBackend.from_checkpoint(weights)
    if args.backend == "onnxruntime":
        from holopart_infer.engines.onnxruntime import OrtBackend

        model = Path(args.model) if args.model else None
        if model is None:
            exp = _torch_side("export.onnx_export", "verify --backend onnxruntime without --model (it exports first)")
            model = exp.export_model(weights, tmp / "model", precision="fp32")
        return OrtBackend.from_model_dir(model, device=args.device)
    raise InputError(f"--backend must be torch or onnxruntime, got {args.backend!r}")


def cmd_verify(args) -> int:
    from holopart_infer.checkpoint import read_config
    from holopart_infer.verify import TOLERANCE, load_cases, run_checks

    golden = Path(args.golden_dir)
    weights = golden / "weights"
    try:
        cases = load_cases(golden)
        if not weights.is_dir():
            raise InputError(f"{weights}: missing (a golden folder holds weights/ and cases.npz)")
        scheduler = read_config(weights, "scheduler")
    except HoloPartError as e:
        print(f"error: unusable golden folder: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with tempfile.TemporaryDirectory(prefix="holopart-verify-") as tmp:
        try:
            backend = _make_verify_backend(args, weights, Path(tmp))
        except BackendUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except HoloPartError as e:
            print(f"error: unusable golden folder {golden}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

        def show(r):
            print(f"{r.name:<28} rel_err={r.rel_error:.3e}  {'ok' if r.ok else 'FAIL'}", flush=True)

        t0 = time.perf_counter()
        results = run_checks(backend, cases, scheduler, on_result=show)
    bad = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(bad)}/{len(results)} outputs within {TOLERANCE:g} "
          f"(backend {args.backend}, {time.perf_counter() - t0:.1f}s)")
    return EXIT_FAIL if bad else EXIT_OK


# --------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    exp = _torch_side("export.onnx_export", "export")
    out = exp.export_model(Path(args.weights_dir), Path(args.out_dir), precision=args.precision,
                           overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="holopart-infer", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="recompute a golden folder's outputs and compare (tolerance 1e-4)")
    v.add_argument("golden_dir")
    v.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    v.add_argument("--model", help="exported model dir (onnxruntime backend); default: export the golden weights first")
    v.add_argument("--device", default="cpu", help="onnxruntime device: cpu or cuda")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("export", help="export a checkpoint to ONNX graphs + manifest (needs the [torch] extra)")
    e.add_argument("weights_dir")
    e.add_argument("out_dir")
    e.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    e.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (HoloPartError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
