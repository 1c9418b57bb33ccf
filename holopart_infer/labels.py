"""Per-face part labels: reading them from files, and mapping per-polygon labels.

Formats (all give one integer per face, in the mesh file's face order):

* ``.npy``: a 1-D integer array (SAMPart3D writes ``results/<run>/mesh_<scale>.npy``
  this way, see :mod:`holopart_infer.adapters`).
* ``.json``: a list of integers, or an object ``{"face index": label}`` as
  SAMesh's ``<name>_face2label.json`` (keys are face indices as strings). Faces
  missing from the object are unassigned.
* ``.txt`` / ``.csv``: integers separated by whitespace or commas (one per line
  is the usual layout).

Face order is the order trimesh reads the file in (the order SAMesh and
SAMPart3D label, both read meshes with trimesh): the file's order for glTF,
PLY, STL and single-material OBJ; files with several mesh nodes are
concatenated in scene-graph order. Per-polygon labels of an OBJ with quads or
n-gons are mapped to the triangles of each polygon (read in file order).

Labels below zero mean *unassigned*: the face belongs to the whole object (the
model sees it as context) but to no part, so no part is completed for it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from holopart_infer.errors import InputError, InputFileNotFound

log = logging.getLogger("holopart_infer")

LABEL_EXTENSIONS = (".npy", ".json", ".txt", ".csv")
UNASSIGNED = -1


def read_labels(path: str | Path) -> np.ndarray:
    """Read a per-face label file into a 1-D int64 array.

    Raises:
        InputFileNotFound: the file does not exist.
        InputError: unknown extension, unreadable content, non-integer labels.
    """
    lpath = Path(path)
    if not lpath.exists():
        raise InputFileNotFound(f"labels file {lpath} does not exist")
    ext = lpath.suffix.lower()
    if ext not in LABEL_EXTENSIONS:
        raise InputError(f"labels file {lpath}: unsupported extension {lpath.suffix!r}; expected per-face "
                         f"integer labels as {', '.join(LABEL_EXTENSIONS)}")
    src = f"labels file {lpath}"
    if lpath.stat().st_size == 0:
        raise InputError(f"{src} is an empty file (0 bytes); expected one integer label per face")
    if ext == ".npy":
        try:
            arr = np.load(lpath, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{src}: cannot read it as a .npy array ({e})") from e
    elif ext == ".json":
        try:
            data = json.loads(lpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{src}: not valid JSON ({e}); expected a list of labels or "
                             "{\"face\": label} as SAMesh's face2label.json") from e
        arr = _labels_from_json(data, src)
    else:
        text = lpath.read_text(encoding="utf-8", errors="replace")
        tokens = [t for t in re.split(r"[\s,;]+", text) if t]
        try:
            arr = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
            raise InputError(f"{src}: {bad!r} is not an integer; expected one integer label per face "
                             "(whitespace or comma separated)") from None
    return check_label_array(arr, src)


def _labels_from_json(data, src: str) -> np.ndarray:
    if isinstance(data, dict):
        # SAMesh face2label.json: {"0": 3, "1": 3, ...}; missing faces are unassigned
        try:
            pairs = [(int(k), int(v)) for k, v in data.items()]
        except (TypeError, ValueError) as e:
            raise InputError(f"{src}: expected an object mapping face indices to integer labels "
                             f"(SAMesh face2label.json), got an entry that is not ({e})") from None
        if not pairs:
            raise InputError(f"{src}: holds no labels")
        faces = np.array([p[0] for p in pairs], dtype=np.int64)
        if faces.min() < 0:
            raise InputError(f"{src}: face index {int(faces.min())} is negative")
        arr = np.full(int(faces.max()) + 1, UNASSIGNED, dtype=np.int64)
        arr[faces] = [p[1] for p in pairs]
        missing = len(arr) - len(np.unique(faces))
        if missing:
            log.info("%s: %d faces have no label; they are unassigned (context only)", src, missing)
        return arr
    if isinstance(data, list):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in data):
            raise InputError(f"{src}: the list must hold integers only (one label per face)")
        return np.asarray(data, dtype=np.int64)
    raise InputError(f"{src}: expected a JSON list of labels or an object {{face: label}}, "
                     f"got {type(data).__name__}")


def check_label_array(arr, src: str = "labels array") -> np.ndarray:
    """A 1-D int64 array of labels, or :class:`InputError` naming ``src``."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"{src}: expected a 1-D array of per-face labels, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{src}: labels must be integers, got dtype {arr.dtype}; convert them "
                         "(e.g. labels.astype(np.int64)) if they are whole numbers")
    return arr.astype(np.int64)


def obj_polygon_sizes(path: Path) -> np.ndarray | None:
    """Vertex count of every ``f`` polygon of an OBJ file, in file order (None if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    sizes = [len(line.split()) - 1 for line in text.splitlines() if line.startswith("f ")]
    return np.asarray(sizes, dtype=np.int64)


def read_obj_polygons(path: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices and polygons (0-based vertex indices, file order) of an OBJ file.

    Only ``v`` and ``f`` lines are read; ``f`` entries may be ``v``, ``v/vt``,
    ``v//vn`` or ``v/vt/vn``, with negative (relative) indices.
    """
    verts: list[list[float]] = []
    polys: list[list[int]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v" and len(parts) >= 4:
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            idx = []
            for tok in parts[1:]:
                i = int(tok.split("/")[0])
                idx.append(i - 1 if i > 0 else len(verts) + i)
            if len(idx) < 3:
                raise InputError(f"{path}:{lineno}: a face with {len(idx)} vertices")
            polys.append(idx)
    return np.asarray(verts, dtype=np.float64).reshape(-1, 3), polys


def triangulate_polygons(polys: list[list[int]], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons; each triangle takes its polygon's label."""
    faces, tlabels = [], []
    for poly, lab in zip(polys, labels):
        for k in range(1, len(poly) - 1):
            faces.append((poly[0], poly[k], poly[k + 1]))
            tlabels.append(lab)
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3), np.asarray(tlabels, dtype=np.int64)
