"""Coarse-to-fine extraction vs a dense grid at the same final resolution (depth 9).

The part is an analytic sphere of radius 0.665 (HoloPart's part frame scales
a part to max |p - c| = 0.95 * 0.7) with logits = 80 * signed distance, i.e.
the 0.95 band is ~0.012 wide (about 3 final cells). The figure of merit is the
number of decoder queries; the ratio to the dense grid is recorded in
benchmark.extra_info["query_ratio"].

python -m pytest benchmarks/bench_extract.py --benchmark-enable --benchmark-json=ex.json
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.extract import extract_dense, extract_meshes

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
