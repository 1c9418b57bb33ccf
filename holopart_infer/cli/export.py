"""``holopart-infer export``: a checkpoint to ONNX graphs + manifest (the torch side, imported lazily)."""
from __future__ import annotations

from pathlib import Path

from holopart_infer.cli.verify import torch_side
from holopart_infer.engines.registry import PRECISIONS

NAME = "export"
HELP = "export a checkpoint to ONNX graphs + manifest (needs the [torch] extra)"
EXIT_OK = 0


def add_arguments(e, argv: list[str]) -> None:
    e.add_argument("weights_dir")
    e.add_argument("out_dir")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32")
    e.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if it is a model dir made by export (never any other folder)")


def run(args) -> int:
    import warnings

    with warnings.catch_warnings():
        if args.quiet:  # third-party import/exporter chatter (torchvision, onnxscript) stays out of -q
            warnings.simplefilter("ignore")
        exp = torch_side("holopart_infer.export.onnx_export", "export")
        out = exp.export_model(Path(args.weights_dir), Path(args.out_dir), precision=args.precision,
                               overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return EXIT_OK
