"""Marching cubes against scikit-image, plus mesh invariants (watertight, oriented)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from holopart_infer.extraction import native
from holopart_infer.errors import InputError
from holopart_infer.extraction.mcubes import marching_cubes

skimage_measure = pytest.importorskip("skimage.measure")


def grid(n: int, lo: float = -1.0, hi: float = 1.0):
    x = np.linspace(lo, hi, n, dtype=np.float64)
    return np.meshgrid(x, x, x, indexing="ij")


def sphere(n=48, r=0.6, c=(0.05, -0.02, 0.03)):
    X, Y, Z = grid(n)
    return (r - np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2)).astype(np.float32)


def torus(n=56, R=0.55, r=0.2):
    X, Y, Z = grid(n)
    q = np.sqrt(X ** 2 + Y ** 2) - R
    return (r - np.sqrt(q ** 2 + Z ** 2)).astype(np.float32)


def two_boxes(n=40):
    X, Y, Z = grid(n)
    def box(c, h):
        d = np.maximum.reduce([np.abs(X - c[0]) - h[0], np.abs(Y - c[1]) - h[1], np.abs(Z - c[2]) - h[2]])
        return -d
    return np.maximum(box((-0.45, 0.0, 0.1), (0.3, 0.4, 0.25)),
                      box((0.5, 0.1, -0.2), (0.2, 0.25, 0.3))).astype(np.float32) + 0.0123


def thin_gyroid(n=64):
    """Thin shell around a gyroid, 1.5 periods: many thin pieces cut by the border."""
    x = np.linspace(0.0, 3.0 * np.pi, n, dtype=np.float32)
    X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
    g = np.sin(X) * np.cos(Y) + np.sin(Y) * np.cos(Z) + np.sin(Z) * np.cos(X)
    return np.ascontiguousarray(0.25 - np.abs(g) + np.float32(1.4e-4), dtype=np.float32)


def small_blobs(n=48, waves=24, wavelength=9.0, seed=7):
    """Noise-like field of many small separate blobs (as benchmarks/bench_mcubes.py's
    blob field): a sum of random plane waves, shifted so ~5% of points are inside."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = (2.0 * np.pi / wavelength) * dirs * rng.uniform(0.8, 1.25, (waves, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, waves)
    X, Y, Z = np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij")
    out = sum(np.cos(k[m, 0] * X + k[m, 1] * Y + k[m, 2] * Z + phase[m]) for m in range(waves))
    return (out / np.sqrt(waves / 2.0) - 1.6).astype(np.float32)


def reference_marching_cubes(vol: np.ndarray, level: float):
    """Plain-Python marching cubes with the library's own case table and edge
    rules (unknown cube = any non-finite corner): the faces as a multiset of
    vertex position triples, in grid units."""
    from collections import Counter

    from holopart_infer import _cpp

    tris, ntri = _cpp.case_table()
    nx, ny, nz = vol.shape
    known = np.isfinite(vol)
    inside = vol > level
    faces = Counter()
    for i in range(nx - 1):
        for j in range(ny - 1):
            for k in range(nz - 1):
                corners = [(i + (c >> 2 & 1), j + (c >> 1 & 1), k + (c & 1)) for c in range(8)]
                if not all(known[c] for c in corners):
                    continue
                case = sum(1 << c for c in range(8) if inside[corners[c]])
                for q in range(ntri[case]):
                    tri = []
                    for e in tris[case][3 * q: 3 * q + 3]:
                        e = int(e)
                        d, u, w = e >> 2, e >> 1 & 1, e & 1
                        o = [0, 0, 0]
                        o[[a for a in range(3) if a != d][0]] = u
                        o[[a for a in range(3) if a != d][1]] = w
                        p = (i + o[0], j + o[1], k + o[2])
                        p2 = list(p)
                        p2[d] += 1
                        a, b = vol[p], vol[tuple(p2)]  # float32 arithmetic throughout
                        t = (np.float32(level) - a) / (b - a)
                        x = [float(c) for c in p]
                        x[d] += float(t)
                        tri.append(tuple(np.float32(x).tolist()))
                    faces[tuple(tri)] += 1
    return faces


def edge_counts(faces: np.ndarray) -> np.ndarray:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return counts


def is_watertight(faces: np.ndarray) -> bool:
    return len(faces) > 0 and bool((edge_counts(faces) == 2).all())


def is_consistently_oriented(faces: np.ndarray) -> bool:
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return len(np.unique(directed, axis=0)) == len(directed)


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]].astype(np.float64), v[f[:, 2]].astype(np.float64)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def surface_distance(v1: np.ndarray, v2: np.ndarray) -> float:
    """Symmetric max nearest-vertex distance."""
    d12 = cKDTree(v2).query(v1)[0].max()
    d21 = cKDTree(v1).query(v2)[0].max()
    return float(max(d12, d21))


def check_closed(v, f, n):
    assert v.dtype == np.float32 and f.dtype == np.int64 and n.dtype == np.float32
    assert is_watertight(f), "some edge is not shared by exactly two faces"
    assert is_consistently_oriented(f)
    assert signed_volume(v, f) > 0, "faces must be counter-clockwise seen from outside"
    assert len(np.unique(v, axis=0)) == len(v), "duplicate vertices"
    assert np.unique(f).size == len(v), "unreferenced vertices"


@pytest.mark.parametrize("field", [sphere, torus, two_boxes], ids=["sphere", "torus", "two_boxes"])
def test_matches_skimage_and_is_closed(field):
    vol = field()
    v, f, n, vals = marching_cubes(vol, 0.0)
    sv, sf, sn, _ = skimage_measure.marching_cubes(vol, 0.0)
    check_closed(v, f, n)
    # Same vertex set up to float rounding (one vertex per crossed edge in both).
    assert len(v) == len(sv)
    assert surface_distance(v, sv) < 1e-3
    # Enclosed volume equals scikit-image's (its winding is the opposite one).
    assert signed_volume(v, f) == pytest.approx(-signed_volume(sv, sf), rel=1e-3)
    # Normals: unit length, same outward direction as scikit-image's.
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-4)
    tree = cKDTree(sv)
    idx = tree.query(v)[1]
    assert np.mean(np.einsum("ij,ij->i", n, sn[idx]) > 0.5) > 0.98
    assert vals.shape == (len(v),) and (vals >= 0).all()


def test_thin_shells_match_skimage_for_any_thread_count(monkeypatch):
    vol = thin_gyroid()
    sv, sf, _, _ = skimage_measure.marching_cubes(vol, 0.0)
    runs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("HOLOPART_NUM_THREADS", threads)
        v, f, n, _ = marching_cubes(vol, 0.0)
        assert len(f) == len(sf) and len(v) == len(sv)
        assert surface_distance(v, sv) < 1e-3
        assert is_consistently_oriented(f)
        assert (edge_counts(f) <= 2).all()
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-4)
        runs.append((v, f))
    # Vertex ids do not depend on the thread count.
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_many_small_blobs_match_skimage_for_any_thread_count(monkeypatch):
    from scipy import ndimage

    vol = small_blobs()
    vol[[0, -1]] = vol[:, [0, -1]] = vol[:, :, [0, -1]] = -1.0  # every blob closed
    assert ndimage.label(vol > 0)[1] > 20  # many separate pieces
    sv, sf, _, _ = skimage_measure.marching_cubes(vol, 0.0)
    runs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("HOLOPART_NUM_THREADS", threads)
        runs.append(marching_cubes(vol, 0.0))
    v, f, n, vals = runs[0]
    # Everything, normals included, is the same whatever the thread count.
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    # One vertex per crossed edge in both; scikit-image (Lewiner) adds a
    # cube-centre vertex in a few ambiguous cubes and splits those cubes
    # differently, so its face count may differ there by a hair.
    assert cKDTree(sv).query(v)[0].max() < 1e-3
    assert cKDTree(v).query(sv)[0].max() < 0.9
    assert len(sv) - len(v) <= 0.001 * len(v)
    assert abs(len(f) - len(sf)) <= 0.002 * len(sf)
    area = lambda V, F: 0.5 * np.linalg.norm(  # noqa: E731
        np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]), axis=1).sum()
    assert area(v.astype(np.float64), f) == pytest.approx(area(sv.astype(np.float64), sf), rel=2e-3)
    # Our rule always keeps diagonal inside corners apart; Lewiner's decider
    # joins some of them, so its blobs hold a little more volume (0.5% here).
    assert signed_volume(v, f) == pytest.approx(-signed_volume(sv, sf), rel=1e-2)
    check_closed(v, f, n)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("shape", [(9, 11, 70), (7, 5, 64), (6, 8, 129)])
def test_matches_a_plain_reference_with_unknown_cells(shape, monkeypatch):
    # Rows longer than one 64-point word, many small pieces, unknown (NaN and
    # inf) points in blocks and alone, values exactly at the level.
    rng = np.random.default_rng(sum(shape))
    vol = rng.normal(size=shape).astype(np.float32)
    vol[rng.random(shape) < 0.03] = np.nan
    vol[2:4, :, 10:30] = np.nan
    vol[:, 1, 60:66] = np.inf
    vol[rng.random(shape) < 0.02] = 0.0  # == level: outside
    ref = reference_marching_cubes(vol, 0.0)
    for threads in ("1", "3"):
        monkeypatch.setenv("HOLOPART_NUM_THREADS", threads)
        v, f, n, vals = marching_cubes(vol, 0.0)
        from collections import Counter

        got = Counter(tuple(tuple(x) for x in v[t].tolist()) for t in f)
        assert len(f) == sum(ref.values())
        assert got == ref
        assert len(np.unique(f)) == len(v)  # no vertex without a face
        assert np.isfinite(vals).all() and np.isfinite(n).all()


def test_connected_components_of_two_boxes():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v, f, _, _ = marching_cubes(two_boxes(), 0.0)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(v), len(v)))
    assert connected_components(g, directed=False)[0] == 2


def test_sphere_normals_point_out_and_spacing_origin():
    vol = sphere(n=40, c=(0.0, 0.0, 0.0))
    sp, org = (0.5, 1.0, 2.0), (10.0, -3.0, 1.5)
    v0, f0, _, _ = marching_cubes(vol, 0.0)
    v, f, n, _ = marching_cubes(vol, 0.0, spacing=sp, origin=org)
    np.testing.assert_array_equal(f, f0)
    np.testing.assert_allclose(v, v0 * np.array(sp, np.float32) + np.array(org, np.float32), rtol=1e-6, atol=1e-4)
    centre = np.array(org) + 19.5 * np.array(sp)
    assert (np.einsum("ij,ij->i", n, v - centre) > 0).all()
    assert signed_volume(v, f) > 0
    sv, _, _, _ = skimage_measure.marching_cubes(vol, 0.0, spacing=sp)
    assert surface_distance(v - np.array(org, np.float32), sv) < 1e-3


def test_nonzero_level():
    vol = sphere()
    v, f, _, _ = marching_cubes(vol, 0.25)
    sv, _, _, _ = skimage_measure.marching_cubes(vol, 0.25)
    assert surface_distance(v, sv) < 1e-3 and is_watertight(f)


def test_surface_touching_the_border_is_open_but_consistent():
    vol = sphere(n=32, r=0.9, c=(0.5, 0.0, 0.0))  # cut by the x = +1 face
    v, f, _, _ = marching_cubes(vol, 0.0)
    sv, _, _, _ = skimage_measure.marching_cubes(vol, 0.0)
    assert surface_distance(v, sv) < 1e-3
    counts = edge_counts(f)
    assert set(np.unique(counts)) == {1, 2}  # boundary edges along the grid face
    assert is_consistently_oriented(f)
    assert (v[:, 0] <= 31 + 1e-4).all()


def test_nan_regions_are_skipped():
    vol = sphere(n=40, c=(0.0, 0.0, 0.0))
    full_v, full_f, _, _ = marching_cubes(vol, 0.0)
    cut = vol.copy()
    cut[:, :, :12] = np.nan  # unknown slab cuts the sphere
    v, f, _, _ = marching_cubes(cut, 0.0)
    assert len(f) and len(f) < len(full_f)
    assert (v[:, 2] >= 12 - 1e-5).all()  # no vertex from a cube touching NaN
    assert np.isfinite(v).all()
    assert is_consistently_oriented(f)
    # Away from the cut, the surface is the same as without NaN.
    keep = full_v[:, 2] > 13
    assert cKDTree(v).query(full_v[keep])[0].max() < 1e-5
    # NaN far from the surface changes nothing.
    far = vol.copy()
    far[:3, :3, :3] = np.nan
    v2, f2, _, _ = marching_cubes(far, 0.0)
    np.testing.assert_array_equal(v2, full_v)
    np.testing.assert_array_equal(f2, full_f)
    # Infinite values are unknown too.
    inf = vol.copy()
    inf[:, :, :12] = np.inf
    v3, f3, _, _ = marching_cubes(inf, 0.0)
    np.testing.assert_array_equal(f3, f)


def test_closed_surface_inside_a_nan_shell_is_watertight():
    vol = sphere(n=40, r=0.5, c=(0.0, 0.0, 0.0))
    vol[np.abs(vol) > 0.2] = np.nan  # only a band around the surface is known
    v, f, n, _ = marching_cubes(vol, 0.0)
    check_closed(v, f, n)


def test_all_ambiguous_configurations_stay_watertight():
    # Random signs exercise every face/cube ambiguity; an outside border closes it.
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(34, 30, 38)).astype(np.float32)
    vol[[0, -1]] = -1
    vol[:, [0, -1]] = -1
    vol[:, :, [0, -1]] = -1
    v, f, n, _ = marching_cubes(vol, 0.0)
    check_closed(v, f, n)


def test_case_table_is_generated_and_complete():
    from holopart_infer import _cpp

    tris, ntri = _cpp.case_table()
    assert ntri[0] == 0 and ntri[255] == 0
    assert (ntri[1:255] >= 1).all() and ntri.max() <= 12
    # Complementary cases cut the same edges.
    for c in range(256):
        e1 = set(tris[c][: 3 * ntri[c]].tolist())
        e2 = set(tris[255 - c][: 3 * ntri[255 - c]].tolist())
        assert e1 == e2


def test_every_single_cube_case_matches_cut_edges():
    # Each of the 256 corner patterns in one cube: vertices exactly on the crossed edges.
    for case in range(256):
        vol = np.full((2, 2, 2), -1.0, np.float32)
        for c in range(8):
            if case >> c & 1:
                vol[c >> 2 & 1, c >> 1 & 1, c & 1] = 1.0
        v, f, _, _ = marching_cubes(vol, 0.0)
        crossed = 0
        for a in range(3):
            crossed += int(np.count_nonzero(np.diff(vol > 0, axis=a)))
        assert len(v) == crossed
        assert (len(f) == 0) == (case in (0, 255))


def test_empty_and_constant_volumes():
    v, f, n, vals = marching_cubes(np.zeros((3, 3, 3), np.float32), 0.0)
    assert v.shape == (0, 3) and f.shape == (0, 3) and n.shape == (0, 3) and vals.shape == (0,)
    v, f, _, _ = marching_cubes(np.full((4, 4, 4), np.nan, np.float32), 0.0)
    assert len(v) == 0 and len(f) == 0


def test_input_conversion():
    vol = sphere(n=24)
    v32, f32, _, _ = marching_cubes(vol, 0.0)
    v64, f64, _, _ = marching_cubes(vol.astype(np.float64), 0.0)
    np.testing.assert_array_equal(f32, f64)
    np.testing.assert_allclose(v32, v64)
    vf, ff, _, _ = marching_cubes(np.asfortranarray(vol), 0)
    np.testing.assert_array_equal(ff, f32)
    ints = (vol > 0).astype(np.int32)
    v, f, _, _ = marching_cubes(ints, 0.5)
    assert is_watertight(f)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"volume": np.zeros((4, 4), np.float32)}, "volume: expected a 3-D array, got 2-D"),
        ({"volume": np.zeros((4, 1, 4), np.float32)}, "volume: expected at least 2x2x2 points, got shape \\(4, 1, 4\\)"),
        ({"volume": np.zeros((3, 3, 3), np.complex64)}, "volume: expected a real-valued .* got dtype complex64"),
        ({"volume": np.zeros((3, 3, 3), object)}, "volume: expected a real-valued .* got dtype object"),
        ({"volume": np.zeros((3, 3, 3)), "level": float("nan")}, "level: expected a finite number, got nan"),
        ({"volume": np.zeros((3, 3, 3)), "level": float("inf")}, "level: expected a finite number"),
        ({"volume": np.zeros((3, 3, 3)), "level": "0"}, "level: expected a finite number"),
        ({"volume": np.zeros((3, 3, 3)), "spacing": (1, 1)}, "spacing: expected 3 finite numbers"),
        ({"volume": np.zeros((3, 3, 3)), "spacing": (1, 0, 1)}, "spacing: expected 3 positive"),
        ({"volume": np.zeros((3, 3, 3)), "origin": (0, np.nan, 0)}, "origin: expected 3 finite"),
        ({"volume": np.zeros((3, 3, 3)), "device": "gpu"}, "device: expected one of"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(InputError, match=match):
        marching_cubes(**kwargs)


@pytest.mark.requires_cuda
@pytest.mark.skipif(not native.cuda_available(), reason="needs a CUDA GPU and the _cuda module")
def test_cuda_matches_cpu():
    for vol in (sphere(), torus(), two_boxes()):
        vol = vol.copy()
        vol[:5] = np.nan
        cpu = marching_cubes(vol, 0.0, spacing=(0.5, 1, 2), origin=(1, 2, 3))
        gpu = marching_cubes(vol, 0.0, spacing=(0.5, 1, 2), origin=(1, 2, 3), device="cuda")
        np.testing.assert_array_equal(gpu[0], cpu[0])
        np.testing.assert_array_equal(gpu[1], cpu[1])
        np.testing.assert_allclose(gpu[2], cpu[2], atol=1e-5)
        np.testing.assert_array_equal(gpu[3], cpu[3])
