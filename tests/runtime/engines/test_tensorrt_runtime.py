"""The TensorRT backend at run time (engines/tensorrt/runtime.py): registry hooks, precision
rules, dtype conversions, and the backend on fake engines over a host-memory cuda-python
(tests/tensorrt_fakes.py): address binding, the shared scratch block, the device-resident
guided loop, chunked decoder queries, batch limits. The test marked ``requires_trt`` runs a
real tiny model against ONNX Runtime; it skips where tensorrt, cuda-python or a GPU is missing."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from holopart_infer.engines import tensorrt as trt_backend
from holopart_infer.engines.tensorrt import runtime as trt_runtime
from holopart_infer.errors import BackendUnavailable, EngineError, InputError, ModelDirError, ShapeError
from tests.support import REPO
from tests.tensorrt_fakes import FAKE_TRT, C, D, FakeCudart, K, T, fake_engines, hide_modules, skip_without_trt


# --------------------------------------------------------------------------- precision, devices, dtypes

def test_strong_typing_rules(tmp_path):
    assert trt_runtime._strongly_typed("fp16", "fp16", tmp_path) is True
    assert trt_runtime._strongly_typed("fp32", "fp32", tmp_path) is True
    assert trt_runtime._strongly_typed("fp32", "bf16", tmp_path) is False
    with pytest.raises(ModelDirError, match="exported in fp16.*Re-export with --precision bf16"):
        trt_runtime._strongly_typed("fp16", "bf16", tmp_path)



def test_missing_cuda_python_raises_with_install_hint(monkeypatch):
    from holopart_infer.engines import cuda

    monkeypatch.setattr(cuda, "_RUNTIME", None)
    hide_modules(monkeypatch, "cuda")
    with pytest.raises(BackendUnavailable, match=r"'cuda-python'.*pip install 'holopart-infer\[tensorrt\]'"):
        cuda.runtime()


def test_registry_hooks(monkeypatch):
    hide_modules(monkeypatch, "tensorrt")
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



# --------------------------------------------------------------------------- real TensorRT (GPU)

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



# --------------------------------------------------------------------------- the backend on fakes

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
    from holopart_infer.model import sampler
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
