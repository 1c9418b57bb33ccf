"""Backend conformance: one contract, run against every backend this machine has.

Every backend is opened on the same weights (the golden weights when present,
else the tiny preset) and checked against the faithful PyTorch model:

* shapes and dtypes of the five calls (numpy float32 after ``numpy.asarray``);
* ``encode``, ``dit``, ``guided_step`` (with and without guidance) and the
  decoder within the golden tolerance of the faithful model (fp32);
* determinism: the same feeds give the same outputs, bit for bit;
* bad feeds (wrong shape, wrong dtype) raise ShapeError naming the tensor;
* what it says it is (name, device, precision, path, config, defaults), close().

Backends: ONNX Runtime CPU, the torch backend (CPU), the faithful model itself
(the contract holds for the reference too), TensorRT through fake engines that
run the exported ONNX graphs with ONNX Runtime (the real TensorRT backend code:
binding, scratch, device-resident loop, chunking), and every GPU backend
(ONNX Runtime CUDA, torch CUDA, TensorRT) where one is available.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model needs the [torch] extra")

from holopart_infer.engines import backend_status, open_backend  # noqa: E402
from holopart_infer.errors import ShapeError  # noqa: E402
from holopart_infer.verify import TOLERANCE, relative_error  # noqa: E402
from tests.support import checkpoint, exported_model  # noqa: E402
from tests.tensorrt_fakes import FAKE_TRT, FakeCudart, FakeEngine  # noqa: E402

B, T, Q = 2, 24, 300


def _fake_tensorrt(model_dir: Path, monkeypatch):
    """TensorRTBackend over fake engines whose compute is the exported graph on ONNX Runtime CPU."""
    import onnxruntime as ort

    from holopart_infer.engines import cuda
    from holopart_infer.engines.tensorrt import TensorRTBackend, compute_profiles
    from holopart_infer.engines.tensorrt.runtime import _Engine
    from holopart_infer.model.manifest import load_manifest

    monkeypatch.setattr(cuda, "_RUNTIME", FakeCudart())
    manifest = load_manifest(model_dir)

    def engine(graph: str) -> FakeEngine:
        spec = manifest.raw["graphs"][graph]
        prof = compute_profiles(graph, spec, {})
        ranges = {n: [r.min, r.opt, r.max] for n, r in prof.items()}
        for n, ts in manifest.graph(graph).inputs.items():  # fixed-shape inputs have no profile entry
            ranges.setdefault(n, [tuple(ts.shape)] * 3)
        sess = ort.InferenceSession(str(manifest.graph(graph).path), providers=["CPUExecutionProvider"])
        outs = manifest.graph(graph).outputs

        def out_shape(name):
            def shape(inputs):  # symbolic axes take their size from the inputs that declare them
                sizes = {}
                for n, ts in manifest.graph(graph).inputs.items():
                    for d, got in zip(ts.shape, inputs[n]):
                        if isinstance(d, str):
                            sizes[d] = got
                return tuple(sizes[d] if isinstance(d, str) else d for d in outs[name].shape)
            return shape

        def compute(ins):
            res = sess.run(list(outs), {k: np.ascontiguousarray(v) for k, v in ins.items()})
            return dict(zip(outs, res))

        return FakeEngine(ranges, {n: out_shape(n) for n in outs}, compute, 4096)

    def make(graph):
        runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine(graph))
        return _Engine(FAKE_TRT, runtime, graph, b"", Path(f"{graph}.engine"))

    be = TensorRTBackend(engines={g: make(g) for g in manifest.graphs if g != "dit"},
                         stream=cuda.Stream(), scratch=cuda.ScratchMemory(), config=manifest.config,
                         precision="fp32", device=0, fusion={}, graphs=manifest.graphs,
                         loader=lambda g: (make(g), None), manifest=manifest)
    be._bind_scratch()
    return be


def _real_backends() -> list[tuple[str, str, str]]:
    """(id, backend, device) of every registered backend available here."""
    out = []
    for dev in ("cpu", "cuda"):
        for name, (ok, _) in backend_status(dev).items():
            if ok:
                out.append((f"{name}-{dev}", name, dev))
    return out


CASES = [c[0] for c in _real_backends()] + ["reference-cpu", "tensorrt-fake"]


@pytest.fixture(scope="module")
def reference():
    from holopart_infer.export.torch_backend import TorchBackend

    return TorchBackend.from_checkpoint(checkpoint("golden"))


@pytest.fixture(params=CASES)
def backend(request, reference, monkeypatch):
    case = request.param
    if case == "reference-cpu":
        yield reference
        return
    if case == "tensorrt-fake":
        be = _fake_tensorrt(exported_model("golden"), monkeypatch)
    else:
        _, name, dev = next(c for c in _real_backends() if c[0] == case)
        path = checkpoint("golden") if name == "torch" else exported_model("golden")
        be = open_backend(path, backend=name, device=dev, precision=None if name == "onnxruntime" else "fp32")
    yield be
    be.close()


@pytest.fixture(scope="module")
def feeds(reference):
    rng = np.random.default_rng(7)
    cfg = reference.config
    K, C = reference.num_tokens, reference.latent_channels
    N = 4 * K
    f = {
        "part_tokens": rng.uniform(-1, 1, (B, K, 6)).astype(np.float32),
        "whole_points": np.concatenate([rng.uniform(-1, 1, (B, N, 6)), rng.integers(0, 2, (B, N, 1))],
                                       -1).astype(np.float32),
        "local_tokens": rng.uniform(-1, 1, (B, K, 6)).astype(np.float32),
        "local_points": rng.uniform(-1, 1, (B, N, 6)).astype(np.float32),
        "latents": rng.standard_normal((B, T, C)).astype(np.float32),
        "points": rng.uniform(-1.05, 1.05, (B, Q, 3)).astype(np.float32),
    }
    f["whole_cond"], f["part_cond"] = (np.asarray(a) for a in reference.encode(
        f["part_tokens"], f["whole_points"], f["local_tokens"], f["local_points"]))
    assert f["part_cond"].shape == (B, K, cfg["transformer"]["cross_attention_dim"])
    return f


def _f32(a, shape) -> np.ndarray:
    a = np.asarray(a)
    assert a.dtype == np.float32 and a.shape == shape, (a.dtype, a.shape, shape)
    return a


def _close(ours, ref, what):
    err = relative_error(np.asarray(ours), np.asarray(ref))
    assert err <= TOLERANCE, f"{what}: relative error {err:.3g} > {TOLERANCE:g}"


def test_says_what_it_is(backend, reference):
    assert backend.name and backend.precision == "fp32"
    assert str(backend.device).split(":")[0] in ("cpu", "cuda")
    assert backend.num_tokens == reference.num_tokens and backend.latent_channels == reference.latent_channels
    for comp in ("transformer", "vae", "part_encoder"):
        assert {k: backend.config[comp][k] for k in reference.config[comp]
                if k in backend.config[comp]} == {k: v for k, v in reference.config[comp].items()
                                                    if k in backend.config[comp]}
    assert isinstance(backend.defaults, dict)


def test_encode_matches_reference(backend, reference, feeds):
    K = reference.num_tokens
    D = feeds["part_cond"].shape[-1]
    w, p = backend.encode(feeds["part_tokens"], feeds["whole_points"], feeds["local_tokens"], feeds["local_points"])
    _close(_f32(w, (B, K, D)), feeds["whole_cond"], "whole_cond")
    _close(_f32(p, (B, K, D)), feeds["part_cond"], "part_cond")


def test_dit_matches_reference(backend, reference, feeds):
    ts = np.array([500.0, 20.0], np.float32)
    args = (feeds["latents"], ts, feeds["part_cond"], feeds["whole_cond"])
    _close(_f32(backend.dit(*args), feeds["latents"].shape), reference.dit(*args), "velocity")


@pytest.mark.parametrize("guidance", [1.0, 3.5])
def test_guided_step_matches_reference(backend, reference, feeds, guidance):
    args = (feeds["latents"], 700.0, 0.02, guidance, feeds["part_cond"], feeds["whole_cond"])
    ours = backend.guided_step(*args)
    _close(_f32(ours, feeds["latents"].shape), reference.guided_step(*args), f"guided step g={guidance}")
    # the step's output is a valid input of the next step (device-resident backends keep it there)
    again = backend.guided_step(ours, 680.0, 0.02, guidance, feeds["part_cond"], feeds["whole_cond"])
    ref2 = reference.guided_step(np.asarray(reference.guided_step(*args)), 680.0, 0.02, guidance,
                                 feeds["part_cond"], feeds["whole_cond"])
    _close(_f32(again, feeds["latents"].shape), ref2, "second step")


def test_decoder_matches_reference(backend, reference, feeds):
    ours = backend.decoder_query(feeds["points"], backend.decoder_kv(feeds["latents"]))
    ref = reference.decoder_query(feeds["points"], reference.decoder_kv(feeds["latents"]))
    _close(_f32(ours, (B, Q, 1)), ref, "logits")


def test_deterministic(backend, feeds):
    args = (feeds["latents"], 700.0, 0.02, 3.5, feeds["part_cond"], feeds["whole_cond"])
    np.testing.assert_array_equal(np.asarray(backend.guided_step(*args)), np.asarray(backend.guided_step(*args)))
    kv = backend.decoder_kv(feeds["latents"])
    np.testing.assert_array_equal(np.asarray(backend.decoder_query(feeds["points"], kv)),
                                  np.asarray(backend.decoder_query(feeds["points"], backend.decoder_kv(feeds["latents"]))))


def test_bad_feeds_name_the_tensor(backend, reference, feeds):
    if backend is reference:
        pytest.skip("the faithful model is the numeric reference, not an input-checking runtime backend")
    bad_c = np.zeros((B, T, reference.latent_channels + 1), np.float32)
    with pytest.raises(ShapeError, match="'latents'"):
        backend.guided_step(bad_c, 700.0, 0.02, 3.5, feeds["part_cond"], feeds["whole_cond"])
    with pytest.raises(ShapeError, match="'latents'.*float64|float64.*'latents'"):
        backend.decoder_kv(feeds["latents"].astype(np.float64))
    kv = backend.decoder_kv(feeds["latents"])
    with pytest.raises(ShapeError, match="points"):
        backend.decoder_query(feeds["points"][..., :2], kv)
