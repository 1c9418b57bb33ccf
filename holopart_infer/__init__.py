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

__all__ = [
    "__version__",
    "HoloPartError",
    "InputError",
    "CheckpointError",
    "ModelDirError",
    "ShapeError",
    "BackendUnavailable",
    "EngineError",
]
