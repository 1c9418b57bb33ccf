"""Coarse-to-fine extraction vs a dense grid at the same final resolution (depth 9).

The part is an analytic sphere of radius 0.665 (HoloPart's part frame scales
a part to max |p - c| = 0.95 * 0.7) with logits = 80 * signed distance, i.e.
the 0.95 band is ~0.012 wide (about 3 final cells). The figure of merit is the
number of decoder queries; the ratio to the dense grid is recorded in
benchmark.extra_info["query_ratio"].

python -m pytest benchmarks/bench_extract.py --benchmark-enable --benchmark-json=ex.json
python benchmarks/bench_extract.py [DEPTH]   # query-count table, grow=False vs True (issue 16 item 2)
python benchmarks/bench_extract.py feed [DEPTH ...]   # padded/real decoder points, packed vs padded feed (issue 28)
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.extraction.extract import extract_dense, extract_meshes

PART = dict(centre=(0.02, -0.03, 0.01), radius=0.665, sharpness=80.0)
DENSE_QUERIES = 505 ** 3


def decode(points_per_part):
    out = []
    for pts in points_per_part:
        d = np.sqrt(((pts - np.asarray(PART["centre"], np.float32)) ** 2).sum(1))
        out.append((PART["sharpness"] * (PART["radius"] - d)).astype(np.float32))
    return out


def test_extract_coarse_to_fine_depth9(benchmark):
    benchmark.group = "extract-depth9"
    meshes, stats = benchmark.pedantic(
        lambda: extract_meshes(decode, 1, depth=9, chunk_points=1 << 20),
        rounds=3, iterations=1, warmup_rounds=0)
    assert stats.dense_queries == DENSE_QUERIES
    benchmark.extra_info.update(
        resolutions=stats.resolutions,
        queries_per_level=stats.queries_per_level,
        queries=stats.total_queries,
        dense_queries=stats.dense_queries,
        query_ratio=stats.query_ratio,
        faces=int(len(meshes[0].faces)),
    )
    assert stats.query_ratio < 0.05


@pytest.mark.slow
def test_extract_dense_depth9(benchmark):
    benchmark.group = "extract-depth9"
    meshes, stats = benchmark.pedantic(
        lambda: extract_dense(decode, 1, depth=9, chunk_points=1 << 21),
        rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(queries=stats.total_queries, query_ratio=1.0,
                                faces=int(len(meshes[0].faces)))
    # Same surface as coarse-to-fine.
    c2f, _ = extract_meshes(decode, 1, depth=9, chunk_points=1 << 20)
    assert len(c2f[0].faces) == len(meshes[0].faces)


# ----------------------------------------------------------------------------- query counts (issue 16 item 2)
def _fields():
    """Analytic parts: the sphere above, a thin shell, many small pieces, a gyroid cut by the box."""
    blobs = np.random.default_rng(3).uniform(-0.8, 0.8, size=(40, 3))

    def sphere(p):
        return decode([p])[0]

    def shell(p):
        return (80.0 * (0.02 - np.abs(np.linalg.norm(p, axis=1) - 0.5))).astype(np.float32)

    def pieces(p):
        d = np.sqrt(((p[:, None, :] - blobs[None]) ** 2).sum(2)).min(1)
        return (80.0 * (0.06 - d)).astype(np.float32)

    def gyroid(p):
        x, y, z = (6.0 * p).T
        return (4.0 * (np.sin(x) * np.cos(y) + np.sin(y) * np.cos(z) + np.sin(z) * np.cos(x))).astype(np.float32)

    return {"sphere": sphere, "thin shell": shell, "40 small pieces": pieces, "gyroid": gyroid}


def _same(a, b) -> str:
    """'identical', or the mean symmetric surface distance / volume change (tests.support's measures)."""
    if len(a.faces) == len(b.faces) and len(a.vertices) == len(b.vertices) and np.allclose(
            a.vertices[np.lexsort(a.vertices.T)], b.vertices[np.lexsort(b.vertices.T)], atol=1e-6):
        return "identical"
    import trimesh
    from tests.support import surface_distance

    ma, mb = (trimesh.Trimesh(m.vertices, m.faces, process=False) for m in (a, b))
    diag = float(np.linalg.norm(np.ptp(np.vstack([ma.vertices, mb.vertices]), axis=0)))
    dv = abs(abs(ma.volume) - abs(mb.volume)) / max(abs(ma.volume), abs(mb.volume), 1e-12)
    return f"dist {surface_distance((a.vertices, a.faces), (b.vertices, b.faces)) / diag:.1e} diag, vol {dv:.1e}"


def query_table(depths=(7, 8, 9), objects=("mug", "lamp", "table", "ten"), model_depth=7) -> None:
    """Print decoder queries per part, before (grow=False) and after (grow=True), and the mesh change."""
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from holopart_infer import assets
    from holopart_infer.extraction import extract
    from holopart_infer.pipeline import load

    print(f"{'part':<28} {'depth':>5} {'before':>10} {'after':>10} {'after/before':>12}  mesh")
    fields = _fields()
    for depth in depths:
        for name, f in fields.items():
            def dec(points, f=f):
                return [f(p) if len(p) else np.zeros(0, np.float32) for p in points]
            a, sa = extract_meshes(dec, 1, depth=depth, grow=False, chunk_points=1 << 20)
            b, sb = extract_meshes(dec, 1, depth=depth, chunk_points=1 << 20)
            print(f"{name:<28} {depth:>5} {sa.total_queries:>10,} {sb.total_queries:>10,} "
                  f"{sb.total_queries / sa.total_queries:>12.3f}  {_same(a[0], b[0])}", flush=True)
    pairs = []
    original = extract.extract_meshes

    def both(decode_fn, n, **kw):
        plain = original(decode_fn, n, **{**kw, "grow": False})
        grown = original(decode_fn, n, **kw)
        pairs.append((plain, grown))
        return grown

    extract.extract_meshes = both
    model = load(assets.demo_model_path())
    tot = [0, 0]
    with tempfile.TemporaryDirectory() as tmp:
        for obj in objects:
            if obj == "ten":
                from cpu_defaults import ten_part_object
                path = ten_part_object(Path(tmp) / "ten.glb")
            else:
                path = assets.demo_object_path(obj)
            pairs.clear()
            res = model.complete(path, depth=model_depth, steps=20, thin_parts=False, decimate=None)
            names = [p.name for p in res.parts]
            k = 0
            for (ma, sa), (mb, sb) in pairs:
                for p in range(len(ma)):
                    qa, qb = sum(sa.queries_per_part[p]), sum(sb.queries_per_part[p])
                    tot[0] += qa
                    tot[1] += qb
                    print(f"{obj + '/' + names[k]:<28} {model_depth:>5} {qa:>10,} {qb:>10,} {qb / qa:>12.3f}  "
                          f"{_same(ma[p], mb[p])}", flush=True)
                    k += 1
    extract.extract_meshes = original
    print(f"{'model parts, all':<28} {model_depth:>5} {tot[0]:>10,} {tot[1]:>10,} {tot[1] / tot[0]:>12.3f}")


def feed_table(depths=(7, 8, 9), chunk=8192) -> None:
    """Decoder points computed / points asked for, the four analytic fields above as
    the parts of one extraction: the packed feed (extract.PackedFeed, the
    pipeline's) against one padded row per part (extract.PaddedFeed, before
    issue 28). Counts, not times: they do not depend on the machine's load."""
    from holopart_infer.extraction.extract import PackedFeed, PaddedFeed

    fields = list(_fields().values())

    def query(points, parts):
        rows = range(len(points)) if parts is None else parts
        return np.stack([fields[p](row) for p, row in zip(rows, points)])

    print(f"{'depth':>5} {'queries':>12} {'padded fed':>12} {'packed fed':>12} {'padded/real':>12} "
          f"{'packed/real':>12}  meshes")
    for depth in depths:
        got = []
        for feed in (PaddedFeed(query), PackedFeed(query, chunk)):
            meshes, st = extract_meshes(feed, len(fields), depth=depth, chunk_points=chunk)
            got.append((feed, meshes, st))
        (fa, ma, sa), (fb, mb, sb) = got
        same = all(np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
                   for a, b in zip(ma, mb))
        print(f"{depth:>5} {sa.total_queries:>12,} {fa.fed_points:>12,} {fb.fed_points:>12,} "
              f"{fa.fed_points / fa.real_points:>12.4f} {fb.fed_points / fb.real_points:>12.4f}  "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)


if __name__ == "__main__":  # python benchmarks/bench_extract.py [model depth] | feed [depth ...]
    import sys

    if sys.argv[1:2] == ["feed"]:
        feed_table(tuple(int(d) for d in sys.argv[2:]) or (7, 8, 9))
    else:
        query_table(model_depth=int(sys.argv[1]) if len(sys.argv) > 1 else 7)
