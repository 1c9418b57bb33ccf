"""Reading a segmented object as parts, and writing completed parts as a glb scene.

Three input layouts are accepted by :func:`load_parts`:

* a ``.glb`` / ``.gltf`` scene with one mesh node per part. Every node's full
  scene-graph transform (the product of its ancestors' transforms) is applied,
  so vertices come out in the scene's world coordinates, and node names become
  part names. The reference reads part geometries *without* their transforms
  while reading the whole object *with* them; here both use them.
* one mesh file (``.obj``, ``.ply``, ``.stl``, ``.glb``, ``.gltf``) plus a
  per-face integer label array (a ``.npy`` file or an array): one part per
  distinct label, named ``part_<label>``, in increasing label order.
* a folder of mesh files, one part per file, named by the file stem, in natural
  sort order (``leg2`` before ``leg10``). Files with other extensions are ignored.

Part order from a scene is the natural sort order of the node names, so it does
not depend on how the glTF file orders its nodes.

:func:`write_scene` writes one named node per part with a per-part PBR material
colour (from :func:`part_colors`, a deterministic palette), atomically.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from holopart_infer.errors import InputError, InputFileNotFound

log = logging.getLogger("holopart_infer")

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
SCENE_EXTENSIONS = (".glb", ".gltf")
LABEL_EXTENSIONS = (".npy",)

# Relative to the object's size: a part whose area is below this (times the
# squared bounding-box diagonal of the object) is treated as having no surface.
_MIN_RELATIVE_AREA = 1e-12


@dataclass
class Part:
    """One part: a triangle mesh in the input's coordinates."""

    name: str
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64

    @property
    def area(self) -> float:
        return float(_face_areas(self.vertices, self.faces).sum())


@dataclass
class Parts:
    """A segmented object: two or more named parts in the input's coordinates.

    Attributes:
        parts: the parts, in a deterministic order (see the module docstring).
        source: where they came from (path of the scene / mesh / folder, or
            ``"<memory>"``).
        kind: ``"scene"``, ``"mesh+labels"``, ``"folder"`` or ``"memory"``.
        input_paths: every file that was read (protected from being overwritten
            by :func:`write_scene`).
    """

    parts: list[Part]
    source: str = "<memory>"
    kind: str = "memory"
    input_paths: tuple[Path, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.parts)

    def __iter__(self) -> Iterator[Part]:
        return iter(self.parts)

    def __getitem__(self, i: int) -> Part:
        return self.parts[i]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    @property
    def vertices(self) -> list[np.ndarray]:
        return [p.vertices for p in self.parts]

    @property
    def faces(self) -> list[np.ndarray]:
        return [p.faces for p in self.parts]

    def bounds(self) -> np.ndarray:
        """(2, 3) min and max corner over all parts' vertices."""
        allv = np.concatenate([p.vertices for p in self.parts], axis=0)
        return np.stack([allv.min(axis=0), allv.max(axis=0)])

    @classmethod
    def from_meshes(cls, meshes: Sequence, names: Sequence[str] | None = None,
                    source: str = "<memory>") -> "Parts":
        """Build and validate parts from ``(vertices, faces)`` pairs or trimesh meshes.

        Args:
            meshes: one ``(vertices (V,3), faces (F,3))`` pair or
                ``trimesh.Trimesh`` per part.
            names: part names (default ``part_0``, ``part_1``, ...); duplicates
                are made unique with ``_1``, ``_2`` suffixes.
            source: a description used in error messages.

        Raises:
            InputError: fewer than two parts, bad arrays, NaN/inf vertices, a
                part without surface area.
        """
        meshes = list(meshes)
        if names is None:
            names = [f"part_{i}" for i in range(len(meshes))]
        names = [str(n) for n in names]
        if len(names) != len(meshes):
            raise InputError(f"{source}: got {len(meshes)} meshes but {len(names)} names")
        parts = []
        for name, mesh in zip(_unique_names(names), meshes):
            if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
                v, f = mesh.vertices, mesh.faces
            else:
                try:
                    v, f = mesh
                except (TypeError, ValueError) as e:
                    raise InputError(f"{source}: part {name!r} must be a (vertices, faces) pair or a "
                                     f"trimesh.Trimesh, got {type(mesh).__name__}") from e
            parts.append(_make_part(name, v, f, source))
        result = cls(parts, source=source, kind="memory")
        validate_parts(result)
        return result


def load_parts(path: str | os.PathLike, labels: str | os.PathLike | np.ndarray | None = None) -> Parts:
    """Read a segmented object.

    Args:
        path: a ``.glb``/``.gltf`` scene (one node per part), a single mesh file
            (with ``labels``), or a folder of part meshes.
        labels: per-face integer labels (a ``.npy`` path or an array) when
            ``path`` is a single mesh; ``None`` otherwise.

    Returns:
        :class:`Parts` in the input's coordinates (float64 vertices, int64 faces).

    Raises:
        InputFileNotFound: ``path`` or the labels file does not exist.
        InputError: unsupported extension, unreadable file, empty scene, bad
            labels, a part with NaN/inf vertices or no surface area, fewer than
            two parts. Messages name the file and the part.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFound(f"input {path} does not exist")
    if path.is_dir():
        if labels is not None:
            raise InputError(f"labels were given but {path} is a folder of part meshes; labels "
                             "apply to a single mesh file only")
        parts = _load_folder(path)
    else:
        ext = path.suffix.lower()
        if ext not in MESH_EXTENSIONS:
            raise InputError(f"{path}: unsupported extension {ext or '(none)'!r}; expected a mesh file "
                             f"({', '.join(MESH_EXTENSIONS)}) or a folder of part meshes")
        if labels is not None:
            parts = _load_mesh_with_labels(path, labels)
        elif ext in SCENE_EXTENSIONS:
            parts = _load_scene_parts(path)
        else:
            raise InputError(
                f"{path} is a single {ext} mesh without part labels. Pass per-face labels "
                "(labels=LABELS.npy / --labels LABELS.npy), a .glb scene with one node per part, "
                "or a folder with one mesh file per part."
            )
    validate_parts(parts)
    log.info("loaded %d parts from %s (%s)", len(parts), parts.source, parts.kind)
    return parts


def validate_parts(parts: Parts) -> None:
    """Check finiteness, surface area and the part count; raise :class:`InputError`."""
    src = parts.source
    if len(parts) == 0:
        raise InputError(f"{src}: no parts found")
    for p in parts:
        bad = ~np.isfinite(p.vertices).all(axis=1)
        if bad.any():
            raise InputError(f"{src}: part {p.name!r} has {int(bad.sum())} vertices with NaN or inf "
                             f"coordinates (first at vertex {int(np.argmax(bad))}); fix or remove them")
    allv = np.concatenate([p.vertices for p in parts], axis=0)
    diag = float(np.linalg.norm(allv.max(axis=0) - allv.min(axis=0))) if len(allv) else 0.0
    for p in parts:
        area = p.area
        if len(p.faces) == 0 or not area > _MIN_RELATIVE_AREA * max(diag, 1e-30) ** 2:
            raise InputError(f"{src}: part {p.name!r} has no surface area ({len(p.faces)} faces, "
                             f"area {area:.3g}); every part needs triangles to sample points from. "
                             "Remove the part or fix its geometry")
    if len(parts) < 2:
        raise InputError(
            f"{src}: found a single part ({parts.names[0]!r}). HoloPart completes each part "
            "of an object whose whole is the union of its parts, so it needs at least 2 parts. "
            "Segment the mesh first (e.g. SAMPart3D or SAMesh) and pass one node per part, a "
            "per-face label array, or a folder of part meshes"
        )


# ---------------------------------------------------------------------------
# readers


def _read_scene(path: Path, what: str = "mesh file"):
    """trimesh.Scene of a mesh file; any reader failure becomes an InputError."""
    import trimesh

    kwargs = {"process": False}
    if path.suffix.lower() in SCENE_EXTENSIONS:
        # one geometry per glTF mesh, not per primitive (whose frames get random names)
        kwargs["merge_primitives"] = True
    try:
        scene = trimesh.load_scene(str(path), **kwargs)
    except Exception as e:  # trimesh raises many types for broken files
        raise InputError(f"{path}: cannot read this {what} ({type(e).__name__}: {e}); is it a valid "
                         f"{path.suffix.lower()} file?") from e
    return scene


def _scene_mesh_nodes(scene, path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(node name, world vertices, faces) for every triangle-mesh node."""
    import trimesh

    out = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh):
            continue  # point clouds, paths: nothing to complete
        v = np.asarray(geom.vertices, dtype=np.float64)
        f = np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
        T = np.asarray(transform, dtype=np.float64)
        v = v @ T[:3, :3].T + T[:3, 3]
        out.append((str(node), v, f))
    if not out:
        raise InputError(f"{path}: the file holds no triangle meshes (empty scene)")
    return out


def _load_scene_parts(path: Path) -> Parts:
    scene = _read_scene(path, "scene")
    nodes = _scene_mesh_nodes(scene, path)
    nodes.sort(key=lambda n: _natural_key(n[0]))
    names = _unique_names([n[0] for n in nodes])
    parts = [_make_part(name, v, f, str(path)) for name, (_, v, f) in zip(names, nodes)]
    return Parts(parts, source=str(path), kind="scene", input_paths=(path,))


def _load_single_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One mesh file as one mesh (world coordinates, file face order)."""
    nodes = _scene_mesh_nodes(_read_scene(path), path)
    v = [n[1] for n in nodes]
    offsets = np.cumsum([0] + [len(x) for x in v[:-1]])
    f = [n[2] + o for n, o in zip(nodes, offsets)]
    return np.concatenate(v, axis=0), np.concatenate(f, axis=0)


def _load_mesh_with_labels(path: Path, labels) -> Parts:
    nodes = _scene_mesh_nodes(_read_scene(path), path)
    if len(nodes) > 1:
        raise InputError(
            f"{path}: per-face labels need a file with one mesh, but it holds {len(nodes)} mesh "
            f"nodes ({', '.join(sorted(n[0] for n in nodes)[:5])}...) whose face order is ambiguous. "
            "Pass it without labels to use its nodes as parts, or merge it into one mesh first"
        )
    _, v, f = nodes[0]
    inputs: tuple[Path, ...] = (path,)
    if isinstance(labels, (str, os.PathLike)):
        lpath = Path(labels)
        if not lpath.exists():
            raise InputFileNotFound(f"labels file {lpath} does not exist")
        if lpath.suffix.lower() not in LABEL_EXTENSIONS:
            raise InputError(f"labels file {lpath}: unsupported extension {lpath.suffix!r}; expected a "
                             ".npy array of per-face integer labels")
        try:
            arr = np.load(lpath, allow_pickle=False)
        except Exception as e:
            raise InputError(f"labels file {lpath}: cannot read it as a .npy array ({e})") from e
        lsrc = f"labels file {lpath}"
        inputs = (path, lpath)
    else:
        arr = np.asarray(labels)
        lsrc = "labels array"
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"{lsrc}: expected a 1-D array of per-face labels, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{lsrc}: labels must be integers, got dtype {arr.dtype}; convert them "
                         "(e.g. labels.astype(np.int64)) if they are whole numbers")
    if len(arr) != len(f):
        raise InputError(f"{lsrc}: has {len(arr)} labels but mesh {path} has {len(f)} faces; "
                         "expected exactly one label per face, in the file's face order")
    parts = []
    for lab in np.unique(arr):
        sel = f[arr == lab]
        used, inverse = np.unique(sel.reshape(-1), return_inverse=True)
        parts.append(_make_part(f"part_{int(lab)}", v[used], inverse.reshape(-1, 3), str(path)))
    return Parts(parts, source=str(path), kind="mesh+labels", input_paths=inputs)


def _load_folder(folder: Path) -> Parts:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS]
    if not files:
        raise InputError(f"folder {folder} holds no mesh files ({', '.join(MESH_EXTENSIONS)}); "
                         "expected one file per part")
    files.sort(key=lambda p: (_natural_key(p.stem), p.name))
    names = _unique_names([p.stem for p in files])
    parts = []
    for name, fp in zip(names, files):
        v, f = _load_single_mesh(fp)
        parts.append(_make_part(name, v, f, str(fp)))
    return Parts(parts, source=str(folder), kind="folder", input_paths=tuple(files))


def _make_part(name: str, vertices, faces, source: str) -> Part:
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or v.dtype.kind not in "fiu":
        raise InputError(f"{source}: part {name!r} vertices must be a numeric (V, 3) array, "
                         f"got shape {v.shape} dtype {v.dtype}")
    if f.size == 0:
        f = f.reshape(0, 3)
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
        raise InputError(f"{source}: part {name!r} faces must be an integer (F, 3) array of "
                         f"triangles, got shape {f.shape} dtype {f.dtype}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(f"{source}: part {name!r} has face indices outside 0..{len(v) - 1} "
                         f"(min {int(f.min())}, max {int(f.max())})")
    return Part(name, v.astype(np.float64, copy=True), f.astype(np.int64, copy=True))


def _face_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    if len(f) == 0:
        return np.zeros(0)
    tri = v[f]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _natural_key(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", s) if t]


def _unique_names(names: Iterable[str]) -> list[str]:
    """Make names unique deterministically: the second 'leg' becomes 'leg_1', etc."""
    seen: set[str] = set()
    counts: dict[str, int] = {}
    out = []
    for n in names:
        n = str(n)
        cand = n
        while cand in seen:
            counts[n] = counts.get(n, 0) + 1
            cand = f"{n}_{counts[n]}"
        seen.add(cand)
        out.append(cand)
    return out


# ---------------------------------------------------------------------------
# writer


def part_colors(n: int) -> np.ndarray:
    """A deterministic palette: ``(n, 4)`` uint8 RGBA, distinct neighbouring hues.

    Hues step by the golden angle so any number of parts gets well separated
    colours; saturation and value alternate slightly to separate close hues.
    """
    import colorsys

    out = np.empty((max(int(n), 0), 4), dtype=np.uint8)
    for i in range(len(out)):
        h = (0.02 + i * 0.618033988749895) % 1.0
        s = 0.65 if i % 2 == 0 else 0.5
        v = 0.92 if (i // 2) % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out[i] = (round(r * 255), round(g * 255), round(b * 255), 255)
    return out


def mesh_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float64 (V,3), faces int64 (F,3)) of a mesh object or a (vertices, faces) pair."""
    if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
        v, f = mesh.vertices, mesh.faces
    else:
        v, f = mesh
    return np.asarray(v, dtype=np.float64).reshape(-1, 3), np.asarray(f, dtype=np.int64).reshape(-1, 3)


def write_scene(parts_meshes: Sequence, names: Sequence[str], path: str | os.PathLike,
                colors: Sequence | np.ndarray | None = None,
                protect: Iterable[str | os.PathLike] | None = None, overwrite: bool = False) -> Path:
    """Write parts as a ``.glb`` scene: one named node per part, one colour per part.

    Args:
        parts_meshes: per part a ``(vertices (V,3), faces (F,3))`` pair or a
            ``trimesh.Trimesh``, in the input's coordinates (written as is,
            identity node transforms). A part with no faces becomes an empty
            node (kept so names and count match the input).
        names: node names, kept exactly; must be unique and non-empty.
        path: output file; must end in ``.glb``. Parent folders are created.
        colors: per part RGB or RGBA, 0..255 integers (or floats in 0..1);
            default :func:`part_colors`. Stored as each part's PBR base colour.
        protect: input files/folders; ``path`` may not be, lie inside or contain
            any of them (resolved through symlinks).
        overwrite: replace an existing file; otherwise an existing file, even
            one that appears while encoding, raises and is kept.

    Returns:
        The output path.

    Raises:
        InputError: bad arguments.
        OutputError / OutputExists: see :func:`holopart_infer.fsafe.check_output`.
    """
    import trimesh
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    from holopart_infer import fsafe

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsafe.check_output(path, overwrite=overwrite, inputs=protect or (), suffixes=(".glb",))
    meshes = list(parts_meshes)
    names = [str(n) for n in names]
    if len(names) != len(meshes):
        raise InputError(f"write_scene: {len(meshes)} meshes but {len(names)} names")
    if len(set(names)) != len(names) or any(not n for n in names):
        dup = sorted({n for n in names if names.count(n) > 1 or not n})
        raise InputError(f"write_scene: part names must be unique and non-empty; offending: {dup}")
    rgba = _normalize_colors(colors, len(meshes))

    scene = trimesh.Scene()
    for i, (name, mesh) in enumerate(zip(names, meshes)):
        v, f = mesh_arrays(mesh)
        if len(f) == 0:
            log.warning("part %r has no faces; writing an empty node", name)
            scene.graph.update(frame_from=scene.graph.base_frame, frame_to=name)
            continue
        if not np.isfinite(v).all():
            raise InputError(f"write_scene: part {name!r} has NaN or inf vertices")
        material = PBRMaterial(name=f"{name}_material", baseColorFactor=rgba[i],
                               metallicFactor=0.0, roughnessFactor=0.8, doubleSided=True)
        tm = trimesh.Trimesh(v, f, process=False, visual=TextureVisuals(material=material))
        scene.add_geometry(tm, node_name=name, geom_name=name)
    try:
        data = scene.export(file_type="glb")
    except Exception as e:
        raise InputError(f"output {path}: could not encode the scene as glb ({e})") from e
    fsafe.atomic_write(path, data, overwrite=overwrite)
    log.info("wrote %d parts to %s", len(meshes), path)
    return path


def _normalize_colors(colors, n: int) -> np.ndarray:
    if colors is None:
        return part_colors(n)
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] not in (3, 4):
        raise InputError(f"colors: expected {n} RGB or RGBA colours (shape ({n}, 3|4)), got shape {arr.shape}")
    if arr.dtype.kind == "f" and arr.size and float(arr.max()) <= 1.0:
        arr = np.round(arr * 255.0)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise InputError("colors: components must be 0..255 (or floats in 0..1)")
    arr = arr.astype(np.uint8)
    if arr.shape[1] == 3:
        arr = np.concatenate([arr, np.full((n, 1), 255, np.uint8)], axis=1)
    return arr
