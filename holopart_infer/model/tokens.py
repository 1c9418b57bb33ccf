"""Token pre-selection for the part encoder (spec section 5).

``rng = numpy.random.default_rng(seed)``; one ``rng.choice(N, 4K, replace=4K > N)``
shared by every item of the batch; then farthest point sampling on the xyz of
those 4K points down to K, starting at the first, squared Euclidean distance,
ties to the lowest index. The FPS kernel is the C++ one in cpp_ext (its numpy
reference, the definition above run step by step, is in tests/native/test_native.py).
"""
from __future__ import annotations

import numpy as np

from holopart_infer.errors import InputError


def _fps(xyz: np.ndarray, k: int) -> np.ndarray:
    from holopart_infer.extraction import native  # compiled kernel; imported lazily to keep import cheap

    return native.farthest_point_sampling(xyz, k)


def preselect_indices(num_points: int, num_tokens: int, seed: int | None) -> np.ndarray:
    """The shared random pre-selection: indices (4*num_tokens,) into N points."""
    m = 4 * num_tokens
    rng = np.random.default_rng(seed)
    return rng.choice(num_points, m, replace=m > num_points)


def select_tokens(points: np.ndarray, num_tokens: int, seed: int | None = 0,
                  fps=None) -> np.ndarray:
    """Select ``num_tokens`` tokens per batch item.

    Args:
        points: (B, N, C) float array; the first 3 channels are xyz.
        num_tokens: K, the part encoder's ``num_tokens``.
        seed: seed of the pre-selection (None: random, as the reference does).
        fps: optional FPS function (xyz (M,3), k) -> indices; default the C++ kernel.

    Returns:
        (B, K, C) float32, the selected rows in FPS order.
    """
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[-1] < 3:
        raise InputError(f"points must have shape (B, N, C>=3), got {points.shape}")
    if num_tokens < 1:
        raise InputError(f"num_tokens must be >= 1, got {num_tokens}")
    B, N, _ = points.shape
    if N == 0:
        raise InputError("points has no points (N = 0)")
    idx = preselect_indices(N, num_tokens, seed)
    fps = fps or _fps
    out = np.empty((B, num_tokens, points.shape[-1]), dtype=np.float32)
    for b in range(B):
        sub = np.ascontiguousarray(points[b, idx], dtype=np.float32)
        out[b] = sub[fps(np.ascontiguousarray(sub[:, :3]), num_tokens)]
    return out
