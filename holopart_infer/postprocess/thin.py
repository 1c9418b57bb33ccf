"""Thin and flat parts: a second, finer look, then a closed stand-in, never an empty part.

A flat part (a panel, a blade, a sheet) fills its part frame along two axes
and almost nothing along the third. On the extraction grid of the whole part
frame (``2**depth - 8`` cells over 2.1 units) its occupied slab can be thinner
than a cell, or the coarse level misses it, and marching cubes returns nothing.

:func:`decode_local` extracts such a part again on a grid fitted to the part's
own samples, scaled per axis: the box around the samples (padded) is mapped
onto the extraction cube, so the thin axis gets as many cells as the others.
If the model still says "empty", :func:`thickened_patch` closes the input
surface into a thin solid (the input faces offset both ways along the vertex
normals, the boundary stitched), and the caller warns naming the part.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

log = logging.getLogger("holopart_infer")

_PAD_FRACTION = 0.08  # padding of the local box, as a fraction of its largest half-extent
_PAD_CELLS = 3.0  # ... and at least this many cells of the original grid
_THICKNESS = 0.01  # stand-in thickness, as a fraction of the part's bounding-box diagonal


def local_box(samples: np.ndarray, depth: int, bounds: float = 1.05) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-extents) of the padded box around a part's samples (part frame)."""
    p = np.asarray(samples, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    center = (lo + hi) / 2.0
    half = (hi - lo) / 2.0
    cell = 2.0 * bounds / max(2 ** int(depth) - 8, 1)
    pad = max(_PAD_FRACTION * float(half.max()), _PAD_CELLS * cell)
    return center, np.minimum(half + pad, bounds)


def decode_local(extract: Callable, decode: Callable, samples: list[np.ndarray], depth: int,
                 bounds: float = 1.05) -> list[tuple[np.ndarray, np.ndarray]]:
    """Extract parts again, each on a grid fitted to its own samples.

    Args:
        extract: ``extract(decode_fn, num_parts) -> (meshes, stats)`` running the
            usual coarse-to-fine extraction over ``[-bounds, bounds]^3``.
        decode: the usual decode callback, over these parts, in the part frame.
        samples: per part its surface samples (N, 3) in the part frame.
        depth: the extraction depth in use (sets the minimum padding).

    Returns:
        per part ``(vertices, faces)`` in the part frame (empty arrays when the
        model still gives no surface).
    """
    boxes = [local_box(s, depth, bounds) for s in samples]

    def to_part(i: int, pts: np.ndarray) -> np.ndarray:
        c, h = boxes[i]
        return (c + np.asarray(pts, dtype=np.float64) * (h / bounds)).astype(np.float32)

    def local_decode(points_per_part):
        return decode([to_part(i, p) if len(p) else p for i, p in enumerate(points_per_part)])

    meshes, _ = extract(local_decode, len(samples))
    out = []
    for i, (v, f) in enumerate(meshes):
        v = np.asarray(v)
        out.append((to_part(i, v) if len(v) else v.reshape(0, 3).astype(np.float32),
                    np.asarray(f, dtype=np.int64).reshape(-1, 3)))
    return out


def thickened_patch(vertices: np.ndarray, faces: np.ndarray,
                    thickness: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A closed thin solid made from a surface patch.

    The patch (vertices merged by position) is offset by ``thickness / 2`` both
    ways along its area-weighted vertex normals; the lower copy is reversed and
    every boundary edge is stitched to its copy with two triangles, so each edge
    is shared by exactly two faces with opposite directions. A patch that is
    already closed is returned as it is (merged).

    Args:
        vertices, faces: the input part.
        thickness: total thickness (default 1% of the bounding-box diagonal).

    Returns:
        (vertices (V, 3) float64, faces (F, 3) int64).
    """
    import trimesh

    v = np.asarray(vertices, np.float64)
    # built in the patch's normalized frame (about [-0.5, 0.5]) and scaled back: trimesh's merge
    # tolerance is absolute, so the same patch gives the same solid at any input unit
    lo, hi = (v.min(axis=0), v.max(axis=0)) if len(v) else (np.zeros(3), np.ones(3))
    center, size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    if not (np.isfinite(size) and size > 0):
        center, size = np.zeros(3), 1.0
    if thickness is not None:
        thickness = thickness / size
    m = trimesh.Trimesh((v - center) / size, np.asarray(faces, np.int64), process=False)
    m.merge_vertices()
    m.update_faces(m.nondegenerate_faces())
    m.remove_unreferenced_vertices()
    v, f = np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])  # directed, face orientation
    # one 64-bit key per undirected edge (low << 32 | high), as cleanup.edge_manifold
    key = (np.minimum(edges[:, 0], edges[:, 1]) << 32) | np.maximum(edges[:, 0], edges[:, 1])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse.reshape(-1)] == 1]
    if len(boundary) == 0:
        return v * size + center, f
    if thickness is None:
        thickness = _THICKNESS * float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    n = np.asarray(m.vertex_normals, np.float64)
    top, bottom = v + n * (thickness / 2), v - n * (thickness / 2)
    nv = len(v)
    a, b = boundary[:, 0], boundary[:, 1]
    walls = np.concatenate([np.stack([b, a, a + nv], axis=1), np.stack([b, a + nv, b + nv], axis=1)])
    faces_out = np.concatenate([f, f[:, ::-1] + nv, walls])
    return np.concatenate([top, bottom]) * size + center, faces_out.astype(np.int64)


def retry_empty(meshes: list, samples: list[np.ndarray], decode: Callable, extract: Callable, depth: int,
                names: list[str]) -> tuple[list, list[int]]:
    """Extract again, on fitted local grids, the parts of a batch that came back empty.

    The batch may hold parts of several objects: everything is per batch row.

    Args:
        meshes: the batch's ``(vertices, faces)`` in the part frame (not modified).
        samples: per batch row, the part's surface samples in its part frame (N, 3).
        decode: the batch's decode callback (one point array per batch row).
        extract: ``extract(decode_fn, num_parts) -> (meshes, stats)``.
        depth: the extraction depth in use.
        names: per batch row, the part's name (for the log).

    Returns:
        (the batch's meshes with recovered parts replaced, the batch rows retried).
    """
    empty = [j for j, (_, f) in enumerate(meshes) if len(f) == 0]
    if not empty:
        return meshes, []

    def subset_decode(points_subset):
        full = [np.empty((0, 3), np.float32) for _ in meshes]
        for k, j in enumerate(empty):
            full[j] = points_subset[k]
        answer = decode(full)
        return [answer[j] for j in empty]

    again = decode_local(extract, subset_decode, [samples[j] for j in empty], depth)
    out = list(meshes)
    for j, mesh in zip(empty, again):
        out[j] = mesh
        log.info("part %r decoded empty on the object grid; on a grid fitted to it: %d faces",
                 names[j], len(mesh[1]))
    return out, empty


#: closed_patch: the patch's triangles the winding number sees (decimated above this)
WINDING_MAX_FACES = 1000
#: closed_patch: default shell half-thickness, as a fraction of the longest side of the object (or,
#: without one, of the patch): holopart-mini's real training data's rule for open parts
#: (export/realdata.py occupancy_labels with REAL_SHELL = 0.015 on an object spanning [-1, 1])
SHELL_FRACTION = 0.0075
_SOLID_DEPTH = 5  # final grid of 2**5 - 8 = 24 cells per axis, fitted to the patch's box
#: closed_patch: finer grids, up to this depth, for a patch the first grid does not cover (thin
#: pieces spread over a large box: handles, a towel rail's tubes, a wire)
MAX_SOLID_DEPTH = 6
#: closed_patch: a solid covers its patch when at least this share of the patch's samples lies
#: inside it or within half a grid cell of its surface (and within the shell, when it has one)
MIN_PATCH_COVERAGE = 0.8
_COVERAGE_SAMPLES = 1000
#: closed_patch: an open patch whose winding number is this unambiguous just off its surface (at
#: most this share of the probes with 0.25 < |w| < 0.75) encloses its solid nearly everywhere (a
#: box seen all round but for a hidden face, a panel with a missing edge): it gets no shell, which
#: would only thicken it. A sheet has |w| about 0.5 on both sides of it everywhere.
MAX_AMBIGUOUS = 0.1
MIN_INSIDE = 0.25
_PROBES = 1000


def winding_surface(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The triangles a patch's winding number is summed over: at most ``WINDING_MAX_FACES``
    (decimated), or all of them when decimation loses the surface (duplicated, non-manifold faces
    can collapse to nothing)."""
    from holopart_infer.model.surface import face_areas
    from holopart_infer.postprocess.decimate import decimate

    if len(f) <= WINDING_MAX_FACES:
        return v, f
    dv, df = decimate(v, f, WINDING_MAX_FACES)
    if len(df) and face_areas(dv, df).sum() >= 0.5 * face_areas(v, f).sum():
        return dv, df
    return v, f


def encloses(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Does an open surface nearly enclose a volume? Probes just off it (both sides, 0.1% of its
    diagonal away): the share whose generalized winding number is ambiguous (0.25 < |w| < 0.75),
    about 0 for a surface that nearly encloses its volume and about 1 for a sheet; and the share
    inside (|w| >= 0.75), about one half for the first (faces wound against each other give
    neither). Measured on the surface :func:`closed_patch` sums the winding number over."""
    from holopart_infer.postprocess.decimate import merge_coincident

    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    used = v[np.unique(f)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    size = float(np.linalg.norm(hi - lo)) or 1.0
    v, f = merge_coincident((v - (lo + hi) / 2) / size, f)  # about [-0.5, 0.5], as closed_patch
    return _probe_enclosure(*winding_surface(v, f))


def encloses_volume(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """:func:`encloses` within ``MAX_AMBIGUOUS`` / ``MIN_INSIDE``: the open surface closes its
    volume well enough that :func:`closed_patch` gives it no shell."""
    return _encloses_volume(*encloses(vertices, faces))


def _encloses_volume(ambiguous: float, inside: float) -> bool:
    return ambiguous <= MAX_AMBIGUOUS and inside >= MIN_INSIDE


def _probe_enclosure(v: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """:func:`encloses` of a surface already normalized to about [-0.5, 0.5], merged and reduced."""
    from holopart_infer.errors import InputError
    from holopart_infer.extraction import native
    from holopart_infer.model.surface import sample_surface

    try:
        pts, normals, _ = sample_surface(v, f, _PROBES, np.random.default_rng(0))
    except InputError:  # no area left (slivers only): it encloses nothing
        return 1.0, 0.0
    probes = np.concatenate([pts + 1e-3 * normals, pts - 1e-3 * normals])
    w = np.abs(native.winding_numbers(probes, np.ascontiguousarray(v[f])))
    return float(np.mean((w > 0.25) & (w < 0.75))), float(np.mean(w >= 0.75))


def capped_patch(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """An open patch closed by capping each hole: a fan of triangles from the centroid of the hole's
    rim, wound like the faces around it. The patch's own triangles are kept exactly, so a box seen
    all round but for its bottom comes back as that box, not a grid's approximation of it.

    Args:
        vertices, faces: the patch, coincident vertices already merged.

    Returns:
        ``(vertices, faces)`` of the closed surface, each piece outward-facing; None when
        capping cannot give one: an edge with more than two faces, faces wound against each other,
        no hole at all, or rims that are most of its edges.
    """
    from holopart_infer.postprocess.cleanup import edge_manifold

    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    if not len(f):
        return None
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(v.shape[0])
    code = directed[:, 0] * n + directed[:, 1]
    if len(np.unique(code)) != len(code):
        return None  # a directed edge twice: faces wound against each other, or an edge of 3+ faces
    reverse = directed[:, 1] * n + directed[:, 0]
    rim = directed[~np.isin(reverse, code)]
    if not len(rim) or len(rim) > 0.5 * len(directed):
        # no hole; or mostly holes (a triangle soup: every edge a rim), which no cap makes a solid,
        # decided before the rims are traced (the costly part)
        return None
    # the rim edges, traced into loops in the faces' own direction; a rim through one vertex twice
    # (two holes meeting at a corner) is split there, so no loop visits a vertex twice
    out: dict[int, list[int]] = {}
    for a, b in rim.tolist():
        out.setdefault(a, []).append(b)
    loops: list[list[int]] = []
    for start in list(out):
        path, where = [start], {start: 0}
        while True:
            cur = path[-1]
            if not out.get(cur):
                if len(path) == 1:
                    break
                return None  # a rim that does not close (faces wound against each other)
            nxt = out[cur].pop()
            if nxt in where:  # a loop closed: cut it off and go on from where it began
                k = where[nxt]
                loops.append(path[k:])
                for u in path[k + 1:]:
                    del where[u]
                del path[k + 1:]
            else:
                where[nxt] = len(path)
                path.append(nxt)
    new_v, new_f = [v], [f]
    count = n
    for loop in loops:
        ring = np.asarray(loop, np.int64)
        new_v.append(v[ring].mean(axis=0, keepdims=True))
        # rim edge a -> b belongs to a face; the cap's triangle takes it b -> a
        new_f.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), count)], axis=1))
        count += 1
    cv, cf = np.concatenate(new_v), np.concatenate(new_f)
    if not edge_manifold(cf):
        return None
    # each closed piece faces outwards (pieces of one part are often wound differently in a file)
    from holopart_infer.postprocess.cleanup import connected_components

    _, piece = connected_components(cf, len(cv))  # per face
    t = cv[cf]
    signed = np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2]))
    inward = np.bincount(piece, weights=signed) < 0
    cf = np.where(inward[piece][:, None], cf[:, ::-1], cf)
    used, cf = np.unique(cf, return_inverse=True)
    return cv[used], cf.reshape(-1, 3).astype(np.int64)


#: :func:`sealed`: a patch whose holes, capped, add less than this share of its area is closed but
#: for slits (seams that do not meet, a missing sliver): given whole. On the validation split's real
#: parts every patch under 2% was at least 99% visible; hidden parts cut by occlusion start at 4%
#: (a lamp pole whose top is inside the shade; a mug handle half inside its body: 7-12%)
SLIT_AREA = 0.02


def sealed(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A patch that is closed but for slits, closed: :func:`capped_patch` when its caps add less than
    ``SLIT_AREA`` of the patch's area; None otherwise (a closed patch included: it needs no cap).

    Args:
        vertices, faces: the patch, coincident vertices already merged.
    """
    from holopart_infer.model.surface import face_areas

    f = np.asarray(faces, np.int64).reshape(-1, 3)
    capped = capped_patch(vertices, f)
    if capped is None:
        return None
    area = float(face_areas(np.asarray(vertices, np.float64), f).sum())
    added = float(face_areas(*capped).sum()) - area
    return capped if area > 0 and added < SLIT_AREA * area else None


def closed_patch(vertices: np.ndarray, faces: np.ndarray, *, object_bounds=None, shell: float | None = None,
                 depth: int = _SOLID_DEPTH, max_depth: int = MAX_SOLID_DEPTH,
                 device: str = "cpu") -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """The visible patch closed into a solid: what replaces a part nobody can trust.

    A patch that is already closed is returned as it is. An open one becomes the
    solid ``{generalized winding number > 0.5} U {within shell of the surface}``
    (Jacobson et al. 2013 for the first set: it closes a box without its bottom,
    a cushion seen from above, faces that share no vertices; the shell gives a
    sheet, a panel or a blade its thickness): the rule holopart-mini's real
    training data uses for the inside of open parts. A patch that nearly
    encloses its volume (:func:`encloses`: at most ``MAX_AMBIGUOUS`` of its
    probes ambiguous, at least ``MIN_INSIDE`` inside) gets the
    winding-number solid alone: a shell would only make it thicker than it
    is. Such a patch is closed by capping its holes (:func:`capped_patch`: its
    own triangles kept exactly), and meshed on a grid only where that cannot give
    a clean closed surface (an edge of three faces, faces wound against each
    other): on real parts where both exist the capped patch scored as well as
    the grid's solid or better, but for one part (0.67 vs 0.68;
    benchmarks/RESULTS-mini.md). The solid is meshed on a grid fitted per
    axis to the patch's padded box (``2**depth - 8`` cells per axis, coarse to
    fine), so a thin axis (a sheet's shell) gets as many cells as the others.
    Where that solid does not cover the patch (less than ``MIN_PATCH_COVERAGE``
    of its samples inside the solid or within half a cell of it: thin pieces spread
    over a large box), the next finer grid is tried, up to ``max_depth``. If
    the finest grid still shows nothing, :func:`thickened_patch`.

    Args:
        vertices, faces: the part's visible patch (input coordinates, any unit).
        object_bounds: (2, 3) min / max corner of the whole object: the shell is
            ``SHELL_FRACTION`` of its longest side (default: of the patch's).
        shell: half-thickness given to the open surface, in input units (overrides
            ``object_bounds`` and the ambiguity rule; 0: the winding-number solid alone).
        depth: grid depth of the solid's first try; max_depth: of its last.
        device: "cpu" or "cuda" for the extraction kernels.

    Returns:
        ``((vertices (V, 3) float64, faces (F, 3) int64), kind)``, kind one of
        ``"closed"`` (the patch as it is), ``"capped"`` (the patch with its holes capped),
        ``"solid"`` (winding number alone),
        ``"shell"`` (winding number and shell), ``"sheet"`` (thickened).
    """
    from holopart_infer.extraction import extract, native
    from holopart_infer.model.surface import SurfaceDistance, sample_surface
    from holopart_infer.postprocess.cleanup import edge_manifold
    from holopart_infer.postprocess.decimate import merge_coincident

    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    used = v[np.unique(f)] if len(f) else v
    lo, hi = (used.min(axis=0), used.max(axis=0)) if len(used) else (np.zeros(3), np.ones(3))
    center, size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    if not (len(f) and np.isfinite(size) and size > 0):
        return thickened_patch(v, f), "sheet"
    # about [-0.5, 0.5]: the merge tolerance and every bound below are relative (any input unit)
    vn, fm = merge_coincident((v - center) / size, f)
    if edge_manifold(fm):
        return (vn * size + center, fm), "closed"
    gv, gf = winding_surface(vn, fm)
    if shell is None:
        if _encloses_volume(*_probe_enclosure(gv, gf)):
            shell = 0.0
            capped = capped_patch(vn, fm)
            if capped is not None:
                return (capped[0] * size + center, capped[1]), "capped"
        else:
            ob = np.asarray(object_bounds, np.float64).reshape(2, 3) if object_bounds is not None else np.stack([lo, hi])
            shell = SHELL_FRACTION * float((ob[1] - ob[0]).max())
    half = float(shell) / size
    if not (np.isfinite(half) and half >= 0):
        raise ValueError(f"closed_patch: shell must be a finite distance >= 0, got {shell!r}")
    triangles = np.ascontiguousarray(gv[gf])
    rng = np.random.default_rng(0)
    bounds = 1.05
    # the box around the solid, padded by 10% of each axis's own half-extent: a sheet's thin axis
    # (the shell alone) then gets as many cells across as its long axes along
    used_n = vn[np.unique(fm)]
    solid_lo, solid_hi = used_n.min(axis=0) - half, used_n.max(axis=0) + half
    box_c = (solid_lo + solid_hi) / 2
    box_h = np.maximum((solid_hi - solid_lo) / 2 * 1.1, 1e-3)

    def to_patch(pts: np.ndarray) -> np.ndarray:
        return box_c + np.asarray(pts, np.float64) * (box_h / bounds)

    distance = SurfaceDistance(vn, fm, rng, candidates=4) if half > 0 else None
    # a nearest sample's distance exceeds the exact one by at most about the sample spacing: beyond
    # the shell by more than two spacings, a point is outside the shell whatever the exact distance
    spacing = float(np.sqrt(max(distance.area, 1e-12) / distance.samples)) if distance is not None else 0.0

    def field(x: np.ndarray) -> np.ndarray:
        """> 0 inside the solid (patch coordinates)."""
        inside = np.full(len(x), -1.0)
        todo = np.arange(len(x))
        if distance is not None:  # distance to the full-resolution patch, in units of the shell: > 0 within it
            near = 1.0 - distance(x, exact_below=half + 2.0 * spacing) / half
            inside = near
            # within the shell the point is inside whatever the winding number says; the field's
            # level set there is the shell's outer side, where the winding term is negative
            todo = np.flatnonzero(near <= 0.0)
        if len(todo):
            # |w|: a patch whose faces point inwards encloses its inside all the same (as in realdata)
            w = 8.0 * (np.abs(native.winding_numbers(x[todo], triangles)) - 0.5)  # |logit| < band: within ~0.12
            inside[todo] = np.maximum(inside[todo], w)
        return inside

    def decode(points_per_part):
        (pts,) = points_per_part
        if not len(pts):
            return [np.empty(0, np.float32)]
        return [field(to_patch(pts)).astype(np.float32)]

    probes, probe_normals, _ = sample_surface(vn, fm, _COVERAGE_SAMPLES, rng)
    sv, sf = np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    last = max(int(depth), int(max_depth))
    for d in range(int(depth), last + 1):
        (mesh,), _ = extract.extract_meshes(decode, 1, depth=d, bounds=bounds, min_resolution=14, device=device)
        sv, sf = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64).reshape(-1, 3)
        if len(sf) and d < last:  # the finest grid's solid is kept whatever it covers
            solid = to_patch(sv)
            cell = float(np.max(2.0 * box_h)) / max(2 ** d - 8, 1)
            # the patch lies inside its shell, or on the surface of its winding-number solid: a probe
            # is in the solid when it, or it moved by tol along its normal either way, is inside. The
            # share is of the probes the field itself puts there (not the rim of an open patch
            # that the winding number leaves out at any depth)
            tol = min(0.5 * cell, half) if half > 0 else 0.5 * cell
            shifted = (probes, probes + probe_normals * tol, probes - probe_normals * tol)
            wanted = np.zeros(len(probes), dtype=bool)
            for q in shifted:
                wanted |= field(q) > 0
            tri = np.ascontiguousarray(solid[sf])
            inside = ~wanted
            for q in shifted:
                todo = np.flatnonzero(~inside)
                inside[todo] = np.abs(native.winding_numbers(q[todo], tri)) > 0.5
            covered = float(inside.mean())
            if covered >= MIN_PATCH_COVERAGE:
                break
            log.debug("closed_patch: depth %d covers %.0f%% of the patch; trying a finer grid", d, 100 * covered)
    if not len(sf):
        return thickened_patch(v, f), "sheet"
    return (to_patch(sv) * size + center, sf), ("shell" if half > 0 else "solid")

