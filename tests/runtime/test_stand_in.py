"""The guard's stand-in: a part's visible patch closed into a solid (postprocess.thin.closed_patch),
and the winding numbers it is built on (extraction.native.winding_numbers)."""
import numpy as np
import pytest
import trimesh

from holopart_infer.errors import InputError
from holopart_infer.extraction import native
from holopart_infer.postprocess.thin import SHELL_FRACTION, closed_patch, encloses


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
    # it nearly encloses its volume: its hole is capped, its own faces kept exactly
    assert kind == "capped"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight and m.volume == pytest.approx(box.volume, rel=1e-9)
    assert {tuple(np.round(t, 9).ravel()) for t in box.vertices[open_faces]} <= \
        {tuple(np.round(t, 9).ravel()) for t in v[f]}
    # without capping (shell=0: the winding-number solid alone), meshed on a grid
    (v, f), kind = closed_patch(box.vertices, open_faces, shell=0.0)
    assert kind == "solid"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight
    assert _volume_iou((v, f), (box.vertices, box.faces)) > 0.9
    assert abs(m.volume / box.volume - 1) < 0.1


def test_capped_patch_closes_holes_and_declines_what_it_cannot_close():
    from holopart_infer.postprocess.thin import capped_patch

    sphere = trimesh.creation.icosphere(3)
    z = sphere.triangles_center[:, 2]
    faces = sphere.faces[(z < 0.8) & (z > -0.9)]  # two caps cut off: two holes
    v, f = capped_patch(np.asarray(sphere.vertices), faces)
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight and m.volume > 0  # outward, whichever way the patch was wound
    assert m.volume == pytest.approx(trimesh.Trimesh(sphere.vertices, sphere.faces).volume, rel=0.05)
    v2, f2 = capped_patch(np.asarray(sphere.vertices), faces[:, ::-1])
    assert trimesh.Trimesh(v2, f2, process=False).volume == pytest.approx(m.volume)
    # a closed surface has no hole; faces wound against each other cannot be capped into a clean
    # closed surface
    assert capped_patch(np.asarray(sphere.vertices), sphere.faces) is None
    flipped = faces.copy()
    flipped[:10] = flipped[:10, ::-1]
    assert capped_patch(np.asarray(sphere.vertices), flipped) is None
    # two holes meeting at one vertex: each capped on its own (every edge still shared by two faces)
    ico = trimesh.creation.icosphere(2)
    fan = np.flatnonzero((ico.faces == 0).any(axis=1))
    first = fan[0]
    other = next(j for j in fan[1:] if len(set(ico.faces[first]) & set(ico.faces[j])) == 1)
    keep = np.setdiff1d(np.arange(len(ico.faces)), [first, other])
    got = capped_patch(np.asarray(ico.vertices), ico.faces[keep])
    assert got is not None
    m = trimesh.Trimesh(*got, process=False)
    assert m.is_watertight and m.volume == pytest.approx(ico.volume, rel=0.01)


def test_closed_patch_keeps_closed_input_gives_sheets_the_shell_and_solids_their_inside():
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    unwelded = box.vertices[box.faces].reshape(-1, 3)
    (v, f), kind = closed_patch(unwelded, np.arange(len(unwelded)).reshape(-1, 3))
    assert kind == "closed" and len(f) == 12
    sheet_v = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], float)
    (v, f), kind = closed_patch(sheet_v, np.array([[0, 1, 2], [0, 2, 3]]))
    # no inside: the shell alone, SHELL_FRACTION of its longest side each way (its thin axis gets as
    # many grid cells as the others, so the layer is resolved to a few percent)
    assert kind == "shell"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight
    assert np.ptp(v[:, 1]) == pytest.approx(2 * SHELL_FRACTION, rel=0.1)
    assert np.ptp(v[:, 0]) == pytest.approx(1 + 2 * SHELL_FRACTION, abs=0.05)  # within a grid cell
    (v, f), kind = closed_patch(sheet_v, np.array([[0, 1, 2], [0, 2, 3]]), shell=0.05)
    assert kind == "shell" and np.ptp(v[:, 1]) == pytest.approx(0.1, rel=0.1)
    # faces pointing inwards close the same solid (|winding number|)
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    keep = box.face_normals[:, 1] > -0.5
    (v1, f1), _ = closed_patch(box.vertices, box.faces[keep])
    (v2, f2), _ = closed_patch(box.vertices, box.faces[keep][:, ::-1])
    assert _volume_iou((v1, f1), (v2, f2)) > 0.98
    # a patch that nearly encloses its volume gets no shell: its hole capped
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    (v, f), kind = closed_patch(box.vertices, box.faces[box.face_normals[:, 1] > -0.5])
    assert kind == "capped"


def test_encloses_tells_a_sheet_from_a_surface_around_a_volume():
    sheet_v = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], float)
    ambiguous, inside = encloses(sheet_v, np.array([[0, 1, 2], [0, 2, 3]]))
    assert ambiguous > 0.9 and inside == 0.0
    box = trimesh.creation.box([1.0, 0.5, 0.3])
    ambiguous, inside = encloses(box.vertices, box.faces[box.face_normals[:, 1] > -0.5])  # no bottom
    assert ambiguous < 0.1 and 0.4 < inside < 0.6
    # faces wound against each other enclose nothing: |w| is about 0 on both sides of the faces
    # that cancel, so the probes are neither ambiguous nor inside
    twisted = box.faces.copy()
    twisted[box.face_normals[:, 0] > 0.5] = twisted[box.face_normals[:, 0] > 0.5][:, ::-1]
    twisted[box.face_normals[:, 0] < -0.5] = twisted[box.face_normals[:, 0] < -0.5][:, ::-1]
    twisted[box.face_normals[:, 2] > 0.5] = twisted[box.face_normals[:, 2] > 0.5][:, ::-1]
    assert encloses(box.vertices, twisted[1:])[1] < 0.4


def test_a_thin_panel_with_a_hidden_corner_is_not_thickened():
    # a 1 x 0.02 x 0.5 panel with the end of its underside hidden: the shell rule would make it
    # 0.035 thick (SHELL_FRACTION of the longest side each way); it nearly encloses its volume (the
    # winding number just off its faces is about 0 or 1), so it gets none
    panel = trimesh.creation.box([1.0, 0.02, 0.5]).subdivide().subdivide().subdivide()
    centers, normals = panel.triangles_center, panel.face_normals
    faces = panel.faces[~((normals[:, 1] < -0.5) & (centers[:, 0] > 0.4))]
    (v, f), kind = closed_patch(panel.vertices, faces)
    assert kind == "capped"
    m = trimesh.Trimesh(v, f, process=False)
    assert m.is_watertight
    assert np.ptp(v[:, 1]) == pytest.approx(0.02, rel=1e-6)
    assert m.volume == pytest.approx(panel.volume, rel=0.05)
    # meshed on a grid instead (shell=0), still not thickened
    (v, f), kind = closed_patch(panel.vertices, faces, shell=0.0)
    assert kind == "solid" and np.ptp(v[:, 1]) == pytest.approx(0.02, rel=0.2)
    # with its whole underside hidden it is a sheet to the winding number (about 0.5 inside): shell
    (v, f), kind = closed_patch(panel.vertices, panel.faces[normals[:, 1] > -0.5])
    assert kind == "shell" and trimesh.Trimesh(v, f, process=False).volume > 1.2 * panel.volume


def test_winding_surface_keeps_every_face_when_decimation_loses_the_surface():
    from holopart_infer.postprocess.decimate import decimate
    from holopart_infer.postprocess.thin import WINDING_MAX_FACES, winding_surface

    # a sheet whose faces are all duplicated both ways (as exported double-sided cloth is): the
    # decimator collapses it to nothing, so the winding number is summed over the input itself
    m = trimesh.creation.box([1.0, 0.02, 0.5]).subdivide().subdivide().subdivide()
    top = m.faces[m.face_normals[:, 1] > 0.5]
    f = np.concatenate([top, top[:, ::-1]] * 8)
    assert len(f) > WINDING_MAX_FACES and len(decimate(np.asarray(m.vertices), f, WINDING_MAX_FACES)[1]) == 0
    wv, wf = winding_surface(np.asarray(m.vertices), f)
    assert len(wf) == len(f)
    # and the stand-in of such a patch is its sheet with the shell, not nothing
    (v, sf), kind = closed_patch(m.vertices, f)
    assert kind == "shell" and np.ptp(v[:, 0]) > 0.9
    # an ordinary large patch is decimated
    sphere = trimesh.creation.icosphere(4)
    assert len(winding_surface(np.asarray(sphere.vertices), np.asarray(sphere.faces))[1]) <= WINDING_MAX_FACES


def test_thin_pieces_spread_over_a_large_box_get_a_finer_grid():
    # three 0.1 x 0.1 sheets 1 apart, a shell of 0.01 each way: on the first grid (cells of about
    # 0.09) they come out as slivers; the coverage check sends them to finer grids until the solid
    # covers each sheet
    def sheet(x0, z0):
        return np.array([[x0, 0, z0], [x0 + 0.1, 0, z0], [x0 + 0.1, 0, z0 + 0.1], [x0, 0, z0 + 0.1]], float)

    v = np.concatenate([sheet(0.0, 0.0), sheet(1.0, 0.4), sheet(2.0, 0.9)])
    f = np.concatenate([np.array([[0, 1, 2], [0, 2, 3]]) + 4 * k for k in range(3)])
    expected = 3 * 0.12 * 0.12 * 0.02  # each sheet grown by the shell on every side, about
    (cv, cf), _ = closed_patch(v, f, shell=0.01, max_depth=5)
    (fv, ff), kind = closed_patch(v, f, shell=0.01)
    coarse, fine = trimesh.Trimesh(cv, cf, process=False), trimesh.Trimesh(fv, ff, process=False)
    assert kind == "shell" and fine.is_watertight
    assert coarse.volume < 0.4 * expected
    assert fine.volume == pytest.approx(expected, rel=0.35)
    for x0 in (0.0, 1.0, 2.0):  # every sheet is there, whole
        piece = fv[(fv[:, 0] > x0 - 0.05) & (fv[:, 0] < x0 + 0.15)]
        assert np.ptp(piece[:, 0]) > 0.1 and np.ptp(piece[:, 2]) > 0.1


def test_sealed_tells_a_part_closed_but_for_slits_from_one_with_a_hole():
    from holopart_infer.postprocess.thin import SLIT_AREA, sealed

    box = trimesh.creation.box([1.0, 0.5, 0.3]).subdivide().subdivide()
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    areas = box.area_faces
    # one small triangle missing (a seam that does not meet): closed but for a slit
    small = int(np.argmin(areas))
    assert areas[small] < SLIT_AREA * box.area
    got = sealed(v, np.delete(f, small, axis=0))
    assert got is not None and trimesh.Trimesh(*got, process=False).is_watertight
    assert trimesh.Trimesh(*got, process=False).volume == pytest.approx(box.volume, rel=1e-6)
    # the whole bottom missing (a sixth of the area, or more): a hole, not a slit
    bottom = box.face_normals[:, 1] < -0.5
    assert sealed(v, f[~bottom]) is None
    # a closed patch needs no cap
    assert sealed(v, f) is None
    # a triangle soup (no two faces share an edge) is not a surface with slits
    soup = box.vertices[box.faces].reshape(-1, 3) * 1.0
    centers = soup.reshape(-1, 3, 3).mean(axis=1, keepdims=True)
    soup = (centers + 0.9 * (soup.reshape(-1, 3, 3) - centers)).reshape(-1, 3)
    assert sealed(soup, np.arange(len(soup)).reshape(-1, 3)) is None
