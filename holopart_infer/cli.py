"""The ``holopart-infer`` command.

Exit codes: 0 success, 1 failure of a check or an internal error, 2 bad input
(the message names it). Backends are opened through
:func:`holopart_infer.engines.open_backend` only. The torch-side code
(``export``, ``verify --backend reference``, and ``verify`` without ``--model``,
which exports the golden weights first) lives in :mod:`holopart_infer.export`
and is imported lazily, only by those subcommands, so the runtime never imports
torch or the export side.
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
#: ``verify --backend``: the faithful reference model (export side) or any registered backend
def _verify_backends() -> tuple[str, ...]:
    from holopart_infer.engines import BACKENDS

    return ("reference", *BACKENDS)


def _make_verify_backend(args, weights: Path, tmp: Path):
    from holopart_infer.engines import BACKENDS, MODEL_DIR, open_backend

    if args.backend == "reference":
        # the faithful PyTorch model lives on the export side: imported here, lazily
        tb = _torch_side("holopart_infer.export.torch_backend", "verify --backend reference")
        return tb.TorchBackend.from_checkpoint(weights)
    spec = BACKENDS[args.backend]
    path = weights
    if spec.runs == MODEL_DIR:
        path = Path(args.model) if args.model else None
        if path is None:
            # no model dir given: export the golden weights first (export side, lazily)
            exp = _torch_side("holopart_infer.export.onnx_export",
                              f"verify --backend {args.backend} without --model (it exports first)")
            path = exp.export_model(weights, tmp / "model", precision="fp32")
    # golden outputs are fp32: run fp32 where the backend has a choice, the model dir's precision otherwise
    precision = None if spec.default_precision.get(args.device, "fp32") is None else "fp32"
    return open_backend(path, backend=args.backend, device=args.device, precision=precision)


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


# --------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    exp = _torch_side("holopart_infer.export.onnx_export", "export")
    out = exp.export_model(Path(args.weights_dir), Path(args.out_dir), precision=args.precision,
                           overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return EXIT_OK


# --------------------------------------------------------------------------- run / demo
class _Bars:
    """One tqdm bar per pipeline stage, on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:<12}", leave=True, file=sys.stderr,
                                          dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:  # stage finished: freeze its elapsed time now
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _check_output(path: Path, what: str, overwrite: bool, inputs: list[Path]) -> None:
    resolved = path.resolve()
    for src in inputs:
        if src is not None and Path(src).exists() and Path(src).resolve() == resolved:
            raise InputError(f"{what} {path} is also an input; choose another output path (inputs are never altered)")
    if path.exists() and not overwrite:
        raise InputError(f"{what} {path} already exists; pass --overwrite to replace it or choose another path")
    if not path.parent.exists():
        raise InputError(f"{what} {path}: folder {path.parent} does not exist")


def _complete_and_write(model, input_path, labels, output: Path, preview: Path | None, opts,
                        overwrite: bool, quiet: bool, view=None) -> int:
    import os

    from holopart_infer.parts_io import load_parts

    view = view or _InputView()
    _check_output(output, "output", overwrite, [input_path, labels])
    if preview is not None:
        _check_output(preview, "preview", overwrite, [input_path, labels, output])
    if view.turntable is not None:
        _check_output(view.turntable, "turntable", overwrite, [input_path, labels, output, preview])
    bars = _Bars(not quiet)
    t0 = time.perf_counter()
    parts = load_parts(input_path, labels=labels, parts=view.parts)
    try:
        result = model.complete(parts, options=opts, progress=bars)
    finally:
        bars.close()
    # render the pictures to temp files first: on any failure nothing is written
    pictures = [(dest, dest.with_name(f".{dest.name}.tmp-{os.getpid()}{dest.suffix}"))
                for dest in (preview, view.turntable) if dest is not None]
    try:
        if preview is not None:
            from holopart_infer.preview import render_comparison

            render_comparison(parts, result, pictures[0][1], exploded=view.exploded)
        if view.turntable is not None:
            from holopart_infer.preview import render_turntable

            render_turntable(parts, result, pictures[-1][1], exploded=view.exploded)
        result.save(output, source=input_path)
        for dest, tmp in pictures:
            os.replace(tmp, dest)
    finally:
        for _, tmp in pictures:
            if tmp.exists():
                tmp.unlink()
    total = time.perf_counter() - t0
    print(f"wrote {output} ({len(result.parts)} parts)" + "".join(f" and {d}" for d, _ in pictures))
    print(f"backend {model.backend_name} on {model.device} ({model.precision})")
    for stage, sec in result.timings.items():
        print(f"  {stage:<14} {sec:8.2f} s")
    q = result.stats.get("decoder_queries_per_level", {})
    if q:
        print("  decoder queries per level: " + ", ".join(f"{k}: {v:,}" for k, v in q.items()))
    print(f"  {'total':<14} {total:8.2f} s")
    return EXIT_OK


def _options_from(args, base=None, **defaults):
    """CompletionOptions: ``base`` (the model's defaults), then ``defaults``, then the flags given."""
    from dataclasses import asdict

    from holopart_infer.pipeline import CompletionOptions

    kw = {**(asdict(base) if base is not None else {}), **defaults}
    for name in ("steps", "guidance", "seed", "depth", "parts_per_batch", "decimate", "num_points", "latent_tokens",
                 "min_component"):
        val = getattr(args, name, None)
        if val is not None:
            kw[name] = val
    if getattr(args, "no_decimate", False):
        kw["decimate"] = None
    if getattr(args, "no_normalize", False):
        kw["normalize"] = False
    if getattr(args, "open_at_bounds", False):
        kw["close_at_bounds"] = False
    kw.update(_input_view_options(args))
    return CompletionOptions(**kw)


def cmd_run(args) -> int:
    from holopart_infer.pipeline import load

    if bool(args.weights) == bool(args.model):
        raise InputError("pass exactly one of --weights CHECKPOINT_DIR or --model MODEL_DIR")
    input_path = Path(args.input)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    labels = Path(args.labels) if args.labels else None
    model = load(args.weights or args.model, backend=args.backend, device=args.device,
                 precision=args.precision, engine_cache=args.engine_cache, graph=args.graph)
    return _complete_and_write(model, input_path, labels, Path(args.output),
                               Path(args.preview) if args.preview else None,
                               _options_from(args, model.default_options()),
                               args.overwrite, args.quiet, _InputView.from_args(args))


DEMO_DEFAULTS = dict(steps=20, depth=7, decimate=5000, min_component=0.2)  # floaters dropped for the picture


def cmd_demo(args) -> int:
    from holopart_infer import assets
    from holopart_infer.pipeline import load

    print(f"demo: holopart-mini (a small HoloPart trained on synthetic part assemblies, "
          f"benchmarks/RESULTS-mini.md) completes the embedded '{args.object}' object: "
          f"{assets.DEMO_OBJECT_DESCRIPTIONS[args.object]}")
    model = load(assets.demo_model_path(), backend=args.backend, device=args.device)
    output = Path(args.output)
    preview = Path(args.preview) if args.preview else output.with_suffix(".png")
    return _complete_and_write(model, assets.demo_object_path(args.object), None, output, preview,
                               _options_from(args, model.default_options(), **DEMO_DEFAULTS), args.overwrite,
                               args.quiet, _InputView.from_args(args))


# --------------------------------------------------------------------------- parts, appearance, pictures
class _InputView:
    """The run/demo flags about how parts are read and pictured (not completion knobs)."""

    def __init__(self, parts: str = "auto", exploded: float = 0.0, turntable: Path | None = None):
        self.parts, self.exploded, self.turntable = parts, exploded, turntable

    @classmethod
    def from_args(cls, args) -> "_InputView":
        exploded = getattr(args, "exploded", None) or 0.0
        if exploded < 0:
            raise InputError(f"--exploded must be >= 0, got {exploded}")
        turntable = getattr(args, "turntable", None)
        if turntable and Path(turntable).suffix.lower() not in (".gif", ".mp4"):
            raise InputError(f"--turntable {turntable}: expected a .gif (or .mp4) path")
        preview = getattr(args, "preview", None)
        if preview and Path(preview).suffix.lower() != ".png":
            raise InputError(f"--preview {preview}: the preview is a PNG image; give a .png path")
        return cls(getattr(args, "parts", None) or "auto", exploded, Path(turntable) if turntable else None)


def _input_view_options(args) -> dict:
    """CompletionOptions fields set by the flags of :func:`_add_input_view_args`."""
    kw = {}
    if getattr(args, "no_appearance", False):
        kw["appearance"] = False
    if getattr(args, "no_thin_parts", False):
        kw["thin_parts"] = False
    return kw


def _add_input_view_args(p: argparse.ArgumentParser, parts_flag: bool = True) -> None:
    from holopart_infer.parts_io import PARTS_MODES

    if parts_flag:
        p.add_argument("--parts", choices=PARTS_MODES, default="auto",
                       help="how one file is cut into parts: auto (scene nodes; OBJ objects/groups; STL solids), "
                            "primitives (one part per glTF primitive), components (connected pieces)")
    p.add_argument("--no-appearance", dest="no_appearance", action="store_true",
                   help="colour parts from a palette instead of carrying the input's colours/texture over")
    p.add_argument("--no-thin-parts", dest="no_thin_parts", action="store_true",
                   help="leave parts that decode empty empty (default: retry on a fitted grid, then keep the "
                        "input surface closed and thickened)")
    p.add_argument("--exploded", type=float, default=0.0,
                   help="preview/turntable: move parts apart by this factor (e.g. 0.5) so hidden parts show")
    p.add_argument("--turntable", help="also write a rotating view, input vs completed (.gif; .mp4 with imageio-ffmpeg)")


def _add_sampling_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    d = defaults or {}
    p.add_argument("--steps", type=int, help=f"sampler steps (default {d.get('steps', 50)})")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's, else 3.5)")
    p.add_argument("--seed", type=int, help="seed for sampling, token selection and noise (default 0)")
    p.add_argument("--depth", type=int, help=f"octree depth: final grid 2^depth-8 cells (default {d.get('depth', 9)})")
    p.add_argument("--parts-per-batch", dest="parts_per_batch", type=int, help="parts denoised together (default 8)")
    p.add_argument("--decimate", type=int, help=f"target faces per part (default {d.get('decimate', 10000)})")
    p.add_argument("--no-decimate", action="store_true", help="keep the full marching-cubes mesh")
    p.add_argument("--min-component", dest="min_component", type=float,
                   help="drop mesh pieces smaller (in area) than this fraction of a part's largest piece "
                        f"(default {d.get('min_component', 0)}; 0 keeps all, as the reference)")
    p.add_argument("--open-at-bounds", action="store_true",
                   help="leave parts cut by the extraction box open, as the reference (default: cap them)")
    p.add_argument("--num-points", dest="num_points", type=int,
                   help="surface samples per part (default: the model's, else 20480)")
    p.add_argument("--latent-tokens", dest="latent_tokens", type=int,
                   help="latent length (default: the model's, else 2048 as the published model)")
    p.add_argument("--no-normalize", action="store_true",
                   help="do not normalize the object into the model frame (input must already be about [-1, 1])")
    from holopart_infer.engines import backend_names

    p.add_argument("--backend", choices=list(backend_names()), default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="holopart-infer",
        description="HoloPart inference: complete the parts of a segmented 3D object into watertight solids.",
        epilog="Exit codes: 0 success, 1 failed check or internal error, 2 bad input.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="complete the parts of an object and write a glb")
    r.add_argument("input", help="glb/gltf scene (one node per part), multi-piece OBJ/STL, a mesh with --labels or "
                                 "--parts components, a folder of part meshes, or a SAMesh/SAMPart3D output folder")
    r.add_argument("-o", "--output", required=True, help="output .glb")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--weights", help="checkpoint dir (published layout; needs the [torch] extra)")
    src.add_argument("--model", help="exported model dir (manifest.json + ONNX)")
    r.add_argument("--labels", help="per-face part labels (.npy, .json incl. SAMesh face2label.json, .txt) for a "
                                    "single-mesh input; labels < 0 are unassigned (context, in no part)")
    r.add_argument("--preview", help="also write a PNG: input parts and completed parts side by side")
    r.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="torch / TensorRT precision (default: torch fp32 on CPU, bf16 on CUDA; TensorRT fp16)")
    r.add_argument("--engine-cache", dest="engine_cache", help="TensorRT engine cache folder")
    r.add_argument("--cuda-graph", dest="graph", action="store_const", const="cuda_graph",
                   help="torch backend on CUDA: replay each guided step as a captured CUDA graph")
    _add_sampling_args(r)
    _add_input_view_args(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the whole pipeline on the embedded object and model")
    d.add_argument("-o", "--output", default="holopart_demo.glb", help="output .glb (default holopart_demo.glb)")
    d.add_argument("--preview", help="preview PNG (default: next to the output)")
    from holopart_infer import assets

    d.add_argument("--object", choices=list(assets.DEMO_OBJECTS), default=assets.DEFAULT_DEMO_OBJECT,
                   help=f"embedded object to complete (default {assets.DEFAULT_DEMO_OBJECT})")
    _add_sampling_args(d, DEMO_DEFAULTS)
    _add_input_view_args(d, parts_flag=False)
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("verify", help="recompute a golden folder's outputs and compare (tolerance 1e-4)")
    v.add_argument("golden_dir")
    v.add_argument("--backend", choices=list(_verify_backends()), default="reference",
                   help="reference: the faithful PyTorch model (needs [torch]); or a runtime backend "
                        "(default reference)")
    v.add_argument("--model", help="exported model dir (onnxruntime/tensorrt); default: export the golden weights "
                                   "first (needs [torch])")
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("export", help="export a checkpoint to ONNX graphs + manifest (needs the [torch] extra)")
    e.add_argument("weights_dir")
    e.add_argument("out_dir")
    e.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    e.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_export)

    from holopart_infer.batch import add_batch_command

    add_batch_command(sub)  # `batch`: many objects, resumable, optionally on Ray (holopart_infer/batch.py)

    from holopart_infer.serve import add_subcommand as add_serve_subcommand  # the service owns its flags

    add_serve_subcommand(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
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
    except Exception as e:  # internal error: say so, traceback with -v
        log.debug("internal error", exc_info=True)
        print(f"internal error: {type(e).__name__}: {e} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
