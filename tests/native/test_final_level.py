"""The final level's host kernels (cpp_ext/src/final_level.cpp, the CPU
band_cells / refine_points) against their numpy references, bit for bit.

Every output is an integer, boolean or index array (or values copied), so the
comparisons are exact. The last test extracts an analytic field at depth 8 with
the compiled kernels and with the numpy references: same queries, same meshes
vertex for vertex.
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.extraction import extract

from holopart_infer.extraction import native

pytestmark = pytest.mark.skipif(native.host_kernels() is None,
                                reason="holopart_infer._cpp built without the final-level kernels")


@pytest.fixture
def numpy_host(monkeypatch):
    """Run native's final-level helpers on their numpy references."""
    monkeypatch.setattr(native, "use_host_kernels", False)


def _both(fn, *args, **kw):
    got = fn(*args, **kw)
    native.use_host_kernels = False
    try:
        want = fn(*args, **kw)
    finally:
        native.use_host_kernels = True
    return got, want


def _sparse_part(rng, r, known=0.5, field=None):
    """A coarse grid for fine resolution r (NaN at some points), a random sorted
    list of known fine points (off the known coarse lattice) and their values."""
    c = r // 2 + 1
    if field is None:
        coarse = rng.normal(size=(c,) * 3).astype(np.float32)
    else:
        coarse = field(np.stack(np.meshgrid(*[np.linspace(-1, 1, c)] * 3, indexing="ij"), -1))
    coarse[rng.random(coarse.shape) < 0.2] = np.nan
    n = r + 1
    lin = np.arange(n ** 3)
    i, j, k = lin // (n * n), (lin // n) % n, lin % n
    on = ((i | j | k) & 1) == 0
    lin = lin[~on | np.isnan(coarse[i >> 1, j >> 1, k >> 1])]
    idx = np.sort(rng.choice(lin, int(known * len(lin)), replace=False)).astype(np.int64)
    if field is None:
        val = rng.normal(size=len(idx)).astype(np.float32)
    else:
        p = np.stack((idx // (n * n), (idx // n) % n, idx % n), 1) * (2.0 / r) - 1.0
        val = field(p)
    val[rng.random(len(val)) < 0.05] = 0.0  # exactly on the level: not inside
    return coarse, idx, val, n


def _sphere(p):
    return (30.0 * (0.6 - np.sqrt((np.asarray(p, np.float64) ** 2).sum(-1)))).astype(np.float32)


@pytest.mark.parametrize("r,seed,field", [(8, 0, None), (14, 1, None), (30, 2, _sphere), (40, 3, None)])
def test_face_sign_changes_match_numpy(r, seed, field):
    rng = np.random.default_rng(seed)
    coarse, idx, val, n = _sparse_part(rng, r, field=field)
    cells = rng.integers(0, r // 2, size=(500, 3))
    for axis in range(3):
        for side in (0, 1):
            got, want = _both(native.face_sign_changes, coarse, idx, val, n, cells, axis, side)
            assert got.dtype == bool and want.dtype == bool
            np.testing.assert_array_equal(got, want)
            assert want.any() and not want.all()
    got, want = _both(native.face_sign_changes, coarse, idx[:0], val[:0], n, cells, 0, 1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_near_band_matches_numpy(radius):
    rng = np.random.default_rng(radius)
    band = rng.random((9, 12, 7)) < 0.03
    cells = np.argwhere(np.ones(band.shape, bool))
    got, want = _both(native.near_band, band, cells, radius)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, native.dilate_cells(band, radius).reshape(-1).astype(bool))
    got, want = _both(native.near_band, band, cells[:0], radius)
    assert got.shape == want.shape == (0,)


def test_unique_and_corner_points_match_numpy():
    rng = np.random.default_rng(4)
    coarse = rng.normal(size=(17, 12, 21)).astype(np.float32)
    coarse[rng.random(coarse.shape) < 0.3] = np.nan
    coarse[0, 0, 0] = np.inf  # not finite: unknown, as numpy's isfinite says
    for density in (0.0, 0.01, 0.2, 1.0):
        cells = np.argwhere(rng.random((16, 11, 20)) < density)
        lists = np.concatenate([cells, cells[::-1], cells[: len(cells) // 3]])
        got, want = _both(native.unique_cells, lists, (16, 11, 20))
        assert got.dtype == want.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        got, want = _both(native.corner_points, cells, coarse)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, native.refine_points(
            np.isin(np.arange(16 * 11 * 20), np.ravel_multi_index(cells.T, (16, 11, 20)))
            .reshape(16, 11, 20).view(np.uint8), coarse))
    with pytest.raises(ValueError):
        native.unique_cells(np.array([[0, 0, 20]]), (16, 11, 20))


def test_sorted_member_merge_and_grid_match_numpy():
    rng = np.random.default_rng(5)
    coarse, idx, val, n = _sparse_part(rng, 22, known=0.3)
    q = rng.integers(-5, n ** 3 + 5, size=4000)
    got, want = _both(native.sorted_member, idx, q)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(native.sorted_member(idx[:0], q), np.zeros(len(q), bool))
    # merge: split the list in two interleaved halves
    take = rng.random(len(idx)) < 0.5
    got, want = _both(native.sparse_merge, idx[take], val[take], idx[~take], val[~take])
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[0], idx)
    np.testing.assert_array_equal(got[1].view(np.uint32), val.view(np.uint32))
    buf = np.zeros((n,) * 3, np.float32)
    got, want = _both(native.sparse_grid, coarse, idx, val, n)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaNs included, bit for bit
    assert native.sparse_grid(coarse, idx, val, n, out=buf) is buf
    np.testing.assert_array_equal(buf.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("shape,seed", [((7, 9, 5), 0), ((33, 20, 41), 1)])
def test_band_cells_and_refine_points_match_numpy_references(shape, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(scale=2.0, size=tuple(s + 1 for s in shape)).astype(np.float32)
    v[rng.random(v.shape) < 0.25] = np.nan
    v[rng.random(v.shape) < 0.02] = np.inf
    v[rng.random(v.shape) < 0.02] = 0.0
    band = 0.95
    corners = [v[a:a + shape[0], b:b + shape[1], c:c + shape[2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    st = np.stack(corners)
    known = np.isfinite(st)
    near = (known & (np.abs(np.where(known, st, 0)) < band)).any(0)
    pos = (known & (np.where(known, st, 0) > 0)).any(0)
    neg = (known & ~(np.where(known, st, 0) > 0)).any(0)
    want = near | (pos & neg)
    got = native.band_cells(v, band)
    np.testing.assert_array_equal(got.astype(bool), want)
    cells = got.astype(bool)
    fine = np.zeros(tuple(2 * s + 1 for s in shape), bool)
    for i, j, k in np.argwhere(cells):
        fine[2 * i:2 * i + 3, 2 * j:2 * j + 3, 2 * k:2 * k + 3] = True
    np.testing.assert_array_equal(native.refine_points(cells), np.flatnonzero(fine))
    coarse_known = np.zeros_like(fine)
    coarse_known[::2, ::2, ::2] = np.isfinite(v)
    np.testing.assert_array_equal(native.refine_points(cells, v), np.flatnonzero(fine & ~coarse_known))


def _fields():
    def sphere(p):
        return (60.0 * (0.45 - np.sqrt((p.astype(np.float32) ** 2).sum(1)))).astype(np.float32)

    def slab(p):
        p = p.astype(np.float32) - np.float32(0.1)
        return (60.0 * np.minimum(0.03 - np.abs(p[:, 1]), 0.5 - np.abs(p).max(1))).astype(np.float32)

    def wavy(p):
        p = p.astype(np.float32)
        w = np.sin(157.0 * p[:, 0]) * np.sin(161.0 * p[:, 1]) * np.sin(163.0 * p[:, 2])
        return (60.0 * (0.5 - np.sqrt((p * p).sum(1)) + np.float32(0.02) * w)).astype(np.float32)

    return [sphere, slab, wavy]


def test_depth8_meshes_identical_with_numpy_references():
    fields = _fields()

    def decode(batch):
        return [f(p) for f, p in zip(fields, batch)]

    got, st = extract.extract_meshes(decode, len(fields), depth=8)
    native.use_host_kernels = False
    try:
        want, sw = extract.extract_meshes(decode, len(fields), depth=8)
    finally:
        native.use_host_kernels = True
    assert st.queries_per_part == sw.queries_per_part
    for a, b in zip(got, want):
        assert len(a.faces) > 1000
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)


def test_fallback_without_the_kernels(numpy_host):
    assert native.host_kernels() is None
    cells = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(native.unique_cells(cells, (2, 1, 1)), [[0, 0, 0], [1, 0, 0]])
