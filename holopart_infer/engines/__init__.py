"""Inference backends: the one place that knows which backends exist.

* :mod:`~holopart_infer.engines.registry` - the registration table and
  :func:`open_backend`, the single entry that resolves (backend, device,
  precision) and opens a backend;
* :mod:`~holopart_infer.engines.base` - the backend protocol, the optional
  device-resident decoder protocol, the shared base class and the device-array base;
* :mod:`~holopart_infer.engines.signatures` - the graphs' input signatures and the
  one feed checker every backend calls (``check_feeds``);
* one module per backend: ``onnxruntime``, ``tensorrt`` (a package: profiles,
  cache keys, builder, fusion inspection, runtime), ``pytorch`` (the optimized
  PyTorch path; torch is imported only when it is opened).

Importing this package imports no engine library.
"""
from __future__ import annotations

from holopart_infer.engines.base import Backend, BackendBase, DeviceArray, DeviceResidentDecoder  # noqa: F401
from holopart_infer.engines.registry import (  # noqa: F401
    BACKENDS, CHECKPOINT_DIR, DEVICES, MODEL_DIR, PRECISIONS, BackendSpec, backend_names, backend_status,
    model_kind, open_backend, resolve,
)
