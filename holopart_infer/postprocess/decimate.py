"""Mesh decimation: merge coincident vertices, then quadric edge collapse (fast-simplification)."""
from __future__ import annotations

import logging

import numpy as np

from holopart_infer.postprocess.cleanup import drop_duplicate_faces
from holopart_infer.errors import InputError

log = logging.getLogger("holopart_infer")


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a triangle mesh to at most ``target_faces`` faces.

    The work happens with the mesh scaled to [-1, 1], so the result does not
    depend on the unit (1e-9 and 1e30 give the same shape, scaled). Coincident
    vertices are merged first (marching cubes and per-chunk meshes
    repeat vertices, which would leave seams open to the simplifier), then
    fast-simplification's quadric edge collapse runs, then faces it left on the
    same three vertices as another face (collapsed "fins", which make a closed
    mesh non-manifold) are dropped. The collapse can still pinch a closed mesh
    into a non-manifold one in rare places (see
    :func:`holopart_infer.postprocess.cleanup.edge_manifold`). A mesh that already has
    ``<= target_faces`` faces is returned unchanged.

    Args:
        vertices: (V, 3) float array.
        faces: (F, 3) int array.
        target_faces: maximum face count of the result, > 0.

    Returns:
        ``(vertices (V', 3), faces (F', 3) int64)`` with ``F' <= target_faces``
        (if the simplifier cannot get there, e.g. for tiny targets, the
        closest result is returned and a warning logged); vertices keep the
        input's float dtype.

    Raises:
        InputError: ``target_faces`` is not a positive integer, or bad arrays.
    """
    if isinstance(target_faces, bool) or not isinstance(target_faces, (int, np.integer)) or target_faces <= 0:
        raise InputError(f"target_faces must be an integer > 0, got {target_faces!r}")
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or v.dtype.kind != "f":
        raise InputError(f"vertices must be a float (V, 3) array, got shape {v.shape} dtype {v.dtype}")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
        raise InputError(f"faces must be an integer (F, 3) array, got shape {f.shape} dtype {f.dtype}")
    if len(f) <= target_faces:
        return v, f.astype(np.int64, copy=False)

    import fast_simplification

    # in a frame where the mesh spans [-1, 1]: the merge tolerance (trimesh's 1e-8) and the rounding
    # key (int64) then mean the same at any unit (1e-9 or 1e30 would merge everything or overflow)
    vv = v.astype(np.float64)
    lo, hi = vv.min(axis=0), vv.max(axis=0)
    center, scale = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    if not (np.isfinite(center).all() and np.isfinite(scale)):
        raise InputError(f"vertices must be finite, got bounds {lo} .. {hi}")
    if scale <= 0:
        scale = 1.0
    vv, ff = merge_coincident((vv - center) / scale, f.astype(np.int64))
    # quadric collapse can stop slightly above the target; retry a few times, then cut harder
    goal = int(target_faces)
    for _ in range(4):
        if len(ff) <= target_faces:
            break
        vv, ff = fast_simplification.simplify(vv, ff, target_count=min(goal, len(ff) - 1))
        ff = np.asarray(ff, dtype=np.int64).reshape(-1, 3)
        goal = max(1, int(goal * 0.9))
    ff = drop_duplicate_faces(ff)
    if len(ff) > target_faces:
        # not worth failing a whole completion over: keep the closest result
        log.warning("decimation stopped at %d faces, above the target %d", len(ff), target_faces)
    log.debug("decimated %d -> %d faces", len(f), len(ff))
    return np.asarray(np.asarray(vv) * scale + center, dtype=v.dtype), ff



def merge_coincident(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position, as ``trimesh.Trimesh.merge_vertices()`` does
    (positions rounded to trimesh's merge tolerance, first occurrence kept, unreferenced
    vertices dropped), on plain arrays: a Trimesh object is a reference cycle, so its
    arrays would wait for the garbage collector after every decimated part."""
    from trimesh import util
    from trimesh.constants import tol
    from trimesh.grouping import unique_rows

    if len(vertices) == 0:
        return vertices, faces
    referenced = np.zeros(len(vertices), dtype=bool)
    if len(faces):
        referenced[faces] = True
    else:
        referenced[:] = True
    key = (vertices * (10 ** util.decimal_to_digits(tol.merge))).round().astype(np.int64)
    u, i = unique_rows(key[referenced], keep_order=True)
    inverse = np.zeros(len(vertices), dtype=np.int64)
    inverse[referenced] = i
    keep = np.nonzero(referenced)[0][u]
    return vertices[keep], inverse[faces.reshape(-1)].reshape((-1, 3))
