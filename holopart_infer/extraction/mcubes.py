"""Marching cubes with unknown (NaN) cells, in the scikit-image shape.

``marching_cubes(volume, level)`` returns ``(vertices, faces, normals,
values)`` like :func:`skimage.measure.marching_cubes`, with these exact
conventions:

* vertices: float32 (V, 3) in index units along the array axes (i, j, k),
  i.e. ``vertex = origin + (index + t * axis_unit) * spacing`` on the crossed
  grid edge, with ``t = (level - v0) / (v1 - v0)``. One vertex per crossed grid
  edge: neighbouring cubes share vertices, there are no duplicates.
* faces: int64 (F, 3). The region ``volume > level`` is "inside" (HoloPart
  logits are positive inside, the setting of scikit-image's default
  ``gradient_direction="descent"``). Faces are wound counter-clockwise seen
  from outside, so their right-hand normals point OUT of the inside region
  (towards lower values) and a closed surface has a positive signed volume --
  the convention of trimesh/glTF. scikit-image's default winding is the
  opposite (its closed surfaces have negative signed volume); use
  ``faces[:, ::-1]`` for its winding.
* normals: float32 (V, 3) unit vectors pointing out of the inside region,
  like scikit-image's default ``normals`` (computed here as area-weighted
  averages of the adjacent face normals).
* values: float32 (V,) the larger of the two grid values on the vertex's edge
  (scikit-image: "maximum value of the data in the local region").

All four outputs are the same bit for bit whatever the thread count
(``HOLOPART_NUM_THREADS``); the CPU kernel (cpp_ext/src/mcubes.cpp) works on
one bit per grid point and writes the outputs in place, see
docs/performance.md, "Marching cubes on the CPU".

Cubes with a NaN or infinite corner are unknown and emit nothing; a
closed level set strictly inside the known region gives a watertight
(every edge in exactly two faces), consistently oriented mesh. Ambiguous cube
faces are resolved by one rule (inside corners on a face diagonal are kept
apart), so neighbouring cubes always agree. A grid value exactly equal to
``level`` counts as outside.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from holopart_infer.extraction import native
from holopart_infer.errors import InputError

__all__ = ["marching_cubes"]


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: expected 3 finite numbers, got {value!r}") from e
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise InputError(f"{name}: expected 3 finite numbers, got {value!r}")
    return float(arr[0]), float(arr[1]), float(arr[2])


def marching_cubes(
    volume: Any,
    level: float = 0.0,
    *,
    spacing: Any = (1.0, 1.0, 1.0),
    origin: Any | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Extract the ``level`` iso-surface of a 3-D grid (NaN = unknown).

    Args:
        volume: 3-D real array, at least 2 points per axis; converted to
            C-contiguous float32. NaN marks unknown points.
        level: iso-value (finite). Points with ``value > level`` are inside.
        spacing: grid step along each array axis (3 positive numbers).
        origin: position of index (0, 0, 0); default (0, 0, 0).
        device: "cpu" (threaded C++) or "cuda".

    Returns:
        (vertices float32 (V, 3), faces int64 (F, 3), normals float32 (V, 3),
        values float32 (V,)), conventions in the module docstring.

    Raises:
        InputError: volume not 3-D, smaller than 2x2x2, not real-valued;
            level not finite; bad spacing/origin; unknown device.
        BackendUnavailable: device="cuda" cannot be used here.
    """
    arr = np.asarray(volume)
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"volume: expected a real-valued (float/int) array, got dtype {arr.dtype}"
        )
    if arr.ndim != 3:
        raise InputError(f"volume: expected a 3-D array, got {arr.ndim}-D with shape {arr.shape}")
    if min(arr.shape) < 2:
        raise InputError(f"volume: expected at least 2x2x2 points, got shape {arr.shape}")
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.number)):
        raise InputError(f"level: expected a finite number, got {level!r}")
    if not np.isfinite(level) or not np.isfinite(np.float32(level)):
        raise InputError(f"level: expected a finite number, got {level!r}")
    sp = _triple(spacing, "spacing")
    if min(sp) <= 0:
        raise InputError(f"spacing: expected 3 positive numbers, got {spacing!r}")
    org = (0.0, 0.0, 0.0) if origin is None else _triple(origin, "origin")
    mod = native.kernels(device)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        # Finite values beyond the float32 range stay finite (clipped) instead
        # of overflowing to inf, which would mark them unknown.
        f32max = float(np.finfo(np.float32).max)
        arr = np.clip(arr, -f32max, f32max, where=np.isfinite(arr), out=arr.copy())
    vol = np.ascontiguousarray(arr, dtype=np.float32)
    return mod.marching_cubes(vol, float(np.float32(level)), sp, org)
