"""What an engine's cache key is made of (the engine cache itself is engines/cache.py)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from holopart_infer.engines.tensorrt.profiles import ShapeRange, profiles_json

def engine_key_fields(*, graph: str, onnx_sha256: str, precision: str, strongly_typed: bool,
                      optimization_level: int, workspace: int | None, profiles: Mapping[str, ShapeRange],
                      gpu_name: str, compute_capability: str, tensorrt_version: str) -> dict[str, Any]:
    """Everything that makes a built engine invalid when it changes (see docs/tensorrt.md).

    The cache schema version is added by :func:`~holopart_infer.engines.cache.cache_key`.
    """
    return {
        "graph": graph,
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "builder": {"strongly_typed": bool(strongly_typed), "optimization_level": int(optimization_level),
                    "workspace": None if workspace is None else int(workspace),
                    "profiling_verbosity": "detailed"},
        "profiles": profiles_json(profiles),
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "tensorrt": tensorrt_version,
    }


def timing_cache_path(cache_dir: str | os.PathLike, gpu_name: str, compute_capability: str,
                      tensorrt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version (entries are only valid there)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{gpu_name}-sm{compute_capability}-trt{tensorrt_version}")
    return Path(cache_dir) / f"timing-{tag}.cache"
