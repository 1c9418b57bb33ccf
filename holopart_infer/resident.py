"""Coarse-to-fine extraction with the grids, query points and logits kept on the
decoder's device (torch tensors).

:func:`extract_meshes_resident` does what :func:`holopart_infer.extract.extract_meshes`
does -- the same levels, band rule, dilation, refinement, final-level growth, query order, points
per decoder call, statistics and meshes -- but every level grid, band and
refinement mask, query point and logit is a torch tensor on the decoder's
device. With a torch decoder on CUDA nothing goes through the host per decoder
call; what crosses is one point count per part and level (to size the chunks)
and each part's finished mesh. Marching cubes runs on the device grid through
cpp_ext's CUDA kernel (``marching_cubes_device``, no upload). Two cases take the
host path for their last step, on purpose: a part whose surface is cut by the
extraction box (the cap's face fill is a host distance transform) and grids on
a CPU tensor (the CPU kernels read the tensor's memory in place).

The band, dilation and refinement rules are written as tensor operations that
give exactly the masks and indices of cpp_ext's kernels
(:func:`holopart_infer.native.band_cells`, ``dilate_cells``, ``refine_points``);
tests/runtime/test_resident.py compares them on grids with unknown points and
compares whole extractions with the host path.

This module imports torch: only the torch backend's path imports it.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from holopart_infer import constants, extract, native
from holopart_infer.errors import InputError

__all__ = ["QueryFn", "band_cells", "dilate_cells", "refine_points", "grid_points", "extract_meshes_resident"]

#: query(points) -> logits: float32 (P, Q, 3) on the device -> (P, Q) or (P, Q, 1), inside > 0.
QueryFn = Callable[[torch.Tensor], torch.Tensor]

_CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def band_cells(grid: torch.Tensor, band: float) -> torch.Tensor:
    """bool (X, Y, Z): cells of the (X+1, Y+1, Z+1) grid with a known corner of
    ``|value| < band`` or known corners of both signs (``> 0`` / ``<= 0``);
    NaN and infinite values are unknown. Same rule as native.band_cells."""
    cx, cy, cz = (int(s) - 1 for s in grid.shape)
    known = torch.isfinite(grid)
    near = torch.zeros((cx, cy, cz), dtype=torch.bool, device=grid.device)
    pos = torch.zeros_like(near)
    neg = torch.zeros_like(near)
    for a, b, c in _CORNERS:
        v = grid[a:a + cx, b:b + cy, c:c + cz]
        k = known[a:a + cx, b:b + cy, c:c + cz]
        inside = v > 0
        near |= k & (v < band) & (v > -band)
        pos |= k & inside
        neg |= k & ~inside
    return near | (pos & neg)


def dilate_cells(cells: torch.Tensor, radius: int) -> torch.Tensor:
    """bool: box dilation by ``radius`` cells (26-neighbourhood), clipped at the grid's border."""
    if radius <= 0:
        return cells.clone()
    x = cells.to(torch.float16 if cells.is_cuda else torch.float32)[None, None]
    return F.max_pool3d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def _spread(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """Cells -> fine points along one axis (n cells -> 2n + 1 points): odd fine
    point 2m+1 lies inside cell m, even point 2m on the face of cells m-1 and m."""
    n = mask.shape[axis]
    shape = list(mask.shape)
    shape[axis] = 2 * n + 1
    out = torch.zeros(shape, dtype=torch.bool, device=mask.device)
    odd = [slice(None)] * 3
    odd[axis] = slice(1, 2 * n, 2)
    out[tuple(odd)] = mask
    shape[axis] = n + 1
    even = torch.zeros(shape, dtype=torch.bool, device=mask.device)
    lo, hi = [slice(None)] * 3, [slice(None)] * 3
    lo[axis], hi[axis] = slice(0, n), slice(1, n + 1)
    even[tuple(lo)] |= mask
    even[tuple(hi)] |= mask
    ev = [slice(None)] * 3
    ev[axis] = slice(0, 2 * n + 1, 2)
    out[tuple(ev)] = even
    return out


def refine_points(cells: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
    """int64 ascending C-order indices of the points of the twice finer grid
    ((2X+1, 2Y+1, 2Z+1)) on a corner of the eight sub-cells of an active cell,
    less the points that coincide with a known coarse point. Same result as
    native.refine_points."""
    fine = _spread(_spread(_spread(cells, 0), 1), 2)
    if coarse is not None:
        fine[::2, ::2, ::2] &= ~torch.isfinite(coarse)
    return torch.nonzero(fine.reshape(-1)).reshape(-1)


def grid_points(indices: torch.Tensor, resolution: int, bounds: float) -> torch.Tensor:
    """float32 (Q, 3) world coordinates of a level's linear point indices (as extract.grid_points)."""
    n = resolution + 1
    ijk = torch.stack((indices // (n * n), (indices // n) % n, indices % n), dim=1).to(torch.float64)
    return (ijk * (2.0 * bounds / resolution) - bounds).to(torch.float32)


class _Query:
    """Feeds each part's device indices to ``query`` in chunks, as extract's host decoder does."""

    def __init__(self, query: QueryFn, chunk: int, bounds: float, progress, stats: extract.ExtractionStats,
                 num_levels: int, device: torch.device, row_points: int | None = None):
        self.query, self.chunk, self.bounds = query, int(chunk), float(bounds)
        self.progress, self.stats, self.num_levels, self.device = progress, stats, num_levels, device
        self.row_points = row_points

    def __call__(self, level: int, resolution: int, indices: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.row_points:
            return self._packed(level, resolution, indices)
        counts = [int(ix.numel()) for ix in indices]  # sizes are host-side already: no copy
        total = sum(counts)
        out = [torch.empty(c, dtype=torch.float32, device=self.device) for c in counts]
        done = 0
        shared = len(indices) > 1 and all(ix is indices[0] for ix in indices)  # level 0
        for start in range(0, max(counts, default=0), self.chunk):
            width = min(self.chunk, max(counts) - start)
            batch = torch.zeros((len(indices), width, 3), dtype=torch.float32, device=self.device)
            if shared:
                batch[:] = grid_points(indices[0][start:start + width], resolution, self.bounds)
            else:
                for p, ix in enumerate(indices):
                    if start < counts[p]:
                        pts = grid_points(ix[start:start + self.chunk], resolution, self.bounds)
                        batch[p, :pts.shape[0]] = pts
            t0 = time.perf_counter()
            logits = self.query(batch)
            self.stats.decode_seconds += time.perf_counter() - t0
            self.stats.decode_calls += 1
            if not isinstance(logits, torch.Tensor) or logits.shape[:2] != batch.shape[:2] or \
                    logits.numel() != batch.shape[0] * batch.shape[1]:
                got = type(logits).__name__ if not isinstance(logits, torch.Tensor) else tuple(logits.shape)
                raise InputError(f"query: expected a tensor of shape {tuple(batch.shape[:2])} (or with a trailing 1) "
                                 f"of logits for points {tuple(batch.shape)}, got {got}")
            logits = logits.reshape(batch.shape[:2]).to(torch.float32)
            self.stats.fed_points += batch.shape[0] * batch.shape[1]
            for p in range(len(indices)):
                n = min(self.chunk, counts[p] - start)
                if n > 0:
                    out[p][start:start + n] = logits[p, :n]
                    done += n
            if self.progress is not None:
                self.progress(level, self.num_levels, done, total)
        return out


    def _packed(self, level: int, resolution: int, indices: list[torch.Tensor]) -> list[torch.Tensor]:
        """The same calls (at most ``chunk`` points per part each), each fed as
        packed rows (extract.row_plan, one query per row length): ``query(points (R, L, 3), parts)`` with
        ``parts`` the host int64 (R,) part of each row; no padding rows."""
        counts = [int(ix.numel()) for ix in indices]
        total = sum(counts)
        out = [torch.empty(c, dtype=torch.float32, device=self.device) for c in counts]
        done = 0
        for start in range(0, max(counts, default=0), self.chunk):
            take = [max(0, min(self.chunk, c - start)) for c in counts]
            pts = {}
            for p, n in enumerate(take):
                if n:
                    same = p and indices[p] is indices[p - 1] and (p - 1) in pts
                    pts[p] = pts[p - 1] if same else grid_points(indices[p][start:start + n], resolution, self.bounds)
            for L, rows in extract.row_plan(take, self.row_points):
                batch = torch.zeros((len(rows), L, 3), dtype=torch.float32, device=self.device)
                flat = batch.view(-1, 3)
                segs = extract.row_segments(rows, L)
                for p, at, s, n in segs:
                    flat[at:at + n] = pts[p][s:s + n]
                parts = np.fromiter((p for p, _, _ in rows), dtype=np.int64, count=len(rows))
                t0 = time.perf_counter()
                logits = self.query(batch, parts)
                self.stats.decode_seconds += time.perf_counter() - t0
                if not isinstance(logits, torch.Tensor) or logits.numel() != batch.shape[0] * L:
                    got = type(logits).__name__ if not isinstance(logits, torch.Tensor) else tuple(logits.shape)
                    raise InputError(f"query: expected {batch.shape[0]} x {L} logits for points "
                                     f"{tuple(batch.shape)}, got {got}")
                logits = logits.reshape(-1).to(torch.float32)
                for p, at, s, n in segs:
                    out[p][start + s:start + s + n] = logits[at:at + n]
                self.stats.fed_points += batch.shape[0] * L
            self.stats.decode_calls += 1
            done += sum(take)
            if self.progress is not None:
                self.progress(level, self.num_levels, done, total)
        return out


def _face_changes(fine: torch.Tensor, axis: int) -> torch.Tensor:
    """bool (n+1, ...): for each face plane ``k`` across ``axis`` (fine index 2k)
    and each cell of that plane, do its 3 x 3 fine points not all have one sign
    (``> 0`` inside; unknown counts as outside, as in extract._face_sign_changes)?"""
    plane = fine.movedim(axis, 0)[::2]  # (n+1, 2a+1, 2b+1)
    inside = (plane > 0).to(torch.float16 if fine.is_cuda else torch.float32)[:, None]
    some = F.max_pool2d(inside, kernel_size=3, stride=2)[:, 0] > 0
    every = F.max_pool2d(1 - inside, kernel_size=3, stride=2)[:, 0] == 0
    return (some & ~every).movedim(0, axis)


def _finer(coarse: torch.Tensor, r: int) -> torch.Tensor:
    """The (r+1)^3 grid of the next level: the coarse values on its even points, NaN elsewhere."""
    fine = torch.full((r + 1,) * 3, float("nan"), dtype=torch.float32, device=coarse.device)
    fine[::2, ::2, ::2] = coarse
    return fine


def _grow_final(run: "_Query", level: int, r: int, grids: list[torch.Tensor], band: float, dilation: int
                ) -> tuple[list[torch.Tensor], list[int]]:
    """extract._grow_final on device tensors: the final level's band cells first,
    then, round by round, the dilation cells the surface runs into. Same points,
    in the same order and the same decode calls as the host path; the final grids
    are dense (NaN where not queried, which is how points already queried are
    told apart: the decoder's logits are finite)."""
    n = len(grids)
    fines = [_finer(g, r) for g in grids]
    new = [band_cells(g, band) for g in grids]  # cells to query this round
    allowed = [dilate_cells(b, dilation) if dilation else b for b in new]
    active = [b.clone() for b in new]  # cells queried so far, or this round
    counts = [0] * n
    has_new = [bool(m.any()) for m in new]
    while any(has_new):
        indices = []
        for p in range(n):
            ix = refine_points(new[p], grids[p])  # empty when the part has no new cell
            indices.append(ix[torch.isnan(fines[p].view(-1)[ix])])  # less points of cells queried before
        if any(ix.numel() for ix in indices):
            vals = run(level, r, indices)
            for p in range(n):
                if indices[p].numel():
                    fines[p].view(-1)[indices[p]] = vals[p]
                    counts[p] += int(indices[p].numel())
        for p in range(n):
            grow = torch.zeros_like(new[p])
            if has_new[p]:
                for axis in range(3):
                    face = _face_changes(fines[p], axis).movedim(axis, 0)[1:-1]  # inner planes 1..c-1
                    nw = new[p].movedim(axis, 0)
                    g = grow.movedim(axis, 0)  # a view: writes land in grow
                    g[1:] |= nw[:-1] & face  # cell k grows to k+1 through plane k+1
                    g[:-1] |= nw[1:] & face  # cell k grows to k-1 through plane k
            new[p] = grow & allowed[p] & ~active[p]
            active[p] |= new[p]
            has_new[p] = bool(new[p].any())
    return fines, counts


def _touches_box(grid: torch.Tensor) -> bool:
    """Is any known point on the grid's six faces inside (> 0)? (one scalar to the host)"""
    faces = [grid[0], grid[-1], grid[:, 0], grid[:, -1], grid[:, :, 0], grid[:, :, -1]]
    return bool(torch.stack([(f > 0).any() for f in faces]).any())


def _mesh(grid: torch.Tensor, resolution: int, bounds: float, close: bool) -> extract.PartMesh:
    if grid.is_cuda and not (close and _touches_box(grid)):
        step = 2.0 * bounds / resolution
        grid = grid.contiguous()
        with torch.cuda.device(grid.device):
            torch.cuda.current_stream(grid.device).synchronize()  # the kernels use the legacy stream
            v, f, _, _ = native.kernels("cuda").marching_cubes_device(
                grid.data_ptr(), tuple(grid.shape), 0.0, (step,) * 3, (-bounds,) * 3)
        return extract.PartMesh(v, f)
    # a part cut by the box (the cap's face fill runs on the host), or a CPU tensor
    host = grid.cpu().numpy()
    return extract._mesh(host, resolution, bounds, "cuda" if grid.is_cuda else "cpu", close)


def extract_meshes_resident(
    query: QueryFn,
    num_parts: int,
    *,
    device: str | torch.device,
    depth: int = 9,
    bounds: float = extract.constants.EXTRACTION_BOUND,
    band: float = 0.95,
    dilation: int = 1,
    min_resolution: int = constants.COARSE_MIN_RESOLUTION,
    chunk_points: int = extract.DEFAULT_CHUNK_POINTS,
    progress: extract.ProgressFn | None = None,
    close: bool = True,
    grow: bool = True,
    row_points: int | None = None,
) -> tuple[list[extract.PartMesh], extract.ExtractionStats]:
    """:func:`holopart_infer.extract.extract_meshes` with everything on ``device``.

    Args:
        query: ``query(points)``: float32 (P, Q, 3) tensor on ``device`` (P =
            ``num_parts``; rows past a part's points are zero padding) -> logits
            (P, Q) or (P, Q, 1), inside > 0. Typically the torch decoder's query
            against the parts' key/values.
        device: the torch device of the tensors ("cuda", "cuda:1", "cpu").
        row_points: None: ``query`` gets one row per part, padded to the
            call's longest part (as above). An int (the pipeline passes
            ``chunk_points // 8``): packed rows, no padding rows (extract.PackedFeed's
            layout, :func:`extract.row_plan`, one ``query`` call per row length):
            ``query(points, parts)`` with points (R, L, 3) on ``device`` and
            ``parts`` the host int64 (R,) part of each row, whose key/values
            that row is queried against.
        other arguments: as :func:`holopart_infer.extract.extract_meshes`
            (``grow`` too: the same final-level growth, on dense device grids).

    Returns:
        (one :class:`~holopart_infer.extract.PartMesh` per part, host arrays;
        :class:`~holopart_infer.extract.ExtractionStats`).

    Raises:
        InputError: bad arguments, or ``query`` answered with the wrong shape.
        BackendUnavailable: a CUDA device but cpp_ext was built without CUDA.
    """
    t_start = time.perf_counter()
    extract._validate(num_parts, bounds, chunk_points)
    if not np.isfinite(band) or band < 0:
        raise InputError(f"band: expected a finite number >= 0, got {band!r}")
    if int(dilation) < 0:
        raise InputError(f"dilation: expected an int >= 0, got {dilation!r}")
    dev = torch.device(device)
    if dev.type == "cuda":
        native.kernels("cuda")  # marching cubes on the device grid needs cpp_ext's CUDA module
    levels = extract.levels_for_depth(depth, min_resolution)
    stats = extract.ExtractionStats(resolutions=list(levels))
    stats.queries_per_part = [[] for _ in range(num_parts)]
    stats.dense_queries = num_parts * (levels[-1] + 1) ** 3
    if row_points is not None and (isinstance(row_points, bool) or not isinstance(row_points, (int, np.integer))
                                   or row_points < 1):
        raise InputError(f"row_points: expected None or an int >= 1, got {row_points!r}")
    run = _Query(query, chunk_points, bounds, progress, stats, len(levels), dev, row_points)

    r0 = levels[0]
    all_idx = torch.arange((r0 + 1) ** 3, dtype=torch.int64, device=dev)
    vals = run(0, r0, [all_idx] * num_parts)
    grids = [v.reshape((r0 + 1,) * 3) for v in vals]
    stats.queries_per_level.append(num_parts * all_idx.numel())
    for q in stats.queries_per_part:
        q.append(all_idx.numel())
    del all_idx, vals

    meshes: list[extract.PartMesh] = []
    for li in range(1, len(levels)):
        r = levels[li]
        last = li == len(levels) - 1
        if last and grow:  # final level: grown from the band (extract._grow_final)
            finals, counts = _grow_final(run, li, r, grids, float(band), int(dilation))
            indices, vals = None, None
        else:
            indices = []
            for g in grids:
                cells = band_cells(g, float(band))
                if dilation:
                    cells = dilate_cells(cells, int(dilation))
                indices.append(refine_points(cells, g))
            vals = run(li, r, indices)
            counts = [int(ix.numel()) for ix in indices]
        stats.queries_per_level.append(int(sum(counts)))
        for q, c in zip(stats.queries_per_part, counts):
            q.append(int(c))
        new_grids = []
        for p in range(num_parts):
            if last and grow:
                fine = finals[p]
                finals[p] = None  # type: ignore[call-overload]
            else:
                fine = _finer(grids[p], r)
                fine.view(-1)[indices[p]] = vals[p]
            grids[p] = None  # type: ignore[call-overload]
            if last:
                meshes.append(_mesh(fine, r, bounds, close))
                del fine
            else:
                new_grids.append(fine)
        grids = new_grids
        del indices, vals
    if len(levels) == 1:
        meshes = [_mesh(g, r0, bounds, close) for g in grids]
    stats.total_seconds = time.perf_counter() - t_start
    return meshes, stats
