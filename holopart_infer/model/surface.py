"""Area-weighted uniform samples on triangle meshes.

The lowest geometry layer of the input side: :mod:`holopart_infer.model.conditioning`
samples the parts and the whole object with it, :mod:`holopart_infer.io.appearance`
samples an input part to carry its colours over, and the quality and export
code measure surfaces with it. numpy only.
"""
from __future__ import annotations

import numpy as np

from holopart_infer.errors import InputError


#: faces whose corner and cross-product arrays are made at once while sampling: bounds the
#: temporaries (about 100 bytes a face) however large the input mesh
_FACE_CHUNK = 1 << 20


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle, (F,) float64 (0 for degenerate ones; empty for no faces)."""
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros(0)
    tri = np.asarray(vertices, dtype=np.float64)[f]
    with np.errstate(all="ignore"):
        return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        vertices: (V, 3) float array.
        faces: (F, 3) int array.
        n: number of samples.
        rng: numpy Generator (consumes ``n`` uniforms for face choice, then
            ``2n`` for barycentric coordinates).

    Returns:
        points (n, 3) float64, unit face normals (n, 3) float64, face index (n,) int64.

    Raises:
        InputError: the mesh has no surface area.
    """
    return sample_pieces([(vertices, faces)], n, rng)


def sample_pieces(pieces, n: int, rng: np.random.Generator, center=None,
                  scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_surface` of the concatenation of several meshes, without concatenating them.

    Args:
        pieces: ``(vertices (V, 3), faces (F, 3))`` pairs; the mesh sampled is
            their concatenation (face index ``k`` of piece ``j`` is face
            ``sum(F of pieces before j) + k``).
        n, rng: as :func:`sample_surface` (same draws, same result as sampling
            the concatenated mesh).
        center, scale: vertices are first mapped to ``(v - center) / scale``.

    Only the face areas (8 bytes a face) are held for all faces; corner and
    cross-product arrays are made ``_FACE_CHUNK`` faces at a time and again
    for the ``n`` chosen faces.
    """
    center = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)

    def corners(v, f):
        a = (v[f[:, 0]] - center) / scale
        e1 = (v[f[:, 1]] - center) / scale - a
        e2 = (v[f[:, 2]] - center) / scale - a
        return a, e1, e2, np.cross(e1, e2)

    pieces = [(np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)) for v, f in pieces]
    sizes = [len(f) for _, f in pieces]
    double_area = np.empty(sum(sizes), dtype=np.float64)
    at = 0
    for v, f in pieces:
        for s in range(0, len(f), _FACE_CHUNK):
            cross = corners(v, f[s:s + _FACE_CHUNK])[3]
            double_area[at:at + len(cross)] = np.linalg.norm(cross, axis=1)
            at += len(cross)
    cum = np.cumsum(double_area)
    if len(cum) == 0 or not cum[-1] > 0:
        raise InputError("cannot sample a mesh with no surface area")
    # side="right" never picks a zero-area face (its cumulative value equals its predecessor's)
    face_idx = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    del cum
    face_idx = np.minimum(face_idx, len(double_area) - 1)
    uv = rng.random((n, 2))
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]  # reflect into the triangle: uniform over its area
    points = np.empty((n, 3), dtype=np.float64)
    normals = np.empty((n, 3), dtype=np.float64)
    starts = np.cumsum([0] + sizes)
    owner = np.searchsorted(starts, face_idx, side="right") - 1
    for j, (v, f) in enumerate(pieces):
        sel = np.nonzero(owner == j)[0]
        if not len(sel):
            continue
        a, e1, e2, cross = corners(v, f[face_idx[sel] - starts[j]])
        points[sel] = a + uv[sel, :1] * e1 + uv[sel, 1:] * e2
        normals[sel] = cross / double_area[face_idx[sel], None]
    return points, normals, face_idx


class SurfaceDistance:
    """Distance to one triangle mesh, for many queries: the surface samples and their KD-tree are
    built once. See :func:`surface_distance`."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
                 samples: int = 20000, candidates: int = 8):
        from scipy.spatial import cKDTree

        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        self.tri = v[f]
        self.area = float(face_areas(v, f).sum())
        self.samples = int(samples)
        self.empty = not self.area > 0
        if self.empty:
            return
        s, _, face_of = sample_surface(v, f, samples, rng)
        s = np.concatenate([s, self.tri.mean(axis=1)])  # every centroid: small triangles are never missed
        self.face_of = np.concatenate([face_of, np.arange(len(f))])
        self.tree = cKDTree(s)
        self.k = min(candidates, len(s))

    def __call__(self, points: np.ndarray, exact_below: float = np.inf) -> np.ndarray:
        """Distances (Q,); only points whose nearest sample is closer than ``exact_below`` get the
        exact triangle distance, the others their nearest sample's (an upper bound)."""
        from trimesh.triangles import closest_point

        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.empty:
            return np.full(len(points), np.inf)
        d_s, idx = self.tree.query(points, k=self.k, workers=-1)
        d_s = np.asarray(d_s).reshape(len(points), self.k)
        idx = np.asarray(idx).reshape(len(points), self.k)
        out = d_s[:, 0].copy()
        near = np.flatnonzero(out < exact_below)
        if len(near):
            q = np.repeat(points[near], self.k, axis=0)
            c = closest_point(self.tri[self.face_of[idx[near]].reshape(-1)], q)
            d = np.linalg.norm(c - q, axis=1).reshape(len(near), self.k).min(axis=1)
            out[near] = np.minimum(d, out[near])
        return out


def surface_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
                     samples: int = 20000, candidates: int = 8) -> np.ndarray:
    """Distance (Q,) of each point (Q, 3) to the triangle mesh (vertices, faces); inf for a mesh
    without area.

    Exact to the triangles of the ``candidates`` nearest of ``samples`` area-weighted surface
    samples (plus every triangle's centroid, so small triangles are never missed), so never more
    than the distance to the nearest sample. Cost: one KD-tree and ``Q * candidates``
    point-triangle distances, linear in the mesh size.
    """
    return SurfaceDistance(vertices, faces, rng, samples, candidates)(points)
