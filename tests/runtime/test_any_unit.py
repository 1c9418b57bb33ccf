"""Any unit, within a stated range (README "Guarantees and exit codes"): clean-up and
decimation do not depend on the unit, an object at 1e-9 or 1e30 completes to the same
shape as at 1, coordinates outside the accepted range are refused (exit 2), and every
part emptied by clean-up or decimation is explained.
"""
from __future__ import annotations

import pytest

from holopart_infer import assets
from tests.support import FAST_OPTS, cli


# --------------------------------------------------------------------------- coordinate scales
SCALES = [1e-9, 1e-7, 1e12, 1e30]


@pytest.mark.parametrize("scale", SCALES)
def test_decimation_does_not_depend_on_the_unit(scale):
    import trimesh

    from holopart_infer.postprocess.decimate import decimate
    from tests.support import assert_same_surface

    sphere = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    v, f = decimate(sphere.vertices, sphere.faces, 500)
    vs, fs = decimate(sphere.vertices * scale, sphere.faces, 500)
    assert abs(len(fs) - len(f)) <= 10 and len(fs) <= 500
    assert_same_surface((vs / scale, fs), (v, f), name=f"scale {scale:g}")


def _two_boxes(scale: float):
    from holopart_infer.io.parts_io import Parts
    from tests.support import box

    return Parts.from_meshes([(v * scale, f) for v, f in (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))])


@pytest.fixture(scope="module")
def mini():
    import holopart_infer as hp

    return hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")


def test_completion_at_extreme_scales_is_the_same_shape(mini):
    from tests.support import assert_same_surface

    ref = mini.complete(_two_boxes(1.0), decimate=500, **FAST_OPTS)
    kept_full = set(ref.stats.get("decimation_non_manifold", []))  # decimation never opens a part (README)
    for scale in (1e-9, 1e30):
        res = mini.complete(_two_boxes(scale), decimate=500, **FAST_OPTS)
        assert set(res.stats.get("decimation_non_manifold", [])) == kept_full  # the same decision at any unit
        for a, b in zip(res.parts, ref.parts):
            assert 0 < len(a.faces) and (len(a.faces) <= 500 or a.name in kept_full)
            assert_same_surface((a.vertices / scale, a.faces), b, rel_dist=1e-3, name=f"{a.name} at {scale:g}")


@pytest.mark.parametrize("scale, offset, expected", [
    (1e37, 0.0, r"coordinates reach .*Scale the object down"),
    (1e-31, 0.0, r"bounding box is only .*Scale the object up"),
    (1e-3, 1e3, r"lies 1e\+03 from the origin.*Move it near the origin")])
def test_coordinates_outside_the_accepted_range_are_refused(scale, offset, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import Parts
    from tests.support import box

    meshes = [(v * scale + offset, f) for v, f in (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))]
    with pytest.raises(InputError, match=expected):
        Parts.from_meshes(meshes, source="boxes.glb")
    with pytest.raises(InputError, match="boxes.glb: .*accepted: every"):
        Parts.from_meshes(meshes, source="boxes.glb")


def test_cli_refuses_a_file_outside_the_range_with_exit_2(tmp_path):
    import trimesh

    from tests.support import box

    scene = trimesh.Scene()
    for name, (v, f) in zip(("a", "b"), (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))):
        scene.add_geometry(trimesh.Trimesh(v * 1e-3 + 1e3, f, process=False), node_name=name, geom_name=name)
    src = tmp_path / "far.glb"
    scene.export(src)
    r = cli("run", src, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2 and str(src) in r.stderr and "Move it near the origin" in r.stderr, r.stderr
    assert not (tmp_path / "o.glb").exists()


def test_every_part_emptied_by_clean_up_is_exit_1_with_its_own_explanation(mini, monkeypatch):
    from holopart_infer.postprocess import cleanup
    from holopart_infer.errors import EmptyResult

    monkeypatch.setattr(cleanup, "remove_floaters", lambda v, f, m: (v[:0], f[:0]))
    with pytest.raises(EmptyResult, match="no faces left after clean-up and decimation.*--no-decimate"):
        mini.complete(_two_boxes(1.0), decimate=500, min_component=0.2, **FAST_OPTS)


def test_decimation_that_would_empty_a_part_keeps_its_closed_mesh(mini, monkeypatch):
    """Decimation never opens a closed part (issue 23): one that comes back empty (not closed)
    leaves the part its full marching-cubes mesh, with the warning, never an empty part."""
    from holopart_infer.postprocess import decimate as decimate_mod

    ref = mini.complete(_two_boxes(1.0), decimate=None, guard=False, **FAST_OPTS)
    monkeypatch.setattr(decimate_mod, "decimate", lambda v, f, n: (v[:0], f[:0]))
    res = mini.complete(_two_boxes(1.0), decimate=500, guard=False, **FAST_OPTS)
    assert sorted(res.stats["decimation_non_manifold"]) == sorted(p.name for p in res.parts)
    for a, b in zip(res.parts, ref.parts):
        assert len(a.faces) == len(b.faces) > 500
