"""Embedded demo objects and model for ``holopart-infer demo``.

``demo_model/`` is holopart-mini exported to ONNX (see :func:`demo_model_path`).
``demo_mug.glb`` and ``demo_lamp.glb`` are synthetic objects with half-hidden
parts (see :data:`DEMO_OBJECTS`); ``demo_mug.glb`` is the demo's default.

``demo_table.glb`` is a hand-built table in 5 parts with scene-graph transforms;
its generator is on the export side (:mod:`holopart_infer.export.demo_table`).

All three are glTF and +Y up, as glTF specifies and HoloPart's training data is;
the synthetic mug and lamp (built +Z up) were turned to +Y up when written. The
demo model's manifest says which frame it was trained in (``"up_axis"``), and the
runtime turns the objects into it and the results back (:mod:`holopart_infer.io.frames`).
"""
from __future__ import annotations

from pathlib import Path

#: embedded demo objects: name -> file. ``mug`` and ``lamp`` are synthetic objects
#: of :mod:`holopart_infer.export.synthetic` from a seed no training or evaluation set uses
#: (``make_object((9000, 0), "mug", n_views=16)``, ``make_object((9000, 1), "lamp",
#: n_views=16)``, the first of each template at that seed with a handle / a bulb),
#: written as their visible patches, turned from +Z up to glTF's +Y up, by
#: ``python -m holopart_infer.export.make_demo_model --objects``.
DEMO_OBJECTS = {"mug": "demo_mug.glb", "lamp": "demo_lamp.glb", "table": "demo_table.glb"}
DEFAULT_DEMO_OBJECT = "mug"
#: what ``holopart-infer demo`` says about each object
DEMO_OBJECT_DESCRIPTIONS = {
    "mug": "a mug whose handle is half inside the body and whose body sits in a saucer.",
    "lamp": "a lamp whose pole reaches into the shade and base, and a bulb half inside the shade.",
    "table": "a hand-built table whose legs have no top caps and whose top has holes under the legs.",
}


def demo_object_path(name: str = "table") -> Path:
    """Path of an embedded demo object (a ``.glb`` with one node per part).

    Args:
        name: one of :data:`DEMO_OBJECTS` (``"table"``, the default here for
            backward compatibility: the hand-built table below, with scene-graph
            transforms; ``"mug"``/``"lamp"``: synthetic objects with half-hidden
            parts; the CLI demo uses :data:`DEFAULT_DEMO_OBJECT`).
    """
    from importlib.resources import as_file, files

    from holopart_infer.errors import InputError

    if name not in DEMO_OBJECTS:
        raise InputError(f"unknown demo object {name!r}; choose one of {', '.join(DEMO_OBJECTS)}")
    filename = DEMO_OBJECTS[name]
    ref = files(__name__).joinpath(filename)
    if isinstance(ref, Path):
        return ref
    # installed inside a zip: extract once to a stable cache location
    from holopart_infer.fsafe import user_cache_dir

    cache = user_cache_dir(filename)
    if not cache.is_file():
        from holopart_infer import fsafe

        with as_file(ref) as tmp:
            data = Path(tmp).read_bytes()
        fsafe.atomic_write(cache, data)
    return cache


DEMO_MODEL = "demo_model"

#: What ``holopart-infer demo`` changes from the demo model's defaults: a quick
#: run (fewer steps, a coarser grid), and floaters dropped for the picture.
#: Values of :class:`holopart_infer.pipeline.CompletionOptions` fields.
DEMO_PRESET = {"steps": 20, "depth": 7, "decimate": 5000, "min_component": 0.2}


def demo_model_path() -> Path:
    """Path of the embedded demo model dir (manifest.json + ONNX graphs).

    holopart-mini: the "tiny" HoloPart configuration trained on synthetic part
    assemblies (docs/training.md), exported to fp32 ONNX by
    ``python -m holopart_infer.export.make_demo_model`` from the checkpoint in
    ``export/holopart_mini``. Its manifest carries the options it was trained
    for (latent length, samples) and the sampling options chosen on validation.
    """
    from importlib.resources import files

    ref = files(__name__).joinpath(DEMO_MODEL)
    if isinstance(ref, Path):
        return ref
    raise FileNotFoundError(
        "the embedded demo model is not available as files (zipped install); reinstall holopart-infer unpacked"
    )
