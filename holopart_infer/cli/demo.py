"""``holopart-infer demo``: the whole pipeline on an embedded object and the embedded model."""
from __future__ import annotations

from pathlib import Path

from holopart_infer.cli.options import add_option_args, add_run_args, help_defaults, options_from, settings_line
from holopart_infer.cli.run import InputView, add_input_view_args, check_outputs, complete_and_write

NAME = "demo"
HELP = "run the whole pipeline on the embedded object and model"


def add_arguments(d, argv: list[str]) -> None:
    from holopart_infer import assets
    from holopart_infer.pipeline import CompletionOptions

    d.add_argument("-o", "--output", default="holopart_demo.glb", help="output .glb (default holopart_demo.glb)")
    d.add_argument("--preview", help="preview image .png/.jpg (default: the output's name with .png)")
    d.add_argument("--object", choices=list(assets.DEMO_OBJECTS), default=assets.DEFAULT_DEMO_OBJECT,
                   help=f"embedded object to complete (default {assets.DEFAULT_DEMO_OBJECT})")
    add_run_args(d)
    try:
        model_dir = str(assets.demo_model_path())
    except FileNotFoundError:
        model_dir = None
    shown = {**(help_defaults(model_dir) or CompletionOptions().as_dict()), **assets.DEMO_PRESET}
    add_option_args(d, shown, "holopart-mini's manifest with the demo's quick settings")
    add_input_view_args(d, parts_flag=False)


def run(args) -> int:
    from holopart_infer import assets
    from holopart_infer.pipeline import load

    output = Path(args.output)
    preview = Path(args.preview) if args.preview else output.with_suffix(".png")
    view = InputView.from_args(args)
    check_outputs(output, preview, args.overwrite, [], view.turntable)
    print(f"demo: holopart-mini (a small HoloPart trained on synthetic part assemblies, "
          f"benchmarks/RESULTS-mini.md) completes the embedded '{args.object}' object: "
          f"{assets.DEMO_OBJECT_DESCRIPTIONS[args.object]}")
    model = load(assets.demo_model_path(), backend=args.backend, device=args.device,
                 verify_integrity=not args.no_verify)
    opts = options_from(args, model.default_options().replace(**assets.DEMO_PRESET))
    print(settings_line(args, opts, {**(model.defaults or {}), **assets.DEMO_PRESET}, "the demo"))
    return complete_and_write(model, assets.demo_object_path(args.object), None, output, preview, opts,
                              args.overwrite, args.quiet, [], view)
