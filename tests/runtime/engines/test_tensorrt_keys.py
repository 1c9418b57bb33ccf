"""TensorRT engine cache keys (engines/tensorrt/keys.py): every field that invalidates an
engine changes the key; the timing cache is per GPU and TensorRT version."""
from __future__ import annotations

import json

from holopart_infer.engines.cache import cache_key
from holopart_infer.engines.tensorrt import compute_profiles, engine_key_fields, timing_cache_path
from tests.tensorrt_fakes import VAE_QUERY


def _fields(**kw):
    base = dict(graph="vae_query", onnx_sha256="0" * 64, precision="fp16", strongly_typed=True,
                optimization_level=3, workspace=None, profiles=compute_profiles("vae_query", VAE_QUERY),
                gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.9.0.34")
    base.update(kw)
    return engine_key_fields(**base)


def test_key_fields_cover_everything_that_invalidates():
    f = _fields()
    assert f["graph"] == "vae_query" and f["precision"] == "fp16" and f["tensorrt"] == "10.9.0.34"
    assert f["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert f["profiles"]["points"]["max"] == [16, 262144, 3]
    json.dumps(f)  # plain JSON
    k = cache_key(f)
    changes = [dict(graph="dit"), dict(onnx_sha256="1" * 64), dict(precision="bf16"),
               dict(strongly_typed=False), dict(optimization_level=5), dict(workspace=1 << 30),
               dict(profiles=compute_profiles("vae_query", VAE_QUERY, {"Q": (1, 2, 3)})),
               dict(gpu_name="NVIDIA H200"), dict(compute_capability="8.9"), dict(tensorrt_version="10.10.0.31")]
    keys = {cache_key(_fields(**c)) for c in changes}
    assert k not in keys and len(keys) == len(changes)


def test_timing_cache_path_is_per_gpu_and_version(tmp_path):
    p = timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "10.9.0.34")
    assert p.parent == tmp_path and p.name == "timing-NVIDIA_H100_80GB_HBM3-sm9.0-trt10.9.0.34.cache"
    assert timing_cache_path(tmp_path, "NVIDIA H200", "9.0", "10.9.0.34") != p
