"""ONNX Runtime (CPU) vs PyTorch (CPU) on the "mid" preset: one DiT forward, one decoder query batch.

Run (the project's pytest config disables benchmarks by default)::

    .venv/bin/python -m pytest benchmarks/bench_ort_vs_torch.py --benchmark-enable \
        --benchmark-columns=median,iqr,min,max,rounds -p no:cacheprovider

Both engines use the same thread count (HOLOPART_BENCH_THREADS, default: all
cores) on the same inputs. Set HOLOPART_BENCH_MODEL to a model dir exported
from the mid preset (seed 0) to skip the export. Results: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from holopart_infer.export.random_checkpoint import PRESETS, write_random_checkpoint  # noqa: E402

THREADS = int(os.environ.get("HOLOPART_BENCH_THREADS", os.cpu_count() or 1))
LATENT_TOKENS = 2048  # the published latent size (spec section 1)
BATCH = 1
QUERY_POINTS = 10000  # the reference's decoding chunk (spec section 8)


@pytest.fixture(scope="module")
def engines():
    from holopart_infer.export.onnx_export import export_model
    from holopart_infer.engines import open_backend
    from holopart_infer.export.torch_backend import TorchBackend

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="holopart-bench-") as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", "mid", seed=0)
        model = os.environ.get("HOLOPART_BENCH_MODEL") or export_model(ckpt, Path(tmp) / "model", progress=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        yield (open_backend(model, backend="onnxruntime", device="cpu", session_options=so),
               TorchBackend.from_checkpoint(ckpt))


def _dit_inputs(cfg):
    rng = np.random.default_rng(0)
    C, Dc = cfg["transformer"]["in_channels"], cfg["transformer"]["cross_attention_dim"]
    K = cfg["part_encoder"]["num_tokens"]
    return (rng.standard_normal((BATCH, LATENT_TOKENS, C)).astype(np.float32),
            np.full((BATCH,), 500.0, np.float32),
            rng.standard_normal((BATCH, K, Dc)).astype(np.float32),
            rng.standard_normal((BATCH, K, Dc)).astype(np.float32))


def _query_inputs(cfg):
    rng = np.random.default_rng(1)
    lat = rng.standard_normal((BATCH, LATENT_TOKENS, cfg["vae"]["latent_channels"])).astype(np.float32)
    pts = rng.uniform(-1.05, 1.05, (BATCH, QUERY_POINTS, 3)).astype(np.float32)
    return lat, pts


def test_mid_preset_is_what_the_results_say():
    t = PRESETS["mid"]["transformer"]
    assert (t["width"], t["in_channels"]) == (384, 64)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_dit_forward(benchmark, engines, engine):
    ours, ref = engines
    b = ours if engine == "onnxruntime" else ref
    args = _dit_inputs(ours.config)
    b.dit(*args)  # warm-up (session creation, allocator)
    benchmark.extra_info.update(engine=engine, threads=THREADS, tokens=LATENT_TOKENS + 1, batch=BATCH)
    out = benchmark(b.dit, *args)
    assert out.shape == args[0].shape


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_decoder_query(benchmark, engines, engine):
    ours, ref = engines
    b = ours if engine == "onnxruntime" else ref
    lat, pts = _query_inputs(ours.config)
    kv = b.decoder_kv(lat)
    b.decoder_query(pts, kv)
    benchmark.extra_info.update(engine=engine, threads=THREADS, points=QUERY_POINTS, batch=BATCH)
    out = benchmark(b.decoder_query, pts, kv)
    assert out.shape == (BATCH, QUERY_POINTS, 1)
