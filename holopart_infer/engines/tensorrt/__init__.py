"""TensorRT backend: build engines from the exported ONNX, cache them, run them.

One module per job, each usable on its own:

* :mod:`.profiles` - (min, opt, max) shape profiles from the manifest and the
  backend's two knobs (``max_batch``, ``max_query_points``);
* :mod:`.keys` - what an engine's cache key is made of (ONNX content, build
  settings, profiles, GPU, TensorRT version); the cache is ``engines/cache.py``;
* :mod:`.builder` - ONNX -> serialized engine with the TensorRT 10 builder
  (strongly typed network, one optimization profile, timing cache, detailed
  layer information);
* :mod:`.fusion` - did the build fuse attention (layer-information inspection);
* :mod:`.runtime` - :class:`TensorRTBackend`, the backend protocol on TensorRT's
  name-based execution API and cuda-python device buffers, one scratch block
  shared by all execution contexts; the guided loop's latents never leave the GPU.

tensorrt and cuda-python are imported only when an engine is built or run.
"""
from __future__ import annotations

from holopart_infer.engines.tensorrt.builder import (  # noqa: F401
    OPTIMIZATION_LEVEL, build_engine, format_parser_errors, require_tensorrt, tensorrt_available,
)
from holopart_infer.engines.tensorrt.fusion import (  # noqa: F401
    FusionReport, attention_fused, engine_layer_information,
)
from holopart_infer.engines.tensorrt.keys import engine_key_fields, timing_cache_path  # noqa: F401
from holopart_infer.engines.tensorrt.profiles import (  # noqa: F401
    BATCH_AXIS, DEFAULT_QUERY_POINTS, OPT_BATCH, QUERY_AXIS, ShapeRange, compute_profiles, profile_overrides,
    profiles_json,
)
from holopart_infer.engines.tensorrt.runtime import TensorRTBackend, available, open_backend  # noqa: F401
