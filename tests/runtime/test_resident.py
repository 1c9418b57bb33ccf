"""Device-resident extraction (holopart_infer.extraction.resident) against the host path.

The tensor rules must give exactly cpp_ext's masks and point lists, and a whole
extraction must give the host path's meshes and query counts. Run here on CPU
tensors; benchmarks/device_check.py runs the same comparison on CUDA.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from holopart_infer.extraction import extract

from holopart_infer.extraction import native  # noqa: E402
from holopart_infer.errors import BackendUnavailable, InputError  # noqa: E402

resident = pytest.importorskip("holopart_infer.extraction.resident")

REPO = Path(__file__).resolve().parents[2]


def _grid(shape, seed, unknown=0.3):
    rng = np.random.default_rng(seed)
    g = rng.normal(0.0, 1.5, size=shape).astype(np.float32)
    g[rng.random(shape) < unknown] = np.nan
    g[rng.random(shape) < 0.02] = np.inf
    g.flat[:5] = 0.0  # exactly 0 counts as "<= 0"
    return g


@pytest.mark.parametrize("shape", [(5, 6, 7), (9, 9, 9), (2, 3, 2)])
@pytest.mark.parametrize("band", [0.0, 0.95, 3.0])
def test_band_cells_match_native(shape, band):
    g = _grid(shape, seed=sum(shape))
    want = native.band_cells(g, band).astype(bool)
    got = resident.band_cells(torch.from_numpy(g), band).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_dilate_cells_match_native(radius):
    rng = np.random.default_rng(radius)
    cells = rng.random((7, 5, 9)) < 0.05
    want = native.dilate_cells(cells, radius).astype(bool)
    got = resident.dilate_cells(torch.from_numpy(cells), radius).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("with_coarse", [False, True])
def test_refine_points_match_native(with_coarse):
    g = _grid((6, 8, 5), seed=3, unknown=0.4)
    cells = native.band_cells(g, 0.95)
    coarse = g if with_coarse else None
    want = native.refine_points(cells, coarse)
    got = resident.refine_points(torch.from_numpy(cells.astype(bool)),
                                 None if coarse is None else torch.from_numpy(coarse)).numpy()
    assert want.size > 0
    np.testing.assert_array_equal(got, want)


def test_grid_points_match_host():
    idx = np.arange(0, 65 ** 3, 997, dtype=np.int64)
    want = extract.grid_points(idx, 64, 1.05)
    got = resident.grid_points(torch.from_numpy(idx), 64, 1.05).numpy()
    np.testing.assert_array_equal(got, want)


def _field(points):
    """Three parts as logits (inside > 0), computed by torch for both paths:
    a sphere, a box cut by the extraction box (capped), and nothing."""
    p = points
    sphere = 40.0 * (0.55 - torch.linalg.norm(p[0] - torch.tensor([0.1, -0.05, 0.0]), dim=-1))
    slab = 40.0 * (0.4 - p[1][:, 0])  # x < 0.4: cut by five faces of the box
    empty = torch.full_like(p[2][:, 0], -5.0)
    return torch.stack([sphere, slab, empty])


def _host_decode(pts_per_part):
    n = max(len(p) for p in pts_per_part)
    batch = np.zeros((len(pts_per_part), n, 3), np.float32)
    for i, p in enumerate(pts_per_part):
        batch[i, :len(p)] = p
    out = _field(torch.from_numpy(batch)).numpy()
    return [out[i, :len(p)] for i, p in enumerate(pts_per_part)]


def _surface_distance(a, b):
    from scipy.spatial import cKDTree

    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


@pytest.mark.parametrize("depth,lo,chunk,grow", [(6, 32, 4096, True), (6, 16, 4096, True), (7, 32, 100_000, True),
                                                 (7, 32, 4096, False)])
def test_extraction_matches_host_path(depth, lo, chunk, grow):
    # grow: the final level grown from the band (the default, issue 16 item 2); False: every dilated cell.
    # depth 6 with min_resolution 32 is a single level (no final-level growth)
    host, hs = extract.extract_meshes(_host_decode, 3, depth=depth, min_resolution=lo, chunk_points=chunk, grow=grow)
    if grow and len(hs.resolutions) > 1:  # growth ran: more than one round at the final level
        _, plain = extract.extract_meshes(_host_decode, 3, depth=depth, min_resolution=lo, chunk_points=chunk,
                                          grow=False)
        assert hs.queries_per_level[-1] < plain.queries_per_level[-1]
    seen = []

    def query(pts):
        assert isinstance(pts, torch.Tensor) and pts.dtype == torch.float32
        seen.append(tuple(pts.shape))
        return _field(pts)[..., None]

    dev, ds = resident.extract_meshes_resident(query, 3, device="cpu", depth=depth, min_resolution=lo,
                                               chunk_points=chunk, grow=grow)
    assert ds.queries_per_level == hs.queries_per_level
    assert ds.queries_per_part == hs.queries_per_part
    assert ds.decode_calls == hs.decode_calls == len(seen)
    assert max(s[1] for s in seen) <= chunk
    for h, d in zip(host, dev):
        assert len(h.faces) == len(d.faces) and len(h.vertices) == len(d.vertices)
        if len(h.faces):
            assert _surface_distance(h.vertices, d.vertices) < 1e-5
    assert len(dev[0].faces) > 0 and len(dev[1].faces) > 0 and len(dev[2].faces) == 0


def _row_field(points, parts):
    """_field's three parts, row r of ``points`` being part ``parts[r]``."""
    out = torch.empty(points.shape[:2])
    for p in range(3):
        rows = torch.from_numpy(np.flatnonzero(parts == p))
        if len(rows):
            flat = points[rows].reshape(-1, 3)
            stacked = torch.zeros((3,) + flat.shape)
            stacked[p] = flat
            out[rows] = _field(stacked)[p].reshape(len(rows), -1)
    return out


@pytest.mark.parametrize("chunk,row", [(4096, 4096), (4096, 512), (100_000, 12_500)])
def test_packed_rows_match_padded_rows(chunk, row):
    padded, ps = resident.extract_meshes_resident(lambda pts: _field(pts)[..., None], 3, device="cpu", depth=7,
                                                  chunk_points=chunk)
    shapes = []

    def query(points, parts):
        assert isinstance(parts, np.ndarray) and parts.dtype == np.int64 and len(parts) == len(points)
        shapes.append(tuple(points.shape[:2]))
        return _row_field(points, parts)

    packed, qs = resident.extract_meshes_resident(query, 3, device="cpu", depth=7, chunk_points=chunk,
                                                  row_points=row)
    assert qs.queries_per_part == ps.queries_per_part and qs.decode_calls == ps.decode_calls
    assert all(L == row or L % 128 == 0 for _, L in shapes)
    if row == chunk:
        assert all(R <= 3 for R, _ in shapes)  # a row per part at most
    assert ps.fed_points > qs.fed_points >= qs.total_queries
    assert qs.padding_ratio < 1.02
    for a, b in zip(padded, packed):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)


def test_query_answer_checked():
    with pytest.raises(InputError, match="query: expected a tensor of shape"):
        resident.extract_meshes_resident(lambda pts: pts[..., :2], 2, device="cpu", depth=5)


def test_pipeline_resident_on_cpu_matches_host(tmp_path):
    import holopart_infer as hp
    from holopart_infer import assets

    model = hp.load(REPO / "export" / "holopart_mini", backend="torch", device="cpu", precision="fp32")
    assert model.extracts_on_device is False  # auto: only on CUDA
    opts = dict(steps=2, depth=6, seed=0, decimate=None)
    host = model.complete(assets.demo_object_path(), **opts)
    model.resident_extraction = True
    assert model.extracts_on_device is True
    dev = model.complete(assets.demo_object_path(), **opts)
    assert dev.stats["decoder_queries_per_level"] == host.stats["decoder_queries_per_level"]
    for a, b in zip(host.parts, dev.parts):
        assert len(a.faces) == len(b.faces)
        if len(a.faces):
            assert _surface_distance(np.asarray(a.vertices), np.asarray(b.vertices)) < 1e-4


def test_resident_forced_on_a_backend_without_it():
    import holopart_infer as hp
    from holopart_infer import assets

    model = hp.load(assets.demo_model_path(), backend="onnxruntime")
    assert model.extracts_on_device is False
    model.resident_extraction = True
    with pytest.raises(BackendUnavailable, match="only the torch backend"):
        model.extracts_on_device


def _analytic_parts():
    """Four analytic parts (logits = 60 x signed distance, numpy): a sphere, a torus,
    a wavy shell (its surface wanders through dilation cells: several growth rounds)
    and a slab cut by the extraction box."""

    def sphere(p):
        return 0.5 - np.linalg.norm(p - np.float32([0.05, -0.1, 0.0]), axis=1)

    def torus(p):
        q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.5
        return 0.12 - np.sqrt(q * q + p[:, 1] ** 2)

    def wavy(p):
        w = np.sin(157.0 * p[:, 0]) * np.sin(161.0 * p[:, 1]) * np.sin(163.0 * p[:, 2])
        return 0.6 - np.linalg.norm(p, axis=1) + np.float32(0.02) * w

    def slab(p):
        return 0.3 - p[:, 2]

    return [lambda p, f=f: (60.0 * f(p.astype(np.float32))).astype(np.float32) for f in (sphere, torus, wavy, slab)]


@pytest.mark.parametrize("depth,grow", [(7, True), (8, True), (7, False)])
def test_host_and_resident_drivers_agree_on_an_analytic_field(monkeypatch, depth, grow):
    # depth 7: the wavy shell's surface runs into dilation cells (cells grown past the band);
    # depth 8: its finer levels hold it in the band (nothing grown)
    # one level driver (extract.run_levels) for both: the same surfaces, query counts and,
    # at the final level, the same cells grown round by round (growth over the active cells)
    fields = _analytic_parts()
    grown = {"host": [], "resident": []}
    real_round = extract._grow_round
    which = ["host"]

    def counting_round(*a, **k):
        cells = real_round(*a, **k)
        grown[which[0]].append(len(cells))
        return cells

    monkeypatch.setattr(extract, "_grow_round", counting_round)

    def host_decode(batch):
        return [f(p) for f, p in zip(fields, batch)]

    def query(pts):  # the same numpy field on the same points: bitwise the host's logits
        host = pts.numpy()
        return torch.from_numpy(np.stack([f(host[i]) for i, f in enumerate(fields)]))

    hm, hs = extract.extract_meshes(host_decode, len(fields), depth=depth, grow=grow)
    which[0] = "resident"
    dm, ds = resident.extract_meshes_resident(query, len(fields), device="cpu", depth=depth, grow=grow)
    assert ds.resolutions == hs.resolutions
    assert ds.queries_per_part == hs.queries_per_part and ds.queries_per_level == hs.queries_per_level
    assert ds.decode_calls == hs.decode_calls and ds.dense_queries == hs.dense_queries
    assert grown["resident"] == grown["host"]
    if grow and depth == 7:
        # cells grown past the band, and a second round (the dilated-band look-up) ran
        assert sum(grown["host"]) > 0 and len(grown["host"]) >= 2 * len(fields)
    elif grow:
        assert grown["host"] == [0] * len(fields)
    else:
        assert grown["host"] == []
    for h, d in zip(hm, dm):
        assert len(h.faces) > 0
        assert len(h.faces) == len(d.faces) and len(h.vertices) == len(d.vertices)
        assert _surface_distance(h.vertices, d.vertices) < 1e-5
