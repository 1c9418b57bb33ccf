"""Mesh clean-up after extraction: drop small disconnected pieces ("floaters"),
drop coincident faces, check closedness by edges.

A sampled latent can put small blobs of positive occupancy away from the part;
marching cubes turns each into a separate closed piece. The reference keeps
them. :func:`remove_floaters` keeps every connected component whose surface area
is at least ``min_fraction`` of the largest component's, so a part that is
legitimately made of several similar pieces keeps them all.
"""
from __future__ import annotations

import numpy as np

from holopart_infer.errors import InputError

__all__ = ["connected_components", "remove_floaters", "drop_duplicate_faces", "edge_manifold"]


def connected_components(faces: np.ndarray, num_vertices: int) -> tuple[int, np.ndarray]:
    """Components of faces that share a vertex: ``(count, label per face)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    f = np.asarray(faces, dtype=np.int64)
    if len(f) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    count, vertex_label = cc(graph, directed=False)
    face_label = vertex_label[f[:, 0]]
    # renumber to 0..k-1 over the labels faces actually use (isolated vertices are labelled
    # too), in label order: a mask and a running count, linear (no sort)
    used = np.zeros(count, dtype=bool)
    used[face_label] = True
    new_label = np.cumsum(used) - 1
    return int(used.sum()), new_label[face_label].astype(np.int64)


def remove_floaters(vertices: np.ndarray, faces: np.ndarray,
                    min_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Keep the components with area >= ``min_fraction`` x the largest component's area.

    Vertices are shared between faces of one component (marching-cubes output
    is); unused vertices are dropped and faces re-indexed. ``min_fraction`` 0
    returns the input unchanged.

    Raises:
        InputError: ``min_fraction`` outside [0, 1], or bad arrays.
    """
    if not (isinstance(min_fraction, (int, float, np.floating)) and 0.0 <= float(min_fraction) <= 1.0):
        raise InputError(f"min_fraction must be a number in [0, 1], got {min_fraction!r}")
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"vertices must be a (V, 3) array, got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"faces must be an (F, 3) array, got shape {f.shape}")
    if min_fraction == 0 or len(f) == 0:
        return v, f
    count, label = connected_components(f, len(v))
    if count <= 1:
        return v, f
    tri = v[f].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    comp_area = np.bincount(label, weights=area, minlength=count)
    keep_comp = comp_area >= float(min_fraction) * comp_area.max()
    kept = f[keep_comp[label]]
    used = np.flatnonzero(np.bincount(kept.reshape(-1), minlength=len(v)))  # ascending, no sort
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return v[used], remap[kept].astype(f.dtype, copy=False)


def drop_duplicate_faces(faces: np.ndarray) -> np.ndarray:
    """Faces without those whose vertex set occurs more than once (all copies go:
    a pair of coincident faces is a zero-volume fin, not surface)."""
    f = np.asarray(faces)
    if len(f) == 0:
        return f
    s = np.sort(f.astype(np.int64, copy=False), axis=1)
    if s.min() >= 0 and s.max() < 1 << 21:
        # one 63-bit key per vertex set (3 x 21 bits): a 1-D sort, ~10x faster than
        # np.unique(axis=0)'s row sort (benchmarks/bench_postprocess.py)
        key = (s[:, 0] << 42) | (s[:, 1] << 21) | s[:, 2]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:  # outside the key's range: the general (slower) row count
        _, inverse, counts = np.unique(s, axis=0, return_inverse=True, return_counts=True)
    keep = counts[inverse.reshape(-1)] == 1
    return f if keep.all() else f[keep]


def edge_manifold(faces: np.ndarray) -> bool:
    """True when every edge is shared by exactly two faces (a closed 2-manifold by edges).

    One 64-bit key per undirected edge (low vertex << 32 | high vertex), sorted:
    closed means the sorted keys come in equal pairs and consecutive pairs differ.
    """
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return False
    if f.min() < 0 or f.max() >= 1 << 31:  # outside the key's range: the general (slower) count
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        _, counts = np.unique(e, axis=0, return_counts=True)
        return bool((counts == 2).all())
    a = f.reshape(-1)
    b = f[:, [1, 2, 0]].reshape(-1)
    key = (np.minimum(a, b) << 32) | np.maximum(a, b)
    if len(key) % 2:  # an odd number of edge uses cannot pair up
        return False
    key.sort()
    return bool((key[0::2] == key[1::2]).all() and (key[2::2] != key[1:-1:2]).all())
