"""How much to trust a completed part, measured from the inputs alone, and the guard.

A completed part can be wrong in ways nobody sees without opening it: a blob
several times the size of its visible patch, a surface that does not pass
through the patch it was given, a part in many pieces. :func:`measure` scores a
completed part against what the model was given (the part's visible patch and
the whole object), with no ground truth:

* **coverage** (``coverage_mean``, ``coverage_p90``): distance from points of
  the input patch (``COVERAGE_SAMPLES`` area-weighted samples) to the completed
  surface, divided by the patch's bounding-box diagonal. A completion contains
  its visible patch, so these are near 0 for a good part.
* **growth** (``growth_extent``, ``growth_volume``): the completed part's
  bounding-box diagonal over the patch's, and its enclosed volume over the
  volume of the patch's bounding box (each side at least ``_MIN_SIDE`` of the
  diagonal, so a flat patch still has a box).
* **against the object** (``object_extent``, ``object_volume``): the same two
  ratios against the whole object's bounding box (every input part).
* **invented** (``invented``): share of the completed surface (area-weighted
  samples) farther than ``INVENTED_DISTANCE`` of the patch's diagonal from the
  patch: surface the model made up. About 0 for a part it was shown whole; up
  to the hidden share of an occluded part; most of a blob that wraps a thin
  patch (a panel completed as a slab), which coverage and growth cannot see.
* **closed_mismatch**: when the input patch is itself closed (the part was
  given whole: nothing of it was hidden), or closed but for slits (seams that
  do not meet: :func:`holopart_infer.postprocess.thin.sealed`, its holes capped
  adding under 2% of its area), 1 - the volume IoU of the completed part and
  that solid (``CLOSED_IOU_SAMPLES`` uniform points, generalized winding number
  inside tests); 0 for any other patch (nothing to compare: a patch with larger
  holes may be half of its part, a mug's handle whose other half is inside the body).
* **pieces**: connected components of the mesh (faces sharing a vertex, after
  merging coincident vertices); **closed**: every edge shared by exactly two faces.

The guard (:func:`implausible`) flags a part whose patch is not covered, that
grew beyond a plausible bound or that invented most of its surface;
:data:`THRESHOLDS` were chosen on held-out completions of the embedded model
(benchmarks/guard_thresholds.py, benchmarks/RESULTS-mini.md). The pipeline
replaces a flagged part by its visible patch closed into a solid
(:func:`holopart_infer.postprocess.thin.closed_patch`: as it is when already
closed, by its winding number when it encloses a volume, else thickened) unless
``guard=False``.

Cost: one KD-tree over ``SURFACE_SAMPLES`` samples of each surface (the
completion for coverage, the patch for ``invented``) plus exact point-triangle
distances to the triangles of the ``_CANDIDATES`` nearest samples of each
query point; no step is quadratic in the mesh size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = ["PartQuality", "THRESHOLDS", "measure", "implausible", "from_extras"]

COVERAGE_SAMPLES = 2000  # points drawn on the input patch
SURFACE_SAMPLES = 20000  # points drawn on the completed surface (candidate search only)
_CANDIDATES = 8  # nearest surface samples whose triangles are tested exactly
_MIN_SIDE = 0.05  # a bounding box's sides are at least this fraction of its diagonal (flat patches)
INVENTED_DISTANCE = 0.05  # "invented" surface: farther than this fraction of the patch's diagonal from it
INVENTED_SAMPLES = 4000  # points drawn on the completed surface for ``invented``
CLOSED_IOU_SAMPLES = 2000  # uniform points of the volume IoU behind ``closed_mismatch``

#: The guard's thresholds (a part is implausible when any measure exceeds its bound).
#: Chosen on held-out completions of the embedded model (benchmarks/guard_thresholds.py;
#: synthetic objects of seed 5000 and Sweet Home 3D furniture): coverage_p90,
#: object_extent and growth_volume as picked on the calibration split (most bad
#: completions caught with at most 2% of the good ones flagged); growth_extent
#: loosened from the picked 1.5 to 2.0 after a correct half-hidden part grew 1.57x
#: on the first evaluation split (a hidden part may double its visible extent).
#: invented (added 2026-12-05, the other four fixed): the calibration split picked 0.4
#: at 5% of the patch's diagonal; that flagged 6 of 84 good synthetic parts on the two
#: evaluation splits, so 0.5 ships (the next value, no false alarm on calibration); a
#: third, fresh split was scored once after that (benchmarks/RESULTS-mini.md).
#: closed_mismatch (2026-12-05, session 10): 0.5 -> 0.2, and measured on patches closed but for
#: slits too (thin.sealed). A closed patch is the whole part, so no
#: completion can beat it; a completion is kept only where it reproduces it (volume IoU >= 0.8).
#: The validation split's real objects cannot tell 0.5 from 0.1 (no kept closed part in between);
#: on held-out synthetic objects (seed 8000) 0.2 returns a lamp shade and three dumbbell weights as
#: given instead of completions at IoU 0.46-0.81 (benchmarks/RESULTS-mini.md).
#: False alarms and catches on held-out splits: benchmarks/RESULTS-mini.md.
THRESHOLDS = {
    "coverage_p90": 0.10,  # 90% of the patch within 10% of its diagonal of the completed surface
    "growth_extent": 2.0,  # bounding-box diagonal at most 2x the patch's
    "object_extent": 1.2,  # ... and at most 1.2x the whole object's
    "growth_volume": 4.0,  # enclosed volume at most 4x the patch's bounding box
    "invented": 0.5,  # at most half of the completed surface farther than 5% of the patch's diagonal from it
    "closed_mismatch": 0.2,  # a part given whole (closed patch, or but for slits): volume IoU >= 0.8 with it
}


@dataclass(frozen=True)
class PartQuality:
    """Per-part trust measures (see the module docstring); stored in the glb node's extras.

    Attributes:
        coverage_mean, coverage_p90: patch-to-completed-surface distance / patch diagonal
            (inf when the part is empty).
        growth_extent, growth_volume: completed part vs its patch (bounding-box diagonal; volume).
        object_extent, object_volume: completed part vs the whole object's bounding box.
        pieces: connected components; closed: every edge shared by exactly two faces.
        invented: share of the completed surface farther than ``INVENTED_DISTANCE`` of the
            patch's diagonal from the patch (NaN when read from a file written before it existed).
        closed_mismatch: 1 - volume IoU with the input patch when that patch is closed (or closed
            but for slits, :func:`holopart_infer.postprocess.thin.sealed`), else 0
            (NaN when read from a file written before it existed).
        plausible: within :data:`THRESHOLDS` (``reasons`` lists the measures that are not).
        replaced: the model's output was replaced by the closed visible patch (an
            implausible part with the guard on, or a part the model left empty);
            the measures are then the model output's, the reason it was replaced.
        stand_in: what replaced it: ``"implausible"`` or ``"empty"`` (None when not replaced).
    """

    coverage_mean: float
    coverage_p90: float
    growth_extent: float
    growth_volume: float
    object_extent: float
    object_volume: float
    pieces: int
    closed: bool
    invented: float = math.nan
    closed_mismatch: float = math.nan
    plausible: bool = True
    reasons: tuple[str, ...] = ()
    replaced: bool = False
    stand_in: str | None = None

    def as_extras(self) -> dict:
        """JSON-ready dict (glTF node extras, ledger, service); inf is written as None."""
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def summary(self) -> str:
        """One line: the measures that matter to a reader."""
        return (f"coverage mean {_fmt(self.coverage_mean)} p90 {_fmt(self.coverage_p90)}, "
                f"growth x{_fmt(self.growth_extent, 2)} (object x{_fmt(self.object_extent, 2)}), "
                f"invented {_fmt(self.invented, 2)}, closed mismatch {_fmt(self.closed_mismatch, 2)}, "
                f"{self.pieces} piece(s), {'closed' if self.closed else 'open'}")


def _fmt(x: float, digits: int = 3) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.{digits}f}"


def from_extras(d: dict) -> PartQuality:
    """A :class:`PartQuality` back from :meth:`PartQuality.as_extras` (None -> inf).

    Raises:
        ValueError: a missing or malformed field, naming it.
    """
    if not isinstance(d, dict):
        raise ValueError(f"quality extras must be an object, got {type(d).__name__}")
    optional = ("invented", "closed_mismatch", "plausible", "reasons", "replaced", "stand_in")
    missing = [f.name for f in fields(PartQuality) if f.name not in d and f.name not in optional]
    if missing:
        raise ValueError(f"quality extras: missing {', '.join(repr(m) for m in missing)}")
    kw = {}
    for f in fields(PartQuality):
        if f.name not in d:
            continue
        v = d[f.name]
        try:
            if f.name == "reasons":
                kw[f.name] = tuple(str(r) for r in (v or ()))
            elif f.name == "stand_in":
                kw[f.name] = None if v is None else str(v)
            elif f.name == "pieces":
                kw[f.name] = int(v)
            elif f.name in ("closed", "plausible", "replaced"):
                if not isinstance(v, bool):
                    raise TypeError
                kw[f.name] = v
            else:
                kw[f.name] = math.inf if v is None else float(v)
        except (TypeError, ValueError):
            raise ValueError(f"quality extras: {f.name!r} has a malformed value {v!r}") from None
    return PartQuality(**kw)


def _box(v: np.ndarray) -> tuple[float, float]:
    """(diagonal, volume) of the bounding box, sides at least _MIN_SIDE of the diagonal."""
    if len(v) == 0:
        return 0.0, 0.0
    ext = v.max(axis=0) - v.min(axis=0)
    diag = float(np.linalg.norm(ext))
    return diag, float(np.prod(np.maximum(ext, _MIN_SIDE * diag)))


def _volume(v: np.ndarray, f: np.ndarray) -> float:
    """Enclosed volume (divergence theorem; exact for a closed mesh, an estimate for an open one)."""
    if len(f) == 0:
        return 0.0
    t = v[f]
    return abs(float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum()) / 6.0)


def measure(vertices, faces, patch_vertices, patch_faces, object_bounds, *, seed: int = 0) -> PartQuality:
    """Measure one completed part against its input patch and the object (no ground truth).

    Args:
        vertices, faces: the completed part (input coordinates; any unit: measured in the
            object's normalized frame).
        patch_vertices, patch_faces: the part as given (its visible patch).
        object_bounds: (2, 3) min / max corner of the whole input object.
        seed: seeds the patch and surface samples (same inputs, same measures).

    Returns:
        :class:`PartQuality` with ``plausible``/``reasons`` set from :data:`THRESHOLDS`.
    """
    from holopart_infer.postprocess.cleanup import connected_components, edge_manifold
    from holopart_infer.model.surface import sample_surface, surface_distance
    from holopart_infer.postprocess.decimate import merge_coincident
    from holopart_infer.postprocess.thin import sealed
    from holopart_infer.errors import InputError

    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    pv = np.asarray(patch_vertices, dtype=np.float64).reshape(-1, 3)
    pf = np.asarray(patch_faces, dtype=np.int64).reshape(-1, 3)
    ob = np.asarray(object_bounds, dtype=np.float64).reshape(2, 3)
    # every measure is a ratio: take the object to about [-0.5, 0.5] first, so the tolerances
    # below (merging, the 1e-12 floors) and squared distances mean the same at any input unit
    center, size = ob.mean(axis=0), float(np.linalg.norm(ob[1] - ob[0]))
    if np.isfinite(size) and size > 0:
        v, pv, ob = (v - center) / size, (pv - center) / size, (ob - center) / size
    rng = np.random.default_rng([int(seed), 23])
    p_diag, p_box = _box(pv[np.unique(pf)] if len(pf) else pv)
    o_ext = ob[1] - ob[0]
    o_diag = float(np.linalg.norm(o_ext))
    o_box = float(np.prod(np.maximum(o_ext, _MIN_SIDE * o_diag)))
    if len(f) == 0:
        # empty: flagged by coverage alone (the other measures have nothing to measure)
        return _judge(PartQuality(math.inf, math.inf, 0.0, 0.0, 0.0, 0.0, 0, False, invented=0.0,
                                  closed_mismatch=0.0))
    vm, fm = merge_coincident(v, f)
    pieces, _ = connected_components(fm, len(vm))
    closed = edge_manifold(fm)
    try:
        pts, _, _ = sample_surface(pv, pf, COVERAGE_SAMPLES, rng)
        d = surface_distance(pts, vm, fm, rng, SURFACE_SAMPLES, _CANDIDATES) / max(p_diag, 1e-12)
        cov_mean, cov_p90 = float(d.mean()), float(np.quantile(d, 0.9))
    except InputError:  # a patch without area: nothing to cover
        cov_mean = cov_p90 = 0.0
    diag, _ = _box(vm[np.unique(fm)])
    vol = _volume(vm, fm)
    invented = _invented(vm, fm, pv, pf, p_diag, rng)
    pvm, pfm = merge_coincident(pv, pf)
    mismatch = 0.0
    if len(pfm):
        whole = (pvm, pfm) if edge_manifold(pfm) else sealed(pvm, pfm)
        if whole is not None:
            mismatch = 1.0 - _volume_iou(vm, fm, *whole, rng)
    return _judge(PartQuality(
        coverage_mean=cov_mean, coverage_p90=cov_p90,
        growth_extent=diag / max(p_diag, 1e-12), growth_volume=vol / max(p_box, 1e-30),
        object_extent=diag / max(o_diag, 1e-12), object_volume=vol / max(o_box, 1e-30),
        pieces=int(pieces), closed=bool(closed), invented=invented, closed_mismatch=float(mismatch)))


def _volume_iou(v: np.ndarray, f: np.ndarray, pv: np.ndarray, pf: np.ndarray, rng: np.random.Generator) -> float:
    """Volume IoU of two meshes on CLOSED_IOU_SAMPLES uniform points of their joint bounding box
    (inside: generalized winding number > 0.5, native kernel)."""
    from holopart_infer.extraction import native

    both = np.concatenate([v[np.unique(f)], pv[np.unique(pf)]])
    lo, hi = both.min(axis=0), both.max(axis=0)
    pts = rng.uniform(lo, hi, size=(CLOSED_IOU_SAMPLES, 3))
    a = native.winding_numbers(pts, v[f]) > 0.5
    b = native.winding_numbers(pts, pv[pf]) > 0.5
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def _invented(v: np.ndarray, f: np.ndarray, pv: np.ndarray, pf: np.ndarray, p_diag: float,
              rng: np.random.Generator) -> float:
    """Share of INVENTED_SAMPLES samples of the completed surface (v, f) farther than
    INVENTED_DISTANCE * p_diag from the patch (pv, pf); 0 when either has no area."""
    from holopart_infer.errors import InputError
    from holopart_infer.model.surface import sample_surface, surface_distance

    try:
        on_part, _, _ = sample_surface(v, f, INVENTED_SAMPLES, rng)
    except InputError:  # a completion without area invents nothing measurable
        return 0.0
    d = surface_distance(on_part, pv, pf, rng, SURFACE_SAMPLES, _CANDIDATES)  # inf: a patch without area
    if not np.isfinite(d).all():
        return 0.0
    return float(np.mean(d > INVENTED_DISTANCE * max(p_diag, 1e-12)))


def implausible(q: PartQuality, thresholds: dict | None = None) -> tuple[str, ...]:
    """The measures of ``q`` beyond ``thresholds`` (default :data:`THRESHOLDS`), e.g.
    ``("coverage_p90 0.31 > 0.10",)``; empty when the part is plausible."""
    th = THRESHOLDS if thresholds is None else thresholds
    out = []
    for name, bound in th.items():
        value = getattr(q, name)
        if not value <= bound:  # inf and NaN fail too
            out.append(f"{name} {_fmt(value, 2)} > {bound:g}")
    return tuple(out)


def _judge(q: PartQuality) -> PartQuality:
    from dataclasses import replace

    reasons = implausible(q)
    return replace(q, plausible=not reasons, reasons=reasons)


#: the glTF node ``extras`` key under which a part's scores are stored
EXTRAS_KEY = "holopart_quality"


def status(q: PartQuality | None) -> str:
    """One word for a part: ``ok``, ``implausible`` (flagged, kept), ``replaced`` (by the
    closed patch: implausible), ``stand-in`` (the model left it empty), ``unscored``."""
    if q is None:
        return "unscored"
    if q.replaced:
        return "stand-in" if q.stand_in == "empty" else "replaced"
    return "ok" if q.plausible else "implausible"


def read_scores(path) -> list[tuple[str, PartQuality | None]]:
    """The per-part scores stored in a result ``.glb``/``.gltf`` (node extras), in node order.

    Nodes without scores (not written by this library) give ``None``.

    Raises:
        InputError: the file cannot be read as glTF, or a stored score is malformed (naming the node).
    """
    from pathlib import Path

    from holopart_infer.errors import InputError, InputFileNotFound
    from holopart_infer.io.gltf_json import node_name, read_container

    path = Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"{path}: no such file")
    data = path.read_bytes()
    doc = read_container(data, str(path)).doc
    nodes = doc.get("nodes", []) if isinstance(doc, dict) else []
    out = []
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        if not isinstance(node, dict) or ("mesh" not in node and not isinstance(node.get("extras"), dict)):
            continue
        extras = node.get("extras")
        stored = extras.get(EXTRAS_KEY) if isinstance(extras, dict) else None
        name = str(node.get("name") or node_name(nodes, i))
        if stored is None:
            out.append((name, None))
            continue
        try:
            out.append((name, from_extras(stored)))
        except ValueError as e:
            raise InputError(f"{path}: node {name!r}: {e}") from None
    return out


def format_table(scored: list[tuple[str, PartQuality | None]]) -> str:
    """A plain-text table of the parts and their scores (the CLI's summary and ``inspect``)."""
    head = ("part", "status", "cover mean", "cover p90", "growth", "vs object", "invented", "mismatch", "pieces",
            "closed")
    rows = []
    for name, q in scored:
        if q is None:
            rows.append((name, status(q), "-", "-", "-", "-", "-", "-", "-", "-"))
            continue
        rows.append((name, status(q), _fmt(q.coverage_mean), _fmt(q.coverage_p90), "x" + _fmt(q.growth_extent, 2),
                     "x" + _fmt(q.object_extent, 2), _fmt(q.invented, 2), _fmt(q.closed_mismatch, 2), str(q.pieces),
                     "yes" if q.closed else "no"))
    widths = [max(len(str(r[k])) for r in (head, *rows)) for k in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if k < 2 else str(c).rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in (head, *rows)]
    for name, q in scored:  # why, for every part that is not plainly ok
        if q is not None and q.reasons:
            lines.append(f"  {name}: {status(q)}: {', '.join(q.reasons)}")
    return "\n".join(lines)
