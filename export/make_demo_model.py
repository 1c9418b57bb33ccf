"""Regenerate the embedded demo model (``holopart_infer/assets/demo_model``).

The demo model is the "tiny" preset of :mod:`export.random_checkpoint` with
RANDOM weights (seed 0), exported to fp32 ONNX. It exists so that
``holopart-infer demo`` runs the whole pipeline on a fresh machine without
downloads; it does not produce meaningful shapes. Run::

    python -m export.make_demo_model [--out holopart_infer/assets/demo_model]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from export.onnx_export import export_model
from export.random_checkpoint import write_random_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "holopart_infer" / "assets" / "demo_model"


def make_demo_model(out: Path = DEFAULT_OUT, overwrite: bool = True) -> Path:
    with tempfile.TemporaryDirectory(prefix="holopart-demo-") as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", "tiny", seed=0)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        return export_model(ckpt, out, precision="fp32", overwrite=overwrite, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    print(make_demo_model(args.out))


if __name__ == "__main__":
    main()
