"""Inference backends. The registry lives in :mod:`holopart_infer.engines.base`;
this package registers the TensorRT backend next to ONNX Runtime (both are
imported only when used)."""
from __future__ import annotations

import importlib

from holopart_infer.engines.base import (  # noqa: F401
    backend_status, get_backend, pick_backend, register_backend, registered_backends,
)


def _trt_available(device: str) -> tuple[bool, str]:
    return importlib.import_module("holopart_infer.engines.tensorrt").available(device)


register_backend("tensorrt", "holopart_infer.engines.tensorrt:load", _trt_available, priority=20,
                 install_hint="pip install 'holopart-infer[tensorrt]' (needs an NVIDIA GPU and driver)")
