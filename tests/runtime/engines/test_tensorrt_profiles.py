"""TensorRT shape profiles (engines/tensorrt/profiles.py): (min, opt, max) per input from a
manifest's graph, the backend's max_batch / max_query_points overrides, malformed profiles."""
from __future__ import annotations

import pytest

from holopart_infer.engines import tensorrt as trt_backend
from holopart_infer.engines.tensorrt import ShapeRange, compute_profiles, profile_overrides
from holopart_infer.errors import InputError, ModelDirError
from tests.tensorrt_fakes import GUIDED_STEP, VAE_QUERY, graph_spec


def test_profiles_come_from_the_manifest():
    p = compute_profiles("guided_step", GUIDED_STEP)
    assert set(p) == {"latents", "timestep", "dt", "guidance", "part_cond", "whole_cond"}
    assert p["latents"] == ShapeRange((1, 1, 64), (8, 2048, 64), (16, 2048, 64))
    assert p["timestep"] == ShapeRange.fixed((1,))
    assert p["part_cond"].max == (16, 512, 512)


def test_profile_overrides_apply_by_axis_symbol():
    p = compute_profiles("vae_query", VAE_QUERY, profile_overrides(max_batch=4, max_query_points=65536))
    # opt Q is the pipeline's query chunk: what extraction sends per part per call
    from holopart_infer.extraction.extract import QUERY_CHUNK_POINTS

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
