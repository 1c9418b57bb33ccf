"""Up-axis conventions: which way is up in an input file and in a model, and the exact
rotations between them.

HoloPart was trained on glTF assets in their own frame, which the glTF
specification makes **+Y up**. A model dir's manifest states the frame its model
was trained in (``"up_axis"``, one of :data:`UP_AXES`; absent means ``"+y"``,
HoloPart's convention), a checkpoint's ``model_index.json`` the same with a
top-level ``"up_axis"`` key. Every input has an up axis too
(:attr:`holopart_infer.io.parts_io.Parts.up`): glTF is +Y by its specification;
formats without one take a per-format default (:data:`DEFAULT_UP`) unless the
caller says otherwise (``load_parts(..., up="+z")``, CLI ``--up +z``).

The pipeline rotates the object from its up axis into the model's
(:func:`up_rotation`) inside :mod:`holopart_infer.model.conditioning`, and maps every
completed part back with the inverse, so results are written in the input's own
frame. The rotation between two signed axes is a signed permutation of the
coordinates with determinant +1: applying it swaps and negates numbers, which is
exact (no rounding), and a proper rotation keeps the triangles' winding.

Which rotation: the smallest one that turns the input's up onto the model's
(90 degrees about ``up_in x up_model`` for perpendicular axes; for opposite axes
180 degrees about +X, or about +Z when the axes are +-X). From +Z up to +Y up it
maps ``(x, y, z)`` to ``(x, z, -y)``, the convention of Blender's glTF exporter,
so a Z-up file's -Y "front" faces +Z in the Y-up frame.
"""
from __future__ import annotations

import numpy as np

from holopart_infer.errors import InputError

#: the accepted up axes
UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
#: a model without a stated up axis: HoloPart's (glTF's) convention
MODEL_DEFAULT_UP = "+y"
#: the up axis a file is read in when the caller gives none, by extension. glTF: +Y by its
#: specification. OBJ and PLY: +Y, what Blender, Maya and 3ds Max write by default and what the
#: common scanned/graphics data sets (Stanford's PLY models, most OBJ downloads) use. STL: +Z, the
#: build-plate convention of CAD and 3D printing. OFF: +Z, as in ModelNet/Princeton's shape sets.
DEFAULT_UP = {".glb": "+y", ".gltf": "+y", ".obj": "+y", ".ply": "+y", ".stl": "+z", ".off": "+z"}


def check_up(value, what: str = "up") -> str:
    """``value`` as one of :data:`UP_AXES` (``"Z"``/``"z"`` read as ``"+z"``); InputError otherwise.

    Args:
        value: the up axis to check.
        what: how the message names it (``"up"``, ``"--up"``, a manifest field).
    """
    text = value.strip().lower() if isinstance(value, str) else None
    if text is not None and text in ("x", "y", "z"):
        text = "+" + text
    if text not in UP_AXES:
        raise InputError(f"{what} must be one of {', '.join(UP_AXES)} (the axis that points up in the "
                         f"object's file), got {value!r}")
    return text


def _vector(axis: str) -> np.ndarray:
    v = np.zeros(3, dtype=np.int64)
    v["xyz".index(axis[1])] = 1 if axis[0] == "+" else -1
    return v


class AxisMap:
    """An exact rotation between signed-axis frames: ``out[..., k] = signs[k] * points[..., perm[k]]``.

    Attributes:
        perm: (3,) source coordinate of each output coordinate.
        signs: (3,) +1 or -1.
    """

    __slots__ = ("perm", "signs")

    def __init__(self, perm, signs):
        self.perm = np.asarray(perm, dtype=np.int64)
        self.signs = np.asarray(signs, dtype=np.float64)

    @classmethod
    def from_matrix(cls, matrix) -> "AxisMap":
        """The map of an integer signed-permutation matrix (one +-1 per row and column)."""
        m = np.asarray(matrix)
        perm = np.argmax(np.abs(m), axis=1)
        return cls(perm, m[np.arange(3), perm])

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) int64: ``points @ matrix.T`` is :meth:`apply` (up to float rounding of the product)."""
        m = np.zeros((3, 3), dtype=np.int64)
        m[np.arange(3), self.perm] = self.signs.astype(np.int64)
        return m

    @property
    def is_identity(self) -> bool:
        return bool((self.perm == np.arange(3)).all() and (self.signs > 0).all())

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Points or directions (..., 3) in the source frame -> the target frame (exact; the input dtype
        is kept; the identity returns the input itself)."""
        if self.is_identity:
            return points
        p = np.asarray(points)
        out = p[..., self.perm]
        neg = self.signs < 0
        if neg.any():
            out[..., neg] = -out[..., neg]
        return out

    def inverse(self) -> "AxisMap":
        return AxisMap.from_matrix(self.matrix.T)

    def __repr__(self) -> str:
        return f"AxisMap({self.matrix.tolist()})"


def up_rotation(source_up: str, target_up: str) -> AxisMap:
    """The rotation taking an object whose up is ``source_up`` to one whose up is ``target_up``
    (see the module docstring for which one). Identity when they are equal."""
    a, b = _vector(check_up(source_up, "source up axis")), _vector(check_up(target_up, "target up axis"))
    if (a == b).all():
        m = np.eye(3, dtype=np.int64)
    elif (a == -b).all():
        k = _vector("+z" if a[0] != 0 else "+x")  # 180 degrees about a horizontal axis
        m = 2 * np.outer(k, k) - np.eye(3, dtype=np.int64)
    else:
        k = np.cross(a, b)  # unit: a and b are perpendicular axes
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        m = kx + np.outer(k, k)  # Rodrigues at 90 degrees: R = [k]x + k k^T
    return AxisMap.from_matrix(m)


def default_up(suffixes) -> str | None:
    """The default up axis of files with these extensions (:data:`DEFAULT_UP`), or None when
    they disagree (e.g. a folder of .obj and .stl parts)."""
    ups = {DEFAULT_UP[s.lower()] for s in suffixes if s.lower() in DEFAULT_UP}
    if not ups:
        return MODEL_DEFAULT_UP
    return ups.pop() if len(ups) == 1 else None
