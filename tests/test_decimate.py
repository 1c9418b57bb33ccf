"""Decimation through fast-simplification."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from holopart_infer.decimate import decimate
from holopart_infer.errors import InputError


def _sphere():
    m = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64)


@pytest.mark.parametrize("target", [2000, 500, 37])
def test_reduces_to_target(target):
    v, f = _sphere()
    v2, f2 = decimate(v.astype(np.float32), f, target)
    assert 0 < len(f2) <= target
    assert v2.dtype == np.float32 and f2.dtype == np.int64
    assert f2.min() >= 0 and f2.max() < len(v2)
    # still roughly the unit sphere
    r = np.linalg.norm(v2, axis=1)
    assert r.min() > 0.8 and r.max() < 1.2


def test_merges_duplicate_vertices_first():
    v, f = _sphere()
    soup_v = v[f].reshape(-1, 3)  # every face has its own three vertices
    soup_f = np.arange(len(soup_v)).reshape(-1, 3)
    v2, f2 = decimate(soup_v, soup_f, 500)
    assert 0 < len(f2) <= 500
    assert len(v2) < 400  # welded: a closed surface has about half as many vertices as faces
    mesh = trimesh.Trimesh(v2, f2, process=False)
    mesh.merge_vertices()
    assert mesh.is_watertight


def test_noop_below_target():
    v, f = _sphere()
    v2, f2 = decimate(v, f, len(f))
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(f2, f)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, None])
def test_validates_target(bad):
    v, f = _sphere()
    with pytest.raises(InputError, match="target_faces must be an integer > 0"):
        decimate(v, f, bad)


def test_validates_arrays():
    v, f = _sphere()
    with pytest.raises(InputError, match="vertices"):
        decimate(v[:, :2], f, 10)
    with pytest.raises(InputError, match="faces"):
        decimate(v, f.astype(np.float64), 10)
