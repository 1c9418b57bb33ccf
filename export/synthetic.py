"""Synthetic part assemblies for training holopart-mini (issue 8).

An object is 2-6 watertight primitives (boxes, cylinders, spheres, capsules,
tori, cones from ``trimesh.creation``) arranged by a template (table, chair,
lamp, mug, shelf, dumbbell) with random proportions, so that parts touch,
interpenetrate and hide each other. Per part we keep

* ``mesh``: the complete watertight solid (the training target), and
* ``visible``: a face mask, True for faces seen from at least one of many
  cameras on a sphere around the assembly (ray casting against every part);
  the visible faces form the surface patch HoloPart gets as input.

Everything is deterministic in the seed: ``make_object(seed)`` and
``iter_dataset(seed, n)`` (object i uses ``SeedSequence([seed, i])``).

Training targets: :func:`sample_occupancy` labels query points (near-surface
plus uniform) inside/outside a complete part with generalized winding numbers
(exact for watertight meshes, no ray-tracing backend needed).

No optional trimesh backends are needed (no rtree / embree): the ray tests
and winding numbers are vectorized numpy here.

The object frame: each object is normalized so its bounding box is centred at
the origin with its longest side spanning [-1, 1] (the model frame of
:mod:`holopart_infer.model.conditioning`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import trimesh
from trimesh import creation

TEMPLATES = ("table", "chair", "lamp", "mug", "shelf", "dumbbell")
CONVEX_PRIMITIVES = {"box", "cylinder", "sphere", "capsule", "cone"}
DEFAULT_VIEWS = 32
MIN_VISIBLE_FRACTION = 0.02  # parts seen less than this (by area) are dropped from an object


# ----------------------------------------------------------------------------- data


@dataclass
class SyntheticPart:
    """One part: complete watertight solid and the mask of its visible faces."""

    name: str
    primitive: str
    mesh: trimesh.Trimesh
    visible: np.ndarray  # (F,) bool

    @property
    def convex(self) -> bool:
        return self.primitive in CONVEX_PRIMITIVES

    @property
    def visible_fraction(self) -> float:
        """Visible share of the part's surface area."""
        a = self.mesh.area_faces
        return float(a[self.visible].sum() / a.sum())

    @property
    def patch(self) -> tuple[np.ndarray, np.ndarray]:
        """The visible surface patch as (vertices, faces) (unused vertices removed)."""
        f = self.mesh.faces[self.visible]
        used, inv = np.unique(f.reshape(-1), return_inverse=True)
        return self.mesh.vertices[used].copy(), inv.reshape(-1, 3).astype(np.int64)


@dataclass
class SyntheticObject:
    template: str
    seed: int | tuple
    parts: list[SyntheticPart] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def patches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [p.patch for p in self.parts]

    def input_parts(self):
        """The segmented input HoloPart sees: a :class:`holopart_infer.io.parts_io.Parts` of the patches."""
        from holopart_infer.io.parts_io import Parts

        return Parts.from_meshes(self.patches(), names=self.names, source=f"synthetic {self.template}")


@dataclass
class OccupancySamples:
    points: np.ndarray  # (Q, 3) float32
    labels: np.ndarray  # (Q,) float32, 1 inside


# ----------------------------------------------------------------------------- primitives


def _place(mesh: trimesh.Trimesh, center, rotation: np.ndarray | None = None) -> trimesh.Trimesh:
    T = np.eye(4)
    if rotation is not None:
        T[:3, :3] = rotation
    T[:3, 3] = center
    mesh.apply_transform(T)
    return mesh


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def box(extents, center, subdivisions: int = 2) -> tuple[str, trimesh.Trimesh]:
    m = creation.box(extents=np.asarray(extents, dtype=np.float64))
    for _ in range(subdivisions):  # finer faces -> finer visible patches
        m = m.subdivide()
    return "box", _place(m, center)


SEGMENT = 0.08  # ring spacing along revolved primitives (template units): finer patches


def _revolve(profile: list, sections: int) -> trimesh.Trimesh:
    """Revolve a (radius, z) profile that starts and ends on the z axis: a closed solid."""
    m = creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)
    if m.volume < 0:
        m.invert()
    return m


def _rings(r0, z0, r1, z1) -> list:
    """Profile points from (r0, z0) to (r1, z1), at most SEGMENT apart, both ends included."""
    n = max(1, int(np.ceil(np.hypot(r1 - r0, z1 - z0) / SEGMENT)))
    return [[r0 + (r1 - r0) * i / n, z0 + (z1 - z0) * i / n] for i in range(n + 1)]


def cylinder(radius, height, center, sections: int = 16, rotation=None) -> tuple[str, trimesh.Trimesh]:
    """Axis along z, centred at ``center``."""
    prof = [[0, -height / 2]] + _rings(radius, -height / 2, radius, height / 2) + [[0, height / 2]]
    return "cylinder", _place(_revolve(prof, sections), center, rotation)


def sphere(radius, center, subdivisions: int = 2) -> tuple[str, trimesh.Trimesh]:
    return "sphere", _place(creation.icosphere(subdivisions=subdivisions, radius=radius), center)


def capsule(radius, height, center, rotation=None, sections: int = 12, arc: int = 6) -> tuple[str, trimesh.Trimesh]:
    """``height`` is the length of the cylindrical middle; axis along z before rotation."""
    a = np.linspace(-np.pi / 2, 0, arc + 1)
    bottom = [[radius * np.cos(t), -height / 2 + radius * np.sin(t)] for t in a]
    top = [[radius * np.cos(t), height / 2 + radius * np.sin(t)] for t in -a[::-1]]
    prof = bottom + _rings(radius, -height / 2, radius, height / 2)[1:-1] + top
    prof[0][0], prof[-1][0] = 0.0, 0.0
    return "capsule", _place(_revolve(prof, sections), center, rotation)


def cone(radius, height, center, rotation=None, sections: int = 16) -> tuple[str, trimesh.Trimesh]:
    """Base disc at local z=0, apex at z=height."""
    prof = [[0, 0]] + _rings(radius, 0, 0, height)
    return "cone", _place(_revolve(prof, sections), center, rotation)


def torus(major, minor, center, rotation=None) -> tuple[str, trimesh.Trimesh]:
    """Ring in the local xy plane."""
    m = creation.torus(major_radius=major, minor_radius=minor, major_sections=20, minor_sections=8)
    return "torus", _place(m, center, rotation)


def cup_shell(radius, height, wall, center, rotation=None, sections: int = 20) -> tuple[str, trimesh.Trimesh]:
    """A hollow cup (open at the top, bottom at local z=0): a closed solid with a thin wall."""
    ri = max(radius - wall, 0.2 * radius)
    prof = ([[0, 0]] + _rings(radius, 0, radius, height) + [[ri, height]]
            + _rings(ri, height, ri, wall)[1:] + [[0, wall]])
    m = creation.revolve(np.asarray(prof, dtype=np.float64)[::-1], sections=sections)
    if m.volume < 0:
        m.invert()
    return "shell", _place(m, center, rotation)


def shade_shell(r_bottom, r_top, height, wall, center, sections: int = 20) -> tuple[str, trimesh.Trimesh]:
    """A thin lamp-shade shell (open at both ends): a frustum wall of thickness ``wall``."""
    prof = (_rings(r_bottom, 0, r_top, height) + _rings(r_top - wall, height, r_bottom - wall, 0)[:-1]
            + [[r_bottom, 0]])
    m = creation.revolve(np.asarray(prof, dtype=np.float64), sections=sections)
    if m.volume < 0:
        m.invert()
    return "shell", _place(m, center)


def bar(p0, p1, radius, sections: int = 10) -> tuple[str, trimesh.Trimesh]:
    """A cylinder from point p0 to p1 (slanted bars)."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    L = float(np.linalg.norm(d))
    R = trimesh.geometry.align_vectors([0, 0, 1], d / L)[:3, :3]
    _, m = cylinder(radius, L, (p0 + p1) / 2, sections=sections, rotation=R)
    return "bar", m


def pieces(*prims) -> tuple[str, trimesh.Trimesh]:
    """Several closed pieces as one part (their union; overlaps count once by winding number)."""
    return "pieces", trimesh.util.concatenate([m for _, m in prims])


# ----------------------------------------------------------------------------- templates
# Each returns [(name, (primitive, mesh)), ...] in arbitrary units (z up).


def _legs(rng, w, d, h, inset, make) -> list:
    out = []
    for i, (sx, sy) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        out.append((f"leg_{i}", make(np.array([sx * (w / 2 - inset), sy * (d / 2 - inset)]), h)))
    return out


def _table(rng) -> list:
    w, d = rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.2)
    h, th = rng.uniform(0.6, 1.0), rng.uniform(0.04, 0.1)
    r = rng.uniform(0.03, 0.07)
    round_legs = rng.random() < 0.5

    def leg(xy, hh):  # legs reach into the middle of the top: their top caps are hidden
        top = hh + th / 2
        if round_legs:
            return cylinder(r, top, [xy[0], xy[1], top / 2], sections=12)
        return box([2 * r, 2 * r, top], [xy[0], xy[1], top / 2], subdivisions=1)

    parts = [("top", box([w, d, th], [0, 0, h + th / 2]))]
    return parts + _legs(rng, w, d, h, r + rng.uniform(0.0, 0.1), leg)


def _chair(rng) -> list:
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    h, th = rng.uniform(0.4, 0.5), rng.uniform(0.04, 0.08)
    r = rng.uniform(0.02, 0.04)
    bh = rng.uniform(0.4, 0.7)

    def leg(xy, hh):
        top = hh + th / 2
        return box([2 * r, 2 * r, top], [xy[0], xy[1], top / 2], subdivisions=1)

    bt = rng.uniform(0.03, 0.06)
    parts = [("seat", box([w, d, th], [0, 0, h + th / 2]))]
    parts += _legs(rng, w, d, h, r, leg)
    # back rests on the seat's back edge and reaches into it
    parts.append(("back", box([w, bt, bh + th / 2], [0, d / 2 - bt / 2, h + th / 2 + bh / 2 - th / 4])))
    return parts


def _lamp(rng) -> list:
    rb, hb = rng.uniform(0.25, 0.4), rng.uniform(0.04, 0.08)
    pole_h, pr = rng.uniform(0.8, 1.4), rng.uniform(0.02, 0.04)
    sr, sh = rng.uniform(0.25, 0.45), rng.uniform(0.25, 0.45)
    parts = [("base", cylinder(rb, hb, [0, 0, hb / 2], sections=20)),
             ("pole", cylinder(pr, pole_h, [0, 0, hb / 2 + pole_h / 2], sections=10))]
    top = hb / 2 + pole_h
    # shade: a cone with its base disc below the pole top, apex above (swallows the pole top)
    parts.append(("shade", cone(sr, sh, [0, 0, top - 0.6 * sh])))
    if rng.random() < 0.7:  # a bulb peeking out below the shade
        br = rng.uniform(0.06, 0.1)
        parts.append(("bulb", sphere(br, [0, 0, top - 0.6 * sh], subdivisions=2)))
    return parts


def _mug(rng) -> list:
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.0)
    major, minor = rng.uniform(0.15, 0.25) * h, rng.uniform(0.03, 0.06)
    parts = [("body", cylinder(r, h, [0, 0, h / 2], sections=24)),
             # ring in the xz plane, centred on the body's wall: half of it is inside the body
             ("handle", torus(major, minor, [r, 0, h / 2], rotation=_rot_x(np.pi / 2)))]
    if rng.random() < 0.5:
        parts.append(("saucer", cylinder(r * rng.uniform(1.4, 1.8), 0.04, [0, 0, 0.0], sections=24)))
    return parts


def _shelf(rng) -> list:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(0.8, 1.6)
    t = rng.uniform(0.03, 0.05)
    n = int(rng.integers(2, 5))  # 2..4 boards -> 4..6 parts
    parts = [("side_0", box([t, d, h], [-w / 2, 0, h / 2])), ("side_1", box([t, d, h], [w / 2, 0, h / 2]))]
    for i, z in enumerate(np.linspace(t / 2 + 0.02, h - t / 2, n)):
        # boards reach into the sides: their end faces are hidden
        parts.append((f"board_{i}", box([w, d * 0.98, t], [0, 0, z])))
    return parts


def _dumbbell(rng) -> list:
    L, r = rng.uniform(0.6, 1.0), rng.uniform(0.04, 0.08)
    rot = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=np.float64)  # z axis -> x axis
    parts = [("bar", capsule(r, L, [0, 0, 0], rotation=rot))]
    R = rng.uniform(0.15, 0.3)
    for i, s in enumerate((-1, 1)):
        if rng.random() < 0.5:
            parts.append((f"weight_{i}", sphere(R, [s * L / 2, 0, 0])))
        else:
            parts.append((f"weight_{i}", cylinder(R, R, [s * L / 2, 0, 0], sections=20, rotation=rot)))
    return parts


def _cup(rng) -> list:
    """Hollow cup (thin wall) with a handle, sometimes on a saucer."""
    r, h = rng.uniform(0.3, 0.45), rng.uniform(0.5, 0.9)
    wall = rng.uniform(0.03, 0.06)
    major, minor = rng.uniform(0.15, 0.25) * h, rng.uniform(0.03, 0.05)
    parts = [("body", cup_shell(r, h, wall, [0, 0, 0])),
             ("handle", torus(major, minor, [r, 0, h / 2], rotation=_rot_x(np.pi / 2)))]
    if rng.random() < 0.5:
        parts.append(("saucer", cylinder(r * rng.uniform(1.4, 1.8), 0.04, [0, 0, -0.01], sections=24)))
    return parts


def _stool(rng) -> list:
    """Round seat on 3-4 slanted legs; the rungs between the legs are one part of several pieces."""
    rs, th, h = rng.uniform(0.2, 0.35), rng.uniform(0.04, 0.08), rng.uniform(0.5, 0.9)
    n = int(rng.integers(3, 5))
    spread, r = rng.uniform(1.1, 1.6), rng.uniform(0.02, 0.035)
    parts = [("seat", cylinder(rs, th, [0, 0, h + th / 2], sections=20))]
    feet, tops = [], []
    for i in range(n):
        a = 2 * np.pi * i / n + 0.3
        d = np.array([np.cos(a), np.sin(a), 0.0])
        top, foot = d * 0.7 * rs + [0, 0, h + th / 2], d * 0.7 * rs * spread
        tops.append(top)
        feet.append(foot)
        parts.append((f"leg_{i}", bar(foot, top, r)))
    zr = rng.uniform(0.25, 0.45)
    ring = [f + zr * (t - f) for f, t in zip(feet, tops)]
    parts.append(("rungs", pieces(*[bar(ring[i], ring[(i + 1) % n], 0.7 * r) for i in range(n)])))
    return parts


def _shade_lamp(rng) -> list:
    """Table lamp with a thin open shade (a shell), a bulb inside and a slanted arm."""
    rb, hb = rng.uniform(0.2, 0.35), rng.uniform(0.04, 0.08)
    pole_h, pr = rng.uniform(0.5, 1.0), rng.uniform(0.02, 0.035)
    lean = rng.uniform(-0.25, 0.25)
    top = np.array([lean, 0.0, hb / 2 + pole_h])
    parts = [("base", cylinder(rb, hb, [0, 0, hb / 2], sections=20)),
             ("pole", bar([0, 0, hb / 4], top, pr))]
    sb, st, sh = rng.uniform(0.25, 0.4), rng.uniform(0.12, 0.22), rng.uniform(0.2, 0.35)
    parts.append(("shade", shade_shell(sb, st, sh, rng.uniform(0.015, 0.03), top - [0, 0, 0.3 * sh])))
    parts.append(("bulb", sphere(rng.uniform(0.06, 0.1), top, subdivisions=2)))
    return parts


def _bench(rng) -> list:
    """A slatted bench: 4-8 thin slats over two end frames (more parts per object)."""
    w, d, h = rng.uniform(1.2, 2.0), rng.uniform(0.35, 0.5), rng.uniform(0.35, 0.5)
    n = int(rng.integers(4, 9))
    t = rng.uniform(0.02, 0.04)
    sw = d / n * rng.uniform(0.6, 0.85)
    parts = []
    for i, y in enumerate(np.linspace(-d / 2 + sw / 2, d / 2 - sw / 2, n)):
        parts.append((f"slat_{i}", box([w, sw, t], [0, y, h + t / 2], subdivisions=1)))
    ft = rng.uniform(0.04, 0.07)
    for i, x in enumerate((-w / 2 + 0.1, w / 2 - 0.1)):
        parts.append((f"frame_{i}", pieces(box([ft, ft, h + t / 2], [x, -d / 2 + ft, (h + t / 2) / 2], 1),
                                           box([ft, ft, h + t / 2], [x, d / 2 - ft, (h + t / 2) / 2], 1),
                                           box([ft, d, ft], [x, 0, h - ft / 2], 1))))
    return parts


TEMPLATE_FUNCS: dict[str, Callable] = {"table": _table, "chair": _chair, "lamp": _lamp, "mug": _mug,
                                       "shelf": _shelf, "dumbbell": _dumbbell, "cup": _cup, "stool": _stool,
                                       "shade_lamp": _shade_lamp, "bench": _bench}
# shape families added for v2 (issue 22): thin shells and hollow cups, slanted bars, several pieces in
# one part, more parts per object. Only drawn when named (``templates=``), so that the objects of
# existing seeds (test and evaluation sets) do not change.
EXTRA_TEMPLATES = ("cup", "stool", "shade_lamp", "bench")
ALL_TEMPLATES = TEMPLATES + EXTRA_TEMPLATES

# z-up (templates) -> y-up (glTF, HoloPart's frame): (x, y, z) -> (x, z, -y)
#: the up axis of the templates as built (they stand along z); :func:`to_y_up` turns them to +y
SYNTHETIC_UP = "+z"
Z_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def transform_object(obj: "SyntheticObject", M: np.ndarray, normalize: bool = True) -> "SyntheticObject":
    """Apply a 3x3 linear map to every part in place (under a mirror trimesh keeps normals outwards), then renormalize
    to the object frame. Visibility masks are kept (faces keep their indices)."""
    T = np.eye(4)
    T[:3, :3] = M
    for p in obj.parts:
        p.mesh.apply_transform(T)  # trimesh re-orients the faces under a mirror (same face order)
    if normalize:
        normalize_meshes([p.mesh for p in obj.parts])
    return obj


def to_y_up(obj: "SyntheticObject") -> "SyntheticObject":
    """The object turned from the templates' z-up frame to y-up, in place."""
    return transform_object(obj, Z_TO_Y_UP, normalize=False)


# ----------------------------------------------------------------------------- visibility


def fibonacci_sphere(n: int, radius: float = 1.0) -> np.ndarray:
    """n roughly uniform points on a sphere, (n, 3)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return radius * np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)


def _segments_blocked(origins: np.ndarray, ends: np.ndarray, tris: np.ndarray,
                      chunk_pairs: int = 2_000_000) -> np.ndarray:
    """Does any triangle cross the open segment origin->end? Moller-Trumbore, (R,) bool."""
    R, T = len(origins), len(tris)
    blocked = np.zeros(R, dtype=bool)
    if R == 0 or T == 0:
        return blocked
    v0 = tris[:, 0]
    e1 = tris[:, 1] - v0
    e2 = tris[:, 2] - v0
    d = ends - origins
    step = max(1, chunk_pairs // T)
    for s in range(0, R, step):
        o, dd = origins[s:s + step, None, :], d[s:s + step, None, :]
        p = np.cross(dd, e2[None])
        det = np.einsum("rtk,tk->rt", p, e1)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tv = o - v0[None]
        u = np.einsum("rtk,rtk->rt", tv, p) * inv
        q = np.cross(tv, e1[None])
        v = np.einsum("rk,rtk->rt", d[s:s + step], q) * inv
        t = np.einsum("rtk,tk->rt", q, e2) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6) & (t < 1)
        blocked[s:s + step] = hit.any(axis=1)
    return blocked


def _ray_hits_box(origins: np.ndarray, ends: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Slab test of segments against one AABB, (R,) bool."""
    d = ends - origins
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo - origins) * inv, (hi - origins) * inv
    tmin = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf).max(axis=1)
    tmax = np.nan_to_num(np.maximum(t1, t2), nan=np.inf).min(axis=1)
    return (tmax >= np.maximum(tmin, 0.0)) & (tmin <= 1.0)


# barycentric sample positions per face: centroid + one near each corner
_BARY = np.array([[1 / 3, 1 / 3, 1 / 3], [0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]])


def visible_faces(meshes: Sequence[trimesh.Trimesh], n_views: int = DEFAULT_VIEWS,
                  convex: Sequence[bool] | None = None, samples_per_face: int = 4,
                  camera_radius: float = 4.0) -> list[np.ndarray]:
    """Per mesh, a (F,) bool mask of faces seen by at least one camera.

    A face is seen by a camera when one of its sample points (centroid and up to
    three points near the corners) faces the camera and the segment from the
    point (lifted by a tiny offset along the normal) to the camera crosses no
    triangle of any part. Cameras: ``n_views`` Fibonacci points on a sphere of
    ``camera_radius`` around the origin (objects live in [-1, 1]).
    ``convex[i]`` lets part i skip its own triangles (a convex solid never hides
    its own front faces).
    """
    convex = list(convex) if convex is not None else [False] * len(meshes)
    bary = _BARY[:max(1, min(samples_per_face, len(_BARY)))]
    cams = fibonacci_sphere(n_views, camera_radius)
    tris = [np.asarray(m.triangles, dtype=np.float64) for m in meshes]
    boxes = [(t.reshape(-1, 3).min(0) - 1e-9, t.reshape(-1, 3).max(0) + 1e-9) for t in tris]
    eps = 1e-5
    out = []
    for i, m in enumerate(meshes):
        n = np.asarray(m.face_normals, dtype=np.float64)
        pts = np.einsum("sk,fkc->fsc", bary, tris[i])  # (F, S, 3)
        pts = (pts + eps * n[:, None, :]).reshape(-1, 3)
        nrm = np.repeat(n, len(bary), axis=0)
        seen = np.zeros(len(pts), dtype=bool)
        for c in cams:
            todo = ~seen & (np.einsum("rk,rk->r", c[None] - pts, nrm) > 0)
            idx = np.nonzero(todo)[0]
            if len(idx) == 0:
                continue
            o = pts[idx]
            ends = np.broadcast_to(c, o.shape)
            blocked = np.zeros(len(idx), dtype=bool)
            for j in range(len(meshes)):
                if j == i and convex[i]:
                    continue
                cand = ~blocked & _ray_hits_box(o, ends, *boxes[j])
                if cand.any():
                    ci = np.nonzero(cand)[0]
                    blocked[ci] |= _segments_blocked(o[ci], ends[ci], tris[j])
            seen[idx[~blocked]] = True
        out.append(seen.reshape(len(n), len(bary)).any(axis=1))
    return out


# ----------------------------------------------------------------------------- occupancy


def winding_number(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Generalized winding number of points (Q, 3) w.r.t. a triangle mesh (van Oosterom-Strackee):
    :func:`holopart_infer.extraction.native.winding_numbers` (threaded C++, numpy without it)."""
    from holopart_infer.extraction import native

    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64).reshape(-1, 3)]
    return native.winding_numbers(np.asarray(points, dtype=np.float64).reshape(-1, 3), tri)


def inside(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    """Inside test for a watertight mesh: winding number > 0.5, (Q,) bool."""
    return winding_number(points, mesh.vertices, mesh.faces) > 0.5


def sample_occupancy(mesh: trimesh.Trimesh, n_near: int, n_uniform: int, rng: np.random.Generator,
                     sigma: float = 0.02, bound: float = 1.05, center=None, scale: float = 1.0) -> OccupancySamples:
    """Occupancy training targets of a complete part, in the frame ``(x - center) / scale``.

    ``n_near`` surface samples jittered by N(0, sigma^2) (in the frame's units)
    plus ``n_uniform`` uniform points in [-bound, bound]^3; labels 1 inside.
    """
    from holopart_infer.model.conditioning import sample_surface

    center = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    v = (np.asarray(mesh.vertices, dtype=np.float64) - center) / scale
    near, _, _ = sample_surface(v, mesh.faces, n_near, rng)
    near = near + sigma * rng.standard_normal(near.shape)
    uni = rng.uniform(-bound, bound, size=(n_uniform, 3))
    pts = np.concatenate([near, uni], axis=0)
    lab = winding_number(pts, v, mesh.faces) > 0.5
    return OccupancySamples(pts.astype(np.float32), lab.astype(np.float32))


# ----------------------------------------------------------------------------- objects


def normalize_meshes(meshes) -> None:
    """Centre the joint bounding box at the origin and scale its longest side to 2, in place."""
    allv = np.concatenate([m.vertices for m in meshes])
    lo, hi = allv.min(0), allv.max(0)
    c, s = (lo + hi) / 2, (hi - lo).max() / 2
    for m in meshes:
        m.apply_translation(-c)
        m.apply_scale(1.0 / s)


def make_object(seed, template: str | None = None, n_views: int = DEFAULT_VIEWS,
                samples_per_face: int = 4, max_tries: int = 8) -> SyntheticObject:
    """One assembly, deterministic in ``seed`` (an int or a numpy SeedSequence entropy tuple).

    Parts seen on less than ``MIN_VISIBLE_FRACTION`` of their area are dropped
    (HoloPart's input has no such part); if fewer than two remain, new
    proportions are drawn (same stream).
    """
    rng = np.random.default_rng(seed)
    if template is None:
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if template not in TEMPLATE_FUNCS:
        raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")
    for _ in range(max_tries):
        spec = TEMPLATE_FUNCS[template](rng)
        names = [n for n, _ in spec]
        prims = [p for _, (p, _) in spec]
        meshes = [m for _, (_, m) in spec]
        normalize_meshes(meshes)
        vis = visible_faces(meshes, n_views, convex=[p in CONVEX_PRIMITIVES for p in prims],
                            samples_per_face=samples_per_face)
        parts = [SyntheticPart(n, p, m, v) for n, p, m, v in zip(names, prims, meshes, vis)]
        parts = [p for p in parts if p.visible_fraction >= MIN_VISIBLE_FRACTION]
        if len(parts) >= 2:
            return SyntheticObject(template, seed, parts)
    raise RuntimeError(f"template {template!r} gave no object with two visible parts in {max_tries} tries")


def dataset_object(seed: int, i: int, templates: Sequence[str] | None = None,
                   n_views: int = DEFAULT_VIEWS, samples_per_face: int = 4) -> SyntheticObject:
    """Object i of dataset ``seed``: ``make_object((seed, i), ...)``, templates cycled if given."""
    t = None if templates is None else templates[i % len(templates)]
    return make_object((int(seed), i), t, n_views=n_views, samples_per_face=samples_per_face)


def iter_dataset(seed: int, n: int, templates: Sequence[str] | None = None,
                 n_views: int = DEFAULT_VIEWS, samples_per_face: int = 4) -> Iterator[SyntheticObject]:
    """``n`` objects: :func:`dataset_object` for i = 0 .. n-1."""
    for i in range(n):
        yield dataset_object(seed, i, templates, n_views, samples_per_face)


def write_example(obj: SyntheticObject, path: str | os.PathLike, complete: bool = False):
    """Write the object's visible patches (default) or complete parts as a glb scene, one node per part."""
    from holopart_infer.io.parts_io import write_scene

    meshes = [(p.mesh.vertices, p.mesh.faces) if complete else p.patch for p in obj.parts]
    return write_scene(meshes, obj.names, path)


if __name__ == "__main__":  # python -m holopart_infer.export.synthetic OUT_DIR [N] [SEED]
    import sys

    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    os.makedirs(out, exist_ok=True)
    for i, o in enumerate(iter_dataset(seed, n, templates=TEMPLATES)):
        write_example(o, os.path.join(out, f"{i:03d}_{o.template}_patch.glb"))
        write_example(o, os.path.join(out, f"{i:03d}_{o.template}_complete.glb"), complete=True)
        print(i, o.template, [(p.name, len(p.mesh.faces), round(p.visible_fraction, 3)) for p in o.parts])
