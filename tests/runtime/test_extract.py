"""Coarse-to-fine extraction against the dense grid on analytic logit fields."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.postprocess.cleanup import edge_manifold
from holopart_infer.errors import InputError
from holopart_infer.extraction.extract import (
    ExtractionStats,
    extract_dense,
    extract_meshes,
    grid_points,
    levels_for_depth,
)

# Analytic "parts": logits = sharpness * (radius - |x - centre|) (inside > 0),
# sharp like an occupancy decoder so the 0.95 band is a few fine cells wide.
PARTS = [
    dict(centre=(0.05, -0.1, 0.02), radius=0.7, sharpness=60.0),
    dict(centre=(-0.3, 0.25, 0.1), radius=0.35, sharpness=120.0),
    None,  # a part with no surface at all
]


def sphere_logits(pts: np.ndarray, part) -> np.ndarray:
    if part is None:
        return np.full(len(pts), -5.0, np.float32)
    d = np.sqrt(((pts.astype(np.float64) - part["centre"]) ** 2).sum(1))
    return (part["sharpness"] * (part["radius"] - d)).astype(np.float32)


class Decoder:
    def __init__(self, parts):
        self.parts = parts
        self.calls = 0
        self.max_points = 0

    def __call__(self, points_per_part):
        assert len(points_per_part) == len(self.parts)
        self.calls += 1
        out = []
        for pts, part in zip(points_per_part, self.parts):
            assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 3
            self.max_points = max(self.max_points, len(pts))
            out.append(sphere_logits(pts, part))
        return out


def test_levels_for_depth():
    assert levels_for_depth(9) == [63, 126, 252, 504]
    assert levels_for_depth(8) == [62, 124, 248]
    assert levels_for_depth(7) == [60, 120]
    assert levels_for_depth(6) == [56]
    for bad in (4, 12, 9.0, True):
        with pytest.raises(InputError, match="depth: expected an int in \\[5, 11\\]"):
            levels_for_depth(bad)


def test_grid_points_mapping_is_exact():
    r, b = 504, 1.05
    idx = np.array([0, r, (r + 1) ** 3 - 1, (3 * (r + 1) + 7) * (r + 1) + 500])
    pts = grid_points(idx, r, b)
    expected = -b + np.array([[0, 0, 0], [0, 0, r], [r, r, r], [3, 7, 500]]) * (2 * b / r)
    np.testing.assert_allclose(pts, expected, rtol=0, atol=1e-7)
    assert pts[2, 0] == pytest.approx(b) and pts[0, 0] == pytest.approx(-b)


def test_coarse_to_fine_matches_dense():
    dec_c2f, dec_dense = Decoder(PARTS), Decoder(PARTS)
    meshes, stats = extract_meshes(dec_c2f, len(PARTS), depth=8, chunk_points=50000)
    dense, dstats = extract_dense(dec_dense, len(PARTS), depth=8)
    assert isinstance(stats, ExtractionStats)
    assert stats.resolutions == [62, 124, 248]
    assert len(stats.queries_per_level) == 3 and stats.queries_per_level[0] == 3 * 63 ** 3
    assert stats.total_queries == sum(sum(q) for q in stats.queries_per_part)
    assert dstats.total_queries == stats.dense_queries == 3 * 249 ** 3
    assert stats.query_ratio < 0.15
    assert dec_c2f.max_points <= 50000 and stats.decode_calls == dec_c2f.calls
    for (v, f), (dv, df), part in zip(meshes, dense, PARTS):
        assert v.dtype == np.float32 and f.dtype == np.int64
        if part is None:
            assert v.shape == (0, 3) and f.shape == (0, 3)
            continue
        # Same surface: identical vertices (same grid coordinates, same values) and faces.
        assert len(v) == len(dv) and len(f) == len(df)
        np.testing.assert_array_equal(np.unique(v, axis=0), np.unique(dv, axis=0))
        # Watertight, and in the part's frame at the right size (no 1.6% shrink).
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        assert (np.unique(e, axis=0, return_counts=True)[1] == 2).all()
        r = np.linalg.norm(v - np.array(part["centre"], np.float32), axis=1)
        assert abs(r.mean() - part["radius"]) < 2e-3


def test_depth9_query_ratio_for_a_sphere_sized_part():
    # A part normalized like HoloPart's part frame (max |p - c| = 0.95 * 0.7).
    # Counting only: no dense comparison at 505^3 (that is the benchmark's job).
    part = dict(centre=(0.0, 0.0, 0.0), radius=0.665, sharpness=80.0)
    meshes, stats = extract_meshes(Decoder([part]), 1, depth=9, chunk_points=1 << 20)
    assert stats.resolutions == [63, 126, 252, 504]
    assert stats.dense_queries == 505 ** 3
    assert stats.query_ratio < 0.05
    v, f = meshes[0]
    assert abs(np.linalg.norm(v, axis=1).mean() - 0.665) < 1e-3


def test_progress_and_single_level():
    seen = []
    meshes, stats = extract_meshes(Decoder(PARTS[:1]), 1, depth=6, progress=lambda *a: seen.append(a))
    assert stats.resolutions == [56] and len(meshes[0].faces) > 0
    assert seen[-1] == (0, 1, 57 ** 3, 57 ** 3)


def test_bad_arguments_and_bad_decoder():
    dec = Decoder(PARTS[:1])
    with pytest.raises(InputError, match="num_parts"):
        extract_meshes(dec, -1, depth=6)
    with pytest.raises(InputError, match="bounds"):
        extract_meshes(dec, 1, depth=6, bounds=0.0)
    with pytest.raises(InputError, match="chunk_points"):
        extract_meshes(dec, 1, depth=6, chunk_points=0)
    with pytest.raises(InputError, match="band"):
        extract_meshes(dec, 1, depth=6, band=float("nan"))
    with pytest.raises(InputError, match="decode: expected a list of 1 logit arrays"):
        extract_meshes(lambda pts: [], 1, depth=6)
    with pytest.raises(InputError, match="decode: part 0 returned 3 logits"):
        extract_meshes(lambda pts: [np.zeros(3)], 1, depth=6)


class FieldDecoder:
    """logits = f(points) for every part."""

    def __init__(self, fn, parts=1):
        self.fn, self.parts = fn, parts

    def __call__(self, points_per_part):
        return [self.fn(p.astype(np.float64)).astype(np.float32) for p in points_per_part]


def _volume(v, f):
    t = v[f].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


@pytest.mark.parametrize("extractor", ["c2f", "dense"])
def test_parts_cut_by_the_box_are_capped(extractor):
    """A slab x < 0.4 fills the box on five sides: capped, it is the closed box
    [-1.05, 0.4] x [-1.05, 1.05]^2 (volume 1.45 * 2.1^2); open, as the reference, it is not closed."""
    fn = lambda p: 40.0 * (0.4 - p[:, 0])  # noqa: E731
    run = (lambda **k: extract_meshes(FieldDecoder(fn), 1, depth=7, **k)) if extractor == "c2f" else \
        (lambda **k: extract_dense(FieldDecoder(fn), 1, depth=7, **k))
    (closed,), _ = run()
    (opened,), _ = run(close=False)
    v, f = closed
    assert edge_manifold(f)
    assert _volume(v, f) == pytest.approx(1.45 * 2.1 * 2.1, rel=2e-3)
    assert np.abs(v).max() <= 1.05 + 1e-6 and v[:, 0].max() == pytest.approx(0.4, abs=1e-3)
    assert not edge_manifold(opened.faces)
    # the open mesh is exactly the closed one minus the caps: the x = 0.4 plane only
    assert np.allclose(opened.vertices[:, 0], 0.4, atol=1e-3)


def test_capping_keeps_interior_surfaces_identical():
    """A sphere inside the box has no cap: closing changes nothing."""
    part = PARTS[0]
    (a,), _ = extract_meshes(Decoder([part]), 1, depth=7)
    (b,), _ = extract_meshes(Decoder([part]), 1, depth=7, close=False)
    from scipy.spatial import cKDTree

    assert len(a.vertices) == len(b.vertices) and len(a.faces) == len(b.faces)
    d, _ = cKDTree(b.vertices).query(a.vertices)  # same points up to float rounding of the shifted origin
    assert d.max() < 1e-6


def test_capping_a_sphere_bigger_than_the_box_on_the_coarse_to_fine_grid():
    """Sphere of radius 1.3: the box faces are partly inside (unknown in the middle
    at the fine levels); the capped mesh is closed with the volume of box ∩ sphere."""
    fn = lambda p: 30.0 * (1.3 - np.linalg.norm(p, axis=1))  # noqa: E731
    (m,), stats = extract_meshes(FieldDecoder(fn), 1, depth=8)
    assert stats.query_ratio < 0.5  # the face interiors really were skipped
    assert edge_manifold(m.faces)
    rng = np.random.default_rng(0)
    q = rng.uniform(-1.05, 1.05, size=(400000, 3))
    want = (np.linalg.norm(q, axis=1) < 1.3).mean() * 2.1 ** 3
    assert _volume(m.vertices, m.faces) == pytest.approx(want, rel=5e-3)
