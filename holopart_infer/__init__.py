"""holopart-infer: production inference for HoloPart (3D part amodal segmentation)."""
from __future__ import annotations

__version__ = "0.1.0"

from holopart_infer.errors import (  # noqa: E402
    BackendUnavailable,
    CheckpointError,
    EngineError,
    HoloPartError,
    InputError,
    ModelDirError,
    ShapeError,
)

_LAZY = {
    "load": ("holopart_infer.pipeline", "load"),
    "open_backend": ("holopart_infer.engines", "open_backend"),
    "HoloPart": ("holopart_infer.pipeline", "HoloPart"),
    "CompletionOptions": ("holopart_infer.pipeline", "CompletionOptions"),
    "CompletionResult": ("holopart_infer.pipeline", "CompletionResult"),
    "CompletionJob": ("holopart_infer.pipeline", "CompletionJob"),
    "marching_cubes": ("holopart_infer.extraction.mcubes", "marching_cubes"),
    "load_parts": ("holopart_infer.io.parts_io", "load_parts"),
}


def __getattr__(name: str):
    """Import the public API lazily: ``import holopart_infer`` stays cheap."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'holopart_infer' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "__version__",
    "HoloPartError",
    "InputError",
    "CheckpointError",
    "ModelDirError",
    "ShapeError",
    "BackendUnavailable",
    "EngineError",
]
