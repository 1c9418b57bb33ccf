"""Coarse-to-fine extraction with the grids, query points and logits kept on the
decoder's device (torch tensors).

:func:`extract_meshes_resident` runs the level driver of
:func:`holopart_infer.extraction.extract.extract_meshes` (:func:`holopart_infer.extraction.extract.run_levels`)
over torch operations (:class:`_TorchOps`): the same levels, band rule, dilation,
refinement, final-level growth over the active cells, query order, points per
decoder call, statistics and meshes -- but every level grid, band and
refinement mask, cell list, query point and logit is a torch tensor on the
decoder's device. With a torch decoder on CUDA nothing goes through the host per decoder
call; what crosses is one point count per part and level (to size the chunks),
one cell count per part and growth round, and each part's finished mesh.
Marching cubes runs on the device grid through
cpp_ext's CUDA kernel (``marching_cubes_device``, no upload). Two cases take the
host path for their last step, on purpose: a part whose surface is cut by the
extraction box (the cap's face fill is a host distance transform) and grids on
a CPU tensor (the CPU kernels read the tensor's memory in place).

The band, dilation and refinement rules are written as tensor operations that
give exactly the masks and indices of cpp_ext's kernels
(:func:`holopart_infer.extraction.native.band_cells`, ``dilate_cells``, ``refine_points``),
the growth's cell-list steps those of extract's host operations;
tests/runtime/test_resident.py compares them on grids with unknown points and
compares whole extractions (meshes, queries per part and level, grown cells)
with the host path.

This module imports torch: only the torch backend's path imports it.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from holopart_infer.extraction import extract

from holopart_infer.extraction import native
from holopart_infer.errors import InputError

__all__ = ["QueryFn", "band_cells", "dilate_cells", "refine_points", "grid_points", "extract_meshes_resident"]

#: query(points) -> logits: float32 (P, Q, 3) on the device -> (P, Q) or (P, Q, 1), inside > 0.
QueryFn = Callable[[torch.Tensor], torch.Tensor]

_CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
_DEFAULTS = extract.ExtractionOptions()


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


def _finer(coarse: torch.Tensor, r: int) -> torch.Tensor:
    """The (r+1)^3 grid of the next level: the coarse values on its even points, NaN elsewhere."""
    fine = torch.full((r + 1,) * 3, float("nan"), dtype=torch.float32, device=coarse.device)
    fine[::2, ::2, ::2] = coarse
    return fine


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
    return extract.mesh_grid(host, resolution, bounds, "cuda" if grid.is_cuda else "cpu", close)


#: the 27 fine points of a cell's eight sub-cells, as offsets from its low corner (x2)
_CORNERS27 = [(a, b, c) for a in range(3) for b in range(3) for c in range(3)]


class _TorchOps(extract.CellListOps):
    """:class:`holopart_infer.extraction.extract.LevelOps` on the decoder's device: every
    grid, mask, cell list and index a torch tensor on ``device``; the final
    level's values in a dense grid (NaN where not queried: the decoder's logits
    are finite, so NaN tells a point not yet queried apart)."""

    def __init__(self, run: "_Query", bounds: float, device: torch.device, close: bool):
        self.query, self.bounds, self.device, self.close = run, float(bounds), device, close
        self._corners = torch.tensor(_CORNERS27, dtype=torch.int64, device=device)

    def all_points(self, resolution: int) -> torch.Tensor:
        return torch.arange((resolution + 1) ** 3, dtype=torch.int64, device=self.device)

    def band(self, grid: torch.Tensor, band: float) -> torch.Tensor:
        return band_cells(grid, float(band))

    def dilate(self, cells: torch.Tensor, radius: int) -> torch.Tensor:
        return dilate_cells(cells, radius)

    def refine(self, cells: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return refine_points(cells, grid)

    def finer(self, grid, resolution, indices, values, last):
        fine = _finer(grid, resolution)
        fine.view(-1)[indices] = values
        return fine

    def mesh(self, grid: torch.Tensor, resolution: int) -> extract.PartMesh:
        return _mesh(grid, resolution, self.bounds, self.close)

    def growth_values(self, grid: torch.Tensor, resolution: int) -> torch.Tensor:
        return _finer(grid, resolution)

    def add(self, values: torch.Tensor, indices: torch.Tensor, logits: torch.Tensor) -> None:
        values.view(-1)[indices] = logits

    def known(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return ~torch.isnan(values.view(-1)[indices])

    def final_grid(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def band_reach(self, band: torch.Tensor, radius: int) -> torch.Tensor:
        return dilate_cells(band, radius)  # one whole-grid pass; near_band is then a look-up

    def near_band(self, reach: torch.Tensor, cells: torch.Tensor, among: torch.Tensor, radius: int) -> torch.Tensor:
        return among & self.lookup(reach, cells)

    def cells_of(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask)

    def copy_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.clone()

    def face_sign_changes(self, values: torch.Tensor, cells: torch.Tensor, axis: int, side: int) -> torch.Tensor:
        """extract._face_sign_changes on the dense final grid (unknown counts as outside)."""
        base = 2 * cells
        base[:, axis] += 2 * side
        face = self._corners[self._corners[:, axis] == 0]  # the 3 x 3 points of the low face
        pts = base[:, None, :] + face[None]
        inside = values[pts[..., 0], pts[..., 1], pts[..., 2]] > 0.0  # (N, 9)
        return inside.any(dim=1) & ~inside.all(dim=1)

    def unique_cells(self, cells: list, shape: tuple[int, ...]) -> torch.Tensor:
        if not cells:
            return torch.zeros((0, 3), dtype=torch.int64, device=self.device)
        c = torch.cat(cells)
        lin = torch.unique((c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2])  # sorted: C order
        return torch.stack((lin // (shape[1] * shape[2]), (lin // shape[2]) % shape[1], lin % shape[2]), dim=1)

    def corner_points(self, cells: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """extract._corner_points on the device: the sub-cells' corners, ascending, less known coarse points."""
        if not len(cells):
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        n1, n2 = 2 * (int(grid.shape[1]) - 1) + 1, 2 * (int(grid.shape[2]) - 1) + 1
        fine = (2 * cells[:, None, :] + self._corners[None]).reshape(-1, 3)
        lin = torch.unique((fine[:, 0] * n1 + fine[:, 1]) * n2 + fine[:, 2])
        i, j, k = lin // (n1 * n2), (lin // n2) % n1, lin % n2
        on_coarse = ((i | j | k) & 1) == 0
        known = torch.zeros_like(on_coarse)
        known[on_coarse] = torch.isfinite(grid[i[on_coarse] >> 1, j[on_coarse] >> 1, k[on_coarse] >> 1])
        return lin[~known]


def extract_meshes_resident(
    query: QueryFn,
    num_parts: int,
    *,
    device: str | torch.device,
    depth: int = _DEFAULTS.depth,
    bounds: float = _DEFAULTS.bounds,
    band: float = _DEFAULTS.band,
    dilation: int = _DEFAULTS.dilation,
    min_resolution: int = _DEFAULTS.min_resolution,
    chunk_points: int = _DEFAULTS.chunk_points,
    progress: extract.ProgressFn | None = None,
    close: bool = _DEFAULTS.close,
    grow: bool = _DEFAULTS.grow,
    row_points: int | None = None,
) -> tuple[list[extract.PartMesh], extract.ExtractionStats]:
    """:func:`holopart_infer.extraction.extract.extract_meshes` with everything on ``device``.

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
        other arguments: as :func:`holopart_infer.extraction.extract.extract_meshes`
            (defaults: :class:`~holopart_infer.extraction.extract.ExtractionOptions`; the
            same level driver, :func:`~holopart_infer.extraction.extract.run_levels`).

    Returns:
        (one :class:`~holopart_infer.extraction.extract.PartMesh` per part, host arrays;
        :class:`~holopart_infer.extraction.extract.ExtractionStats`).

    Raises:
        InputError: bad arguments, or ``query`` answered with the wrong shape.
        BackendUnavailable: a CUDA device but cpp_ext was built without CUDA.
    """
    t_start = time.perf_counter()
    options = extract.ExtractionOptions(depth=depth, bounds=bounds, band=band, dilation=dilation,
                                        min_resolution=min_resolution, chunk_points=chunk_points, close=close,
                                        grow=grow)
    options.validate(num_parts)
    dev = torch.device(device)
    if dev.type == "cuda":
        native.kernels("cuda")  # marching cubes on the device grid needs cpp_ext's CUDA module
    levels = options.levels()
    stats = extract.ExtractionStats.for_levels(levels, num_parts)
    if row_points is not None and (isinstance(row_points, bool) or not isinstance(row_points, (int, np.integer))
                                   or row_points < 1):
        raise InputError(f"row_points: expected None or an int >= 1, got {row_points!r}")
    run = _Query(query, chunk_points, bounds, progress, stats, len(levels), dev, row_points)
    meshes = extract.run_levels(_TorchOps(run, bounds, dev, close), num_parts, options, levels, stats)
    stats.total_seconds = time.perf_counter() - t_start
    return meshes, stats
