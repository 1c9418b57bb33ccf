"""TensorRT backend.

Everything that does not need TensorRT runs everywhere: shape profiles from a
manifest, cache key fields, the fusion check on layer-information JSON, parser
error messages, the BackendUnavailable hint, and the build flow of
``build_engine`` against a fake ``tensorrt`` module that records the calls.
Tests marked ``requires_trt`` build and run real engines; they skip where
tensorrt, cuda-python or a GPU is missing.
"""
from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from holopart_infer.engines import tensorrt as trt_backend
from holopart_infer.engines.tensorrt import runtime as trt_runtime
from holopart_infer.engines.cache import cache_key
from holopart_infer.engines.tensorrt import (
    ShapeRange, attention_fused, build_engine, compute_profiles, engine_key_fields, format_parser_errors,
    profile_overrides, timing_cache_path,
)
from holopart_infer.errors import (
    BackendUnavailable, EngineError, InputError, InputFileNotFound, ModelDirError, ShapeError,
)

from tests.support import FAKE_TRT, REPO, FakeCudart, FakeEngine  # noqa: E402


# --------------------------------------------------------------------------- manifest-like specs

def graph_spec(inputs: dict, profiles: dict | None = None) -> dict:
    spec = {"file": "onnx/g.onnx", "inputs": {k: {"dtype": "float32", "shape": v} for k, v in inputs.items()},
            "outputs": {}}
    if profiles is not None:
        spec["profiles"] = profiles
    return spec


# What the exporter writes for the decoder query graph (export/graphs: B, T, Q axes).
VAE_QUERY = graph_spec(
    {"points": ["B", "Q", 3], "keys": ["B", 8, "T", 64], "values": ["B", 8, "T", 64]},
    {"points": {"min": [1, 1, 3], "opt": [8, 65536, 3], "max": [16, 262144, 3]},
     "keys": {"min": [1, 8, 1, 64], "opt": [8, 8, 2048, 64], "max": [16, 8, 2048, 64]},
     "values": {"min": [1, 8, 1, 64], "opt": [8, 8, 2048, 64], "max": [16, 8, 2048, 64]}})

GUIDED_STEP = graph_spec(
    {"latents": ["B", "T", 64], "timestep": [1], "dt": [1], "guidance": [1],
     "part_cond": ["B", "K", 512], "whole_cond": ["B", "K", 512]},
    {"latents": {"min": [1, 1, 64], "opt": [8, 2048, 64], "max": [16, 2048, 64]},
     "part_cond": {"min": [1, 512, 512], "opt": [8, 512, 512], "max": [16, 512, 512]},
     "whole_cond": {"min": [1, 512, 512], "opt": [8, 512, 512], "max": [16, 512, 512]}})


# --------------------------------------------------------------------------- profiles

def test_profiles_come_from_the_manifest():
    p = compute_profiles("guided_step", GUIDED_STEP)
    assert set(p) == {"latents", "timestep", "dt", "guidance", "part_cond", "whole_cond"}
    assert p["latents"] == ShapeRange((1, 1, 64), (8, 2048, 64), (16, 2048, 64))
    assert p["timestep"] == ShapeRange.fixed((1,))
    assert p["part_cond"].max == (16, 512, 512)


def test_profile_overrides_apply_by_axis_symbol():
    p = compute_profiles("vae_query", VAE_QUERY, profile_overrides(max_batch=4, max_query_points=65536))
    # opt Q is the pipeline's query chunk: what extraction sends per part per call
    from holopart_infer.extract import QUERY_CHUNK_POINTS

    assert p["points"] == ShapeRange((1, 1, 3), (4, QUERY_CHUNK_POINTS, 3), (4, 65536, 3))
    # B is overridden in every input; T keeps the manifest's range
    assert p["keys"] == ShapeRange((1, 8, 1, 64), (4, 8, 2048, 64), (4, 8, 2048, 64))


def test_default_backend_overrides_cap_queries_only():
    over = profile_overrides(None, trt_backend.DEFAULT_QUERY_POINTS[2])
    assert over == {"Q": trt_backend.DEFAULT_QUERY_POINTS}
    p = compute_profiles("vae_query", VAE_QUERY, over)
    assert p["points"].max == (16, 65536, 3)
    assert profile_overrides(None, None) == {}
    assert profile_overrides(32, None) == {"B": (1, 8, 32)}
    assert profile_overrides(2, 10)["Q"] == (1, 10, 10)


@pytest.mark.parametrize("b,q", [(0, None), (None, 0), (-3, 5)])
def test_profile_overrides_validate(b, q):
    with pytest.raises(InputError, match="must be >= 1"):
        profile_overrides(b, q)


def test_profiles_derived_without_manifest_profiles():
    spec = graph_spec({"latents": ["B", 2048, 64], "timestep": ["B"]})
    p = compute_profiles("dit", spec, {"B": (1, 8, 16)})
    assert p["latents"] == ShapeRange((1, 2048, 64), (8, 2048, 64), (16, 2048, 64))
    assert p["timestep"] == ShapeRange((1,), (8,), (16,))


def test_dynamic_axis_without_range_is_a_model_dir_error():
    spec = graph_spec({"latents": ["B", "T", 64]})
    with pytest.raises(ModelDirError, match=r"input 'latents' axis 1 \('T'\) is dynamic but has no range"):
        compute_profiles("dit", spec, {"B": (1, 8, 16)})


@pytest.mark.parametrize("profiles,match", [
    ({"latents": {"min": [1, 64]}}, "profile of input 'latents' must be"),
    ({"latents": {"min": [1, 2, 64], "opt": [8, 2, 64], "max": [4, 2, 64]}}, "min <= opt <= max"),
    ({"latents": {"min": [1, 64], "opt": [8, 64], "max": [16, 64]}}, "has rank 2"),
    ({"nope": {"min": [1], "opt": [1], "max": [1]}}, "unknown input"),
    (["latents"], "'profiles' must map"),
])
def test_malformed_manifest_profiles(profiles, match):
    spec = graph_spec({"latents": ["B", 2, 64]}, profiles)
    with pytest.raises(ModelDirError, match=match):
        compute_profiles("dit", spec)


def test_graph_without_inputs():
    with pytest.raises(ModelDirError, match="lists no inputs"):
        compute_profiles("dit", {"file": "x"})
    with pytest.raises(ModelDirError, match="has no 'shape'"):
        compute_profiles("dit", {"inputs": {"x": {"dtype": "float32"}}})


def test_shape_range():
    r = ShapeRange((1, 3), (8, 3), (16, 3))
    assert r.contains((4, 3)) and not r.contains((17, 3)) and not r.contains((4,))
    assert ShapeRange.from_json(r.to_json()) == r
    with pytest.raises(InputError, match="one rank"):
        ShapeRange((1,), (1, 2), (1, 2))


# --------------------------------------------------------------------------- key fields

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


def test_strong_typing_rules(tmp_path):
    assert trt_runtime._strongly_typed("fp16", "fp16", tmp_path) is True
    assert trt_runtime._strongly_typed("fp32", "fp32", tmp_path) is True
    assert trt_runtime._strongly_typed("fp32", "bf16", tmp_path) is False
    with pytest.raises(ModelDirError, match="exported in fp16.*Re-export with --precision bf16"):
        trt_runtime._strongly_typed("fp16", "bf16", tmp_path)


# --------------------------------------------------------------------------- fusion check

# Shapes of real TensorRT 10 layer information (ProfilingVerbosity.DETAILED), after
# NVIDIA/TensorRT#4397 (fused) and #3665 (unfused); values shortened.
FUSED = {"Layers": [
    {"Name": "/blocks.0/attn1/to_q/MatMul+/blocks.0/attn1/to_k/MatMul_myl0_16", "LayerType": "gemm",
     "TacticName": "sm90_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize64x64x64",
     "Metadata": "[ONNX Layer: /blocks.0/attn1/to_q/MatMul][ONNX Layer: /blocks.0/attn1/mha/MatMul]"},
    {"Name": "_gemm_mha_v2_myl0_17", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x957a2fe283f77dcf",
     "Metadata": "[ONNX Layer: /blocks.0/attn1/MatMul][ONNX Layer: /blocks.0/attn1/Softmax]"},
    {"Name": "__myl_AddResMul_myl0_18", "LayerType": "kgen", "TacticName": "__myl_AddResMul_0xabc"},
], "Bindings": ["latents", "velocity"]}

UNFUSED = {"Layers": [
    {"Name": "[MATRIX_MULTIPLY]_[scaled_dot_product_attention]_[x11_qkv]_matrix_multiply", "LayerType": "gemm",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64"},
    {"Name": "__myl_MaxSubExpSumDiv_myl0_3", "LayerType": "kgen", "TacticName": "__myl_MaxSubExpSumDiv_0x1",
     "Metadata": "[ONNX Layer: /attn/Softmax]"},
    {"Name": "[MATRIX_MULTIPLY]_[scaled_dot_product_attention]_[x12]_matrix_multiply", "LayerType": "gemm",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64"},
]}


def test_fused_attention_detected():
    ok, rep = attention_fused(json.dumps(FUSED))
    assert ok and rep.fused and rep.detailed
    assert rep.fused_layers == ["_gemm_mha_v2_myl0_17"]
    assert rep.softmax_layers == [] and rep.num_layers == 3
    assert "attention fused: 1 fused attention layer(s)" in rep.summary()


def test_unfused_attention_detected():
    ok, rep = attention_fused(UNFUSED)
    assert not ok and rep.fused_layers == []
    assert rep.softmax_layers == ["__myl_MaxSubExpSumDiv_myl0_3"]
    assert "NOT fused" in rep.summary()


def test_onnx_names_with_mha_do_not_count_as_fused():
    info = {"Layers": [{"Name": "/encoder/mha/attn/key/MatMul", "LayerType": "gemm",
                        "TacticName": "sm80_xmma_gemm_f16f16", "Metadata": "[ONNX Layer: /encoder/mha/q]"}]}
    ok, rep = attention_fused(info)
    assert not ok and rep.fused_layers == [] and rep.softmax_layers == []


def test_fmha_and_iattention_layers_count():
    info = {"Layers": [{"Name": "attn_0", "LayerType": "Attention", "TacticName": ""},
                       {"Name": "x", "LayerType": "kgen", "TacticName": "sm90_fmha_v2_flash_attention_fp16_128"}]}
    ok, rep = attention_fused(info)
    assert ok and rep.fused_layers == ["attn_0", "x"]


def test_mixed_fused_and_unfused_is_not_fused():
    info = {"Layers": FUSED["Layers"] + UNFUSED["Layers"]}
    ok, rep = attention_fused(info)
    assert not ok and len(rep.fused_layers) == 1 and len(rep.softmax_layers) == 1


def test_min_fused():
    assert attention_fused(FUSED, min_fused=1)[0]
    assert not attention_fused(FUSED, min_fused=2)[0]


def test_layer_names_only():
    ok, rep = attention_fused({"Layers": ["_gemm_mha_v2_myl0_1", "/proj_out/MatMul"]})
    assert ok and not rep.detailed and "DETAILED" in rep.reason
    ok, rep = attention_fused({"Layers": ["/attn/MatMul", "/attn/Softmax", "/attn/MatMul_1"]})
    assert not ok and rep.softmax_layers == ["/attn/Softmax"]


def test_no_layer_information():
    ok, rep = attention_fused({"Layers": []})
    assert not ok and "ProfilingVerbosity.DETAILED" in rep.reason


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", json.dumps({"Bindings": []})])
def test_fusion_input_errors(bad):
    with pytest.raises(InputError, match="layer information"):
        attention_fused(bad)


# --------------------------------------------------------------------------- parser errors

class FakeParserError:
    def __init__(self, desc, node=-1, name="", op="", code="UNSUPPORTED_NODE"):
        self._d, self._n, self._name, self._op = desc, node, name, op
        self._code = types.SimpleNamespace(name=code)

    def desc(self):
        return self._d

    def node(self):
        return self._n

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def code(self):
        return self._code


class FakeParser:
    def __init__(self, errors):
        self.errors = errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


def test_parser_errors_name_graph_and_nodes():
    msg = format_parser_errors("dit", "/m/onnx/dit.onnx", FakeParser([
        FakeParserError("Unsupported operator FooOp", 12, "/blocks.0/foo", "FooOp"),
        FakeParserError("invalid graph", code="INVALID_GRAPH"),
    ]))
    assert "graph 'dit' from /m/onnx/dit.onnx: 2 error(s)" in msg
    assert "[UNSUPPORTED_NODE] node 12 '/blocks.0/foo' (FooOp): Unsupported operator FooOp" in msg
    assert "[INVALID_GRAPH] graph: invalid graph" in msg
    assert "holopart-infer export" in msg


def test_parser_errors_without_optional_fields():
    class Old:  # TensorRT < 10 parser errors have no node_name / node_operator
        def desc(self):
            return "boom"

        def node(self):
            return 3

        def code(self):
            return "ERR"

    assert "[ERR] node 3: boom" in format_parser_errors("g", "g.onnx", FakeParser([Old()]))


# --------------------------------------------------------------------------- availability

def _hide(monkeypatch, *modules):
    # importlib.util.find_spec returns None for a module set to None in sys.modules
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_missing_tensorrt_raises_with_install_hint(monkeypatch, tmp_path):
    _hide(monkeypatch, "tensorrt")
    with pytest.raises(BackendUnavailable, match=r"pip install 'holopart-infer\[tensorrt\]'"):
        trt_backend.require_tensorrt()
    with pytest.raises(BackendUnavailable, match="'tensorrt'"):
        trt_backend.TensorRTBackend.from_model_dir(tmp_path, precision="fp16")
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match=r"holopart-infer\[tensorrt\]"):
        build_engine(onnx, stage="g", precision="fp16", profiles={})
    ok, why = trt_backend.tensorrt_available()
    assert not ok and "tensorrt" in why and "pip install" in why
    with pytest.raises(ImportError):  # what `except ImportError` in user code relies on
        trt_backend.require_tensorrt()


def test_missing_cuda_python_raises_with_install_hint(monkeypatch):
    from holopart_infer.engines import cuda

    monkeypatch.setattr(cuda, "_RUNTIME", None)
    _hide(monkeypatch, "cuda")
    with pytest.raises(BackendUnavailable, match=r"'cuda-python'.*pip install 'holopart-infer\[tensorrt\]'"):
        cuda.runtime()


def test_registry_hooks(monkeypatch):
    _hide(monkeypatch, "tensorrt")
    ok, why = trt_backend.available("cuda")
    assert not ok and "pip install 'holopart-infer[tensorrt]'" in why
    ok, why = trt_backend.available("cpu")
    assert not ok and "'cuda' or 'cuda:N'" in why
    assert trt_runtime._device_index("cuda:2") == 2 and trt_runtime._device_index("cuda") == 0
    with pytest.raises(InputError, match="cuda:N"):
        trt_runtime._device_index("cuda:x")
    with pytest.raises(BackendUnavailable):
        trt_backend.open_backend("model_dir", device="cuda:1")


def test_bad_precision_is_checked_first(tmp_path):
    with pytest.raises(InputError, match="precision must be one of"):
        trt_backend.TensorRTBackend.from_model_dir(tmp_path, precision="int8")


def test_importing_the_backend_imports_no_heavy_modules():
    code = ("import sys, holopart_infer.engines.tensorrt, holopart_infer.engines.cuda, "
            "holopart_infer.engines.cache\n"
            "bad = [m for m in ('tensorrt', 'cuda', 'torch', 'onnx', 'export', 'holopart_infer.export') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_np_dtypes():
    def dt(name):
        return types.SimpleNamespace(name=name)

    assert trt_runtime._np_dtype(dt("FLOAT")) == (np.dtype(np.float32), False)
    assert trt_runtime._np_dtype(dt("HALF")) == (np.dtype(np.float16), False)
    assert trt_runtime._np_dtype(dt("BF16")) == (np.dtype(np.uint16), True)
    with pytest.raises(EngineError, match="FP8"):
        trt_runtime._np_dtype(dt("FP8"))
    x = np.array([1.0, -2.5, 3.25], np.float32)
    bits = trt_runtime._to_engine_dtype(x, np.dtype(np.uint16), True)
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(trt_runtime._from_engine_dtype(bits, True), x)
    half = trt_runtime._to_engine_dtype(x, np.dtype(np.float16), False)
    assert trt_runtime._from_engine_dtype(half, False).dtype == np.float32


# --------------------------------------------------------------------------- build flow on a fake tensorrt

class FakeTimingCache:
    def __init__(self, data: bytes):
        self.entries = set(filter(None, data.decode().split(","))) if data else set()

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return ",".join(sorted(self.entries)).encode()


class FakeConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles = [], {}, []
        self.timing_cache = None
        self.builder_optimization_level = None
        self.profiling_verbosity = None

    def set_flag(self, f):
        self.flags.append(f)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, p):
        self.profiles.append(p)

    def create_timing_cache(self, data):
        if data == b"corrupt":
            return None
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache

    def get_timing_cache(self):
        return self.timing_cache


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, mid, hi):
        self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))


def make_fake_trt(inputs: dict, *, parse_ok=True, plan=b"PLAN-BYTES", version="10.9.0.34"):
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.calls = types.SimpleNamespace()

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i):
            name = list(inputs)[i]
            return types.SimpleNamespace(name=name, shape=inputs[name])

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            trt.calls.builder = self

        def create_network(self, flags):
            trt.calls.network_flags = flags
            return Network()

        def create_builder_config(self):
            trt.calls.config = FakeConfig()
            return trt.calls.config

        def create_optimization_profile(self):
            trt.calls.profile = FakeProfile()
            return trt.calls.profile

        def build_serialized_network(self, network, config):
            config.timing_cache.entries.add("tactic-from-this-build")
            if plan is None:
                self.logger.log(ILogger.Severity.ERROR, "out of device memory while building")
            return plan

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            trt.calls.parsed = path
            return parse_ok

        num_errors = 1

        def get_error(self, i):
            return FakeParserError("No importer registered for op: Foo", 7, "/foo", "Foo")

    trt.ILogger = ILogger
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16")
    return trt


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "onnx" / "vae_query.onnx"
    p.parent.mkdir()
    p.write_bytes(b"onnx")
    return p


QUERY_INPUTS = {"points": (-1, -1, 3), "keys": (-1, 8, -1, 64), "values": (-1, 8, -1, 64)}


def test_build_engine_flow(monkeypatch, onnx_file, tmp_path):
    fake = make_fake_trt(QUERY_INPUTS)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"old-entry")
    profiles = compute_profiles("vae_query", VAE_QUERY)
    plan = build_engine(onnx_file, stage="vae_query", precision="fp16", profiles=profiles,
                        timing_cache_path=tc, workspace=1 << 30)
    assert plan == b"PLAN-BYTES"
    assert fake.calls.network_flags == 1 << 1  # STRONGLY_TYPED
    assert fake.calls.parsed == str(onnx_file)
    cfg = fake.calls.config
    assert cfg.builder_optimization_level == 3 and cfg.profiling_verbosity == "DETAILED"
    assert cfg.pools == {"WORKSPACE": 1 << 30}
    assert cfg.flags == []  # strongly typed: the ONNX types decide
    assert cfg.profiles == [fake.calls.profile]
    assert fake.calls.profile.shapes["points"] == ((1, 1, 3), (8, 65536, 3), (16, 262144, 3))
    # timing cache: loaded, then merged with this build's entries and saved
    assert tc.read_bytes() == b"old-entry,tactic-from-this-build"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_build_engine_weakly_typed_sets_precision_flag(monkeypatch, onnx_file):
    fake = make_fake_trt(QUERY_INPUTS)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profiles = compute_profiles("vae_query", VAE_QUERY)
    build_engine(onnx_file, stage="vae_query", precision="bf16", profiles=profiles, strongly_typed=False,
                 optimization_level=5)
    assert fake.calls.network_flags == 0
    assert fake.calls.config.flags == ["BF16"] and fake.calls.config.builder_optimization_level == 5
    build_engine(onnx_file, stage="vae_query", precision="fp32", profiles=profiles, strongly_typed=False)
    assert fake.calls.config.flags == []


def test_weak_typing_on_tensorrt_11_is_a_clear_error(monkeypatch, onnx_file):
    fake = make_fake_trt(QUERY_INPUTS, version="11.4.0")
    fake.BuilderFlag = types.SimpleNamespace()  # FP16/BF16 flags were removed in TensorRT 11
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(EngineError, match="strongly typed networks only.*--precision fp16"):
        build_engine(onnx_file, stage="vae_query", precision="fp16", strongly_typed=False,
                     profiles=compute_profiles("vae_query", VAE_QUERY))


def test_build_engine_corrupt_timing_cache_is_replaced(monkeypatch, onnx_file, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(QUERY_INPUTS))
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"corrupt")
    build_engine(onnx_file, stage="vae_query", precision="fp16",
                 profiles=compute_profiles("vae_query", VAE_QUERY), timing_cache_path=tc)
    assert tc.read_bytes() == b"tactic-from-this-build"


def test_build_engine_parser_errors(monkeypatch, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(QUERY_INPUTS, parse_ok=False))
    with pytest.raises(EngineError, match=r"(?s)graph 'vae_query'.*node 7 '/foo' \(Foo\): No importer"):
        build_engine(onnx_file, stage="vae_query", precision="fp16",
                     profiles=compute_profiles("vae_query", VAE_QUERY))


def test_build_engine_failure_names_graph_and_errors(monkeypatch, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(QUERY_INPUTS, plan=None))
    with pytest.raises(EngineError, match=r"(?s)failed to build graph 'vae_query'.*out of device memory"):
        build_engine(onnx_file, stage="vae_query", precision="fp16",
                     profiles=compute_profiles("vae_query", VAE_QUERY))


def test_build_engine_profile_checks(monkeypatch, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(QUERY_INPUTS))
    full = compute_profiles("vae_query", VAE_QUERY)
    with pytest.raises(EngineError, match="input 'keys' has dynamic shape .* no shape profile"):
        build_engine(onnx_file, stage="vae_query", precision="fp16",
                     profiles={k: v for k, v in full.items() if k != "keys"})
    with pytest.raises(EngineError, match="input\\(s\\) bogus"):
        build_engine(onnx_file, stage="vae_query", precision="fp16",
                     profiles={**full, "bogus": ShapeRange.fixed((1,))})
    bad = {**full, "points": ShapeRange.fixed((1, 5, 4))}
    with pytest.raises(EngineError, match="does not fit its ONNX shape"):
        build_engine(onnx_file, stage="vae_query", precision="fp16", profiles=bad)


def test_build_engine_argument_errors(monkeypatch, onnx_file, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(QUERY_INPUTS))
    with pytest.raises(InputError, match="precision"):
        build_engine(onnx_file, stage="g", precision="int8", profiles={})
    with pytest.raises(InputError, match="optimization_level"):
        build_engine(onnx_file, stage="g", precision="fp16", profiles={}, optimization_level=7)
    with pytest.raises(InputFileNotFound, match="missing.onnx"):
        build_engine(tmp_path / "missing.onnx", stage="g", precision="fp16", profiles={})


def test_old_tensorrt_is_rejected(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt({}, version="8.6.1"))
    with pytest.raises(EngineError, match="TensorRT 8.6.1 is installed; holopart-infer needs TensorRT >= 10"):
        trt_backend.require_tensorrt()


# --------------------------------------------------------------------------- real TensorRT (GPU)

def _trt_ready() -> str:
    ok, why = trt_backend.tensorrt_available()
    if not ok:
        return why
    try:
        from holopart_infer.engines import cuda

        cuda.device_info(0)
    except Exception as e:  # no driver / no GPU
        return f"no usable CUDA device ({e})"
    return ""


_TRT_SKIP = _trt_ready()
skip_without_trt = pytest.mark.skipif(bool(_TRT_SKIP), reason="TensorRT tests need tensorrt, cuda-python "
                                                              f"and a GPU: {_TRT_SKIP}")


def _attention_onnx(path: Path, heads=4, seq=64, dh=64) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def inp(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT16, ["B", heads, "S", dh])

    scale = onnx.numpy_helper.from_array(np.array(dh ** -0.5, dtype=np.float16), "scale")
    nodes = [helper.make_node("Mul", ["q", "scale"], ["qs"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qs", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"])]
    graph = helper.make_graph(nodes, "attn", [inp("q"), inp("k"), inp("v")], [inp("o")], [scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.requires_trt
@skip_without_trt
def test_real_build_cache_and_fusion(tmp_path):
    import tensorrt as trt
    from holopart_infer.engines import cuda
    from holopart_infer.engines.cache import EngineCache

    onnx_path = tmp_path / "attn.onnx"
    _attention_onnx(onnx_path)
    r = ShapeRange((1, 4, 16, 64), (2, 4, 64, 64), (4, 4, 256, 64))
    profiles = {"q": r, "k": r, "v": r}
    info = cuda.device_info(0)
    fields = engine_key_fields(graph="attn", onnx_sha256=trt_runtime.onnx_digest(onnx_path), precision="fp16",
                               strongly_typed=True, optimization_level=3, workspace=None, profiles=profiles,
                               gpu_name=info.name, compute_capability=info.compute_capability,
                               tensorrt_version=trt.__version__)
    cache = EngineCache(tmp_path / "cache")
    build = lambda: build_engine(onnx_path, stage="attn", precision="fp16", profiles=profiles,  # noqa: E731
                                 timing_cache_path=tmp_path / "cache" / "t.cache")
    first = cache.get_or_build(fields, build)
    assert not first.hit and cache.get_or_build(fields, build).hit
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(first.data)
    ok, rep = attention_fused(trt_backend.engine_layer_information(engine))
    assert rep.num_layers > 0 and rep.detailed
    assert ok == rep.fused
    # TensorRT 10 ships fused MHA kernels for fp16 on Ampere and newer (sm 8.x+): there the
    # plain softmax(QK^T)V pattern of this graph must fuse; older GPUs are only reported
    if int(str(info.compute_capability).split(".")[0]) >= 8:
        assert ok, rep.summary()


@pytest.mark.requires_trt
@skip_without_trt
def test_backend_matches_onnxruntime_on_a_tiny_model(tiny_checkpoint, tmp_path):
    pytest.importorskip("torch")
    from holopart_infer.export.onnx_export import export_model
    from holopart_infer.engines.onnxruntime import OrtBackend

    model_dir = tmp_path / "model"
    export_model(tiny_checkpoint, model_dir, precision="fp32")
    ref = OrtBackend.from_model_dir(model_dir, device="cpu")
    be = trt_backend.TensorRTBackend.from_model_dir(model_dir, precision="fp32", cache_dir=tmp_path / "cache",
                                                    max_batch=4, max_query_points=4096)
    try:
        rng = np.random.default_rng(0)
        cfg = be.config
        K = int(cfg["part_encoder"]["num_tokens"])
        C = int(cfg["transformer"]["in_channels"])
        B, N, T = 2, 256, int(json.loads((model_dir / "manifest.json").read_text())["latent_tokens"])
        args = (rng.standard_normal((B, K, 6), np.float32), rng.standard_normal((B, N, 7), np.float32),
                rng.standard_normal((B, K, 6), np.float32), rng.standard_normal((B, N, 6), np.float32))
        for ours, theirs in zip(be.encode(*args), ref.encode(*args)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
        w, p = ref.encode(*args)
        x = rng.standard_normal((B, T, C), np.float32)
        x_dev = be.guided_step(x, 500.0, 0.02, 3.5, p, w)
        x_dev = be.guided_step(x_dev, 480.0, 0.02, 3.5, p, w)  # stays on the device
        x_ref = ref.guided_step(ref.guided_step(x, 500.0, 0.02, 3.5, p, w), 480.0, 0.02, 3.5, p, w)
        np.testing.assert_allclose(np.asarray(x_dev), x_ref, rtol=1e-3, atol=1e-3)
        pts = rng.uniform(-1, 1, (B, 5000, 3)).astype(np.float32)  # > max_query_points: split
        np.testing.assert_allclose(be.decoder_query(pts, be.decoder_kv(x_dev)),
                                   np.asarray(ref.decoder_query(pts, ref.decoder_kv(x_ref))),
                                   rtol=1e-3, atol=1e-3)
        with pytest.raises(ShapeError, match="accepts"):
            be.decoder_kv(rng.standard_normal((5, T, C), np.float32))  # batch 5 > max_batch 4
    finally:
        be.close()


# --------------------------------------------------------------------------- runtime on fakes
# A fake cuda-python runtime backed by host memory (ctypes) and fake TensorRT
# engines that compute with numpy at the bound addresses: exercises address
# binding, the shared scratch block, the device-resident loop and chunking.


B_MAX, T, C, K, D = 4, 6, 3, 5, 2


def _r(*dims):  # (min, opt, max) with "B" -> 1..B_MAX and ("Q", q) -> 1..q
    lo = tuple(1 if d in ("B", "Q") or isinstance(d, tuple) else d for d in dims)
    hi = tuple(B_MAX if d == "B" else d[1] if isinstance(d, tuple) else d for d in dims)
    return [lo, hi, hi]


def fake_engines(memory=None):
    memory = memory or {}
    same = lambda name: (lambda s: s[name])  # noqa: E731
    specs = {
        "part_encoder": FakeEngine(
            {"part_tokens": _r("B", K, 6), "whole_points": _r("B", 9, 7), "local_tokens": _r("B", K, 6),
             "local_points": _r("B", 9, 6)},
            {"whole_cond": same("part_tokens"), "part_cond": same("local_tokens")},
            lambda x: {"whole_cond": 2 * x["part_tokens"], "part_cond": 3 * x["local_tokens"]},
            memory.get("part_encoder", 100)),
        "guided_step": FakeEngine(
            {"latents": _r("B", T, C), "timestep": _r(1), "dt": _r(1), "guidance": _r(1),
             "part_cond": _r("B", K, D), "whole_cond": _r("B", K, D)},
            {"latents_next": same("latents")},
            lambda x: {"latents_next": x["latents"] + x["dt"][0] * (x["guidance"][0] * x["part_cond"].mean()
                                                                     + x["whole_cond"].mean() + x["timestep"][0])},
            memory.get("guided_step", 5000)),
        "vae_kv": FakeEngine(
            {"latents": _r("B", T, C)}, {"keys": lambda s: (s["latents"][0], 1, T, C),
                                         "values": lambda s: (s["latents"][0], 1, T, C)},
            lambda x: {"keys": x["latents"][:, None], "values": -x["latents"][:, None]},
            memory.get("vae_kv", 300)),
        "vae_query": FakeEngine(
            {"points": _r("B", ("Q", 4), 3), "keys": _r("B", 1, T, C), "values": _r("B", 1, T, C)},
            {"logits": lambda s: (*s["points"][:2], 1)},
            lambda x: {"logits": x["points"].sum(-1, keepdims=True) + x["keys"].mean(axis=(1, 2, 3))[:, None, None]},
            memory.get("vae_query", 200)),
        "dit": FakeEngine(
            {"latents": _r("B", T, C), "timestep": _r("B"), "part_cond": _r("B", K, D), "whole_cond": _r("B", K, D)},
            {"velocity": same("latents")},
            lambda x: {"velocity": x["latents"] * x["timestep"][:, None, None]},
            memory.get("dit", 9000)),
    }
    return specs


@pytest.fixture
def fake_backend(monkeypatch):
    from holopart_infer.engines import cuda

    rt = FakeCudart()
    monkeypatch.setattr(cuda, "_RUNTIME", rt)
    specs = fake_engines()

    def make(graph):
        runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: specs[graph])
        return trt_runtime._Engine(FAKE_TRT, runtime, graph, b"", Path(f"{graph}.engine"))

    loaded = []

    def loader(graph):
        loaded.append(graph)
        return make(graph), None

    be = trt_backend.TensorRTBackend(
        engines={g: make(g) for g in ("part_encoder", "guided_step", "vae_kv", "vae_query")},
        stream=cuda.Stream(), scratch=cuda.ScratchMemory(), config={"part_encoder": {"num_tokens": K}},
        precision="fp32", device=0, fusion={}, graphs=[*specs], loader=loader)
    be._bind_scratch()
    be.fake = types.SimpleNamespace(rt=rt, specs=specs, loaded=loaded)
    yield be
    be.close()


def test_one_scratch_block_shared_by_all_contexts(fake_backend):
    be = fake_backend
    bound = {g: e.context.scratch for g, e in be.engines.items()}
    assert len(set(bound.values())) == 1
    ptr, size = next(iter(bound.values()))
    assert size >= 5000 and size % 256 == 0 and be.scratch.nbytes == size
    # dit is loaded on first use; its larger need grows the block and rebinds everyone
    v = be.dit(np.ones((2, T, C), np.float32), np.array([2.0, 3.0], np.float32),
               np.zeros((2, K, D), np.float32), np.zeros((2, K, D), np.float32))
    np.testing.assert_array_equal(v[:, 0, 0], [2.0, 3.0])
    assert be.fake.loaded == ["dit"] and be.scratch.nbytes >= 9000
    assert len({e.context.scratch for e in be.engines.values()}) == 1
    assert be.num_tokens == K


def test_guided_loop_keeps_latents_on_the_device(fake_backend):
    from holopart_infer import sampler
    from holopart_infer.engines.cuda import DeviceTensor

    be, rt = fake_backend, fake_backend.fake.rt
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, T, C)).astype(np.float32)
    p = rng.standard_normal((2, K, D)).astype(np.float32)
    w = rng.standard_normal((2, K, D)).astype(np.float32)
    rt.copies.clear()
    out = sampler.sample(be.guided_step, noise, p, w, steps=4, guidance=3.5)
    assert isinstance(out, DeviceTensor)
    assert not [c for c in rt.copies if c[0] == "D2H"], "latents went to the host inside the loop"
    h2d = [n for kind, n in rt.copies if kind == "H2D"]
    assert h2d.count(p.nbytes) == 2  # part_cond and whole_cond uploaded once, not per step
    expected = noise.copy()
    sig = sampler.sigmas(4)
    for i in range(4):
        expected = expected + np.float32(sig[i] - sig[i + 1]) * np.float32(
            3.5 * p.mean() + w.mean() + sig[i] * 1000)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
    # conditions changed in place are uploaded again
    p *= 0
    x1 = np.asarray(be.guided_step(noise, 0.0, 1.0, 1.0, p, w))
    np.testing.assert_allclose(x1, noise + w.mean(), rtol=1e-5)


def test_decoder_query_splits_long_requests(fake_backend):
    be = fake_backend
    lat = np.arange(2 * T * C, dtype=np.float32).reshape(2, T, C)
    kv = be.decoder_kv(lat)
    pts = np.random.default_rng(1).uniform(-1, 1, (2, 10, 3)).astype(np.float32)
    runs = be.engines["vae_query"].context.runs
    logits = be.decoder_query(pts, kv)
    assert be.engines["vae_query"].context.runs - runs == 3  # Q=10 in calls of <= 4
    assert logits.shape == (2, 10, 1) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[..., 0], pts.sum(-1) + lat.mean(axis=(1, 2))[:, None], rtol=1e-5)
    with pytest.raises(ShapeError, match=r"graph 'vae_query': input 'points' has shape \(2, 10, 2\), "
                                         r"expected \(B, Q, 3\)"):
        be.decoder_query(pts[..., :2], kv)


def test_encode_and_batch_limits(fake_backend):
    be = fake_backend
    pt = np.ones((2, K, 6), np.float32)
    w, p = be.encode(pt, np.zeros((2, 9, 7), np.float32), 2 * pt, np.zeros((2, 9, 6), np.float32))
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    np.testing.assert_array_equal(w, 2 * pt)
    np.testing.assert_array_equal(p, 6 * pt)
    with pytest.raises(ShapeError, match=r"graph 'part_encoder': input 'part_tokens' has shape \(5, 5, 6\), "
                                         r"expected a shape this engine accepts: \(1, 5, 6\) \.\. \(4, 5, 6\)"):
        be.encode(*(np.ones(s, np.float32) for s in ((5, K, 6), (5, 9, 7), (5, K, 6), (5, 9, 6))))
    with pytest.raises(ShapeError, match=r"graph 'part_encoder': input 'whole_points' has dtype float64, "
                                         r"expected float32"):
        be.encode(pt, np.zeros((2, 9, 7)), 2 * pt, np.zeros((2, 9, 6), np.float32))


def test_unknown_graph(fake_backend):
    be = fake_backend
    be.graphs.discard("dit")
    with pytest.raises(EngineError, match="no 'dit' graph"):
        be.dit(np.ones((1, T, C)), np.ones(1), np.ones((1, K, D)), np.ones((1, K, D)))
