"""The ``holopart-infer`` command.

Exit codes: 0 success; 1 a failed check (verify mismatch, export validation,
every part empty) or an internal error; 2 bad input: an argument, an input
file, a model dir or checkpoint that cannot be used (the message names it and
says what to do); 130 / 143 interrupted by SIGINT / SIGTERM (nothing written).

SIGINT/SIGTERM handling is installed first, before any heavy import. The
torch-side subcommands (``export``, ``verify --backend reference``) live in
:mod:`holopart_infer.export` and are imported only when asked for, so the runtime never
imports torch. Subcommands register through :data:`SUBCOMMANDS`.
Backends are opened through :func:`holopart_infer.engines.open_backend` only.
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

from holopart_infer import fsafe
from holopart_infer.engines.registry import DEVICES, PRECISIONS
from holopart_infer.errors import BackendUnavailable, HoloPartError, InputError, Interrupted, missing_extra

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
            path = exp.export_model(weights, tmp / "model", precision="fp32", progress=not args.quiet)
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
    import warnings

    with warnings.catch_warnings():
        if args.quiet:  # third-party import/exporter chatter (torchvision, onnxscript) stays out of -q
            warnings.simplefilter("ignore")
        exp = _torch_side("holopart_infer.export.onnx_export", "export")
        out = exp.export_model(Path(args.weights_dir), Path(args.out_dir), precision=args.precision,
                               overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return EXIT_OK


# --------------------------------------------------------------------------- run / demo
class _Bars:
    """One tqdm bar per pipeline stage, on stderr. Also the place where a signal a
    dependency swallowed is noticed: every progress report checks for one."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        fsafe.check_interrupt()
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


def _check_outputs(output: Path, preview: Path | None, overwrite: bool, inputs: list,
                   turntable: Path | None = None) -> None:
    """Everything about the outputs that can be known before any work: format,
    folder, writability, collisions with inputs and with each other."""
    from holopart_infer.preview import IMAGE_FORMATS, TURNTABLE_FORMATS

    fsafe.check_output(output, what="output", overwrite=overwrite, inputs=inputs, suffixes=(".glb",))
    if preview is not None:
        fsafe.check_output(preview, what="preview", overwrite=overwrite, inputs=[*inputs, output],
                           suffixes=IMAGE_FORMATS)
    if turntable is not None:
        fsafe.check_output(turntable, what="turntable", overwrite=overwrite, inputs=[*inputs, output, preview],
                           suffixes=TURNTABLE_FORMATS)


def _complete_and_write(model, input_path, labels, output: Path, preview: Path | None, opts,
                        overwrite: bool, quiet: bool, inputs: list, view: "_InputView | None" = None) -> int:
    from holopart_infer.parts_io import load_parts

    view = view or _InputView()
    _check_outputs(output, preview, overwrite, inputs, view.turntable)
    bars = _Bars(not quiet)
    t0 = time.perf_counter()
    parts = load_parts(input_path, labels=labels, parts=view.parts, up=view.up)  # kept: the pictures show it too
    steps = {"read input": time.perf_counter() - t0}  # the summary lists every step the total covers
    try:
        result = model.complete(parts, options=opts, progress=bars)
    finally:
        bars.close()
    result.inputs = tuple(dict.fromkeys([*result.inputs, *(Path(p) for p in inputs if p is not None)]))
    fsafe.check_interrupt()
    # pictures first, glb last; if a later write fails, the pictures this run made are removed
    made: list[Path] = []
    try:
        for dest, render, step in ((preview, _render_comparison, "preview"),
                                   (view.turntable, _render_turntable, "turntable")):
            if dest is None:
                continue
            existed = dest.exists()
            t = time.perf_counter()
            render(parts, result, dest, exploded=view.exploded, overwrite=overwrite, protect=result.inputs)
            steps[step] = time.perf_counter() - t
            if not existed:
                made.append(dest)
        t = time.perf_counter()
        result.save(output, overwrite=overwrite)
        steps["save"] = time.perf_counter() - t
    except BaseException:
        for dest in made:
            dest.unlink(missing_ok=True)
        raise
    total = time.perf_counter() - t0
    print(f"wrote {output} ({len(result.parts)} parts)" + "".join(f" and {d}" for d in (preview, view.turntable)
                                                                  if d is not None))
    print(f"backend {model.backend_name} on {model.device} ({model.precision})")
    listed = {"read input": steps.pop("read input"), **result.timings, **steps}
    listed["other"] = max(0.0, total - sum(listed.values()))  # progress bars, bookkeeping
    for stage, sec in listed.items():
        print(f"  {stage:<14} {sec:8.2f} s")
    q = result.stats.get("decoder_queries_per_level", {})
    if q:
        print("  decoder queries per level: " + ", ".join(f"{k}: {v:,}" for k, v in q.items()))
    print(f"  {'total':<14} {total:8.2f} s")
    mem = result.stats.get("memory")
    if mem:  # the process's peak: this command runs one completion, so it is the run's
        print(f"  peak memory {mem['peak_rss_mb']:,.0f} MB resident (input parts {mem['input_mb']:,.1f} MB, "
              f"result meshes {mem['result_mb']:,.1f} MB)")
    _print_part_scores(result)
    return EXIT_OK


def _print_part_scores(result) -> None:
    """The parts and how much to trust each (holopart_infer.quality), as `inspect` prints them."""
    from holopart_infer.quality import format_table

    print("parts (coverage of the input patch and growth, relative to the patch; `holopart-infer inspect OUT.glb` "
          "prints this again):")
    print(format_table([(p.name, p.quality) for p in result.parts]))


# --------------------------------------------------------------------------- inspect
EXIT_REPLACED = 3


def cmd_inspect(args) -> int:
    from holopart_infer.quality import EXTRAS_KEY, format_table, read_scores, status

    scored = read_scores(Path(args.result))
    if not scored or all(q is None for _, q in scored):
        raise InputError(f"{args.result}: no per-part scores stored (node extras '{EXTRAS_KEY}'); "
                         "was it written by holopart-infer run / demo / batch / serve, or result.save()?")
    print(format_table(scored))
    replaced = [n for n, q in scored if status(q) in ("replaced", "stand-in")]
    kept = [n for n, q in scored if status(q) == "implausible"]
    if replaced:
        print(f"{len(replaced)} of {len(scored)} parts were replaced by their closed visible patch: "
              + ", ".join(replaced))
    if kept:
        print(f"{len(kept)} of {len(scored)} parts are implausible and were kept (guard off): " + ", ".join(kept))
    return EXIT_REPLACED if replaced or (kept and args.strict) else EXIT_OK


def _render_comparison(*args, **kw):
    from holopart_infer.preview import render_comparison

    return render_comparison(*args, **kw)


def _render_turntable(*args, **kw):
    from holopart_infer.preview import render_turntable

    return render_turntable(*args, **kw)


# --------------------------------------------------------------------------- parts and pictures
class _InputView:
    """The run/demo flags about how parts are read and pictured (not completion knobs)."""

    def __init__(self, parts: str = "auto", exploded: float = 0.0, turntable: Path | None = None,
                 up: str | None = None):
        self.parts, self.exploded, self.turntable, self.up = parts, exploded, turntable, up

    @classmethod
    def from_args(cls, args) -> "_InputView":
        exploded = getattr(args, "exploded", None) or 0.0
        if exploded < 0:
            raise InputError(f"--exploded must be >= 0, got {exploded}")
        turntable = getattr(args, "turntable", None)
        return cls(getattr(args, "parts", None) or "auto", exploded, Path(turntable) if turntable else None,
                   getattr(args, "up", None))


def _add_input_view_args(p: argparse.ArgumentParser, parts_flag: bool = True) -> None:
    """--parts, --exploded, --turntable (appearance and thin parts are completion options)."""
    from holopart_infer.parts_io import PARTS_MODES

    if parts_flag:
        p.add_argument("--parts", choices=PARTS_MODES, default="auto",
                       help="how one file is cut into parts: auto (scene nodes; OBJ objects/groups; STL solids), "
                            "primitives (one part per glTF primitive), components (connected pieces)")
        add_up_arg(p)
    p.add_argument("--exploded", type=float, default=None,
                   help="preview/turntable: move parts apart by this factor (e.g. 0.5) so hidden parts show; "
                        "needs --preview or --turntable (default 0: parts in place)")
    p.add_argument("--turntable", help="also write a rotating view, input vs completed (.gif; .mp4 with imageio-ffmpeg)")


def add_up_arg(p: argparse.ArgumentParser) -> None:
    """``--up``: the axis pointing up in the input (holopart_infer.frames)."""
    from holopart_infer.frames import DEFAULT_UP, UP_AXES

    per = ", ".join(f"{ext} {axis}" for ext, axis in DEFAULT_UP.items())
    p.add_argument("--up", type=_up_value, default=None, metavar="{" + ",".join(UP_AXES) + "}",
                   help=f"the axis pointing up in the input; default per format ({per}); glTF is +y by its "
                        "specification, so another value there overrides it. Results are written in the "
                        "input's own frame. '--up -z' and '--up=-z' both work; any case, and 'z' means '+z'")


def _up_value(text: str) -> str:
    """``--up``'s value as the API reads it (``+Z``, ``z`` -> ``+z``); argparse names the option."""
    from holopart_infer.frames import check_up

    try:
        return check_up(text, "the value")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _join_up_values(argv: list[str]) -> list[str]:
    """``--up -z`` as ``--up=-z`` (argparse would take ``-z`` for an option)."""
    out: list[str] = []
    for a in argv:
        if out and out[-1] == "--up" and a.lower() in ("-x", "-y", "-z"):
            out[-1] = f"--up={a}"
        else:
            out.append(a)
    return out


class _Off:
    """What an off flag (``--no-decimate``) stores when the option's "off" value is None: unlike
    None (the argparse default: flag not given), it says the flag was given."""

    def __repr__(self) -> str:
        return "off"


_OFF = _Off()


def _options_from(args, base):
    """``base`` (the model's defaults, plus the demo preset), then ``--quality``'s
    preset, then the flags given (explicit flags win)."""
    from holopart_infer.pipeline import option_fields, quality_preset

    quality = getattr(args, "quality", None)
    if quality:
        base = base.replace(**quality_preset(quality))
    given = {}
    for f in option_fields():
        value = getattr(args, f.name, None)
        if value is _OFF:  # an off flag whose meaning is None (--no-decimate): None must reach the pipeline
            given[f.name] = None
        elif value is not None:
            given[f.name] = value
    opts = base.replace(**given)
    opts.validate(flags=True)
    return opts


def _settings_line(args, opts, model_defaults: dict, model_label: str) -> str:
    """Says which depth/steps a run uses and where they come from (flag, preset, model, library)."""
    from holopart_infer.pipeline import QUALITY_PRESETS

    quality = getattr(args, "quality", None)
    said = []
    for name in ("depth", "steps"):
        if getattr(args, name, None) is not None:
            said.append(f"--{name}")
        elif quality:
            said.append(f"--quality {quality}")
        elif name in model_defaults:
            said.append(f"{model_label}'s defaults")
        else:
            said.append("library default (reference)")
    named = [k for k, v in QUALITY_PRESETS.items() if v == {"depth": opts.depth, "steps": opts.steps}]
    return (f"settings: depth {opts.depth}, {opts.steps} steps" + (f" (= --quality {named[0]})" if named else "")
            + f"; from {', '.join(dict.fromkeys(said))}; --quality draft|balanced|high or --depth/--steps change it")


def _input_paths(args) -> list:
    """Every path the command reads: none of them may be written."""
    return [p for p in (args.input, args.labels, args.weights, args.model) if p]


def cmd_run(args) -> int:
    from holopart_infer.pipeline import load
    from holopart_infer.preview import IMAGE_FORMATS  # noqa: F401  (imported early: fails before work)

    if bool(args.weights) == bool(args.model):
        raise InputError("pass exactly one of --weights CHECKPOINT_DIR or --model MODEL_DIR")
    input_path = Path(args.input)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    labels = Path(args.labels) if args.labels else None
    output, preview = Path(args.output), (Path(args.preview) if args.preview else None)
    inputs = _input_paths(args)
    view = _InputView.from_args(args)
    if args.exploded is not None and preview is None and view.turntable is None:
        raise InputError(f"--exploded {args.exploded:g} moves parts apart in the pictures, but no picture was "
                         "asked for: add --preview OUT.png and/or --turntable OUT.gif, or drop --exploded")
    _check_outputs(output, preview, args.overwrite, inputs, view.turntable)  # before loading anything
    model = load(args.weights or args.model, backend=args.backend, device=args.device,
                 precision=args.precision, engine_cache=args.engine_cache, graph=args.graph,
                 verify_integrity=not args.no_verify)
    opts = _options_from(args, model.default_options())
    print(_settings_line(args, opts, dict(model.defaults or {}), "the model"))
    return _complete_and_write(model, input_path, labels, output, preview, opts, args.overwrite, args.quiet,
                               inputs, view)


def cmd_demo(args) -> int:
    from holopart_infer import assets
    from holopart_infer.pipeline import load

    output = Path(args.output)
    preview = Path(args.preview) if args.preview else output.with_suffix(".png")
    view = _InputView.from_args(args)
    _check_outputs(output, preview, args.overwrite, [], view.turntable)
    print(f"demo: holopart-mini (a small HoloPart trained on synthetic part assemblies, "
          f"benchmarks/RESULTS-mini.md) completes the embedded '{args.object}' object: "
          f"{assets.DEMO_OBJECT_DESCRIPTIONS[args.object]}")
    model = load(assets.demo_model_path(), backend=args.backend, device=args.device,
                 verify_integrity=not args.no_verify)
    opts = _options_from(args, model.default_options().replace(**assets.DEMO_PRESET))
    print(_settings_line(args, opts, {**(model.defaults or {}), **assets.DEMO_PRESET}, "the demo"))
    return _complete_and_write(model, assets.demo_object_path(args.object), None, output, preview, opts,
                               args.overwrite, args.quiet, [], view)


# --------------------------------------------------------------------------- flags from CompletionOptions
def _flag(f) -> str:
    return f.metadata["cli"] or "--" + f.name.replace("_", "-")


def _typed(f):
    """argparse ``type=`` for an option field: parses and checks the range, so a
    bad value exits 2 naming the flag and the accepted range before any work."""
    from holopart_infer.pipeline import option_problem, option_range

    kind = f.metadata["kind"]

    def parse(text: str):
        if f.metadata["optional"] and text.strip().lower() in ("none", "off"):
            return _OFF  # the option's documented "None" (off): it must reach the pipeline as None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {option_range(f)}, got {text!r}") from None
        problem = option_problem(f, value)
        if problem:
            raise argparse.ArgumentTypeError(f"expected {problem}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _manifest_defaults(model_dir: str | None) -> dict:
    """A model dir's option defaults, for ``--help`` only (plain JSON read, nothing verified)."""
    import json

    if not model_dir:
        return {}
    try:
        d = json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8")).get("defaults", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return d if isinstance(d, dict) else {}


def add_option_args(p: argparse.ArgumentParser, defaults: dict, default_source: str) -> None:
    """One flag per :class:`CompletionOptions` field (its metadata gives flag, help and range).

    Args:
        p: the (sub)parser.
        defaults: values to show as defaults (library defaults with the model's applied).
        default_source: says where the shown defaults come from.
    """
    from holopart_infer.pipeline import QUALITY_PRESETS, option_fields, option_range

    g = p.add_argument_group("completion options", f"Defaults shown: {default_source}.")
    presets = "; ".join(f"{k}: depth {v['depth']}, {v['steps']} steps" for k, v in QUALITY_PRESETS.items())
    g.add_argument("--quality", choices=list(QUALITY_PRESETS), default=None,
                   help=f"a named depth/steps pair ({presets}); --depth/--steps given as well win; default: "
                        f"the depth/steps shown below (high is the reference)")
    for f in option_fields():
        m = f.metadata
        if m["cli"] is None:
            continue
        value = defaults.get(f.name, f.default)
        if m["kind"] is not bool:
            shown = "off" if value is None else value
            g.add_argument(_flag(f), dest=f.name, type=_typed(f), default=None, metavar=f.name.upper(),
                           help=f"{m['help']}; {option_range(f)} (default {shown})")
        if m["off_flag"]:
            g.add_argument(m["off_flag"], dest=f.name, action="store_const",
                           const=_OFF if m["optional"] else False,
                           help=m["off_help"] + (" (default)" if value in (None, False) else ""))


def _common_run_args(p: argparse.ArgumentParser) -> None:
    from holopart_infer.engines import backend_names

    p.add_argument("--backend", choices=list(backend_names()), default="auto",
                   help="inference backend; auto (default) picks TensorRT, then ONNX Runtime CUDA, then ONNX "
                        "Runtime CPU for a model dir, torch for a checkpoint dir, and says which; an explicit "
                        "one that cannot run here is an error with the install hint")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default): CUDA when the backend can use it here, else the CPU; cuda without a "
                        "usable GPU is an error, never a silent fallback")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (inputs are never replaced)")
    p.add_argument("--no-verify", dest="no_verify", action="store_true",
                   help="skip the model dir's sha256 integrity check (done once per file, then remembered)")


# --------------------------------------------------------------------------- parser
def _add_run(sub, common, argv) -> None:
    from holopart_infer.pipeline import CompletionOptions

    model_dir = _value_after(argv, "--model")
    known = _manifest_defaults(model_dir)
    r = sub.add_parser("run", parents=[common], help="complete the parts of an object and write a glb")
    r.add_argument("input", help="glb/gltf scene (one node per part), multi-piece OBJ/STL, a mesh with --labels or "
                                 "--parts components, a folder of part meshes, or a SAMesh/SAMPart3D output folder")
    r.add_argument("-o", "--output", required=True, help="output .glb")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--weights", help="checkpoint dir (published layout; needs the [torch] extra)")
    src.add_argument("--model", help="exported model dir (manifest.json + ONNX)")
    r.add_argument("--labels", help="per-face part labels (.npy, .json incl. SAMesh face2label.json, .txt) for a "
                                    "single-mesh input; labels < 0 are unassigned (context, in no part)")
    r.add_argument("--preview", help="also write a picture (.png, .jpg or .jpeg): input parts and completed parts "
                                     "side by side")
    r.add_argument("--precision", choices=PRECISIONS,
                   help="torch / TensorRT precision (ONNX Runtime runs a model dir at its exported precision)")
    r.add_argument("--engine-cache", dest="engine_cache", help="TensorRT engine cache folder")
    _common_run_args(r)
    add_option_args(r, {**CompletionOptions().__dict__, **known},
                    f"the model dir {model_dir}'s manifest" if known else
                    "the library's (a model dir's manifest may set its own: see run --model DIR --help)")
    r.add_argument("--cuda-graph", dest="graph", action="store_const", const="cuda_graph",
                   help="torch backend on CUDA: replay each guided step as a captured CUDA graph")
    _add_input_view_args(r)
    r.set_defaults(func=cmd_run)


def _add_demo(sub, common, argv) -> None:
    from holopart_infer import assets

    d = sub.add_parser("demo", parents=[common], help="run the whole pipeline on the embedded object and model")
    d.add_argument("-o", "--output", default="holopart_demo.glb", help="output .glb (default holopart_demo.glb)")
    d.add_argument("--preview", help="preview image .png/.jpg (default: the output's name with .png)")
    d.add_argument("--object", choices=list(assets.DEMO_OBJECTS), default=assets.DEFAULT_DEMO_OBJECT,
                   help=f"embedded object to complete (default {assets.DEFAULT_DEMO_OBJECT})")
    _common_run_args(d)
    from holopart_infer.pipeline import CompletionOptions

    try:
        model_dir = str(assets.demo_model_path())
    except FileNotFoundError:
        model_dir = None
    add_option_args(d, {**CompletionOptions().__dict__, **_manifest_defaults(model_dir), **assets.DEMO_PRESET},
                    "holopart-mini's manifest with the demo's quick settings")
    _add_input_view_args(d, parts_flag=False)
    d.set_defaults(func=cmd_demo)


def _add_verify(sub, common, argv) -> None:
    v = sub.add_parser("verify", parents=[common],
                       help="recompute a golden folder's outputs and compare (tolerance 1e-4)")
    v.add_argument("golden_dir")
    v.add_argument("--backend", choices=list(_verify_backends()), default="reference",
                   help="reference: the faithful PyTorch model (needs [torch]); or a runtime backend "
                        "(default reference)")
    v.add_argument("--model", help="exported model dir (onnxruntime/tensorrt); default: export the golden weights "
                                   "first (needs [torch])")
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    v.set_defaults(func=cmd_verify)


def _add_export(sub, common, argv) -> None:
    e = sub.add_parser("export", parents=[common],
                       help="export a checkpoint to ONNX graphs + manifest (needs the [torch] extra)")
    e.add_argument("weights_dir")
    e.add_argument("out_dir")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32")
    e.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if it is a model dir made by export (never any other folder)")
    e.set_defaults(func=cmd_export)


#: Subcommands, in ``--help`` order: each ``add(subparsers, common_parent, argv)``
#: adds its parser (with ``parents=[common_parent]``: -v/-q anywhere) and sets ``func``.
def _add_batch(sub, common, argv) -> None:
    from holopart_infer.batch import add_batch_command  # many objects, resumable, optionally on Ray

    add_batch_command(sub, common)


def _add_serve(sub, common, argv) -> None:
    from holopart_infer.serve import add_subcommand  # the service owns its flags

    add_subcommand(sub, common)


def _add_inspect(sub, common, argv) -> None:
    i = sub.add_parser("inspect", parents=[common],
                       help="print the per-part scores stored in a result glb; exit 3 when a part was replaced",
                       description="Print how much to trust each part of a result (the scores stored in its glb "
                                   "node extras; holopart_infer.quality). Exit codes: 0 every part is the model's "
                                   "(plausible, or kept with --keep-implausible), 3 some part was replaced by its "
                                   "closed visible patch (implausible, or left empty by the model; with --strict "
                                   "also: a kept part is implausible), 2 unreadable file or no stored scores.")
    i.add_argument("result", help="a .glb written by run / demo / batch / serve")
    i.add_argument("--strict", action="store_true",
                   help="also exit 3 when a part is implausible but was kept (--keep-implausible)")
    i.set_defaults(func=cmd_inspect)


SUBCOMMANDS = [_add_run, _add_demo, _add_verify, _add_export, _add_batch, _add_serve, _add_inspect]


def _value_after(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


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
    for add in SUBCOMMANDS:
        add(sub, common, argv)
    return p


def _run(argv: list[str] | None) -> int:
    argv = _join_up_values([str(a) for a in (sys.argv[1:] if argv is None else argv)])
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


if __name__ == "__main__":
    sys.exit(main())
