"""``holopart-infer run``: complete the parts of one object and write a glb (and pictures).

Also the output side ``demo`` shares: progress bars, the timing summary, the part scores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from holopart_infer import fsafe
from holopart_infer.cli.options import add_option_args, add_run_args, add_up_arg, help_defaults, options_from, \
    settings_line, value_after
from holopart_infer.errors import InputError
from holopart_infer.engines.registry import PRECISIONS

NAME = "run"
HELP = "complete the parts of an object and write a glb"
EXIT_OK = 0


def add_arguments(r, argv: list[str]) -> None:
    """``run``'s arguments (``argv``: the whole command line, for ``--model DIR --help``'s defaults)."""
    from holopart_infer.pipeline import CompletionOptions

    model_dir = value_after(argv, "--model")
    known = help_defaults(model_dir)
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
    add_run_args(r)
    add_option_args(r, known or CompletionOptions().as_dict(),
                    f"the model dir {model_dir}'s manifest" if known else
                    "the library's (a model dir's manifest may set its own: see run --model DIR --help)")
    r.add_argument("--cuda-graph", dest="graph", action="store_const", const="cuda_graph",
                   help="torch backend on CUDA: replay each guided step as a captured CUDA graph")
    add_input_view_args(r)


def _input_paths(args) -> list:
    """Every path the command reads: none of them may be written."""
    return [p for p in (args.input, args.labels, args.weights, args.model) if p]


def run(args) -> int:
    from holopart_infer.pipeline import load
    from holopart_infer.postprocess.preview import IMAGE_FORMATS  # noqa: F401  (imported early: fails before work)

    if bool(args.weights) == bool(args.model):
        raise InputError("pass exactly one of --weights CHECKPOINT_DIR or --model MODEL_DIR")
    input_path = Path(args.input)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    labels = Path(args.labels) if args.labels else None
    output, preview = Path(args.output), (Path(args.preview) if args.preview else None)
    inputs = _input_paths(args)
    view = InputView.from_args(args)
    if args.exploded is not None and preview is None and view.turntable is None:
        raise InputError(f"--exploded {args.exploded:g} moves parts apart in the pictures, but no picture was "
                         "asked for: add --preview OUT.png and/or --turntable OUT.gif, or drop --exploded")
    check_outputs(output, preview, args.overwrite, inputs, view.turntable)  # before loading anything
    model = load(args.weights or args.model, backend=args.backend, device=args.device,
                 precision=args.precision, engine_cache=args.engine_cache, graph=args.graph,
                 verify_integrity=not args.no_verify)
    opts = options_from(args, model.default_options())
    print(settings_line(args, opts, dict(model.defaults or {}), "the model"))
    return complete_and_write(model, input_path, labels, output, preview, opts, args.overwrite, args.quiet,
                              inputs, view)


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


def check_outputs(output: Path, preview: Path | None, overwrite: bool, inputs: list,
                  turntable: Path | None = None) -> None:
    """Everything about the outputs that can be known before any work: format,
    folder, writability, collisions with inputs and with each other."""
    from holopart_infer.postprocess.preview import IMAGE_FORMATS, TURNTABLE_FORMATS

    fsafe.check_output(output, what="output", overwrite=overwrite, inputs=inputs, suffixes=(".glb",))
    if preview is not None:
        fsafe.check_output(preview, what="preview", overwrite=overwrite, inputs=[*inputs, output],
                           suffixes=IMAGE_FORMATS)
    if turntable is not None:
        fsafe.check_output(turntable, what="turntable", overwrite=overwrite, inputs=[*inputs, output, preview],
                           suffixes=TURNTABLE_FORMATS)


def complete_and_write(model, input_path, labels, output: Path, preview: Path | None, opts,
                       overwrite: bool, quiet: bool, inputs: list, view: "InputView | None" = None) -> int:
    from holopart_infer.io.parts_io import load_parts

    view = view or InputView()
    check_outputs(output, preview, overwrite, inputs, view.turntable)
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
    q = result.stats.decoder_queries_per_level
    if q:
        print("  decoder queries per level: " + ", ".join(f"{k}: {v:,}" for k, v in q.items()))
    print(f"  {'total':<14} {total:8.2f} s")
    mem = result.stats.memory
    if mem:  # the process's peak: this command runs one completion, so it is the run's
        print(f"  peak memory {mem['peak_rss_mb']:,.0f} MB resident (input parts {mem['input_mb']:,.1f} MB, "
              f"result meshes {mem['result_mb']:,.1f} MB)")
    _print_part_scores(result)
    return EXIT_OK


def _print_part_scores(result) -> None:
    """The parts and how much to trust each (holopart_infer.postprocess.quality), as `inspect` prints them."""
    from holopart_infer.postprocess.quality import format_table

    print("parts (coverage of the input patch and growth, relative to the patch; `holopart-infer inspect OUT.glb` "
          "prints this again):")
    print(format_table([(p.name, p.quality) for p in result.parts]))


def _render_comparison(*args, **kw):
    from holopart_infer.postprocess.preview import render_comparison

    return render_comparison(*args, **kw)


def _render_turntable(*args, **kw):
    from holopart_infer.postprocess.preview import render_turntable

    return render_turntable(*args, **kw)


class InputView:
    """The run/demo flags about how parts are read and pictured (not completion knobs)."""

    def __init__(self, parts: str = "auto", exploded: float = 0.0, turntable: Path | None = None,
                 up: str | None = None):
        self.parts, self.exploded, self.turntable, self.up = parts, exploded, turntable, up

    @classmethod
    def from_args(cls, args) -> "InputView":
        exploded = getattr(args, "exploded", None) or 0.0
        if exploded < 0:
            raise InputError(f"--exploded must be >= 0, got {exploded}")
        turntable = getattr(args, "turntable", None)
        return cls(getattr(args, "parts", None) or "auto", exploded, Path(turntable) if turntable else None,
                   getattr(args, "up", None))


def add_input_view_args(p: argparse.ArgumentParser, parts_flag: bool = True) -> None:
    """--parts, --exploded, --turntable (appearance and thin parts are completion options)."""
    from holopart_infer.io.parts_io import PARTS_MODES

    if parts_flag:
        p.add_argument("--parts", choices=PARTS_MODES, default="auto",
                       help="how one file is cut into parts: auto (scene nodes; OBJ objects/groups; STL solids), "
                            "primitives (one part per glTF primitive), components (connected pieces)")
        add_up_arg(p)
    p.add_argument("--exploded", type=float, default=None,
                   help="preview/turntable: move parts apart by this factor (e.g. 0.5) so hidden parts show; "
                        "needs --preview or --turntable (default 0: parts in place)")
    p.add_argument("--turntable", help="also write a rotating view, input vs completed (.gif; .mp4 with imageio-ffmpeg)")
