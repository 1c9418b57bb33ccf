"""The linear-time forms in cleanup.py / thin.py (issue 28 item 3) give the
answers of the np.unique-based forms they replaced, exactly."""
from __future__ import annotations

import numpy as np

from holopart_infer.postprocess import cleanup


def _old_drop_duplicate_faces(f):
    _, inverse, counts = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    keep = counts[inverse.reshape(-1)] == 1
    return f if keep.all() else f[keep]


def test_drop_duplicate_faces_matches_row_count():
    rng = np.random.default_rng(0)
    for hi in (50, 3000, (1 << 21) + 5):  # the last: past the 21-bit keys, the general path
        f = rng.integers(0, hi, size=(4000, 3))
        f = np.concatenate([f, f[rng.integers(0, len(f), 300)][:, [2, 0, 1]], f[:40, ::-1]])
        got = cleanup.drop_duplicate_faces(f)
        want = _old_drop_duplicate_faces(f)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    assert cleanup.drop_duplicate_faces(f) is f


def test_connected_components_and_floaters_match_unique_relabel():
    rng = np.random.default_rng(1)
    nv = 3000
    f = rng.integers(0, nv, size=(800, 3))  # many small components, isolated vertices between
    count, label = cleanup.connected_components(f, nv)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    rows, cols = np.concatenate([f[:, 0], f[:, 1]]), np.concatenate([f[:, 1], f[:, 2]])
    _, vl = cc(coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nv, nv)), directed=False)
    used, want = np.unique(vl[f[:, 0]], return_inverse=True)
    assert count == len(used) and label.dtype == np.int64
    np.testing.assert_array_equal(label, want)
    v = rng.normal(size=(nv, 3))
    vo, fo = cleanup.remove_floaters(v, f, 0.5)
    comp_area = np.bincount(want, weights=0.5 * np.linalg.norm(
        np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1))
    kept = f[(comp_area >= 0.5 * comp_area.max())[want]]
    keep_v = np.unique(kept)
    np.testing.assert_array_equal(vo, v[keep_v])
    np.testing.assert_array_equal(fo, np.searchsorted(keep_v, kept))
