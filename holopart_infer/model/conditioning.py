"""Model inputs of one object: surface samples of each part and of the whole, part frames.

Frames, from outside in:

* **input frame**: the coordinates of the input file (any unit).
* **model frame**: ``x_model = A((x_input - object_center) / object_scale)``, where
  ``A`` (:attr:`Conditions.axes`) is the exact rotation from the input's up axis
  to the model's (:func:`holopart_infer.io.frames.up_rotation`: a signed permutation
  of the coordinates; the identity when they agree or when ``model_up`` is not
  given). With
  ``normalize=True`` (default) ``object_center`` is the centre of the axis-aligned
  bounding box of all parts' vertices and ``object_scale`` is half of its
  longest side, so the object spans exactly [-1, 1] along its longest axis and
  is centred at the origin: the range the published model was trained on (the
  reference script does no normalization and assumes the input already spans
  about [-1, 1]). The map is a uniform scale plus a translation, so shapes are
  not distorted. With ``normalize=False`` the model frame is the input frame
  (``object_center = 0``, ``object_scale = 1``, the rotation still applied), as
  in the reference.
* **part frame** (per part i): ``x_part = (x_model - centers[i]) / scales[i]``
  with ``centers[i] = (max + min) / 2`` of the part's samples (model frame) and
  ``scales[i] = max ||p - centers[i]|| / (0.95 * 0.7)``. The decoder's mesh of
  part i lives in this frame; :meth:`Conditions.to_input_frame` maps it back.

Sampling (section 8 of the spec): ``num_points`` area-weighted samples with
face normals per part, and ``num_points`` for the whole object, which is the
concatenation of all parts' meshes sampled by area (so a part with twice the
area gets about twice the whole samples), plus the object's unassigned context
faces (negative labels, :attr:`Parts.context`) when there are any; context
samples have mask 0 for every part. The whole's mask channel for part i is
1 where the nearest part sample (over all parts' samples, a KD-tree) belongs to
part i, as in the reference.

Randomness: one ``numpy.random.default_rng(seed)`` draws, in order, part 0,
part 1, ..., part P-1, then the whole; same seed and parts -> same arrays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from holopart_infer import constants
from holopart_infer.errors import InputError
from holopart_infer.model.surface import sample_pieces, sample_surface  # noqa: F401  (sample_surface re-exported)

log = logging.getLogger("holopart_infer")

NUM_SURFACE_SAMPLES = constants.DEFAULT_NUM_POINTS
PART_NORMALIZE_SCALE = 0.7  # reference constant
PART_MARGIN = 0.95  # reference constant: parts fill 0.95 * 0.7 of the unit ball
OBJECT_HALF_EXTENT = 1.0  # normalize: longest bounding-box side -> [-1, 1]


@dataclass
class Conditions:
    """Model inputs of one object with P parts (arrays in the model frame).

    Attributes:
        part: (P, N, 6) float32, [xyz, normal] of each part's samples (the
            pipeline drops it, setting None, once the part tokens are drawn).
        whole_points: (N, 6) float32, [xyz, normal] of the whole object's
            samples, stored once: :attr:`whole` and :meth:`whole_of` add the
            per-part mask channel when asked.
        part_local: (P, N, 6) float32, ``part`` in each part's own frame
            (normals unchanged).
        centers: (P, 3) float64 part-frame centres (model frame).
        scales: (P,) float64 part-frame scales.
        object_center: (3,) float64, input-frame point mapped to the origin.
        object_scale: input-frame length mapped to 1.
        names: part names (same order).
        whole_labels: (N,) int64, index of the part nearest each whole sample
            (-1 for samples on context faces, which belong to no part).
        axes: the rotation from the input's axes to the model's
            (:class:`holopart_infer.io.frames.AxisMap`), None for the identity.
        input_up, model_up: the up axes it rotates between (None: not rotated).
    """

    part: np.ndarray | None
    whole_points: np.ndarray
    part_local: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    object_center: np.ndarray
    object_scale: float
    names: list[str] = field(default_factory=list)
    whole_labels: np.ndarray | None = None
    axes: object | None = None  # holopart_infer.io.frames.AxisMap
    input_up: str | None = None
    model_up: str | None = None

    @property
    def num_parts(self) -> int:
        return int(self.centers.shape[0])

    def whole_of(self, i: int) -> np.ndarray:
        """(N, 7) float32 [xyz, normal, mask] of the whole object's samples for part i:
        mask is 1 where the nearest part sample belongs to part i."""
        self._check_index(i)
        out = np.empty((self.whole_points.shape[0], 7), dtype=np.float32)
        out[:, :6] = self.whole_points
        out[:, 6] = self.whole_labels == int(i)
        return out

    @property
    def whole(self) -> np.ndarray:
        """(P, N, 7) float32: :meth:`whole_of` for every part (made on each access: P copies
        of the same samples, so the pipeline asks for one batch's rows at a time)."""
        return np.stack([self.whole_of(i) for i in range(self.num_parts)]) if self.num_parts else \
            np.empty((0, self.whole_points.shape[0], 7), np.float32)

    def to_model_frame(self, points: np.ndarray) -> np.ndarray:
        """Input-frame points (..., 3) -> model frame (float64)."""
        p = (np.asarray(points, dtype=np.float64) - self.object_center) / self.object_scale
        return p if self.axes is None else self.axes.apply(p)

    def from_model_frame(self, points: np.ndarray) -> np.ndarray:
        """Model-frame points (..., 3) -> input frame (float64)."""
        p = np.asarray(points, dtype=np.float64)
        if self.axes is not None:
            p = self.axes.inverse().apply(p)
        return p * self.object_scale + self.object_center

    def part_to_model_frame(self, i: int, vertices: np.ndarray) -> np.ndarray:
        """Part i's normalized-frame points -> model frame: ``v * s + c``."""
        self._check_index(i)
        return np.asarray(vertices, dtype=np.float64) * self.scales[i] + self.centers[i]

    def to_input_frame(self, i: int, vertices: np.ndarray) -> np.ndarray:
        """Part i's normalized-frame points (e.g. its decoded mesh) -> input frame (float64)."""
        return self.from_model_frame(self.part_to_model_frame(i, vertices))

    def to_part_frame(self, i: int, points: np.ndarray) -> np.ndarray:
        """Input-frame points -> part i's normalized frame (inverse of :meth:`to_input_frame`)."""
        self._check_index(i)
        return (self.to_model_frame(points) - self.centers[i]) / self.scales[i]

    def _check_index(self, i: int) -> None:
        if not 0 <= int(i) < self.num_parts:
            raise InputError(f"part index {i} is out of range for {self.num_parts} parts")


def part_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale of a part's frame from its samples (spec section 8).

    ``c = (max + min) / 2``, ``s = max ||p - c|| / (0.95 * 0.7)``.
    """
    p = np.asarray(points, dtype=np.float64)
    c = (p.max(axis=0) + p.min(axis=0)) / 2.0
    s = float(np.linalg.norm(p - c, axis=1).max()) / (PART_MARGIN * PART_NORMALIZE_SCALE)
    return c, s


def object_normalization(parts) -> tuple[np.ndarray, float]:
    """Centre and scale mapping the object into the model frame (see module docstring)."""
    allv = np.concatenate([np.asarray(v, dtype=np.float64) for v in _vertices_of(parts)], axis=0)
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    center = (lo + hi) / 2.0
    scale = float((hi - lo).max()) / 2.0 / OBJECT_HALF_EXTENT
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"the object has a degenerate bounding box ({lo} .. {hi}); cannot normalize it")
    return center, scale


def build_conditions(parts, num_points: int = NUM_SURFACE_SAMPLES, seed: int | None = 0,
                     normalize: bool = True, model_up: str | None = None) -> Conditions:
    """Sample the part and whole point sets and compute the part frames.

    Args:
        parts: a :class:`holopart_infer.io.parts_io.Parts` or a sequence of
            ``(vertices, faces)`` pairs (at least 2 parts).
        num_points: samples per part and for the whole (reference 20480).
        seed: seed of ``numpy.random.default_rng``; ``None`` draws fresh entropy
            (not reproducible, as the reference).
        normalize: map the object into [-1, 1] first (see module docstring).
        model_up: the up axis of the model's frame (its manifest's ``up_axis``):
            the object is rotated from its own up axis (``parts.up``; parts
            without one are taken as already in the model's frame) into it.
            None: no rotation (the input's axes are the model's).

    Returns:
        :class:`Conditions`.

    Raises:
        InputError: bad ``num_points``/``seed``, fewer than two parts, a part
            without surface area.
    """
    from scipy.spatial import cKDTree

    parts, P, N = _checked_inputs(parts, num_points, seed)
    axes, input_up, model_up = _up_axes(parts, model_up)
    turn = (lambda a: a) if axes is None else axes.apply  # exact: swaps and negates coordinates

    if normalize:
        object_center, object_scale = object_normalization(parts)
    else:
        object_center, object_scale = np.zeros(3), 1.0
    # input-frame arrays as they are: the samplers map the faces they touch into the model frame
    verts = list(parts.vertices)
    faces = list(parts.faces)

    rng = np.random.default_rng(seed)
    part, part_xyz, centers, scales, part_local = _sample_parts(
        verts, faces, parts.names, P, N, rng, object_center, object_scale, turn)

    # the whole: every part, then the context faces (unassigned: in the object, in no part)
    context = getattr(parts, "context", None)
    pieces = list(zip(verts, faces)) + ([tuple(context)] if context is not None else [])
    whole_pts, whole_nrm, whole_face = sample_pieces(pieces, N, rng, object_center, object_scale)
    whole_pts, whole_nrm = turn(whole_pts), turn(whole_nrm)

    # label of the nearest part sample (ties: cKDTree's choice, deterministic)
    tree = cKDTree(part_xyz.reshape(-1, 3))
    del part_xyz
    _, nearest = tree.query(whole_pts, k=1)
    del tree
    labels = (np.asarray(nearest, dtype=np.int64) // N)
    if context is not None:
        labels[whole_face >= sum(len(f) for f in faces)] = -1  # context samples: no part's mask

    whole_points = np.empty((N, 6), dtype=np.float32)
    whole_points[:, :3] = whole_pts
    whole_points[:, 3:] = whole_nrm

    log.debug("conditions: %d parts x %d points, object center %s scale %.4g", P, N, object_center,
              object_scale)
    return Conditions(part=part, whole_points=whole_points, part_local=part_local, centers=centers,
                      scales=scales, object_center=np.asarray(object_center, dtype=np.float64),
                      object_scale=float(object_scale), names=list(parts.names), whole_labels=labels,
                      axes=axes, input_up=input_up if model_up is not None else None, model_up=model_up)


def _checked_inputs(parts, num_points, seed):
    """build_conditions' arguments checked: (parts as Parts, number of parts, points per set)."""
    from holopart_infer.io.parts_io import Parts

    if not isinstance(parts, Parts):
        parts = Parts.from_meshes(parts)
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 1:
        raise InputError(f"num_points must be an integer >= 1, got {num_points!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise InputError(f"seed must be an integer or None, got {seed!r}")
    P, N = len(parts), int(num_points)
    if P < 2:
        raise InputError(f"HoloPart needs at least 2 parts, got {P}")
    return parts, P, N


def _up_axes(parts, model_up: str | None):
    """(axes, input_up, model_up): the rotation from the object's up axis into the
    model's (None when there is none to do), and both axes checked."""
    from holopart_infer.io.frames import check_up, up_rotation

    input_up = getattr(parts, "up", None)
    axes = None
    if model_up is not None:
        model_up = check_up(model_up, "model_up")
        input_up = model_up if input_up is None else check_up(input_up, "parts.up")
        axes = up_rotation(input_up, model_up)
        if axes.is_identity:
            axes = None
        else:
            log.info("conditioning: the object's up axis %s is rotated to the model's %s", input_up, model_up)
    return axes, input_up, model_up


def _sample_parts(verts, faces, names, P: int, N: int, rng, object_center, object_scale, turn):
    """Each part's N surface samples (drawn from ``rng`` part after part) in the
    model frame and in its own part frame: (part, part_xyz, centers, scales, part_local)."""
    # float32 arrays kept; float64 only for the samples' xyz (the KD-tree) and one part at a time
    part = np.empty((P, N, 6), dtype=np.float32)
    part_xyz = np.empty((P, N, 3), dtype=np.float64)
    centers = np.empty((P, 3), dtype=np.float64)
    scales = np.empty(P, dtype=np.float64)
    part_local = np.empty((P, N, 6), dtype=np.float32)
    for i, (v, f) in enumerate(zip(verts, faces)):
        try:
            pts, nrm, _ = sample_pieces([(v, f)], N, rng, object_center, object_scale)
        except InputError as e:
            raise InputError(f"part {names[i]!r}: {e}") from e
        pts, nrm = turn(pts), turn(nrm)
        part_xyz[i] = pts
        part[i, :, :3], part[i, :, 3:] = pts, nrm
        c, s = part_frame(pts)
        if not s > 0:
            raise InputError(f"part {names[i]!r}: all samples coincide; cannot build its frame")
        centers[i], scales[i] = c, s
        part_local[i, :, :3] = (pts - c) / s
        part_local[i, :, 3:] = nrm
    return part, part_xyz, centers, scales, part_local


def _vertices_of(parts) -> Sequence[np.ndarray]:
    if hasattr(parts, "vertices") and not isinstance(parts, np.ndarray):
        context = getattr(parts, "context", None)  # unassigned faces are part of the object too
        return list(parts.vertices) + ([context[0]] if context is not None else [])
    return [v for v, _ in parts]
