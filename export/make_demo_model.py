"""Regenerate the embedded demo model (``holopart_infer/assets/demo_model``).

The demo model is holopart-mini (issue 8): the ``tiny`` HoloPart configuration
trained on synthetic part assemblies (docs/training.md, benchmarks/RESULTS-mini.md).
Its checkpoint, in the published layout, ships with the export package in
``export/holopart_mini/``; the demo model is its fp32 ONNX export (the
``inference_defaults`` of its ``model_index.json`` travel into the manifest).
``--random`` rebuilds the earlier stand-in instead: the ``tiny`` preset with
random weights (seed 0). Run::

    python -m holopart_infer.export.make_demo_model [--out holopart_infer/assets/demo_model] [--random]
    python -m holopart_infer.export.make_demo_model --objects     # rewrite demo_mug.glb / demo_lamp.glb

The synthetic demo objects (see ``holopart_infer.assets.DEMO_OBJECTS``) come from
seed 9000, which no training, validation or test set uses; they were fixed before
the model's output on them was seen.

Frames: every embedded demo object is a glTF file and so +Y up, like HoloPart's
training data. :mod:`holopart_infer.export.synthetic` builds its objects +Z up
(:data:`SYNTHETIC_UP`), so :func:`write_demo_objects` turns each one to +Y up as
it writes it (:func:`holopart_infer.io.frames.up_rotation`, exact). holopart-mini v1
was trained on those objects as built (+Z up); its shipped weights were then refolded to +Y
(:mod:`holopart_infer.export.refold_up`, exact), so its ``model_index.json`` (and so the demo
model's manifest) says ``"up_axis": "+y"`` and the Y-up demo files reach it unturned.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from .onnx_export import export_model
from .random_checkpoint import write_random_checkpoint
from .synthetic import SYNTHETIC_UP  # noqa: F401  (re-exported: the demo objects' source frame)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "holopart_infer" / "assets"
DEFAULT_OUT = ASSETS / "demo_model"
#: demo object name -> (make_object seed, template, cameras)
SYNTHETIC_DEMO_OBJECTS = {"mug": ((9000, 0), "mug", 16), "lamp": ((9000, 1), "lamp", 16)}
MINI_CHECKPOINT = Path(__file__).resolve().parent / "holopart_mini"
#: the up axis of the embedded demo files (glTF's)
DEMO_UP = "+y"


def make_demo_model(out: Path = DEFAULT_OUT, overwrite: bool = True, random_weights: bool = False,
                    checkpoint: Path = MINI_CHECKPOINT) -> Path:
    with tempfile.TemporaryDirectory(prefix="holopart-demo-") as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", "tiny", seed=0) if random_weights else checkpoint
        if out.exists() and overwrite:
            shutil.rmtree(out)
        return export_model(ckpt, out, precision="fp32", overwrite=overwrite, progress=False)


def demo_object(name: str):
    """The :class:`holopart_infer.export.synthetic.SyntheticObject` behind an embedded demo object."""
    from .synthetic import make_object

    seed, template, views = SYNTHETIC_DEMO_OBJECTS[name]
    return make_object(seed, template, n_views=views)


def demo_patches(name: str) -> tuple[list[str], list[tuple]]:
    """Part names and visible patches ``(vertices, faces)`` of a synthetic demo object, turned
    from :data:`SYNTHETIC_UP` to :data:`DEMO_UP` (what ``demo_<name>.glb`` holds)."""
    from holopart_infer.io.frames import up_rotation

    obj = demo_object(name)
    turn = up_rotation(SYNTHETIC_UP, DEMO_UP)
    return obj.names, [(turn.apply(v), f) for v, f in obj.patches()]


def write_demo_objects(folder: Path = ASSETS) -> list[Path]:
    """Write the visible patches of each synthetic demo object as ``demo_<name>.glb``, +Y up."""
    from holopart_infer.assets import DEMO_OBJECTS
    from holopart_infer.io.parts_io import write_scene

    out = []
    for n in SYNTHETIC_DEMO_OBJECTS:
        names, patches = demo_patches(n)
        out.append(Path(write_scene(patches, names, Path(folder) / DEMO_OBJECTS[n], overwrite=True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--checkpoint", type=Path, default=MINI_CHECKPOINT,
                    help="checkpoint to export (default: the shipped holopart-mini)")
    ap.add_argument("--random", action="store_true", help="the tiny preset with random weights instead")
    ap.add_argument("--objects", action="store_true", help="write the synthetic demo objects instead")
    args = ap.parse_args()
    if args.objects:
        for p in write_demo_objects():
            print(p)
        return
    print(make_demo_model(args.out, random_weights=args.random, checkpoint=args.checkpoint))


if __name__ == "__main__":
    main()
