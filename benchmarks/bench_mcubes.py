"""Marching cubes: holopart_infer (threaded C++) vs scikit-image on the same field.

python -m pytest benchmarks/bench_mcubes.py --benchmark-enable --benchmark-json=mc.json
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.mcubes import marching_cubes

skimage_measure = pytest.importorskip("skimage.measure")

ROUNDS = {128: 10, 256: 5, 512: 3}
_fields: dict[int, np.ndarray] = {}


def field(n: int) -> np.ndarray:
    """Union of a sphere and a torus (positive inside), n^3 float32 over [-1, 1]^3."""
    if n not in _fields:
        x = np.linspace(-1.0, 1.0, n, dtype=np.float32)
        X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
        sph = 0.45 - np.sqrt((X - 0.2) ** 2 + Y ** 2 + Z ** 2)
        tor = 0.15 - np.sqrt((np.sqrt(X ** 2 + Y ** 2) - 0.6) ** 2 + (Z + 0.1) ** 2)
        _fields[n] = np.ascontiguousarray(np.maximum(sph, tor), dtype=np.float32)
    return _fields[n]


@pytest.mark.parametrize("impl", ["holopart", "skimage"])
@pytest.mark.parametrize("n", [128, 256, 512])
def test_marching_cubes(benchmark, n, impl):
    vol = field(n)
    fn = (lambda: marching_cubes(vol, 0.0)) if impl == "holopart" else (
        lambda: skimage_measure.marching_cubes(vol, 0.0))
    benchmark.group = f"mcubes-{n}"
    out = benchmark.pedantic(fn, rounds=ROUNDS[n], iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(n=n, impl=impl, vertices=len(out[0]), faces=len(out[1]))
