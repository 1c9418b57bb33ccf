"""The Python API end to end: backend resolution, options, geometry round trip, determinism."""
from __future__ import annotations

import numpy as np
import pytest

import holopart_infer as hp
from holopart_infer import assets
from holopart_infer.errors import BackendUnavailable, InputError, InputFileNotFound
from holopart_infer.io.parts_io import load_parts
from holopart_infer.pipeline import CompletionOptions, HoloPart
from tests.support import FAST, SphereBackend, assert_same_surface, write_transformed_scene


def _sphere_model() -> HoloPart:
    return HoloPart(SphereBackend())


def test_geometry_maps_back_to_input_coordinates(tmp_path):
    path = tmp_path / "scene.glb"
    write_transformed_scene(path)
    parts = load_parts(path)
    # guard off: a sphere is no plausible completion of these parts, and the frames are under test here
    res = _sphere_model().complete(path, steps=1, depth=7, num_points=2048, decimate=None, guard=False)
    assert [p.name for p in res.parts] == parts.names
    from holopart_infer.model.conditioning import build_conditions

    cond = build_conditions(parts, num_points=2048, seed=0, normalize=True)
    for i, part in enumerate(res.parts):
        # the sphere's centre and radius in the part frame, mapped to input coordinates
        centre = cond.to_input_frame(i, np.zeros((1, 3)))[0]
        edge = cond.to_input_frame(i, np.array([[SphereBackend.R, 0, 0]]))[0]
        radius = np.linalg.norm(edge - centre)
        r = np.linalg.norm(part.vertices - centre, axis=1)
        assert np.abs(r - radius).max() < 0.01 * radius, (part.name, np.abs(r - radius).max() / radius)
        # the part's own samples are centred on the same point (frame centre = bbox centre)
        v_in = parts[i].vertices
        np.testing.assert_allclose(centre, (v_in.max(0) + v_in.min(0)) / 2, atol=0.05 * np.ptp(v_in, axis=0).max())


def test_complete_demo_model_is_deterministic_and_names_parts():
    model = hp.load(assets.demo_model_path())
    # device="auto" picks the GPU where ONNX Runtime's CUDA provider exists, the CPU otherwise
    assert model.backend_name == "onnxruntime" and model.device in ("cpu", "cuda")
    assert model.precision == "fp32"
    a = model.complete(assets.demo_object_path(), seed=3, **FAST)
    b = model.complete(assets.demo_object_path(), seed=3, **FAST)
    names = load_parts(assets.demo_object_path()).names
    assert [p.name for p in a.parts] == names
    for pa, pb in zip(a.parts, b.parts):
        np.testing.assert_array_equal(pa.vertices, pb.vertices)
        np.testing.assert_array_equal(pa.faces, pb.faces)
    assert {"conditioning", "part_encoder", "denoise", "decoder_kv", "extract"} <= set(a.timings)
    assert a.stats["decoder_queries_per_level"]["0"] == len(names) * 57 ** 3


def test_parts_per_batch_does_not_change_results():
    model = hp.load(assets.demo_model_path())
    a = model.complete(assets.demo_object_path(), parts_per_batch=8, **FAST)
    b = model.complete(assets.demo_object_path(), parts_per_batch=2, **FAST)
    for pa, pb in zip(a.parts, b.parts):
        assert pa.faces.shape == pb.faces.shape
        np.testing.assert_allclose(pa.vertices, pb.vertices, atol=1e-4)


def test_progress_reports_each_stage():
    seen = set()
    hp.load(assets.demo_model_path()).complete(assets.demo_object_path(), progress=lambda s, d, t: seen.add(s), **FAST)
    assert {"denoise", "postprocess"} <= seen and any(s.startswith("extract") for s in seen)


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(depth=3), "depth must be"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(parts_per_batch=0), "parts_per_batch"),
    (dict(min_component=1.5), "min_component"),
])
def test_bad_options(bad, match):
    with pytest.raises(InputError, match=match):
        CompletionOptions(**bad).validate()


def test_unknown_option_named():
    with pytest.raises(InputError, match="unknown option.*stepz"):
        hp.load(assets.demo_model_path()).complete(assets.demo_object_path(), stepz=3)


def test_load_resolution_errors(tmp_path):
    with pytest.raises(InputFileNotFound, match="does not exist"):
        hp.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither an exported model dir"):
        hp.load(tmp_path / "empty")
    with pytest.raises(InputError, match="backend must be one of"):
        hp.load(assets.demo_model_path(), backend="tflite")
    with pytest.raises(InputError, match="backend 'torch' runs a checkpoint dir"):
        hp.load(assets.demo_model_path(), backend="torch")


def test_explicit_tensorrt_without_it_raises_with_hint():
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(BackendUnavailable, match=r"pip install 'holopart-infer\[tensorrt\]'"):
        hp.load(assets.demo_model_path(), backend="tensorrt")


def test_cuda_device_without_gpu_raises():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable):
        hp.load(assets.demo_model_path(), backend="onnxruntime", device="cuda")


def test_checkpoint_runs_on_torch_backend(tiny_checkpoint):
    auto = hp.load(tiny_checkpoint)  # device="auto": the GPU where torch sees one
    assert auto.backend_name == "torch" and auto.device in ("cpu", "cuda")
    model = hp.load(tiny_checkpoint, device="cpu")
    assert (model.backend_name, model.device) == ("torch", "cpu")
    with pytest.raises(InputError, match="Run `holopart-infer export"):
        hp.load(tiny_checkpoint, backend="onnxruntime")
    res = model.complete(assets.demo_object_path(), **FAST)
    assert len(res.parts) == 5


def test_checkpoint_fast_path_matches_faithful_model(tiny_checkpoint):
    """hp.load(checkpoint) runs the optimized torch path; it must give the faithful model's solids.

    Compared as geometry (surface distance, volume, closedness): a logit within
    rounding of zero may flip sign between the two paths and reorder or move a
    few vertices by a fraction of a cell, which changes no surface."""
    from holopart_infer.export.torch_backend import TorchBackend

    fast = hp.load(tiny_checkpoint, device="cpu")  # compared with the faithful model on the CPU
    assert type(fast.backend).__name__ == "FastTorchBackend"
    ref = HoloPart(TorchBackend.from_checkpoint(tiny_checkpoint))
    assert ref.defaults == fast.defaults and ref.config == fast.config
    a = fast.complete(assets.demo_object_path(), **FAST)
    b = ref.complete(assets.demo_object_path(), **FAST)
    assert [p.name for p in a.parts] == [p.name for p in b.parts]
    for pa, pb in zip(a.parts, b.parts):
        assert_same_surface(pa, pb, name=pa.name)


def test_min_component_drops_small_pieces():
    from holopart_infer.postprocess.cleanup import connected_components

    model = hp.load(assets.demo_model_path())
    full = model.complete(assets.demo_object_path(), min_component=0, **FAST)  # every piece (the default drops some)
    kept = model.complete(assets.demo_object_path(), min_component=0.5, **FAST)

    def areas(p):
        n, label = connected_components(p.faces, len(p.vertices))
        t = p.vertices[p.faces].astype(np.float64)
        a = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
        return np.bincount(label, weights=a, minlength=n)

    # the random-weight demo model leaves several pieces in some part: the test has something to remove
    assert max(len(areas(p)) for p in full.parts) > 1
    for a, b in zip(full.parts, kept.parts):
        ab = areas(b)
        assert ab.min() >= 0.5 * ab.max() - 1e-9
        assert ab.max() == pytest.approx(areas(a).max())  # the largest piece is untouched
        assert len(b.faces) <= len(a.faces)


def test_complete_uses_the_model_defaults_unless_overridden():
    model = hp.load(assets.demo_model_path())
    fast = {k: v for k, v in FAST.items() if k not in ("latent_tokens", "num_points")}
    model.defaults = {"latent_tokens": 32, "num_points": 512}
    assert (model.default_options().latent_tokens, model.default_options().num_points) == (32, 512)
    a = model.complete(assets.demo_object_path(), **fast)
    b = model.complete(assets.demo_object_path(), latent_tokens=32, num_points=512, **fast)
    for pa, pb in zip(a.parts, b.parts):
        np.testing.assert_array_equal(pa.vertices, pb.vertices)
    # explicit options win over the model's defaults
    c = model.complete(assets.demo_object_path(), options=CompletionOptions(**FAST))
    d = model.complete(assets.demo_object_path(), options=CompletionOptions(**{**FAST, "num_points": 512}))
    assert any(pc.vertices.shape != pd.vertices.shape or not np.array_equal(pc.vertices, pd.vertices)
               for pc, pd in zip(c.parts, d.parts))


def test_checkpoint_inference_defaults(tmp_path):
    import json

    from holopart_infer.errors import CheckpointError
    from holopart_infer.model.checkpoint import checkpoint_inference_defaults

    (tmp_path / "model_index.json").write_text(json.dumps({"inference_defaults": {"latent_tokens": 64}}))
    assert checkpoint_inference_defaults(tmp_path) == {"latent_tokens": 64}
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "HoloPartPipeline"}))
    assert checkpoint_inference_defaults(tmp_path) == {}
    (tmp_path / "model_index.json").write_text(json.dumps({"inference_defaults": [64]}))
    with pytest.raises(CheckpointError, match="model_index.json: inference_defaults must be an object"):
        checkpoint_inference_defaults(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model_index.json: cannot read it"):
        checkpoint_inference_defaults(tmp_path)


def test_decimation_that_would_open_a_closed_part_is_undone_and_reported(monkeypatch, caplog):
    import logging

    import holopart_infer.postprocess.decimate as D

    real = D.decimate
    monkeypatch.setattr(D, "decimate", lambda v, f, t: (lambda vf: (vf[0], vf[1][:-1]))(real(v, f, t)))
    fast = {**FAST, "decimate": 200}
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        res = hp.load(assets.demo_model_path()).complete(assets.demo_object_path("mug"), **fast)
    closed_parts = [p.name for p in res.parts if len(p.faces)]
    assert closed_parts
    lines = [r.getMessage() for r in caplog.records if "decimation to 200 faces" in r.getMessage()]
    assert len(lines) == 1, caplog.text  # one summary line per run, naming the parts
    assert f"would have left {len(res.stats['decimation_non_manifold'])} of {len(res.parts)} parts non-manifold" \
        in lines[0]
    assert closed_parts[0] in lines[0]
    from holopart_infer.postprocess.cleanup import edge_manifold

    for p in res.parts:  # the closed marching-cubes mesh was kept instead of the opened one
        if p.name in res.stats["decimation_non_manifold"]:
            assert len(p.faces) > 200 and edge_manifold(p.faces)


def test_result_carries_its_resolved_options_and_typed_stats():
    model = hp.load(assets.demo_model_path())
    res = model.complete(assets.demo_object_path(), steps=2, depth=6, decimate=None, seed=3)
    assert res.options == model.default_options().replace(steps=2, depth=6, decimate=None, seed=3)
    assert res.stats.num_parts == len(res.parts) and res.stats.backend == model.backend_name
    assert res.stats["batch_sizes"] == res.stats.batch_sizes  # read-compatible with the former dict
    assert dict(res.stats)["decoder_queries_per_level"] == res.stats.decoder_queries_per_level
    assert res.stats.get("worker") is None and "memory" in res.stats


@pytest.mark.parametrize("overrides, message", [
    (dict(steps=0), "option steps must be an integer >= 1, got 0 (int)"),
    (dict(decimate="many"), "option decimate must be None or an integer >= 4, got 'many' (str)"),
    (dict(stepz=3), "unknown option(s): stepz; known: steps"),
])
def test_one_merge_one_message(overrides, message):
    """CompletionOptions.replace is where every layer merges (API, model defaults, batch lists,
    serve requests): the same message, naming the option, the accepted values and the value."""
    from holopart_infer.errors import ModelDirError

    with pytest.raises(InputError) as e:
        CompletionOptions().replace(**overrides)
    assert message in str(e.value)
    with pytest.raises(ModelDirError) as e:
        CompletionOptions.with_defaults(overrides, "some/model")
    assert f"some/model: inference_defaults: {message}" in str(e.value)
