"""export/synthetic.py: determinism, watertight parts, visibility, occupancy labels."""
from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from holopart_infer.export import synthetic as S  # noqa: E402
from tests.support import surface_distance  # noqa: E402


def test_deterministic_by_seed():
    a = list(S.iter_dataset(5, 3, n_views=8))
    b = list(S.iter_dataset(5, 3, n_views=8))
    assert [o.template for o in a] == [o.template for o in b]
    for oa, ob in zip(a, b):
        assert oa.names == ob.names
        for pa, pb in zip(oa.parts, ob.parts):
            np.testing.assert_array_equal(pa.mesh.vertices, pb.mesh.vertices)
            np.testing.assert_array_equal(pa.mesh.faces, pb.mesh.faces)
            np.testing.assert_array_equal(pa.visible, pb.visible)
    # another seed, same template: another object (its assembled surface differs measurably)
    c = S.make_object((6, 0), a[0].template, n_views=8)
    whole = [trimesh.util.concatenate([p.mesh for p in o.parts]) for o in (a[0], c)]
    diag = float(np.linalg.norm(whole[0].extents))
    d = surface_distance((whole[0].vertices, whole[0].faces), (whole[1].vertices, whole[1].faces))
    assert d > 1e-3 * diag, f"seed 6 gave the same {a[0].template} as seed 5 (surface distance {d:.2g})"


@pytest.mark.parametrize("template", S.TEMPLATES)
def test_parts_watertight_and_normalized(template):
    o = S.make_object(1, template, n_views=8)
    assert 2 <= len(o.parts) <= 6
    for p in o.parts:
        assert p.mesh.is_watertight and p.mesh.is_winding_consistent and p.mesh.volume > 0, p.name
        assert p.visible.dtype == bool and p.visible.shape == (len(p.mesh.faces),) and p.visible.any()
    allv = np.concatenate([p.mesh.vertices for p in o.parts])
    ext = allv.max(0) - allv.min(0)
    assert np.isclose(ext.max(), 2.0) and np.allclose((allv.max(0) + allv.min(0)) / 2, 0, atol=1e-9)
    parts = o.input_parts()  # the patches form a valid HoloPart input
    assert parts.names == o.names


@pytest.mark.parametrize("template", ["table", "chair"])
def test_visible_patch_is_strict_subset_for_occluded_part(template):
    o = S.make_object(0, template, n_views=16)
    legs = [p for p in o.parts if p.name.startswith("leg")]
    assert legs
    for p in legs:  # the leg's top cap sits inside the top/seat: never seen
        assert 0 < p.visible.sum() < len(p.visible)
        assert p.visible_fraction < 1.0
        v, f = p.patch
        assert len(f) == p.visible.sum() and f.max() < len(v)


def test_visibility_hidden_box_inside_box():
    _, outer = S.box([2, 2, 2], [0, 0, 0], subdivisions=0)
    _, inner = S.box([0.5, 0.5, 0.5], [0, 0, 0], subdivisions=0)
    vis = S.visible_faces([outer, inner], n_views=12, convex=[True, True])
    assert vis[0].all() and not vis[1].any()


def test_occupancy_labels_of_a_box():
    _, m = S.box([1.0, 0.6, 0.4], [0.1, 0.0, -0.2], subdivisions=1)
    occ = S.sample_occupancy(m, 300, 700, np.random.default_rng(0), sigma=0.05, bound=1.0)
    assert occ.points.shape == (1000, 3) and occ.labels.shape == (1000,)
    d = np.abs(occ.points - np.array([0.1, 0.0, -0.2])) - np.array([0.5, 0.3, 0.2])
    truth = (d < 0).all(axis=1)
    clear = np.abs(d).min(axis=1) > 1e-5
    np.testing.assert_array_equal(occ.labels[clear] > 0.5, truth[clear])
    assert 0.05 < truth.mean() < 0.95
    # frame: (x - center) / scale maps the same labels
    occ2 = S.sample_occupancy(m, 0, 200, np.random.default_rng(1), center=[0.1, 0.0, -0.2], scale=0.5)
    d2 = np.abs(occ2.points * 0.5) - np.array([0.5, 0.3, 0.2])
    ok = np.abs(d2).min(axis=1) > 1e-5
    np.testing.assert_array_equal(occ2.labels[ok] > 0.5, (d2 < 0).all(axis=1)[ok])


def test_write_example_glb(tmp_path):
    o = S.make_object(2, "mug", n_views=8)
    path = S.write_example(o, tmp_path / "mug.glb")
    scene = trimesh.load(path)
    assert len(scene.geometry) == len(o.parts)
    total = sum(len(g.faces) for g in scene.geometry.values())
    assert total == sum(int(p.visible.sum()) for p in o.parts)
