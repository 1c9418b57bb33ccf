"""Access to the compiled kernels (``holopart_infer._cpp`` and ``holopart_infer._cuda``).

``_cpp`` is always built; ``_cuda`` only when CMake found a CUDA compiler at
build time. Every function takes ``device="cpu" | "cuda"``; both devices give
the same results (FPS and band/refine indices bit for bit, marching-cubes
vertices and faces in the same order; normals may differ in the last bits
because the GPU sums them with atomics).

Asking for ``"cuda"`` (or ``"cuda:N"``) where the CUDA module was not built or
no GPU is usable raises :class:`~holopart_infer.errors.BackendUnavailable`
(never a silent CPU fallback). When the CUDA module exists on disk but fails to
import (a missing runtime library, an architecture mismatch) the import error
is kept and :func:`cuda_status` says it; with ``HOLOPART_EXPECT_CUDA=1`` in the
environment (the device check sets it) that failure is logged as an error.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import Any

import numpy as np

from holopart_infer.errors import BackendUnavailable, InputError

__all__ = [
    "DEVICES",
    "built_with_cuda",
    "cuda_available",
    "cuda_status",
    "normalize_device",
    "kernels",
    "farthest_point_sampling",
    "band_cells",
    "dilate_cells",
    "refine_points",
    "host_kernels",
    "face_sign_changes",
    "near_band",
    "unique_cells",
    "corner_points",
    "sorted_member",
    "sparse_merge",
    "sparse_grid",
    "winding_numbers",
]

logger = logging.getLogger("holopart_infer")

DEVICES = ("cpu", "cuda")

_INSTALL_HINT = (
    "Reinstall holopart-infer from source on a machine where `nvcc` is on PATH "
    "(pip install --no-build-isolation -e .), then check "
    "holopart_infer.extraction.native.built_with_cuda()."
)

_modules: dict[str, ModuleType | None] = {}
_import_errors: dict[str, str] = {}


def _expect_cuda() -> bool:
    return os.environ.get("HOLOPART_EXPECT_CUDA", "").strip().lower() in ("1", "true", "yes", "on")


def _load(name: str) -> ModuleType | None:
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"holopart_infer.{name}")
        except ImportError as e:
            built = importlib.util.find_spec(f"holopart_infer.{name}") is not None
            _import_errors[name] = (f"holopart_infer.{name} exists but failed to import: {type(e).__name__}: {e}"
                                    if built else f"holopart_infer.{name} was not built")
            if name == "_cuda" and (built or _expect_cuda()):
                # a module on disk that does not import, or a missing one where CUDA was
                # expected, is a broken install: say so where it is seen
                logger.error("%s", _import_errors[name])
            else:
                logger.debug("%s", _import_errors[name])
            _modules[name] = None
    return _modules[name]


def normalize_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a device string; ``"cuda:0"`` (torch's spelling) is "cuda".

    The kernels run on the current CUDA device; an index other than 0 is accepted
    only when it is the one torch/CUDA has current, which this function cannot
    check, so it is passed through as "cuda".

    Raises:
        InputError: not "cpu", "cuda" or "cuda:N".
    """
    d = str(device).strip().lower()
    if d in DEVICES:
        return d
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda"
    raise InputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _cpu() -> ModuleType:
    mod = _load("_cpp")
    if mod is None:
        raise BackendUnavailable(
            "The compiled CPU kernels (holopart_infer._cpp) are missing: the package was not "
            "built. Install it with: pip install --no-build-isolation -e . (needs a C++17 "
            "compiler, CMake and pybind11)."
        )
    return mod


def built_with_cuda() -> bool:
    """Whether the CUDA kernels module (``holopart_infer._cuda``) was built and imports."""
    return _load("_cuda") is not None


def cuda_available() -> bool:
    """Whether the CUDA kernels can run here: module built, driver present, >= 1 GPU.

    Never raises (a missing driver only makes this return False).
    """
    mod = _load("_cuda")
    if mod is None:
        return False
    try:
        return int(mod.device_count()) > 0
    except Exception as e:  # pragma: no cover - defensive: a broken driver install
        logger.debug("CUDA device query failed: %s", e)
        return False


def cuda_status() -> str:
    """One line saying whether the CUDA kernels are usable, and if not why."""
    mod = _load("_cuda")
    if mod is None:
        reason = _import_errors.get("_cuda", "")
        if "failed to import" in reason:
            return f"CUDA kernels unusable: {reason}"
        return ("CUDA kernels not built (the build found no working CUDA compiler, or "
                "HOLOPART_CUDA=OFF); rebuild with -C cmake.define.HOLOPART_CUDA=ON to see why")
    n = int(mod.device_count())
    if n > 0:
        return f"CUDA kernels usable ({n} device(s))"
    return f"CUDA kernels built but no usable GPU: {mod.device_status()}"


def kernels(device: str) -> Any:
    """The kernel module for ``device`` ("cpu" or "cuda").

    Raises:
        InputError: ``device`` is not "cpu" or "cuda".
        BackendUnavailable: "cuda" requested but not built or no usable GPU.
    """
    if not isinstance(device, str):
        raise InputError(f"device: expected one of {DEVICES}, got {device!r}")
    try:
        device = normalize_device(device)
    except InputError:
        raise InputError(f"device: expected one of {DEVICES} (or 'cuda:N'), got {device!r}") from None
    if device == "cpu":
        return _cpu()
    if device == "cuda":
        mod = _load("_cuda")
        if mod is None:
            raise BackendUnavailable(
                f"device='cuda' requested but the CUDA kernels are unusable: {cuda_status()}. " + _INSTALL_HINT
            )
        if int(mod.device_count()) <= 0:
            raise BackendUnavailable(
                "device='cuda' requested but no CUDA GPU is usable here "
                f"({mod.device_status()}). Use device='cpu' or run on a machine with an "
                "NVIDIA GPU and driver."
            )
        return mod
    raise InputError(f"device: expected one of {DEVICES}, got {device!r}")


def _as_points(xyz: Any, name: str) -> np.ndarray:
    arr = np.asarray(xyz)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected a real-valued (N, 3) array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{name}: expected shape (N, 3), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: expected finite coordinates, got NaN or inf")
    return arr


def farthest_point_sampling(xyz: Any, k: int, *, device: str = "cpu") -> np.ndarray:
    """Farthest point sampling.

    Starts at index 0; each step adds the point whose squared Euclidean
    distance (float32, ``(dx*dx + dy*dy) + dz*dz``) to the chosen set is
    largest, ties going to the lowest index.

    Args:
        xyz: (N, 3) coordinates (converted to float32).
        k: number of points to pick, 1 <= k <= N.
        device: "cpu" or "cuda".

    Returns:
        int64 (k,) indices into ``xyz``.

    Raises:
        InputError: bad shape/dtype, non-finite coordinates, k out of range.
        BackendUnavailable: device="cuda" cannot be used here.
    """
    pts = _as_points(xyz, "xyz")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"k: expected an int, got {type(k).__name__}")
    if not 1 <= int(k) <= pts.shape[0]:
        raise InputError(f"k: expected 1 <= k <= N = {pts.shape[0]}, got {k}")
    return kernels(device).farthest_point_sampling(pts, int(k))


def _as_grid(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise InputError(f"{name}: expected a 3-D grid with >= 2 points per axis, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise InputError(f"{name}: expected a floating-point grid, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def band_cells(values: Any, band: float, *, device: str = "cpu") -> np.ndarray:
    """Cells near the zero level of a grid of logits (NaN = unknown).

    A cell (8 corner points) is in the band when one of its known corners has
    ``|value| < band`` or its known corners do not all have the same sign
    (``> 0`` vs ``<= 0``), which covers sign changes between 6-neighbours.

    Args:
        values: float (X+1, Y+1, Z+1) grid of point values.
        band: half-width of the band in logit units (> 0).
        device: "cpu" or "cuda".

    Returns:
        uint8 (X, Y, Z) mask of band cells.
    """
    grid = _as_grid(values, "values")
    if not np.isfinite(band) or band < 0:
        raise InputError(f"band: expected a finite value >= 0, got {band}")
    return kernels(device).band_cells(grid, float(band))


def dilate_cells(cells: Any, radius: int = 1, *, device: str = "cpu") -> np.ndarray:
    """Box dilation (26-neighbourhood, ``radius`` cells) of a uint8/bool cell mask."""
    arr = np.asarray(cells)
    if arr.ndim != 3:
        raise InputError(f"cells: expected a 3-D mask, got shape {arr.shape}")
    if int(radius) < 0:
        raise InputError(f"radius: expected >= 0, got {radius}")
    return kernels(device).dilate_cells(np.ascontiguousarray(arr, dtype=np.uint8), int(radius))


def refine_points(
    cells: Any, coarse_values: Any | None = None, *, device: str = "cpu"
) -> np.ndarray:
    """Points of the next (twice finer) grid to evaluate.

    The finer grid has ``2 * X + 1`` points along an axis of X coarse cells;
    fine point ``f`` sits at coarse coordinate ``f / 2``. Every corner of the
    eight fine cells of each active coarse cell is listed, except (when
    ``coarse_values`` is given) points coinciding with a known coarse point.

    Args:
        cells: (X, Y, Z) mask of active coarse cells.
        coarse_values: optional (X+1, Y+1, Z+1) coarse values (NaN = unknown).
        device: "cpu" or "cuda".

    Returns:
        int64 ascending C-order linear indices into the (2X+1, 2Y+1, 2Z+1) grid.
    """
    mask = np.asarray(cells)
    if mask.ndim != 3:
        raise InputError(f"cells: expected a 3-D mask, got shape {mask.shape}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    cv = None
    if coarse_values is not None:
        cv = _as_grid(coarse_values, "coarse_values")
        expected = tuple(s + 1 for s in mask.shape)
        if cv.shape != expected:
            raise InputError(f"coarse_values: expected shape {expected}, got {cv.shape}")
    return kernels(device).refine_points(mask, cv)


# ---------------------------------------------------------------------------
# The final level's host work (extract._grow_final and extract._Sparse).
#
# Each function runs the threaded C++ kernel of ``_cpp`` (cpp_ext/src/
# final_level.cpp) and falls back to its numpy reference (``_np_*`` below, the
# implementation extract.py had) where the module is missing or was built before
# these kernels existed. The outputs are integer, boolean or index arrays (or
# values copied, never computed), so both give the same arrays bit for bit
# (tests/native/test_final_level.py). Set ``use_host_kernels = False`` to run the
# numpy references (benchmarks compare the two in one process).

#: False: the final-level helpers below run their numpy references.
use_host_kernels = True


def host_kernels() -> ModuleType | None:
    """The CPU module when it has the final-level kernels and they are enabled, else None."""
    if not use_host_kernels:
        return None
    mod = _load("_cpp")
    return mod if mod is not None and hasattr(mod, "sparse_grid") else None


def _cells(cells: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(cells, dtype=np.int64).reshape(-1, 3))


def _np_sparse_values(coarse: np.ndarray, idx: np.ndarray, val: np.ndarray, n: int,
                      ijk: np.ndarray) -> np.ndarray:
    even = (ijk & 1).sum(axis=-1) == 0
    out = np.full(ijk.shape[:-1], np.nan, dtype=np.float32)
    e = ijk[even] >> 1
    out[even] = coarse[e[:, 0], e[:, 1], e[:, 2]]
    odd = ijk[~even]
    lin = (odd[:, 0] * n + odd[:, 1]) * n + odd[:, 2]
    if len(lin) and len(idx):
        pos = np.minimum(np.searchsorted(idx, lin), len(idx) - 1)
        hit = idx[pos] == lin
        vals = np.full(len(lin), np.nan, dtype=np.float32)
        vals[hit] = val[pos[hit]]
        out[~even] = vals
    return out


def _np_face_sign_changes(coarse: np.ndarray, idx: np.ndarray, val: np.ndarray, n: int,
                          cells: np.ndarray, axis: int, side: int) -> np.ndarray:
    base = 2 * cells
    base[:, axis] += 2 * side
    o = np.arange(3)
    other = [a for a in range(3) if a != axis]
    offs = np.zeros((9, 3), dtype=np.int64)
    offs[:, other[0]] = np.repeat(o, 3)
    offs[:, other[1]] = np.tile(o, 3)
    inside = _np_sparse_values(coarse, idx, val, n, base[:, None, :] + offs[None, :, :]) > 0.0  # (N, 9)
    return inside.any(axis=1) & ~inside.all(axis=1)


def face_sign_changes(coarse: Any, idx: Any, val: Any, n: int, cells: Any, axis: int, side: int) -> np.ndarray:
    """(N,) bool: do the 3 x 3 fine points on face ``side`` (0: low, 1: high) along
    ``axis`` of each coarse cell of ``cells`` (N, 3) not all have one sign (> 0)?

    Fine values: ``coarse`` (the previous level's grid) on the coarse lattice (all
    indices even), else the ascending linear indices ``idx`` into the ``n``-point
    fine grid and their values ``val``; NaN (unknown) counts as not inside.
    """
    cells = _cells(cells)
    mod = host_kernels()
    if mod is None:
        return _np_face_sign_changes(np.asarray(coarse), np.asarray(idx), np.asarray(val), int(n), cells.copy(),
                                     int(axis), int(side))
    return mod.face_sign_changes(coarse, idx, val, int(n), cells, int(axis), int(side)).view(bool)


def _np_near_band(band: np.ndarray, cells: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros(len(cells), dtype=bool)
    if not len(cells):
        return out
    shape = np.asarray(band.shape)
    rng = range(-int(radius), int(radius) + 1)
    for o in ((a, b, c) for a in rng for b in rng for c in rng):
        q = cells + np.asarray(o)
        ok = ((q >= 0) & (q < shape)).all(axis=1) & ~out
        out[ok] = band[q[ok, 0], q[ok, 1], q[ok, 2]]
    return out


def near_band(band: Any, cells: Any, radius: int) -> np.ndarray:
    """(N,) bool: is each of ``cells`` (N, 3) within ``radius`` cells
    (26-neighbourhood) of a set cell of the bool/uint8 mask ``band``?"""
    cells = _cells(cells)
    band = np.asarray(band)
    mod = host_kernels()
    if mod is None:
        return _np_near_band(band.astype(bool, copy=False), cells, int(radius))
    u8 = band.view(np.uint8) if band.dtype == bool else band.astype(np.uint8, copy=False)
    return mod.near_band(np.ascontiguousarray(u8), cells, int(radius)).view(bool)


def _np_unique_cells(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lin = np.unique(np.ravel_multi_index(cells.T, shape))
    return np.stack(np.unravel_index(lin, shape), axis=1).astype(np.int64)


def unique_cells(cells: Any, shape: tuple[int, ...]) -> np.ndarray:
    """(M, 3) int64: the distinct cells of ``cells`` (N, 3) in a grid of ``shape``
    cells, in C order (as np.argwhere of their mask lists them)."""
    cells = _cells(cells)
    mod = host_kernels()
    if mod is None:
        return _np_unique_cells(cells, tuple(shape))
    try:
        return mod.unique_cells(cells, tuple(int(s) for s in shape))
    except ValueError as e:  # the same error numpy raises for a cell outside the grid
        raise ValueError(f"invalid entry in coordinates array ({e})") from None


_CORNERS27 = np.stack(np.meshgrid(np.arange(3), np.arange(3), np.arange(3), indexing="ij"), -1).reshape(-1, 3)


def _np_corner_points(cells: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    n = 2 * (np.asarray(coarse.shape, np.int64) - 1) + 1
    fine = (2 * cells[:, None, :] + _CORNERS27[None]).reshape(-1, 3)
    lin = np.unique((fine[:, 0] * n[1] + fine[:, 1]) * n[2] + fine[:, 2])
    i, j, k = lin // (n[1] * n[2]), (lin // n[2]) % n[1], lin % n[2]
    on_coarse = ((i | j | k) & 1) == 0
    known = np.zeros(len(lin), dtype=bool)
    known[on_coarse] = np.isfinite(coarse[i[on_coarse] >> 1, j[on_coarse] >> 1, k[on_coarse] >> 1])
    return lin[~known]


def corner_points(cells: Any, coarse: Any) -> np.ndarray:
    """:func:`refine_points` of a mask holding only ``cells`` (N, 3), from the cell
    list: ascending fine indices of the corners of their eight sub-cells, less
    those on a known coarse point of ``coarse`` (the cells' grid of points)."""
    cells = _cells(cells)
    mod = host_kernels()
    if mod is None:
        return _np_corner_points(cells, np.asarray(coarse))
    return mod.corner_points(cells, _as_grid(coarse, "coarse"))


def sorted_member(sorted_idx: Any, q: Any) -> np.ndarray:
    """(Q,) bool: is each of ``q`` in the ascending int64 array ``sorted_idx``?"""
    sorted_idx = np.asarray(sorted_idx, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    mod = host_kernels()
    if mod is None:
        if not len(sorted_idx):
            return np.zeros(len(q), dtype=bool)
        pos = np.minimum(np.searchsorted(sorted_idx, q), len(sorted_idx) - 1)
        return sorted_idx[pos] == q
    return mod.sorted_member(sorted_idx, q).view(bool)


def sparse_merge(idx: Any, val: Any, add_idx: Any, add_val: Any) -> tuple[np.ndarray, np.ndarray]:
    """Merge the ascending (index, value) lists ``add_*`` (no index in ``idx``)
    into ``idx``/``val``: new ascending int64 and float32 arrays, in linear time."""
    idx, add_idx = np.asarray(idx, np.int64), np.asarray(add_idx, np.int64)
    val, add_val = np.asarray(val, np.float32), np.asarray(add_val, np.float32)
    if not len(idx):
        return add_idx.copy(), add_val.copy()
    mod = host_kernels()
    if mod is None:
        at = np.searchsorted(idx, add_idx) + np.arange(len(add_idx))  # where each new point lands
        old = np.ones(len(idx) + len(add_idx), dtype=bool)
        old[at] = False
        out_i = np.empty(len(old), dtype=np.int64)
        out_v = np.empty(len(old), dtype=np.float32)
        out_i[at], out_v[at] = add_idx, add_val
        out_i[old], out_v[old] = idx, val
        return out_i, out_v
    return tuple(mod.sparse_merge(idx, val, add_idx, add_val))  # type: ignore[return-value]


def sparse_grid(coarse: Any, idx: Any, val: Any, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """The dense (n, n, n) float32 final grid of a sparse part: NaN, the coarse
    grid on every second point, then ``val`` at the linear indices ``idx``; in
    ``out`` when given (C-contiguous float32)."""
    n = int(n)
    fine = out if out is not None else np.empty((n,) * 3, dtype=np.float32)
    mod = host_kernels()
    if mod is None or not (fine.dtype == np.float32 and fine.flags.c_contiguous and fine.flags.writeable):
        fine.fill(np.nan)
        fine[::2, ::2, ::2] = coarse
        fine.reshape(-1)[idx] = val
        return fine
    mod.sparse_grid(_as_grid(coarse, "coarse"), np.asarray(idx, np.int64), np.asarray(val, np.float32), n, fine)
    return fine


def _np_winding_numbers(points: np.ndarray, triangles: np.ndarray, chunk_pairs: int = 2_000_000) -> np.ndarray:
    out = np.empty(len(points))
    step = max(1, chunk_pairs // max(1, len(triangles)))
    for s in range(0, len(points), step):
        rel = triangles[None] - points[s:s + step, None, None, :]  # (q, F, 3 corners, 3)
        a, b, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("qfk,qfk->qf", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("qfk,qfk->qf", a, b) * lc + np.einsum("qfk,qfk->qf", b, c) * la
               + np.einsum("qfk,qfk->qf", c, a) * lb)
        out[s:s + step] = np.arctan2(det, den).sum(axis=1) / (2 * np.pi)
    return out


def winding_numbers(points: Any, triangles: Any) -> np.ndarray:
    """Generalized winding number (Q,) float64 of points (Q, 3) with respect to
    triangles (F, 3, 3) (corner coordinates): 1 inside a closed outward-facing
    surface, 0 outside, about 0.5 across a hole. Threaded C++ (cpp_ext
    ``winding.cpp``, O(Q F)); the numpy fallback gives the same values to
    rounding."""
    p = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    t = np.ascontiguousarray(np.asarray(triangles, dtype=np.float64))
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"winding_numbers: points must have shape (Q, 3), got {p.shape}")
    if t.ndim != 3 or t.shape[1:] != (3, 3):
        raise InputError(f"winding_numbers: triangles must have shape (F, 3, 3), got {t.shape}")
    mod = host_kernels()
    if mod is None or not hasattr(mod, "winding_numbers"):
        return _np_winding_numbers(p, t)
    return np.asarray(mod.winding_numbers(p, t))
