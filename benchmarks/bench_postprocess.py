"""Postprocessing on big marching-cubes meshes: is every step linear-ish in the
faces, and the row counts replaced by 1-D keys (issue 28 item 3)?

Two meshes from one field (a wavy sphere with small blobs: several components),
about 290,000 and 72,000 faces. Each step of the pipeline's postprocessing and
quality measure is timed on both (median of ``--repeats`` interleaved runs);
``big/small`` near the face ratio (~4) means linear, well above it super-linear.
The two row counts replaced in this tree run beside their old form
(``np.unique(axis=0)`` on sorted rows) with the answers compared.

    python benchmarks/bench_postprocess.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def field(size: int) -> np.ndarray:
    x = np.linspace(-1, 1, size)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    g = 0.7 - np.sqrt(X * X + Y * Y + Z * Z) + 0.04 * np.sin(17 * X) * np.sin(13 * Y)
    for c in ((0.9, 0.9, 0.9), (-0.9, 0.85, -0.9), (0.88, -0.9, 0.0)):  # floaters
        g = np.maximum(g, 0.05 - np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2))
    return g.astype(np.float32)


def old_drop_duplicate_faces(faces):
    f = np.asarray(faces)
    _, inverse, counts = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    keep = counts[inverse.reshape(-1)] == 1
    return f if keep.all() else f[keep]


def old_edge_use_counts(f):
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, inverse, counts = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


def new_edge_use_counts(f):
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = (np.minimum(edges[:, 0], edges[:, 1]) << 32) | np.maximum(edges[:, 0], edges[:, 1])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


def main(argv=None) -> int:
    from holopart_infer.postprocess import quality
    from holopart_infer.postprocess.cleanup import connected_components, drop_duplicate_faces, edge_manifold, remove_floaters
    from holopart_infer.postprocess.decimate import decimate, merge_coincident
    from holopart_infer.extraction.mcubes import marching_cubes

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    meshes = {}
    for name, size in (("small", 120), ("big", 240)):
        v, f = marching_cubes(field(size), 0.0, spacing=(2.0 / (size - 1),) * 3, origin=(-1.0,) * 3)[:2]
        meshes[name] = (v.astype(np.float64), f.astype(np.int64))
    print({k: f"{len(f):,} faces" for k, (_, f) in meshes.items()})
    pv, pf = meshes["small"]
    steps = {
        "drop_duplicate_faces (old: np.unique axis=0)": lambda v, f: old_drop_duplicate_faces(f),
        "drop_duplicate_faces (now: 1-D keys)": lambda v, f: drop_duplicate_faces(f),
        "thin edge counts (old: np.unique axis=0)": lambda v, f: old_edge_use_counts(f),
        "thin edge counts (now: 64-bit keys)": lambda v, f: new_edge_use_counts(f),
        "connected_components": lambda v, f: connected_components(f, len(v)),
        "remove_floaters": lambda v, f: remove_floaters(v, f, 0.1),
        "edge_manifold": lambda v, f: edge_manifold(f),
        "merge_coincident": lambda v, f: merge_coincident(v, f),
        "decimate to 20,000": lambda v, f: decimate(v, f, 20000),
        "quality.measure": lambda v, f: quality.measure(v, f, pv, pf, np.array([[-1.0] * 3, [1.0] * 3])),
    }
    t = {(s, m): [] for s in steps for m in meshes}
    for _ in range(args.repeats):
        for s, fn in steps.items():
            for m, (v, f) in meshes.items():
                t0 = time.perf_counter()
                fn(v, f)
                t[(s, m)].append(time.perf_counter() - t0)
    for m, (v, f) in meshes.items():
        for bad in (f, np.concatenate([f, f[:50, ::-1]])):
            assert np.array_equal(old_drop_duplicate_faces(bad), drop_duplicate_faces(bad))
            assert np.array_equal(old_edge_use_counts(bad), new_edge_use_counts(bad))
    print("answers of old and new forms: identical\n")
    print("| step | small s, median [min-max] | big s, median [min-max] | big/small |")
    print("|---|---|---|---|")
    for s in steps:
        a, b = (np.asarray(t[(s, m)]) for m in ("small", "big"))
        print(f"| {s} | {np.median(a):.4f} [{a.min():.4f}-{a.max():.4f}] | {np.median(b):.4f} "
              f"[{b.min():.4f}-{b.max():.4f}] | {np.median(b) / np.median(a):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
