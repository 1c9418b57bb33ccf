"""Conditioning: seeded area-weighted sampling, whole-object mask, part frames, normalization."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.model.conditioning import (
    PART_MARGIN,
    PART_NORMALIZE_SCALE,
    build_conditions,
    part_frame,
    sample_surface,
)
from holopart_infer.errors import InputError
from holopart_infer.io.parts_io import Parts
from tests.support import box

N = 4096


def _two_boxes(offset=(0.0, 0.0, 0.0), unit=1.0, big=1.0) -> Parts:
    """Box A (x < 0) and box B (x > 0), B scaled by ``big`` (area x big^2)."""
    a = box((-0.6, 0, 0), (0.5, 0.5, 0.5))
    b = box((0.6, 0, 0), np.multiply((0.5, 0.5, 0.5), big))
    off = np.asarray(offset)
    return Parts.from_meshes([(a[0] * unit + off, a[1]), (b[0] * unit + off, b[1])], ["a", "b"])


def test_shapes_and_dtypes():
    c = build_conditions(_two_boxes(), num_points=N, seed=0)
    assert c.part.shape == (2, N, 6) and c.part.dtype == np.float32
    assert c.whole.shape == (2, N, 7) and c.whole.dtype == np.float32
    assert c.part_local.shape == (2, N, 6) and c.part_local.dtype == np.float32
    assert c.centers.shape == (2, 3) and c.scales.shape == (2,)
    assert c.object_center.shape == (3,) and isinstance(c.object_scale, float)
    assert c.names == ["a", "b"]
    # unit normals; whole xyz/normals shared by all parts; mask is a partition
    np.testing.assert_allclose(np.linalg.norm(c.part[..., 3:], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(c.whole[0, :, :6], c.whole[1, :, :6])
    np.testing.assert_array_equal(c.whole[:, :, 6].sum(axis=0), 1.0)
    assert set(np.unique(c.whole[..., 6])) == {0.0, 1.0}


def test_deterministic_by_seed():
    parts = _two_boxes()
    a = build_conditions(parts, num_points=N, seed=7)
    b = build_conditions(parts, num_points=N, seed=7)
    c = build_conditions(parts, num_points=N, seed=8)
    for name in ("part", "whole", "part_local", "centers", "scales"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.part, c.part)
    assert not np.array_equal(a.whole, c.whole)


def test_samples_lie_on_faces_with_face_normals():
    v, f = box((0, 0, 0), (2.0, 2.0, 2.0))
    pts, nrm, face = sample_surface(v, f, 2000, np.random.default_rng(0))
    # every point is on the box surface, on the side its normal says
    np.testing.assert_allclose(np.abs(pts).max(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose((pts * nrm).sum(axis=1), 1.0, atol=1e-12)
    assert face.min() >= 0 and face.max() < len(f)


def test_area_weighting_in_the_whole():
    # B has twice A's area (edges scaled by sqrt 2): about 2/3 of the whole samples
    c = build_conditions(_two_boxes(big=np.sqrt(2.0)), num_points=30000, seed=1)
    frac_b = c.whole[1, :, 6].mean()
    assert abs(frac_b - 2 / 3) < 0.015
    # per-face weighting too: a face with twice the area gets about twice the samples
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [5, 0, 0], [3, 1, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    _, _, face = sample_surface(v, f, 30000, np.random.default_rng(2))
    assert abs(np.mean(face == 1) - 2 / 3) < 0.015


def test_mask_on_two_separated_boxes():
    c = build_conditions(_two_boxes(), num_points=N, seed=3, normalize=False)
    x = c.whole[0, :, 0]
    np.testing.assert_array_equal(c.whole[0, :, 6], (x < 0).astype(np.float32))
    np.testing.assert_array_equal(c.whole[1, :, 6], (x > 0).astype(np.float32))
    np.testing.assert_array_equal(c.whole_labels, (x > 0).astype(np.int64))


def test_part_frames_formula():
    c = build_conditions(_two_boxes(), num_points=N, seed=4)
    for i in range(2):
        p = c.part[i, :, :3].astype(np.float64)
        center = (p.max(axis=0) + p.min(axis=0)) / 2
        scale = np.linalg.norm(p - center, axis=1).max() / (0.95 * 0.7)
        np.testing.assert_allclose(c.centers[i], center, atol=1e-6)
        np.testing.assert_allclose(c.scales[i], scale, rtol=1e-6)
        np.testing.assert_allclose(c.part_local[i, :, :3], (p - center) / scale, atol=1e-5)
        np.testing.assert_array_equal(c.part_local[i, :, 3:], c.part[i, :, 3:])
        radius = np.linalg.norm(c.part_local[i, :, :3].astype(np.float64), axis=1).max()
        assert radius == pytest.approx(PART_MARGIN * PART_NORMALIZE_SCALE, rel=1e-5)
    c0, s0 = part_frame(np.array([[0, 0, 0], [2, 0, 0], [0, 4, 0]], float))
    np.testing.assert_allclose(c0, [1, 2, 0])
    assert s0 == pytest.approx(np.sqrt(5) / 0.665)


def test_normalize_millimetre_object_round_trip():
    # the same object in metres near the origin and in millimetres far away
    metres = _two_boxes()
    mm = _two_boxes(offset=(5000.0, -250.0, 1200.0), unit=1000.0)
    cm = build_conditions(metres, num_points=N, seed=5)
    cmm = build_conditions(mm, num_points=N, seed=5)

    # model frame: centred, longest side spans exactly [-1, 1]
    xyz = np.concatenate([cmm.part[:, :, :3].reshape(-1, 3), cmm.whole[0, :, :3]])
    assert np.abs(xyz).max() <= 1.0 + 1e-6
    assert np.abs(xyz[:, 0]).max() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(cmm.object_center, [5000.0, -250.0, 1200.0], atol=1e-9)
    assert cmm.object_scale == pytest.approx(1000.0 * 1.7 / 2)  # x spans -850..850 mm
    # the model sees the same thing in both units
    np.testing.assert_allclose(cmm.part, cm.part, atol=1e-5)
    np.testing.assert_allclose(cmm.whole, cm.whole, atol=1e-5)
    np.testing.assert_allclose(cmm.part_local, cm.part_local, atol=1e-5)

    # a mesh in a part's frame maps back to input coordinates exactly
    for i, part in enumerate(mm):
        local = (cmm.to_model_frame(part.vertices) - cmm.centers[i]) / cmm.scales[i]
        np.testing.assert_allclose(cmm.to_input_frame(i, local), part.vertices, rtol=0, atol=1e-9)
        # and the part-frame samples land on the input part's surface bounds
        back = cmm.to_input_frame(i, cmm.part_local[i, :, :3])
        lo, hi = part.vertices.min(axis=0), part.vertices.max(axis=0)
        assert (back >= lo - 1e-3).all() and (back <= hi + 1e-3).all()


def test_normalize_false_keeps_input_frame():
    parts = _two_boxes(offset=(3.0, 0.0, 0.0))
    c = build_conditions(parts, num_points=N, seed=6, normalize=False)
    np.testing.assert_array_equal(c.object_center, 0.0)
    assert c.object_scale == 1.0
    np.testing.assert_allclose(c.part[0, :, :3].min(axis=0), parts[0].vertices.min(axis=0), atol=0.02)


def test_accepts_mesh_pairs_and_validates():
    a, b = box((-1, 0, 0)), box((1, 0, 0))
    c = build_conditions([a, b], num_points=64, seed=0)
    assert c.names == ["part_0", "part_1"]
    with pytest.raises(InputError, match="num_points"):
        build_conditions([a, b], num_points=0)
    with pytest.raises(InputError, match="seed"):
        build_conditions([a, b], seed=1.5)
    with pytest.raises(InputError, match="at least 2 parts"):
        build_conditions([a], num_points=64)
