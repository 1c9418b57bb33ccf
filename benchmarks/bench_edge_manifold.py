"""cleanup.edge_manifold (one 64-bit key per edge) against the np.unique(axis=0)
edge count it replaced, on a marching-cubes mesh (issue 28 item 3).

    python benchmarks/bench_edge_manifold.py [--size 200] [--repeats 5]

Interleaved repeats in one process; prints the face count, median and range of
each and whether they agree (on the closed mesh and with one face removed).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def by_unique_rows(faces) -> bool:
    f = np.asarray(faces, np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())


def main(argv=None) -> int:
    from holopart_infer.postprocess.cleanup import edge_manifold
    from holopart_infer.extraction.mcubes import marching_cubes

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    x = np.linspace(-1, 1, args.size)
    g = 0.8 - np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    g = (g + 0.05 * np.sin(20 * x)[:, None, None]).astype(np.float32)
    f = marching_cubes(g, 0.0)[1]
    t = {"np.unique(axis=0)": [], "64-bit keys": []}
    for _ in range(args.repeats):
        for name, fn in (("np.unique(axis=0)", by_unique_rows), ("64-bit keys", edge_manifold)):
            t0 = time.perf_counter()
            fn(f)
            t[name].append(time.perf_counter() - t0)
    agree = all(by_unique_rows(m) == edge_manifold(m) for m in (f, f[1:]))
    print(f"{len(f):,} faces; answers agree: {agree}")
    for name, xs in t.items():
        print(f"{name:<18} median {np.median(xs):.4f} s  [min {min(xs):.4f} - max {max(xs):.4f}]")
    print(f"ratio of medians: {np.median(t['np.unique(axis=0)']) / np.median(t['64-bit keys']):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
