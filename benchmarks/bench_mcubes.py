"""Marching cubes: holopart_infer (threaded C++) vs scikit-image on the same field.

pytest-benchmark suite:
    python -m pytest benchmarks/bench_mcubes.py --benchmark-enable --benchmark-json=mc.json
Pair-by-pair ratios (A B A B ... in one process; set HOLOPART_NUM_THREADS=1 for one thread):
    python benchmarks/bench_mcubes.py --pairs 7
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.mcubes import marching_cubes

ROUNDS = {128: 10, 256: 5, 512: 3}
_fields: dict[tuple[str, int], np.ndarray] = {}


def smooth_field(n: int) -> np.ndarray:
    """Union of a sphere and a torus (positive inside), n^3 float32 over [-1, 1]^3."""
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
    sph = 0.45 - np.sqrt((X - 0.2) ** 2 + Y ** 2 + Z ** 2)
    tor = 0.15 - np.sqrt((np.sqrt(X ** 2 + Y ** 2) - 0.6) ** 2 + (Z + 0.1) ** 2)
    return np.ascontiguousarray(np.maximum(sph, tor), dtype=np.float32)


def hard_field(n: int) -> np.ndarray:
    """Thin gyroid shell (positive inside a slab of width 0.5 around the gyroid),
    1.5 periods across n points: many thin surface pieces, ~0.9 M faces at 256^3."""
    x = np.linspace(0.0, 3.0 * np.pi, n, dtype=np.float32)
    X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
    g = np.sin(X) * np.cos(Y) + np.sin(Y) * np.cos(Z) + np.sin(Z) * np.cos(X)
    # A tiny irrational offset keeps grid values off the level exactly.
    return np.ascontiguousarray(0.25 - np.abs(g) + np.float32(1e-4 * np.sqrt(2.0)), dtype=np.float32)


def field(kind: str, n: int) -> np.ndarray:
    if (kind, n) not in _fields:
        _fields[kind, n] = smooth_field(n) if kind == "smooth" else hard_field(n)
    return _fields[kind, n]


@pytest.mark.parametrize("impl", ["holopart", "skimage"])
@pytest.mark.parametrize("kind,n", [("smooth", 128), ("smooth", 256), ("smooth", 512), ("hard", 256)])
def test_marching_cubes(benchmark, kind, n, impl):
    skimage_measure = pytest.importorskip("skimage.measure")
    vol = field(kind, n)
    fn = (lambda: marching_cubes(vol, 0.0)) if impl == "holopart" else (
        lambda: skimage_measure.marching_cubes(vol, 0.0))
    benchmark.group = f"mcubes-{kind}-{n}"
    out = benchmark.pedantic(fn, rounds=ROUNDS[n], iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(n=n, kind=kind, impl=impl, vertices=len(out[0]), faces=len(out[1]))


def _pairs(rounds: int) -> None:
    import os
    import time

    from skimage.measure import marching_cubes as sk

    print(f"threads={os.environ.get('HOLOPART_NUM_THREADS', 'all')}")
    for kind, n in [("smooth", 256), ("hard", 256)]:
        vol = field(kind, n)
        hp_out, sk_out = marching_cubes(vol, 0.0), sk(vol, 0.0)  # warm-up
        ratios, th, ts = [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter(); marching_cubes(vol, 0.0); t1 = time.perf_counter()
            sk(vol, 0.0); t2 = time.perf_counter()
            th.append(t1 - t0); ts.append(t2 - t1); ratios.append((t2 - t1) / (t1 - t0))
        r = np.array(ratios)
        print(f"{kind} {n}^3 faces hp={len(hp_out[1])} sk={len(sk_out[1])}: "
              f"holopart median {np.median(th)*1e3:.0f} ms, skimage {np.median(ts)*1e3:.0f} ms, "
              f"ratio median {np.median(r):.2f} (min {r.min():.2f}, max {r.max():.2f})")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=7)
    _pairs(ap.parse_args().pairs)
