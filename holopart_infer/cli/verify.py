"""``holopart-infer verify``: recompute a golden folder's outputs and compare.

The torch side (``--backend reference``, exporting the golden weights first) lives in
:mod:`holopart_infer.export` and is imported only when asked for.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from holopart_infer.errors import BackendUnavailable, HoloPartError, InputError, missing_extra

NAME = "verify"
HELP = "recompute a golden folder's outputs and compare (tolerance 1e-4)"
EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(v, argv: list[str]) -> None:
    v.add_argument("golden_dir")
    v.add_argument("--backend", choices=list(_verify_backends()), default="reference",
                   help="reference: the faithful PyTorch model (needs [torch]); or a runtime backend "
                        "(default reference)")
    v.add_argument("--model", help="exported model dir (onnxruntime/tensorrt); default: export the golden weights "
                                   "first (needs [torch])")
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")


def torch_side(module: str, what: str):
    """Import an ``export`` module, or raise the install hint if torch is missing."""
    if importlib.util.find_spec("torch") is None:
        raise missing_extra("torch", "torch", what)
    return importlib.import_module(module)


#: ``verify --backend``: the faithful reference model (export side) or any registered backend
def _verify_backends() -> tuple[str, ...]:
    from holopart_infer.engines import BACKENDS

    return ("reference", *BACKENDS)


def _make_verify_backend(args, weights: Path, tmp: Path):
    from holopart_infer.engines import BACKENDS, MODEL_DIR, open_backend

    if args.backend == "reference":
        # the faithful PyTorch model lives on the export side: imported here, lazily
        tb = torch_side("holopart_infer.export.torch_backend", "verify --backend reference")
        return tb.TorchBackend.from_checkpoint(weights)
    spec = BACKENDS[args.backend]
    path = weights
    if spec.runs == MODEL_DIR:
        path = Path(args.model) if args.model else None
        if path is None:
            # no model dir given: export the golden weights first (export side, lazily)
            exp = torch_side("holopart_infer.export.onnx_export",
                              f"verify --backend {args.backend} without --model (it exports first)")
            path = exp.export_model(weights, tmp / "model", precision="fp32", progress=not args.quiet)
    # golden outputs are fp32: run fp32 where the backend has a choice, the model dir's precision otherwise
    precision = None if spec.default_precision.get(args.device, "fp32") is None else "fp32"
    return open_backend(path, backend=args.backend, device=args.device, precision=precision)


def run(args) -> int:
    from holopart_infer.model.checkpoint import read_config
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
        try:
            results = run_checks(backend, cases, scheduler, on_result=show)
        finally:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
    bad = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(bad)}/{len(results)} outputs within {TOLERANCE:g} "
          f"(backend {args.backend}, {time.perf_counter() - t0:.1f}s)")
    return EXIT_FAIL if bad else EXIT_OK
