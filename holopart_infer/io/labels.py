"""Per-face part labels: reading them from files, and mapping per-polygon labels.

Formats (all give one integer per face, in the mesh file's face order):

* ``.npy``: a 1-D integer array (SAMPart3D writes ``results/<run>/mesh_<scale>.npy``
  this way, see :mod:`holopart_infer.io.adapters`).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from holopart_infer.constants import MESH_EXTENSIONS
from holopart_infer.errors import InputError, InputFileNotFound

log = logging.getLogger("holopart_infer")

LABEL_EXTENSIONS = (".npy", ".json", ".txt", ".csv")
UNASSIGNED = -1


#: labels are int64: a label outside this range cannot be one
LABEL_MIN, LABEL_MAX = -(2**63), 2**63 - 1
#: a ``{"face": label}`` file read without knowing the mesh (``num_faces=None``) may name faces below this
MAX_FACE_INDEX = 2**28


def read_labels(path: str | Path, num_faces: int | None = None) -> np.ndarray:
    """Read a per-face label file into a 1-D int64 array.

    Args:
        path: the labels file.
        num_faces: the mesh's face count, when known. A ``{"face": label}``
            object then gives exactly ``num_faces`` labels (faces it does not name
            are unassigned) and a face index ``>= num_faces`` is an error;
            without it the array ends at the highest face named.

    Raises:
        InputFileNotFound: the file does not exist.
        InputError: unknown extension, unreadable content, labels that are not
            integers (strings, floats, booleans) or do not fit int64, face
            indices that are not non-negative decimal integers below the mesh's
            face count. Messages name the file and the key or token.
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
        arr = _labels_from_json(data, src, num_faces)
    else:
        text = lpath.read_text(encoding="utf-8", errors="replace")
        tokens = [t for t in re.split(r"[\s,;]+", text) if t]
        bad = next((t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)), None)
        if bad is not None:
            raise InputError(f"{src}: {bad!r} is not an integer; expected one integer label per face "
                             "(whitespace or comma separated)")
        values = [int(t) for t in tokens]
        for i, value in enumerate(values):
            if not LABEL_MIN <= value <= LABEL_MAX:
                raise InputError(f"{src}: label {tokens[i]!r} (face {i}) does not fit a 64-bit integer; "
                                 "labels are part ids, e.g. 0, 1, 2 (and < 0 for unassigned faces)")
        arr = np.array(values, dtype=np.int64)
    return check_label_array(arr, src)


def _is_label(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and LABEL_MIN <= value <= LABEL_MAX


def _labels_from_json(data, src: str, num_faces: int | None = None) -> np.ndarray:
    expected = "labels are JSON integers such as 0, 1, 2 (< 0: unassigned), not strings, fractions or booleans"
    if isinstance(data, dict):
        # SAMesh face2label.json: {"0": 3, "1": 3, ...}; missing faces are unassigned
        if not data:
            raise InputError(f"{src}: holds no labels")
        limit = MAX_FACE_INDEX if num_faces is None else int(num_faces)
        faces = np.empty(len(data), dtype=np.int64)
        values = np.empty(len(data), dtype=np.int64)
        for j, (key, value) in enumerate(data.items()):
            if not re.fullmatch(r"[0-9]+", key):
                raise InputError(f"{src}: key {key!r} is not a face index; expected an object mapping face "
                                 "indices (\"0\", \"1\", ...) to integer labels, as SAMesh's face2label.json")
            face = int(key)
            if face >= limit:
                what = (f"the mesh has {num_faces} faces (indices 0..{num_faces - 1})" if num_faces is not None
                        else f"face indices must be below {MAX_FACE_INDEX}")
                raise InputError(f"{src}: key {key!r} names face {face}, but {what}; are these labels for "
                                 "another mesh?")
            if not _is_label(value):
                kind = "does not fit a 64-bit integer" if isinstance(value, int) and not isinstance(value, bool) \
                    else f"is {type(value).__name__} {value!r}"
                raise InputError(f"{src}: the label of key {key!r} {kind}; {expected}")
            faces[j], values[j] = face, value
        arr = np.full(int(faces.max()) + 1 if num_faces is None else limit, UNASSIGNED, dtype=np.int64)
        arr[faces] = values
        missing = len(arr) - len(np.unique(faces))
        if missing:
            log.info("%s: %d faces have no label; they are unassigned (context only)", src, missing)
        return arr
    if isinstance(data, list):
        for i, value in enumerate(data):
            if not _is_label(value):
                kind = "does not fit a 64-bit integer" if isinstance(value, int) and not isinstance(value, bool) \
                    else f"is {type(value).__name__} {value!r}"
                raise InputError(f"{src}: entry {i} (the label of face {i}) {kind}; {expected}")
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
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > LABEL_MAX:
        raise InputError(f"{src}: label {int(arr.max())} (face {int(arr.argmax())}) does not fit a 64-bit signed "
                         "integer; labels are part ids, e.g. 0, 1, 2")
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


# ----------------------------------------------------------------------------- segmenter outputs
# Where SAMesh and SAMPart3D put the mesh and its labels (the layouts are described in
# holopart_infer.io.adapters, which loads them); found here so that parts_io can recognise
# such a folder without importing the adapters.

_SAMESH_JSON = "_face2label.json"
_SAMPART3D_NPY = re.compile(r"^mesh_(?P<scale>[0-9.eE+-]+)\.npy$")


@dataclass(frozen=True)
class SegmenterFiles:
    """A segmenter's labelled mesh and its per-face labels file."""
    kind: str  # "samesh" or "sampart3d"
    mesh: Path
    labels: Path
    folder: Path  # what was asked for
    scale: str | None = None  # SAMPart3D's grouping scale


def find_segmenter_output(folder: str | Path) -> SegmenterFiles | None:
    """The files of a SAMesh or SAMPart3D output folder, or None when ``folder`` is neither."""
    folder = Path(folder)
    if list(folder.glob(f"*{_SAMESH_JSON}")):
        return find_samesh(folder)
    if sampart3d_pairs(folder):
        return find_sampart3d(folder)
    return None


def find_samesh(folder_or_json: str | Path, mesh: str | Path | None = None) -> SegmenterFiles:
    """SAMesh's ``<name>_face2label.json`` and its mesh (``<name>_segmented.*`` unless ``mesh`` is given).

    Raises:
        InputError: no or several JSON files, no mesh next to it.
    """
    asked = p = Path(folder_or_json)
    if p.is_dir():
        found = sorted(p.glob(f"*{_SAMESH_JSON}"))
        if len(found) != 1:
            raise InputError(f"{p}: expected one SAMesh *{_SAMESH_JSON} file, found {len(found)} "
                             f"({', '.join(f.name for f in found) or 'none'}); pass the mesh and "
                             "--labels <name>_face2label.json directly")
        p = found[0]
    stem = p.name[: -len(_SAMESH_JSON)] if p.name.endswith(_SAMESH_JSON) else p.stem
    if mesh is None:
        candidates = [c for c in sorted(p.parent.glob(f"{stem}_segmented.*")) if c.suffix.lower() in MESH_EXTENSIONS]
        if not candidates:
            raise InputError(f"{p}: SAMesh output without its mesh: expected {stem}_segmented.glb (or .obj/.ply) "
                             f"next to it. Pass the labelled mesh with --labels {p.name}")
        mesh = candidates[0]
    return SegmenterFiles("samesh", Path(mesh), p, asked)


def sampart3d_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """{scale: (mesh_<s>.ply, mesh_<s>.npy)} found under a SAMPart3D save_path layout."""
    roots = [folder, folder.parent]  # save_path itself, or results/ or vis_pcd/<w> given
    pairs: dict[str, tuple[Path, Path]] = {}
    for root in roots:
        for npy in sorted(root.glob("results/*/mesh_*.npy")) + sorted(root.glob("*/mesh_*.npy")) + \
                sorted(folder.glob("mesh_*.npy")):
            m = _SAMPART3D_NPY.match(npy.name)
            if not m:
                continue
            run = npy.parent.name
            for ply in (npy.with_suffix(".ply"), npy.parent.parent.parent / "vis_pcd" / run / f"mesh_{m['scale']}.ply",
                        folder / f"mesh_{m['scale']}.ply"):
                if ply.is_file():
                    pairs.setdefault(m["scale"], (ply, npy))
                    break
        if pairs:
            break
    return pairs


def find_sampart3d(folder: str | Path, scale: str | float | None = None) -> SegmenterFiles:
    """SAMPart3D's ``results/<w>/mesh_<s>.npy`` with ``vis_pcd/<w>/mesh_<s>.ply`` for one scale.

    Raises:
        InputError: no mesh/labels pair, several scales and none chosen, an unknown scale.
    """
    folder = Path(folder)
    pairs = sampart3d_pairs(folder)
    if not pairs:
        raise InputError(f"{folder}: no SAMPart3D output found (results/<weights>/mesh_<scale>.npy with "
                         "vis_pcd/<weights>/mesh_<scale>.ply)")
    if scale is None:
        if len(pairs) > 1:
            some = sorted(pairs, key=float)
            ply, npy = pairs[some[0]]
            raise InputError(f"{folder}: SAMPart3D wrote {len(pairs)} scales ({', '.join(some)}); choose one: "
                             f"holopart-infer run {ply} --labels {npy} (or adapters.load_sampart3d(folder, "
                             "scale=...)). Smaller scales give more, smaller parts")
        key = next(iter(pairs))
    else:
        key = next((k for k in pairs if float(k) == float(scale)), None)
        if key is None:
            raise InputError(f"{folder}: no SAMPart3D output for scale {scale}; found {', '.join(sorted(pairs))}")
    ply, npy = pairs[key]
    return SegmenterFiles("sampart3d", ply, npy, folder, key)
