"""The guard's stand-in: a part's visible patch closed into a solid (postprocess.thin.closed_patch),
and the winding numbers it is built on (extraction.native.winding_numbers)."""
import numpy as np
import pytest
import trimesh

from holopart_infer.errors import InputError
from holopart_infer.extraction import native
from holopart_infer.postprocess.thin import SHELL_FRACTION, closed_patch


def _volume_iou(a, b, n=20000, seed=0):
    ma, mb = trimesh.Trimesh(*a, process=False), trimesh.Trimesh(*b, process=False)
    lo = np.minimum(ma.bounds[0], mb.bounds[0])
    hi = np.maximum(ma.bounds[1], mb.bounds[1])
    pts = np.random.default_rng(seed).uniform(lo, hi, (n, 3))
    ia = native.winding_numbers(pts, ma.triangles) > 0.5
    ib = native.winding_numbers(pts, mb.triangles) > 0.5
    return (ia & ib).sum() / max((ia | ib).sum(), 1)


def test_winding_numbers_native_matches_numpy_and_separates_a_sphere():
    m = trimesh.creation.icosphere(2)
    pts = np.random.default_rng(0).uniform(-1.3, 1.3, (3000, 3))
    w = native.winding_numbers(pts, m.triangles)
    ref = native._np_winding_numbers(pts, np.asarray(m.triangles, np.float64))
    np.testing.assert_allclose(w, ref, atol=1e-9)
    r = np.linalg.norm(pts, axis=1)
    far = np.abs(r - 1) > 0.05  # the icosphere's facets lie within 0.05 of the unit sphere
    assert np.array_equal((w > 0.5)[far], (r < 1)[far])
    # an open hemisphere: about 0.5 on the plane that closes it, halfway between in and out
    half = m.triangles[m.triangles_center[:, 2] > 0]
    assert abs(native.winding_numbers(np.zeros((1, 3)), half)[0] - 0.5) < 0.05


def test_winding_numbers_rejects_bad_shapes_by_name():
    with pytest.raises(InputError, match=r"points must have shape \(Q, 3\)"):
        native.winding_numbers(np.zeros((4, 2)), np.zeros((1, 3, 3)))
    with pytest.raises(InputError, match=r"triangles must have shape \(F, 3, 3\)"):
        native.winding_numbers(np.zeros((4, 3)), np.zeros((1, 9)))


def test_open_box_is_closed_into_its_solid():
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    open_faces = box.faces[box.face_normals[:, 1] > -0.5]  # no bottom (Y-up)
    (v, f), kind = closed_patch(box.vertices, open_faces)
    assert kind == "solid"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight
    assert _volume_iou((v, f), (box.vertices, box.faces)) > 0.9
    assert abs(m.volume / box.volume - 1) < 0.1


def test_closed_patch_keeps_closed_input_gives_sheets_the_shell_and_solids_their_inside():
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    unwelded = box.vertices[box.faces].reshape(-1, 3)
    (v, f), kind = closed_patch(unwelded, np.arange(len(unwelded)).reshape(-1, 3))
    assert kind == "closed" and len(f) == 12
    sheet_v = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], float)
    (v, f), kind = closed_patch(sheet_v, np.array([[0, 1, 2], [0, 2, 3]]))
    # no inside: the shell alone, SHELL_FRACTION of its longest side each way (its thin axis gets as
    # many grid cells as the others, so the layer is resolved to a few percent)
    assert kind == "solid"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight
    assert np.ptp(v[:, 1]) == pytest.approx(2 * SHELL_FRACTION, rel=0.1)
    assert np.ptp(v[:, 0]) == pytest.approx(1 + 2 * SHELL_FRACTION, abs=0.05)  # within a grid cell
    (v, f), kind = closed_patch(sheet_v, np.array([[0, 1, 2], [0, 2, 3]]), shell=0.05)
    assert kind == "solid" and np.ptp(v[:, 1]) == pytest.approx(0.1, rel=0.1)
    # faces pointing inwards close the same solid (|winding number|)
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    keep = box.face_normals[:, 1] > -0.5
    (v1, f1), _ = closed_patch(box.vertices, box.faces[keep])
    (v2, f2), _ = closed_patch(box.vertices, box.faces[keep][:, ::-1])
    assert _volume_iou((v1, f1), (v2, f2)) > 0.98
    # a patch that encloses a volume larger than its shell gets the grid solid (winding number + shell)
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    (v, f), kind = closed_patch(box.vertices, box.faces[box.face_normals[:, 1] > -0.5])
    assert kind == "solid"


def test_closed_patch_is_the_same_shape_at_any_unit():
    sphere = trimesh.creation.icosphere(3)
    cap = sphere.faces[sphere.triangles_center[:, 2] > -0.3]
    (v1, f1), k1 = closed_patch(sphere.vertices, cap)
    (v2, f2), k2 = closed_patch(sphere.vertices * 1000.0 + 5.0, cap)
    assert k1 == k2 == "solid" and len(f1) == len(f2)
    np.testing.assert_allclose((v2 - 5.0) / 1000.0, v1, atol=1e-6)
    assert _volume_iou((v1, f1), (sphere.vertices, sphere.faces)) > 0.6
