"""Coarse-to-fine ("flash") surface extraction from a part's occupancy logits.

The decoder is only queried near the surface: a coarse grid is evaluated in
full, the cells near the zero level (band) are dilated and refined on a grid
twice as fine, and so on; points never evaluated stay unknown (NaN) and marching
cubes skips the cubes touching them.

Grid geometry (fixed here, used by every level and by :func:`extract_dense`):
a level of ``r`` cells per axis over ``[-bounds, bounds]`` has ``r + 1`` points
per axis and point index ``i`` sits at ``x = -bounds + i * (2 * bounds) / r``.
Array axes (0, 1, 2) are (x, y, z). Fine point ``2 i`` coincides with coarse
point ``i``, so coarse values are reused, not re-queried. Returned vertices use
the same mapping, i.e. they are in the part's normalized frame. (The reference
script maps vertices with ``index / 2**depth`` although its final grid has
``2**depth - 8`` cells, shrinking parts by 1.6%; we do not.)

Levels for a depth: the final resolution is ``2**depth - 8`` cells (504 for
depth 9, matching the reference); it is halved while the half is a whole number
of at least ``min_resolution`` (32) cells, giving 63, 126, 252, 504 for depth 9,
62, 124, 248 for depth 8 and 60, 120 for depth 7 (see :func:`levels_for_depth`).

Band rule (per level): a cell is kept when one of its known corners has
``|logit| < band`` (0.95) or its known corners change sign; kept cells are
dilated by ``dilation`` cells (26-neighbourhood) and all corners of their
eight sub-cells are evaluated at the next level. At the final level
(``grow=True``, the default) the dilated cells are not all evaluated: the band's
own cells are, then, round by round, only those dilated cells the surface runs
into (a face of an evaluated cell whose 3 x 3 fine points change sign), since
marching cubes meshes nothing else there. Same surface, about half the
final-level queries (a piece lying wholly in dilation cells and touching no
band cell can be missed: tests/runtime/test_extract_queries.py states the
tolerance). No point is evaluated twice: coarse values are reused and points
shared by cells of different rounds are skipped. A part whose coarse level has
no band cell (empty) costs only its coarse level.

Closing (``close=True``, the default): a surface cut by the box would leave a
hole there (the reference's output). Unknown points on the grid's six faces take
their nearest known value on that face, one layer of "outside" is put around the
grid, and marching cubes then caps the cut with the box face; cap vertices are
clipped onto the box. Surfaces inside the box are unchanged.

The ``decode`` callback receives one float32 (Qi, 3) array of world
coordinates per part (at most ``chunk_points`` points each, parts with nothing
left get a (0, 3) array) and returns one array of Qi logits per part (inside
> 0). The pipeline's is a :class:`PackedFeed`: each part's points are cut into
rows of ``chunk_points // 8`` points (its last few into one row rounded up to a
multiple of 128) and every row is queried against its own part's key/values, so a
part with fewer points, or none left, costs the decoder no padding (one padded row per
part, :class:`PaddedFeed`, is kept for key/values the host cannot gather by row).

Final-level growth works on cell lists after its first round (the band, the
whole-grid kernels): a round costs in the cells it grows to, not in the grid.

One level driver (:func:`run_levels`) runs the levels, the band rule, the
refinement and the final-level growth over a small operations interface
(:class:`LevelOps`: band, dilate, refine, the next level's grid, the growth's
cell-list steps, mesh). :func:`extract_meshes` and :func:`extract_dense` run it
with the host's operations (numpy and cpp_ext, :class:`_HostOps`),
``resident.extract_meshes_resident`` with torch operations on the decoder's
device. The knobs and their defaults are :class:`ExtractionOptions`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np

from holopart_infer import constants

from holopart_infer.extraction import native
from holopart_infer.errors import InputError
from holopart_infer.extraction.mcubes import marching_cubes

__all__ = [
    "PartMesh",
    "ExtractionStats",
    "DecodeFn",
    "ProgressFn",
    "levels_for_depth",
    "grid_points",
    "extract_meshes",
    "extract_dense",
    "query_chunk_points",
    "QueryRowsFn",
    "row_plan",
    "row_segments",
    "PackedFeed",
    "PaddedFeed",
    "ExtractionOptions",
    "LevelOps",
    "run_levels",
    "mesh_grid",
]

DecodeFn = Callable[[list[np.ndarray]], Sequence[Any]]
#: progress(level_index, num_levels, points_done, points_total) after each decode call.
ProgressFn = Callable[[int, int, int, int], None]

#: Decoder query points per part per call (constants.QUERY_CHUNK_POINTS, where the
#: backends read it too). The pipeline is the only layer that chunks; a backend
#: splits a call only where an engine's shape profile forces it.
QUERY_CHUNK_POINTS = constants.QUERY_CHUNK_POINTS
#: The query chunk by the device the decoder runs on (the one place these live).
#: CPU: QUERY_CHUNK_POINTS bounds the attention scratch. CUDA: each call is one
#: synchronized launch, so it is 8x larger (8192 meant ~16,000 calls per object at
#: depth 9 for a noise field); benchmarks/device_check.py (stage chunk_sweep)
#: measures the best value. The TensorRT profile's max (8 x QUERY_CHUNK_POINTS) matches.
QUERY_CHUNK_POINTS_BY_DEVICE = {"cpu": QUERY_CHUNK_POINTS, "cuda": 8 * QUERY_CHUNK_POINTS}


def query_chunk_points(device: str) -> int:
    """The default query chunk for a decoder on ``device`` ("cpu", "cuda", "cuda:N")."""
    return QUERY_CHUNK_POINTS_BY_DEVICE["cuda" if str(device).strip().lower().startswith("cuda") else "cpu"]


#: query(points, parts) -> logits: float32 (R, L, 3) points, row r against the
#: key/values of part ``parts[r]`` (int64 (R,)); ``parts`` None: row r is part r
#: and the key/values are the batch's own. Returns (R, L) or (R, L, 1).
QueryRowsFn = Callable[[Any, Any], Any]


#: A part's last points in a call are one row rounded up to a multiple of this
#: (:func:`row_plan`): under 128 padded points per part and call.
PACK_GRANULE = 128


def row_plan(counts: Sequence[int], row_points: int,
             granule: int | None = None) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """How :class:`PackedFeed` lays out one call's points: groups of rows of one
    length, longest first, each row as (part, first point, points).

    Each part's points are cut into rows of ``row_points``; what is left of a
    part (fewer than ``row_points``) is one row rounded up to a multiple of
    ``granule`` (default :data:`PACK_GRANULE`, at most ``row_points``), sharing
    a group with the rows of that length. So a part pads fewer than ``granule``
    points per call and a part with no points has no row.
    """
    L = int(row_points)
    g = max(1, min(PACK_GRANULE if granule is None else int(granule), L))
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for p, n in enumerate(counts):
        n = int(n)
        for s in range(0, n - n % L, L):
            groups.setdefault(L, []).append((p, s, L))
        t = n % L
        if t:
            groups.setdefault(min(L, -(-t // g) * g), []).append((p, n - t, t))
    return [(length, sorted(groups[length])) for length in sorted(groups, reverse=True)]


def row_segments(rows: list[tuple[int, int, int]], row_len: int) -> list[tuple[int, int, int, int]]:
    """A row plan's rows of one length (:func:`row_plan`) as runs: (part, first
    slot in the flattened (R * row_len) batch, first point, points). A part's rows
    are consecutive and only its last may be short, so each part is one run."""
    segs: list[list[int]] = []
    for r, (p, s, n) in enumerate(rows):
        if segs and segs[-1][0] == p and segs[-1][2] + segs[-1][3] == s and segs[-1][3] % row_len == 0:
            segs[-1][3] += n
        else:
            segs.append([p, r * row_len, s, n])
    return [tuple(x) for x in segs]  # type: ignore[misc]


class PackedFeed:
    """A :data:`DecodeFn` that feeds the decoder packed rows, no padding rows.

    Every part's points are cut into rows of ``row_points`` and its last few into
    one row rounded up to a multiple of ``granule`` (:func:`row_plan`); rows of
    one length go in one ``query(points, parts)`` call, each row queried against
    its own part's key/values (the backend gathering the key/values of
    ``parts``). The pipeline's rows are an eighth of its chunk (1024 points on
    the CPU: as fast as one 8192-point row per part or faster, 1.05x and 1.4x in
    two loaded runs of ``bench_feed.py --row-lengths``, same logits), the
    granule 128 points. Parts with no points
    left take no row. The decoder computes every point on its own, so the logits
    are those of a padded call.

    Attributes:
        real_points: points asked for, all calls.
        fed_points: points sent to the decoder, padding included (>= real_points).
        query_calls: ``query`` invocations (one or two per call).
    """

    def __init__(self, query: QueryRowsFn, row_points: int = QUERY_CHUNK_POINTS // 8, granule: int | None = None):
        for name, v in (("row_points", row_points), ("granule", 1 if granule is None else granule)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name}: expected an int >= 1, got {v!r}")
        self.query, self.row_points, self.granule = query, int(row_points), granule
        self.real_points = self.fed_points = self.query_calls = 0

    def __call__(self, points_per_part: list[np.ndarray]) -> list[np.ndarray]:
        pts = [np.asarray(p, dtype=np.float32).reshape(-1, 3) for p in points_per_part]
        counts = [len(p) for p in pts]
        out = [np.empty(c, dtype=np.float32) for c in counts]
        for L, rows in row_plan(counts, self.row_points, self.granule):
            batch = np.zeros((len(rows), L, 3), dtype=np.float32)
            flat = batch.reshape(-1, 3)
            segs = row_segments(rows, L)
            for p, at, s, n in segs:
                flat[at:at + n] = pts[p][s:s + n]
            parts = np.fromiter((p for p, _, _ in rows), dtype=np.int64, count=len(rows))
            logits = np.asarray(self.query(batch, parts), dtype=np.float32)
            if logits.size != batch.shape[0] * L:
                raise InputError(f"decoder query: expected {batch.shape[0]} x {L} logits, got shape {logits.shape}")
            logits = logits.reshape(-1)
            for p, at, s, n in segs:
                out[p][s:s + n] = logits[at:at + n]
            self.fed_points += batch.shape[0] * L
            self.query_calls += 1
        self.real_points += sum(counts)
        return out


class PaddedFeed:
    """A :data:`DecodeFn` with one row per part, padded to the call's longest
    part (for key/values that cannot be gathered by row); counts as PackedFeed."""

    def __init__(self, query: QueryRowsFn):
        self.query = query
        self.real_points = self.fed_points = self.query_calls = 0

    def __call__(self, points_per_part: list[np.ndarray]) -> list[np.ndarray]:
        counts = [len(p) for p in points_per_part]
        if not any(counts):
            return [np.empty(0, np.float32) for _ in counts]
        pts = np.zeros((len(counts), max(counts), 3), dtype=np.float32)
        for b, p in enumerate(points_per_part):
            pts[b, : len(p)] = p
        logits = np.asarray(self.query(pts, None), dtype=np.float32).reshape(pts.shape[:2])
        self.real_points += sum(counts)
        self.fed_points += pts.shape[0] * pts.shape[1]
        self.query_calls += 1
        return [logits[b, :n] for b, n in enumerate(counts)]


class PartMesh(NamedTuple):
    """A part's surface in its normalized frame: float32 (V, 3), int64 (F, 3)."""

    vertices: np.ndarray
    faces: np.ndarray


@dataclass
class ExtractionStats:
    """What an extraction evaluated.

    Attributes:
        resolutions: cells per axis of each level, coarse to fine.
        queries_per_level: decoder points queried at each level, all parts.
        queries_per_part: [part][level] decoder points queried.
        dense_queries: points a dense evaluation of the final grid would query
            (all parts): ``num_parts * (resolutions[-1] + 1) ** 3``.
        decode_calls: number of ``decode`` invocations.
        decode_seconds: wall time spent inside ``decode``.
        total_seconds: wall time of the whole extraction.
        fed_points: points the decoder computed, padding included (0 where
            the decode callback does not say; see :class:`PackedFeed`).
    """

    resolutions: list[int]
    queries_per_level: list[int] = field(default_factory=list)
    queries_per_part: list[list[int]] = field(default_factory=list)
    dense_queries: int = 0
    decode_calls: int = 0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    fed_points: int = 0

    @classmethod
    def for_levels(cls, levels: Sequence[int], num_parts: int) -> "ExtractionStats":
        """Empty stats of an extraction of ``num_parts`` parts over ``levels``."""
        return cls(resolutions=list(levels), queries_per_part=[[] for _ in range(num_parts)],
                   dense_queries=num_parts * (levels[-1] + 1) ** 3)

    def count_level(self, per_part: Sequence[int]) -> None:
        """Record one level's queries, one count per part."""
        self.queries_per_level.append(int(sum(per_part)))
        for q, c in zip(self.queries_per_part, per_part):
            q.append(int(c))

    @property
    def total_queries(self) -> int:
        return int(sum(self.queries_per_level))

    @property
    def padding_ratio(self) -> float:
        """Points the decoder computed / points asked for (1.0: no padding; 0.0: not counted)."""
        return self.fed_points / self.total_queries if self.fed_points and self.total_queries else 0.0

    @property
    def query_ratio(self) -> float:
        """Queried points / dense final-grid points."""
        return self.total_queries / self.dense_queries if self.dense_queries else 0.0


def levels_for_depth(depth: int, min_resolution: int = constants.COARSE_MIN_RESOLUTION) -> list[int]:
    """Grid resolutions (cells per axis), coarse to fine, for an octree depth.

    ``final = 2**depth - 8``, halved while the half is an integer
    ``>= min_resolution``: depth 9 -> [63, 126, 252, 504].

    Raises:
        InputError: depth outside [DEPTH_MIN, DEPTH_MAX] (5..11) or min_resolution < 2.
    """
    lo, hi = constants.DEPTH_MIN, constants.DEPTH_MAX
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not lo <= depth <= hi:
        raise InputError(f"depth: expected an int in [{lo}, {hi}], got {depth!r}")
    if int(min_resolution) < 2:
        raise InputError(f"min_resolution: expected >= 2, got {min_resolution}")
    levels = [2 ** int(depth) - 8]
    while levels[0] % 2 == 0 and levels[0] // 2 >= min_resolution:
        levels.insert(0, levels[0] // 2)
    return levels


def grid_points(indices: np.ndarray, resolution: int, bounds: float) -> np.ndarray:
    """World coordinates float32 (Q, 3) of C-order linear point indices of a level."""
    n = resolution + 1
    idx = np.asarray(indices, dtype=np.int64)
    ijk = np.stack((idx // (n * n), (idx // n) % n, idx % n), axis=1).astype(np.float64)
    return (-bounds + ijk * (2.0 * bounds / resolution)).astype(np.float32)


def _validate(num_parts: Any, bounds: Any, chunk_points: Any) -> None:
    if isinstance(num_parts, bool) or not isinstance(num_parts, (int, np.integer)) or num_parts < 0:
        raise InputError(f"num_parts: expected an int >= 0, got {num_parts!r}")
    if not np.isfinite(bounds) or bounds <= 0:
        raise InputError(f"bounds: expected a finite number > 0, got {bounds!r}")
    if isinstance(chunk_points, bool) or not isinstance(chunk_points, (int, np.integer)) or chunk_points < 1:
        raise InputError(f"chunk_points: expected an int >= 1, got {chunk_points!r}")


@dataclass(frozen=True)
class ExtractionOptions:
    """The coarse-to-fine extraction's knobs and their defaults (the one place
    they live; :func:`extract_meshes` and ``resident.extract_meshes_resident``
    take their keyword defaults from here).

    Attributes:
        depth: octree depth; final grid ``2**depth - 8`` cells per axis.
        bounds: the grid spans ``[-bounds, bounds]`` on each axis.
        band: logit half-width of the band kept at each level.
        dilation: cells added around the band at each level.
        min_resolution: smallest coarse level (see :func:`levels_for_depth`).
        chunk_points: at most this many points per part per decoder call.
        close: cap surfaces cut by the box with the box face.
        grow: grow the final level from the band (see :func:`run_levels`).
    """

    depth: int = constants.DEFAULT_DEPTH
    bounds: float = constants.EXTRACTION_BOUND
    band: float = constants.DEFAULT_BAND
    dilation: int = 1
    min_resolution: int = constants.COARSE_MIN_RESOLUTION
    chunk_points: int = QUERY_CHUNK_POINTS
    close: bool = True
    grow: bool = True

    def validate(self, num_parts: Any) -> None:
        """Raises InputError naming the first bad value (depth: :meth:`levels`)."""
        _validate(num_parts, self.bounds, self.chunk_points)
        if not np.isfinite(self.band) or self.band < 0:
            raise InputError(f"band: expected a finite number >= 0, got {self.band!r}")
        if int(self.dilation) < 0:
            raise InputError(f"dilation: expected an int >= 0, got {self.dilation!r}")

    def levels(self) -> list[int]:
        """The levels' resolutions, coarse to fine (:func:`levels_for_depth`)."""
        return levels_for_depth(self.depth, self.min_resolution)


#: ExtractionOptions' defaults, for the entry points' keyword defaults.
_DEFAULTS = ExtractionOptions()


class _Decoder:
    """Feeds per-part index lists to ``decode`` in chunks and checks its answers."""

    def __init__(self, decode: DecodeFn, chunk_points: int, bounds: float,
                 progress: ProgressFn | None, stats: ExtractionStats, num_levels: int):
        self.decode = decode
        self.chunk = int(chunk_points)
        self.bounds = float(bounds)
        self.progress = progress
        self.stats = stats
        self.num_levels = num_levels

    def __call__(self, level: int, resolution: int, indices: list[np.ndarray]) -> list[np.ndarray]:
        counts = [len(ix) for ix in indices]
        total = sum(counts)
        out = [np.empty(c, dtype=np.float32) for c in counts]
        done = 0
        empty = np.zeros((0, 3), dtype=np.float32)
        for start in range(0, max(counts, default=0), self.chunk):
            batch: list[np.ndarray] = []
            for p, ix in enumerate(indices):
                if start >= len(ix):
                    batch.append(empty)
                elif p and ix is indices[p - 1]:  # same index array (level 0): reuse
                    batch.append(batch[-1])
                else:
                    batch.append(grid_points(ix[start:start + self.chunk], resolution, self.bounds))
            t0 = time.perf_counter()
            result = self.decode(batch)
            self.stats.decode_seconds += time.perf_counter() - t0
            self.stats.decode_calls += 1
            if result is None or len(result) != len(batch):
                got = "None" if result is None else f"{len(result)} arrays"
                raise InputError(f"decode: expected a list of {len(batch)} logit arrays (one per part), got {got}")
            for p, (pts, logits) in enumerate(zip(batch, result)):
                arr = np.asarray(logits, dtype=np.float32).reshape(-1)
                if arr.shape[0] != pts.shape[0]:
                    raise InputError(
                        f"decode: part {p} returned {arr.shape[0]} logits for {pts.shape[0]} points"
                    )
                out[p][start:start + pts.shape[0]] = arr
                done += pts.shape[0]
            if self.progress is not None:
                self.progress(level, self.num_levels, done, total)
        return out


#: value of the layer put around the grid by ``close=True``: far below any logit,
#: so the cap's vertices land on the box faces (within ~1e-6 of a cell)
_OUTSIDE = -1.0e6


def _fill_box_faces(grid: np.ndarray) -> None:
    """In place: unknown (NaN) points on the six faces of ``grid`` take the value
    of the nearest known point of the same face.

    In the coarse-to-fine grid an unknown point lies in a region away from the
    surface, bounded by known points of one sign (the band is dilated), and the
    coarse lattice points (every 2**levels-th point) are always known, so the
    nearest known value has the region's sign. Only the faces matter for
    capping: they are what the outside layer meets.
    """
    from scipy.ndimage import distance_transform_edt

    for axis in range(3):
        for index in (0, grid.shape[axis] - 1):
            face = np.moveaxis(grid, axis, 0)[index]  # a view: writes land in grid
            unknown = np.isnan(face)
            if unknown.any() and not unknown.all():
                _, (ii, jj) = distance_transform_edt(unknown, return_indices=True)
                face[...] = face[ii, jj]


def _touches_box(values: np.ndarray) -> bool:
    """Is any known point on the grid's faces inside (> 0)? Only then is there a cut to cap."""
    return any(bool((np.moveaxis(values, axis, 0)[index] > 0).any())
               for axis in range(3) for index in (0, values.shape[axis] - 1))


def mesh_grid(values: np.ndarray, resolution: int, bounds: float, device: str, close: bool = True) -> PartMesh:
    """Marching cubes of a level's (r+1)^3 host grid (NaN: unknown) at level 0,
    vertices in the part's frame; ``close`` caps a surface cut by the box (see
    the module docstring). ``device`` runs the kernel ("cpu" or "cuda")."""
    step = 2.0 * bounds / resolution
    origin = -bounds
    capped = close and _touches_box(values)
    if capped:
        # a solid cut by the box gets a cap on the box face instead of a hole:
        # one layer of "outside" around the grid (the reference leaves it open)
        padded = np.pad(values, 1, mode="constant", constant_values=_OUTSIDE)
        _fill_box_faces(padded[1:-1, 1:-1, 1:-1])  # the grid's faces, inside the one copy
        values = padded
        origin -= step
    v, f, _, _ = marching_cubes(values, 0.0, spacing=(step, step, step),
                                origin=(origin, origin, origin), device=device)
    if capped and len(v):
        # the cap's vertices sit within ~1e-6 cell outside the box; put them on it
        np.clip(v, -bounds, bounds, out=v)
    return PartMesh(v, f)


class _Sparse:
    """A part's final-level values without the full grid: the coarse grid (even
    points) plus the sorted linear indices and values of the points queried."""

    def __init__(self, coarse: np.ndarray, r: int):
        self.coarse, self.n = coarse, r + 1
        self.idx = np.zeros(0, dtype=np.int64)
        self.val = np.zeros(0, dtype=np.float32)

    def known(self, ix: np.ndarray) -> np.ndarray:
        """(Q,) bool: are the fine points ``ix`` (linear, none on the coarse lattice) known?"""
        return native.sorted_member(self.idx, ix)

    def add(self, ix: np.ndarray, values: np.ndarray) -> None:
        """Merge points ``ix`` (ascending, none known yet) and their values in: linear, no re-sort."""
        self.idx, self.val = native.sparse_merge(self.idx, self.val, ix, values)

    def values(self, ijk: np.ndarray) -> np.ndarray:
        """Values at fine points (..., 3); NaN where unknown."""
        return native._np_sparse_values(self.coarse, self.idx, self.val, self.n, ijk)

    def grid(self, out: np.ndarray | None = None) -> np.ndarray:
        """The dense final grid (NaN where unknown), in ``out`` when given (reused
        from part to part: a fresh 515 MB grid per part at depth 9 costs its page faults)."""
        return native.sparse_grid(self.coarse, self.idx, self.val, self.n, out)


def _face_sign_changes(part: _Sparse, cells: np.ndarray, axis: int, side: int) -> np.ndarray:
    """(N,) bool: do the 3 x 3 fine points on the ``side`` face (0: low, 1: high)
    along ``axis`` of each coarse cell of ``cells`` (N, 3) not all have one sign?"""
    return native.face_sign_changes(part.coarse, part.idx, part.val, part.n, cells, axis, side)


def _unique_cells(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 3) cells once each, in C order (as np.argwhere of their mask lists them)."""
    return native.unique_cells(cells, shape)


def _corner_points(cells: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """native.refine_points of a mask holding only ``cells`` (N, 3), from the cell
    list: ascending fine indices of the corners of their eight sub-cells, less
    those on a known coarse point. Cost in the cells, not the grid."""
    return native.corner_points(cells, coarse)


def _near_band(band: np.ndarray, cells: np.ndarray, radius: int) -> np.ndarray:
    """(N,) bool: is each of ``cells`` (N, 3) in native.dilate_cells(band, radius),
    i.e. within ``radius`` cells (26-neighbourhood) of a band cell? Looked up
    for these cells only, not dilated over the grid."""
    return native.near_band(band, cells, radius)


class LevelOps(Protocol):
    """What :func:`run_levels` does with grids, cell masks, cell lists and point
    indices: the host's (numpy and cpp_ext, :class:`_HostOps`) or the torch
    decoder's device's (``resident._TorchOps``). Arrays are the implementation's
    own (numpy arrays or torch tensors); ``len`` is a point or cell count,
    masks and values are indexed by cell lists (N, 3) as numpy's are, and a
    level's grid is its (r+1)^3 values, NaN where not queried.
    """

    def query(self, level: int, resolution: int, indices: list) -> list:
        """Each part's logits at its linear point ``indices`` of the level (chunked decoder calls)."""

    def all_points(self, resolution: int) -> Any:
        """Every linear point index of a level of ``resolution`` cells."""

    def band(self, grid: Any, band: float) -> Any:
        """Cell mask of the band rule (native.band_cells)."""

    def dilate(self, cells: Any, radius: int) -> Any:
        """Cell mask dilated by ``radius`` cells (native.dilate_cells)."""

    def refine(self, cells: Any, grid: Any) -> Any:
        """Ascending fine indices of the corners of the mask's sub-cells, less known coarse points."""

    def finer(self, grid: Any, resolution: int, indices: Any, values: Any, last: bool) -> Any:
        """The next level's grid: ``grid`` on its even points, ``values`` at ``indices``, NaN elsewhere."""

    def mesh(self, grid: Any, resolution: int) -> PartMesh:
        """The part's mesh of a finished grid (host arrays)."""

    # final-level growth over cell lists
    def growth_values(self, grid: Any, resolution: int) -> Any:
        """An empty store of the final level's values over the coarse ``grid``."""

    def add(self, values: Any, indices: Any, logits: Any) -> None:
        """Store ``logits`` at the (ascending, not yet known) points ``indices``."""

    def known(self, values: Any, indices: Any) -> Any:
        """bool: which of the points ``indices`` (none on the coarse lattice) are stored."""

    def final_grid(self, values: Any) -> Any:
        """The final level's dense grid of a store (the store is not used after)."""

    def band_reach(self, band: Any, radius: int) -> Any:
        """What :meth:`near_band` looks ``radius``-neighbourhoods of the band mask up in."""

    def near_band(self, reach: Any, cells: Any, among: Any, radius: int) -> Any:
        """bool (N,): ``among`` (bool (N,)) less the cells not within ``radius`` cells of a band cell."""

    def cells_of(self, mask: Any) -> Any:
        """(N, 3) int64 cells of a mask, in C order."""

    def copy_mask(self, mask: Any) -> Any:
        """A bool copy of a cell mask (the growth's active set)."""

    def lookup(self, mask: Any, cells: Any) -> Any:
        """bool (N,): the mask at ``cells``."""

    def activate(self, mask: Any, cells: Any) -> None:
        """Set the mask at ``cells``."""

    def face_neighbours(self, cells: Any, axis: int, side: int, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """(cells whose ``side`` neighbour along ``axis`` is in the grid, those neighbours)."""

    def face_sign_changes(self, values: Any, cells: Any, axis: int, side: int) -> Any:
        """bool (N,): do the 3 x 3 fine points of the cells' ``side`` face change sign?"""

    def unique_cells(self, cells: list, shape: tuple[int, ...]) -> Any:
        """The cells of the lists, once each, in C order ((0, 3) for none)."""

    def corner_points(self, cells: Any, grid: Any) -> Any:
        """:meth:`refine` of a mask holding only ``cells``, from the cell list."""


def run_levels(ops: LevelOps, num_parts: int, options: ExtractionOptions, levels: Sequence[int],
               stats: ExtractionStats) -> list[PartMesh]:
    """The coarse-to-fine level loop over ``ops``: every point of the coarse
    level; at each next level the corners of the sub-cells of the dilated band;
    at the final level (``options.grow``) the band's cells first, then round by
    round only the dilated cells the surface runs into (:func:`_grow_final`);
    then each part's mesh. Records the queries in ``stats``; one decoder call
    per chunk, all parts together.
    """
    r0 = levels[0]
    all_idx = ops.all_points(r0)
    vals = ops.query(0, r0, [all_idx] * num_parts)
    grids = [v.reshape((r0 + 1,) * 3) for v in vals]
    stats.count_level([len(all_idx)] * num_parts)
    del all_idx, vals
    if len(levels) == 1:
        return [ops.mesh(g, r0) for g in grids]
    for li in range(1, len(levels) - 1):
        grids = _next_level(ops, li, levels[li], grids, options, stats, last=False)
    if options.grow:
        return _grow_final(ops, len(levels) - 1, levels[-1], grids, options, stats)
    return _next_level(ops, len(levels) - 1, levels[-1], grids, options, stats, last=True)


def _next_level(ops: LevelOps, level: int, r: int, grids: list, options: ExtractionOptions,
                stats: ExtractionStats, last: bool) -> list:
    """Query the corners of the sub-cells of every part's dilated band; the next
    level's grids, or at the ``last`` level the meshes (one fine grid at a time)."""
    indices = []
    for g in grids:
        cells = ops.band(g, options.band)
        if options.dilation:
            cells = ops.dilate(cells, int(options.dilation))
        indices.append(ops.refine(cells, g))
    vals = ops.query(level, r, indices)
    stats.count_level([len(ix) for ix in indices])
    out = []
    for p in range(len(grids)):
        fine = ops.finer(grids[p], r, indices[p], vals[p], last)
        grids[p] = indices[p] = vals[p] = None  # only one final grid at a time
        out.append(ops.mesh(fine, r) if last else fine)
        del fine
    return out


def _grow_final(ops: LevelOps, level: int, r: int, grids: list, options: ExtractionOptions,
                stats: ExtractionStats) -> list[PartMesh]:
    """Query the final level of every part, growing from the band; the meshes.

    The plain rule queries every corner of the sub-cells of the dilated band
    ``A``. Marching cubes only meshes the surface inside queried cells, and a
    surface leaves a cell only through a face whose 3 x 3 fine points do not
    all have one sign. So: query the band cells ``B`` first; then, while a
    queried cell has such a face towards a cell of ``A`` not yet queried,
    query those cells too (all parts in one ``query`` call per round). The
    surface found is the plain rule's, except a piece lying wholly in
    dilation cells that touches no band cell (tests/runtime/test_extract_queries.py
    bounds the difference on model output). No point is queried twice: known
    coarse points and points shared with cells queried before are skipped.
    After the band (a whole-grid step), a round costs in the cells it grows to.
    """
    n, dilation = len(grids), int(options.dilation)
    values = [ops.growth_values(g, r) for g in grids]
    reach, active, cells, indices = [], [], [], []
    for g in grids:
        b = ops.band(g, options.band)
        reach.append(ops.band_reach(b, dilation))
        active.append(ops.copy_mask(b))
        cells.append(ops.cells_of(b))
        indices.append(ops.refine(b, g) if len(cells[-1]) else ops.corner_points(cells[-1], g))
    counts = [0] * n
    first = True
    while any(len(c) for c in cells):
        if any(len(ix) for ix in indices):
            vals = ops.query(level, r, indices)
            for p in range(n):
                if len(indices[p]):
                    ops.add(values[p], indices[p], vals[p])
                    counts[p] += len(indices[p])
            del vals
        for p in range(n):
            cells[p] = _grow_round(ops, values[p], reach[p], active[p], cells[p], first, dilation)
            ix = ops.corner_points(cells[p], grids[p])
            indices[p] = ix[~ops.known(values[p], ix)]  # shared with cells queried in an earlier round
        first = False
    stats.count_level(counts)
    del reach, active, cells, indices
    meshes = []
    for p in range(n):
        fine = ops.final_grid(values[p])
        values[p] = grids[p] = None  # only one final grid at a time
        meshes.append(ops.mesh(fine, r))
        del fine
    return meshes


def _grow_round(ops: LevelOps, values: Any, reach: Any, active: Any, cells: Any, first: bool,
                dilation: int) -> Any:
    """One growth round of a part: the cells of the dilated band, not active yet,
    that a face with a sign change of one of ``cells`` (those queried last round)
    leads to; they are made active."""
    shape = tuple(active.shape)
    grown = []
    if len(cells):
        for axis in range(3):
            for side in (0, 1):
                sel, nbs = ops.face_neighbours(cells, axis, side, shape)
                cand = ~ops.lookup(active, nbs)
                # in the dilated band: always, for a face neighbour of a band cell (round 1)
                if not (first and dilation >= 1):
                    cand = ops.near_band(reach, nbs, cand, dilation)
                if not bool(cand.any()):
                    continue
                grown.append(nbs[cand][ops.face_sign_changes(values, sel[cand], axis, side)])
    new = ops.unique_cells(grown, shape)  # none was active before
    ops.activate(active, new)
    return new


def _finer_grid(coarse: np.ndarray, r: int, indices: np.ndarray, values: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """The (r+1)^3 grid of the next level: ``coarse`` on its even points,
    ``values`` at ``indices``, NaN elsewhere (in ``out`` when given)."""
    fine = out if out is not None else np.empty((r + 1,) * 3, dtype=np.float32)
    fine.fill(np.nan)
    fine[::2, ::2, ::2] = coarse
    fine.reshape(-1)[indices] = values
    return fine


class CellListOps:
    """The :class:`LevelOps` steps that read the same for numpy arrays and torch tensors (both
    index with an (N, 3) cell list); :class:`_HostOps` and ``resident._TorchOps`` share them."""

    def lookup(self, mask, cells):
        return mask[cells[:, 0], cells[:, 1], cells[:, 2]]

    def activate(self, mask, cells) -> None:
        mask[cells[:, 0], cells[:, 1], cells[:, 2]] = True

    def face_neighbours(self, cells, axis: int, side: int, shape: tuple[int, ...]):
        nb = 1 * cells  # a copy, for either kind of array
        nb[:, axis] += 1 if side else -1
        ok = (nb[:, axis] >= 0) & (nb[:, axis] < shape[axis])
        return cells[ok], nb[ok]


class _HostOps(CellListOps):
    """:class:`LevelOps` on the host: numpy arrays, cpp_ext's kernels on ``device``
    ("cpu" or "cuda") for the whole-grid steps and marching cubes."""

    def __init__(self, run: "_Decoder", bounds: float, device: str, close: bool):
        self.query, self.bounds, self.device, self.close = run, float(bounds), device, close
        self._final: np.ndarray | None = None  # the final grid's buffer, reused from part to part

    def _buffer(self, r: int) -> np.ndarray:
        """One final-level grid for all parts (a fresh 515 MB grid per part at depth 9 costs its page faults)."""
        if self._final is None or self._final.shape != (r + 1,) * 3:
            self._final = np.empty((r + 1,) * 3, dtype=np.float32)
        return self._final

    def all_points(self, resolution: int) -> np.ndarray:
        return np.arange((resolution + 1) ** 3, dtype=np.int64)

    def band(self, grid: np.ndarray, band: float) -> np.ndarray:
        return native.band_cells(grid, band, device=self.device)

    def dilate(self, cells: np.ndarray, radius: int) -> np.ndarray:
        return native.dilate_cells(cells, radius, device=self.device)

    def refine(self, cells: np.ndarray, grid: np.ndarray) -> np.ndarray:
        return native.refine_points(cells, grid, device=self.device)

    def finer(self, grid, resolution, indices, values, last):
        return _finer_grid(grid, resolution, indices, values, self._buffer(resolution) if last else None)

    def mesh(self, grid: np.ndarray, resolution: int) -> PartMesh:
        return mesh_grid(grid, resolution, self.bounds, self.device, self.close)

    def growth_values(self, grid: np.ndarray, resolution: int) -> _Sparse:
        return _Sparse(grid, resolution)

    def add(self, values: _Sparse, indices: np.ndarray, logits: np.ndarray) -> None:
        values.add(indices, logits)

    def known(self, values: _Sparse, indices: np.ndarray) -> np.ndarray:
        return values.known(indices)

    def final_grid(self, values: _Sparse) -> np.ndarray:
        return values.grid(out=self._buffer(values.n - 1))

    def band_reach(self, band: np.ndarray, radius: int) -> np.ndarray:
        return band.view(bool)  # 0 / 1 bytes; _near_band looks the neighbourhoods up

    def near_band(self, reach: np.ndarray, cells: np.ndarray, among: np.ndarray, radius: int) -> np.ndarray:
        among[among] = _near_band(reach, cells[among], radius)  # looked up for these cells only
        return among

    def cells_of(self, mask: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(np.flatnonzero(mask), mask.shape), axis=1).astype(np.int64)

    def copy_mask(self, mask: np.ndarray) -> np.ndarray:
        return mask.astype(bool)

    def face_sign_changes(self, values: _Sparse, cells: np.ndarray, axis: int, side: int) -> np.ndarray:
        return _face_sign_changes(values, cells, axis, side)

    def unique_cells(self, cells: list, shape: tuple[int, ...]) -> np.ndarray:
        return _unique_cells(np.concatenate(cells), shape) if cells else np.zeros((0, 3), np.int64)

    def corner_points(self, cells: np.ndarray, grid: np.ndarray) -> np.ndarray:
        return _corner_points(cells, grid) if len(cells) else np.zeros(0, np.int64)


def extract_meshes(
    decode: DecodeFn,
    num_parts: int,
    *,
    depth: int = _DEFAULTS.depth,
    bounds: float = _DEFAULTS.bounds,
    band: float = _DEFAULTS.band,
    dilation: int = _DEFAULTS.dilation,
    min_resolution: int = _DEFAULTS.min_resolution,
    chunk_points: int = _DEFAULTS.chunk_points,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    close: bool = _DEFAULTS.close,
    grow: bool = _DEFAULTS.grow,
) -> tuple[list[PartMesh], ExtractionStats]:
    """Coarse-to-fine extraction of every part's zero-level surface.

    Args:
        decode: callback, see the module docstring.
        num_parts: number of parts (length of the lists ``decode`` sees).
        depth, bounds, band, dilation, min_resolution, chunk_points, close:
            see :class:`ExtractionOptions` (defaults there).
        progress: optional ``progress(level, num_levels, done, total)``.
        device: "cpu" or "cuda" for the band and marching-cubes kernels.
        grow: at the final level query the band's cells first and then only
            the dilation cells the surface runs into (:func:`run_levels`),
            instead of every dilated cell; False queries every dilated cell.

    Returns:
        (one :class:`PartMesh` per part, in the normalized frame;
        :class:`ExtractionStats` with the per-level query counts).

    Raises:
        InputError: bad arguments, or ``decode`` answered with the wrong shapes.
        BackendUnavailable: device="cuda" cannot be used here.
    """
    t_start = time.perf_counter()
    options = ExtractionOptions(depth=depth, bounds=bounds, band=band, dilation=dilation,
                                min_resolution=min_resolution, chunk_points=chunk_points, close=close, grow=grow)
    options.validate(num_parts)
    native.kernels(device)  # fail early when the device is unusable
    levels = options.levels()
    stats = ExtractionStats.for_levels(levels, num_parts)
    run = _Decoder(decode, chunk_points, bounds, progress, stats, len(levels))
    meshes = run_levels(_HostOps(run, bounds, device, close), num_parts, options, levels, stats)
    stats.total_seconds = time.perf_counter() - t_start
    return meshes, stats


def extract_dense(
    decode: DecodeFn,
    num_parts: int,
    *,
    depth: int = _DEFAULTS.depth,
    resolution: int | None = None,
    bounds: float = _DEFAULTS.bounds,
    chunk_points: int = _DEFAULTS.chunk_points,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    close: bool = _DEFAULTS.close,
) -> tuple[list[PartMesh], ExtractionStats]:
    """Evaluate every point of the final grid, then marching cubes (reference path).

    Same grid geometry and ``close`` as :func:`extract_meshes`; ``resolution``
    (cells per axis) defaults to the final level of ``depth`` (``2**depth - 8``).
    """
    t_start = time.perf_counter()
    _validate(num_parts, bounds, chunk_points)
    native.kernels(device)
    if resolution is None:
        r = levels_for_depth(depth)[-1]
    else:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
            raise InputError(f"resolution: expected an int >= 1, got {resolution!r}")
        r = int(resolution)
    stats = ExtractionStats.for_levels([r], num_parts)
    run = _Decoder(decode, chunk_points, bounds, progress, stats, 1)
    options = ExtractionOptions(bounds=bounds, chunk_points=chunk_points, close=close)
    meshes = run_levels(_HostOps(run, bounds, device, close), num_parts, options, [r], stats)
    stats.total_seconds = time.perf_counter() - t_start
    return meshes, stats
