"""Building TensorRT engines (engines/tensorrt/builder.py): parser error messages, the
install hint when tensorrt is missing, and the build flow of ``build_engine`` against a fake
``tensorrt`` module that records the calls. The test marked ``requires_trt`` builds a real
engine (cache and fusion check); it skips where tensorrt, cuda-python or a GPU is missing."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from holopart_infer.engines import tensorrt as trt_backend
from holopart_infer.engines.tensorrt import runtime as trt_runtime
from holopart_infer.engines.tensorrt import (
    ShapeRange, attention_fused, build_engine, compute_profiles, engine_key_fields, format_parser_errors,
)
from holopart_infer.errors import BackendUnavailable, EngineError, InputError, InputFileNotFound
from tests.tensorrt_fakes import (
    QUERY_INPUTS, VAE_QUERY, FakeParser, FakeParserError, hide_modules, make_fake_trt, skip_without_trt,
)


# --------------------------------------------------------------------------- parser errors

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

def test_missing_tensorrt_raises_with_install_hint(monkeypatch, tmp_path):
    hide_modules(monkeypatch, "tensorrt")
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



def test_old_tensorrt_is_rejected(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt({}, version="8.6.1"))
    with pytest.raises(EngineError, match="TensorRT 8.6.1 is installed; holopart-infer needs TensorRT >= 10"):
        trt_backend.require_tensorrt()



# --------------------------------------------------------------------------- build flow on a fake tensorrt

@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "onnx" / "vae_query.onnx"
    p.parent.mkdir()
    p.write_bytes(b"onnx")
    return p


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



# --------------------------------------------------------------------------- real TensorRT (GPU)

def _attention_onnx(path: Path, heads=4, dh=64) -> None:
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
