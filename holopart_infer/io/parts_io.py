"""Reading a segmented object as parts, and writing completed parts as a glb scene.

Ways in, all through :func:`load_parts` (``parts=`` picks how a single file is
cut into parts; ``"auto"`` is the default):

* a ``.glb`` / ``.gltf`` scene with one mesh node per part. Every node's full
  scene-graph transform (the product of its ancestors' transforms) is applied,
  so vertices come out in the scene's world coordinates; a node whose transform
  mirrors (negative determinant) gets its triangles' winding flipped, as glTF
  requires. Node names become part names, in natural sort order.
  ``parts="primitives"``: one part per glTF primitive instead (named
  ``<mesh>`` , ``<mesh>_1``, ...).
* a multi-piece ``.obj`` (``o`` objects / ``g`` groups) or ``.stl`` (several
  ``solid`` blocks): one part per piece, named by the object/group/solid.
* any single mesh with ``parts="components"``: one part per connected
  component (vertices merged by position first), named ``component_<i>``.
* one mesh file plus per-face integer labels (a ``.npy``/``.json``/``.txt``
  file or an array, see :mod:`holopart_infer.io.labels`): one part per distinct
  label >= 0, named ``part_<label>``, in increasing label order. Labels < 0 are
  *unassigned*: those faces stay in the whole object as context
  (:attr:`Parts.context`) but belong to no part. Per-polygon labels of an OBJ
  with quads or n-gons are mapped to its triangles.
* a folder of mesh files, one part per file, named by the file stem, in natural
  sort order (``leg2`` before ``leg10``). Files with other extensions are ignored.
  A folder holding a segmenter's output (SAMesh, SAMPart3D) is read by
  :mod:`holopart_infer.io.adapters`.

:func:`write_scene` writes one named node per part with a per-part PBR material
colour (from :func:`part_colors`, a deterministic palette), atomically.

Which way is up (:mod:`holopart_infer.io.frames`): every :class:`Parts` from
:func:`load_parts` records its up axis (:attr:`Parts.up`): ``up=`` when given,
else +Y for glTF (its specification) and the per-format default for the formats
without one (:data:`holopart_infer.io.frames.DEFAULT_UP`: OBJ and PLY +Y, STL and
OFF +Z). Vertices stay in the file's coordinates; the pipeline rotates the object
into the model's frame and the results back (:mod:`holopart_infer.model.conditioning`).
"""
from __future__ import annotations

import gc
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from holopart_infer.io import labels as labels_mod
from holopart_infer.constants import MESH_EXTENSIONS, SCENE_EXTENSIONS
from holopart_infer.errors import InputError, InputFileNotFound
from holopart_infer.io.labels import LABEL_EXTENSIONS  # noqa: F401  (re-exported)

log = logging.getLogger("holopart_infer")

PARTS_MODES = ("auto", "primitives", "components")

# Relative to the object's size: a part whose area is below this (times the
# squared bounding-box diagonal of the object) is treated as having no surface.
_MIN_RELATIVE_AREA = 1e-12

WAYS_IN = ("a .glb/.gltf scene with one mesh node per part (or --parts primitives for one part per "
           "primitive); an OBJ with several o/g groups or an STL with several solids; a single mesh with "
           "per-face labels (--labels LABELS.npy|.json|.txt, e.g. SAMesh's face2label.json or SAMPart3D's "
           "mesh_<scale>.npy); a SAMesh or SAMPart3D output folder; a folder with one mesh file per part; "
           "or --parts components to split a mesh into its connected pieces")


@dataclass
class Part:
    """One part: a triangle mesh in the input's coordinates.

    Attributes:
        appearance: the input's look of this part (colours, texture), or None;
            see :mod:`holopart_infer.io.appearance`.
    """

    name: str
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    appearance: object | None = None

    @property
    def area(self) -> float:
        from holopart_infer.model.surface import face_areas

        return float(face_areas(self.vertices, self.faces).sum())


@dataclass
class Parts:
    """A segmented object: two or more named parts in the input's coordinates.

    Attributes:
        parts: the parts, in a deterministic order (see the module docstring).
        source: where they came from (path of the scene / mesh / folder, or
            ``"<memory>"``).
        kind: ``"scene"``, ``"primitives"``, ``"pieces"``, ``"components"``,
            ``"mesh+labels"``, ``"folder"``, ``"samesh"``, ``"sampart3d"`` or ``"memory"``.
        input_paths: every file that was read (protected from being overwritten
            by :func:`write_scene`).
        context: ``(vertices, faces)`` of faces that belong to the whole object
            but to no part (negative labels), or None.
        up: the axis that points up in these coordinates (one of
            :data:`holopart_infer.io.frames.UP_AXES`), set by :func:`load_parts`;
            None (parts built in memory without ``up=``) means the coordinates
            are already in the model's frame, so nothing is rotated.
    """

    parts: list[Part]
    source: str = "<memory>"
    kind: str = "memory"
    input_paths: tuple[Path, ...] = field(default_factory=tuple)
    context: tuple[np.ndarray, np.ndarray] | None = None
    up: str | None = None

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
                    source: str = "<memory>", up: str | None = None) -> "Parts":
        """Build and validate parts from ``(vertices, faces)`` pairs or trimesh meshes.

        Args:
            meshes: one ``(vertices (V,3), faces (F,3))`` pair or
                ``trimesh.Trimesh`` per part (a Trimesh's colours/texture are kept
                as the part's appearance).
            names: part names (default ``part_0``, ``part_1``, ...); duplicates
                are made unique with ``_1``, ``_2`` suffixes.
            source: a description used in error messages.
            up: the axis pointing up in the meshes' coordinates (``"+y"``,
                ``"+z"``, ...); None: they are already in the model's frame.

        Raises:
            InputError: fewer than two parts, bad arrays, NaN/inf vertices, a
                part without surface area, a bad ``up``.
        """
        from holopart_infer.io import appearance
        from holopart_infer.io.frames import check_up

        if up is not None:
            up = check_up(up)

        meshes = list(meshes)
        if names is None:
            names = [f"part_{i}" for i in range(len(meshes))]
        names = [str(n) for n in names]
        if len(names) != len(meshes):
            raise InputError(f"{source}: got {len(meshes)} meshes but {len(names)} names")
        parts = []
        for name, mesh in zip(_unique_names(names), meshes):
            app = None
            if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
                v, f = mesh.vertices, mesh.faces
                app = appearance.from_trimesh(mesh)
            else:
                try:
                    v, f = mesh
                except (TypeError, ValueError) as e:
                    raise InputError(f"{source}: part {name!r} must be a (vertices, faces) pair or a "
                                     f"trimesh.Trimesh, got {type(mesh).__name__}") from e
            part = _make_part(name, v, f, source)
            part.appearance = app
            parts.append(part)
        result = cls(parts, source=source, kind="memory", up=up)
        validate_parts(result)
        return result


#: inputs with more faces than this are followed by a garbage collection (:func:`load_parts`)
_COLLECT_AFTER_FACES = 1_000_000


def load_parts(path: str | os.PathLike, labels: str | os.PathLike | np.ndarray | None = None,
               parts: str = "auto", up: str | None = None) -> Parts:
    """Read a segmented object.

    Args:
        path: a ``.glb``/``.gltf`` scene (one node per part), a multi-piece OBJ
            or STL, a single mesh file (with ``labels`` or ``parts="components"``),
            a folder of part meshes, or a SAMesh / SAMPart3D output folder.
        labels: per-face integer labels (a ``.npy``/``.json``/``.txt`` path or
            an array) when ``path`` is a single mesh; labels < 0 are unassigned
            (context only). ``None`` otherwise.
        parts: ``"auto"`` (nodes of a scene, pieces of an OBJ/STL), ``"primitives"``
            (one part per glTF primitive) or ``"components"`` (one part per
            connected component of the whole file).
        up: the axis that points up in the file (``"+x"``, ``"-x"``, ``"+y"``,
            ``"-y"``, ``"+z"``, ``"-z"``); None: the format's
            (:data:`holopart_infer.io.frames.DEFAULT_UP`: glTF +Y by its
            specification, OBJ/PLY +Y, STL/OFF +Z). For glTF another value is an
            override for files authored against the specification.

    Returns:
        :class:`Parts` in the input's coordinates (float64 vertices, int64 faces),
        with :attr:`Parts.up` set.

    Raises:
        InputFileNotFound: ``path`` or the labels file does not exist.
        InputError: unsupported extension, empty or unreadable file, empty scene,
            bad labels, a part with NaN/inf vertices or no surface area, fewer
            than two parts, a bad ``up``, a folder of files whose formats have
            different default up axes and no ``up``. Messages name the file and the part.
    """
    from holopart_infer.io.frames import check_up

    path = Path(path)
    if parts not in PARTS_MODES:
        raise InputError(f"parts must be one of {', '.join(PARTS_MODES)}, got {parts!r}")
    if up is not None:
        up = check_up(up)
    if not path.exists():
        raise InputFileNotFound(f"input {path} does not exist")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # numpy warnings of a reader on a broken file must not print before our clean error
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _load(path, labels, parts)
        if sum(len(p.faces) for p in result) > _COLLECT_AFTER_FACES:
            # the reader's objects (a trimesh Scene and its geometry) are reference cycles: free a
            # large input's copies now rather than whenever the garbage collector next runs
            gc.collect()
        validate_parts(result)
    result.up = _input_up(result, path, up)
    log.info("loaded %d parts from %s (%s), %s up", len(result), result.source, result.kind, result.up)
    return result


def _input_up(parts: Parts, path: Path, up: str | None) -> str:
    """The up axis of what was read: ``up``, else its format's default (see :func:`load_parts`)."""
    from holopart_infer.io.frames import DEFAULT_UP, default_up

    meshes = [p for p in (*parts.input_paths, path) if p.suffix.lower() in DEFAULT_UP]
    suffixes = sorted({p.suffix.lower() for p in meshes})
    if up is None:
        found = default_up(suffixes)
        if found is None:
            per = ", ".join(f"{s} {DEFAULT_UP[s]}" for s in suffixes)
            raise InputError(f"{path}: its files are of formats with different default up axes ({per}); say "
                             "which axis points up in them with up= (CLI --up), e.g. --up +y")
        return found
    gltf = [s for s in suffixes if DEFAULT_UP[s] == "+y" and s in SCENE_EXTENSIONS]
    if gltf and up != "+y":
        log.info("%s: glTF is +Y up by its specification; reading it as %s up, as asked", path, up)
    return up


def _load(path: Path, labels, mode: str) -> Parts:
    if path.is_dir():
        if labels is not None:
            raise InputError(f"labels were given but {path} is a folder; labels apply to a single mesh file "
                             "only")
        found = labels_mod.find_segmenter_output(path)
        if found is not None:
            return load_segmenter_files(found)
        if mode != "auto":
            raise InputError(f"--parts {mode} applies to a single mesh file, but {path} is a folder")
        return _load_folder(path)
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise InputError(f"{path}: unsupported extension {ext or '(none)'!r}; expected a mesh file "
                         f"({', '.join(MESH_EXTENSIONS)}) or a folder of part meshes")
    if labels is not None:
        if mode != "auto":
            raise InputError(f"{path}: pass either labels or --parts {mode}, not both")
        return load_mesh_with_labels(path, labels)
    if mode == "components":
        return _load_components(path)
    if mode == "primitives":
        if ext not in SCENE_EXTENSIONS:
            raise InputError(f"{path}: --parts primitives applies to .glb/.gltf files, got {ext!r}; "
                             "use --parts components to split a mesh into its connected pieces")
        nodes = _scene_mesh_nodes(_read_scene(path, "scene", merge_primitives=False), path)
        return _parts_from_nodes(nodes, path, "primitives")
    if ext in SCENE_EXTENSIONS:
        return _parts_from_nodes(_scene_mesh_nodes(_read_scene(path, "scene"), path), path, "scene")
    split = ext != ".obj" or _obj_piece_count(path) >= 2  # OBJ: pieces are its o/g names, not its materials
    nodes = _scene_mesh_nodes(_read_scene(path, "mesh file", split=split), path)
    if split and len(nodes) > 1:
        return _parts_from_nodes(nodes, path, "pieces")
    raise InputError(f"{path} is a single {ext} mesh without part labels. Ways in: {WAYS_IN}")


def validate_parts(parts: Parts) -> None:
    """Check finiteness, surface area and the part count; raise :class:`InputError`."""
    src = parts.source
    if len(parts) == 0:
        raise InputError(f"{src}: no parts found. Ways in: {WAYS_IN}")
    for p in parts:
        bad = ~np.isfinite(p.vertices).all(axis=1)
        if bad.any():
            raise InputError(f"{src}: part {p.name!r} has {int(bad.sum())} vertices with NaN or inf "
                             f"coordinates (first at vertex {int(np.argmax(bad))}); fix or remove them")
    allv = np.concatenate([p.vertices for p in parts], axis=0)
    _check_coordinate_range(allv, src)
    diag = float(np.linalg.norm(allv.max(axis=0).astype(np.float64) - allv.min(axis=0))) if len(allv) else 0.0
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
            f"Segment the mesh first (e.g. SAMPart3D or SAMesh). Ways in: {WAYS_IN}"
        )


def _check_coordinate_range(allv: np.ndarray, src) -> None:
    """Refuse coordinates that cannot complete into a right result (constants.COORD_MAX etc.)."""
    from holopart_infer.constants import COORD_MAX, COORD_MIN_EXTENT, MIN_EXTENT_RATIO

    if not len(allv):
        return
    lo, hi = allv.min(axis=0).astype(np.float64), allv.max(axis=0).astype(np.float64)
    magnitude = float(np.abs(np.stack([lo, hi])).max())
    extent = float((hi - lo).max())
    accepted = (f"accepted: every |coordinate| <= {COORD_MAX:g}, the longest side of the object's bounding box "
                f">= {COORD_MIN_EXTENT:g} and >= 1/{1 / MIN_EXTENT_RATIO:g} of its largest |coordinate| "
                "(float32, what a glb stores, must resolve the object's shape)")
    if magnitude > COORD_MAX:
        raise InputError(f"{src}: coordinates reach {magnitude:.3g}, beyond the accepted range; {accepted}. "
                         "Scale the object down (e.g. to metres) before completing it")
    if extent < COORD_MIN_EXTENT:
        raise InputError(f"{src}: the object's bounding box is only {extent:.3g} across; {accepted}. "
                         "Scale the object up (e.g. to metres) before completing it")
    if extent < MIN_EXTENT_RATIO * magnitude:
        raise InputError(f"{src}: the object is {extent:.3g} across but lies {magnitude:.3g} from the origin; "
                         f"{accepted}. Move it near the origin (subtract its centre) before completing it")


# ---------------------------------------------------------------------------
# readers


def _read_scene(path: Path, what: str = "mesh file", merge_primitives: bool = True, split: bool = False):
    """trimesh.Scene of a mesh file; any reader failure becomes an InputError naming the file."""
    import io

    import trimesh

    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty file (0 bytes); expected a {path.suffix.lower()} {what}. "
                         "Was it written completely?")
    ext = path.suffix.lower()
    kwargs: dict = {"process": False}
    source: object = str(path)
    if ext in SCENE_EXTENSIONS:
        from holopart_infer.io import gltf_json

        # one geometry per glTF mesh, not per primitive (whose frames get random names)
        kwargs["merge_primitives"] = merge_primitives
        try:
            report = gltf_json.inspect(path)
        except InputError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OSError) as e:
            raise InputError(f"{path}: malformed glTF: {_describe(e)}; check the file with the Khronos glTF "
                             "validator or re-export it") from e
        for what_skipped in report.skipped:
            log.warning("%s: skipping %s: it has no surface to complete", path, what_skipped)
        if report.rewritten is not None:
            source = io.BytesIO(report.rewritten)
            kwargs["file_type"] = ext[1:]
            kwargs["resolver"] = trimesh.resolvers.FilePathResolver(str(path))
        for kind, ref in gltf_json.referenced_uris(path):
            # a missing buffer cannot be right; a missing texture only loses the look (the reader says so)
            if not _check_referenced(ref, path, f"a {kind} URI", MAX_REFERENCED_BYTES, missing_ok=kind == "image"):
                log.warning("%s: image %s does not exist; ignored (the parts get no texture colours)", path, ref)
    elif ext == ".obj":
        _check_obj(path)
        if split:
            kwargs.update(split_objects=True, split_groups=True)
    try:
        try:
            scene = trimesh.load_scene(source, **kwargs)
        except Exception:
            if not kwargs.get("merge_primitives"):
                raise
            # trimesh's primitive merging fails on some valid files (e.g. primitives without a
            # material): read primitives separately and merge them per node here instead
            log.debug("%s: merging primitives failed in trimesh; merging them here", path, exc_info=True)
            if hasattr(source, "seek"):
                source.seek(0)
            scene = trimesh.load_scene(source, **{**kwargs, "merge_primitives": False})
            scene.metadata["holopart_merge_primitives"] = True
    except ModuleNotFoundError as e:
        # an optional dependency of trimesh's reader, not a problem of the file
        raise InputError(f"{path}: reading this {ext} file needs the Python package {e.name!r}, which is not "
                         f"installed (a dependency of trimesh's reader, not a problem with the file). "
                         f"Install it with: pip install {e.name}") from e
    except Exception as e:  # trimesh raises many types for broken files (RecursionError included)
        if ext == ".ply":
            _refuse_point_cloud(path)  # a face-less PLY: say what it is, not how the reader tripped
        raise InputError(f"{path}: cannot read this {what} ({_describe(e)}); is it a valid "
                         f"{ext} file?") from e
    return scene


#: largest file a glTF buffer or image URI may name (glTF buffers are addressed with 32-bit offsets)
MAX_REFERENCED_BYTES = 2**32
#: largest material library an OBJ's ``mtllib`` may name (a text file of material definitions)
MAX_MTLLIB_BYTES = 64 * 2**20


def _check_referenced(ref: Path, owner: Path, what: str, limit: int, missing_ok: bool) -> bool:
    """A file that ``owner`` makes the reader open: it must be a regular file of at most ``limit``
    bytes (a FIFO would hang the read, a device such as /dev/zero would never end). Checked by
    ``stat`` before anything reads it. Returns False for a missing file when ``missing_ok``."""
    import stat

    try:
        st = ref.stat()
    except FileNotFoundError:
        if missing_ok:
            return False
        raise InputError(f"{owner}: {what} names {ref}, which does not exist; put it beside the file "
                         "or re-export the file with its data embedded (.glb)") from None
    except OSError as e:
        raise InputError(f"{owner}: {what} names {ref}, which cannot be read ({e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{owner}: {what} names {ref}, which is {kind}, not a regular file; refusing to read "
                         "it. Point it at the real file (or re-export the file with its data embedded)")
    if st.st_size > limit:
        raise InputError(f"{owner}: {what} names {ref}, which is {st.st_size:,} bytes, more than the "
                         f"{limit:,} accepted; is it the right file?")
    return True


def _check_obj(path: Path) -> None:
    """Before trimesh reads an OBJ: every face's vertex indices exist (OBJ counts from 1; negative
    indices count back from the last vertex read), and every ``mtllib`` is a regular, reasonably
    sized file; one that is missing or defines no material is ignored with a warning naming it."""
    import re

    data = path.read_bytes()
    lines = data.split(b"\n")
    nv = sum(1 for line in lines if line[:2] in (b"v ", b"v\t"))
    faces = b" ".join([line[2:] for line in lines if line[:2] in (b"f ", b"f\t")])
    if b"#" in faces:  # a comment after a face (rare): cut it, line by line
        faces = b" ".join([line[2:].split(b"#", 1)[0] for line in lines if line[:2] in (b"f ", b"f\t")])
    if b"/" in faces:  # "7/1/3", "7//3": the vertex index is the number before the first slash
        faces = re.sub(rb"/\S*", b"", faces)
    try:
        refs = list(map(int, faces.split()))
    except ValueError:
        refs = [0]  # a token that is not an integer: the line-by-line pass names it
    if refs and (min(refs) <= 0 or max(refs) > nv):
        _locate_bad_obj_index(path)  # 0, too large, or counting back (legal when in range): line by line
    libs = []
    at = data.find(b"mtllib")
    while at >= 0:  # found by bytes.find, not per line: an OBJ has millions of lines and one mtllib
        if at == 0 or data[at - 1:at] == b"\n":
            libs.append(data[at:data.find(b"\n", at) % (len(data) + 1)].split(b"#", 1)[0].split()[1:])
        at = data.find(b"mtllib", at + 6)
    for name in (n for names in libs for n in names):
        for lib in [name.decode("utf-8", "replace")]:
            ref = path.parent / lib
            if not _check_referenced(ref, path, "mtllib", MAX_MTLLIB_BYTES, missing_ok=True):
                log.warning("%s: material library %s (mtllib) does not exist; ignored (parts get no material "
                            "colours)", path, ref)
                continue
            text = ref.read_text(encoding="utf-8", errors="replace")
            if not any(line.split()[:1] == ["newmtl"] for line in text.splitlines()):
                log.warning("%s: material library %s (mtllib) defines no material (no 'newmtl' line); ignored",
                            path, ref)


def _locate_bad_obj_index(path: Path) -> None:
    """Raise naming the line of the first face index that does not exist (see :func:`_check_obj`)."""
    nv = 0
    high, high_line = 0, 0
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith(("v ", "v\t")):
                nv += 1
            elif line.startswith(("f ", "f\t")):
                for tok in line.split("#", 1)[0].split()[1:]:
                    try:
                        i = int(tok.split("/", 1)[0])
                    except ValueError:
                        raise InputError(f"{path}, line {lineno}: face entry {tok!r} does not start with a vertex "
                                         "index (an integer); the file is malformed") from None
                    if i == 0:
                        raise InputError(f"{path}, line {lineno}: a face refers to vertex 0, but OBJ vertex "
                                         "indices start at 1 (negative ones count back from the last vertex "
                                         "read); the file was written with 0-based indices. Fix the exporter "
                                         "or add 1 to every face index")
                    if i < 0 and -i > nv:
                        raise InputError(f"{path}, line {lineno}: a face refers to vertex {i} (counting back), "
                                         f"but only {nv} vertices come before it; the file is malformed")
                    if i > high:
                        high, high_line = i, lineno
    if high > nv:
        raise InputError(f"{path}, line {high_line}: a face refers to vertex {high}, but the file has only {nv} "
                         "vertices; the file is truncated or malformed")


def _ply_counts(path: Path) -> tuple[int | None, int | None]:
    """(vertex count, face count) from a PLY header (None where an element is not declared or the
    header cannot be read)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return None, None
    if not head.startswith(b"ply") or b"end_header" not in head:
        return None, None
    counts: dict[str, int] = {}
    for line in head.split(b"end_header", 1)[0].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "element" and words[2].isdigit():
            counts[words[1]] = int(words[2])
    return counts.get("vertex"), counts.get("face")


def _refuse_point_cloud(path: Path) -> None:
    """Raise the point-cloud explanation if ``path`` is a PLY that declares no faces."""
    nv, nf = _ply_counts(path)
    if nv is not None and not nf:
        raise InputError(f"{path} is a point cloud ({nv:,} points, "
                         + ("no face element" if nf is None else "0 faces")
                         + "): HoloPart completes parts of a triangle mesh, and points have no surface to "
                         "sample. Reconstruct a mesh first (e.g. Poisson reconstruction in Open3D or MeshLab), "
                         "then segment it")


def _describe(e: BaseException) -> str:
    """``Type: message``; for an exception without a message, where it was raised instead."""
    import traceback

    msg = str(e).strip()
    if msg:
        return f"{type(e).__name__}: {msg}"
    tb = traceback.extract_tb(e.__traceback__)
    where = f" in {Path(tb[-1].filename).name}:{tb[-1].lineno} ({tb[-1].line})" if tb else ""
    return f"the reader's consistency check failed{where}; the file is malformed"


def _scene_mesh_nodes(scene, path: Path) -> list[tuple[str, np.ndarray, np.ndarray, object]]:
    """(node name, world vertices, faces, appearance) for every triangle-mesh node.

    A node whose world transform mirrors (negative determinant) has its faces'
    winding flipped so they keep facing outwards, as glTF requires.
    """
    import trimesh

    from holopart_infer.io import appearance

    out, skipped = [], []
    merge = bool(scene.metadata.get("holopart_merge_primitives"))
    primitive_k: dict[str, int] = {}
    parents = scene.graph.transforms.parents
    for node in scene.graph.nodes_geometry:  # scene-graph order: the order segmenters label faces in
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh):
            skipped.append(f"{node!r} ({type(geom).__name__})")
            continue
        v = np.asarray(geom.vertices, dtype=np.float64)
        f = np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            k = int(np.argmax(((f < 0) | (f >= len(v))).any(axis=1)))
            raise InputError(f"{path}: mesh {node!r}: face {k} refers to vertices {f[k].tolist()}, but the mesh has "
                             f"{len(v)} vertices (indices 0..{len(v) - 1}); the file is corrupt or truncated")
        T = np.asarray(transform, dtype=np.float64)
        v = v @ T[:3, :3].T + T[:3, 3]
        if np.linalg.det(T[:3, :3]) < 0:
            f = f[:, ::-1].copy()
        name = str(node)
        if geom.metadata.get("from_gltf_primitive") and node in parents:
            # one primitive of a multi-primitive glTF mesh: trimesh names its node with a random
            # suffix; name it <node>_<k> by primitive order instead (or merge it into <node>)
            parent = str(parents[node])
            k = primitive_k[parent] = primitive_k.get(parent, -1) + 1
            if merge:
                prev = next((i for i, o in enumerate(out) if o[0] == parent), None)
                if prev is not None:
                    pv, pf = out[prev][1], out[prev][2]
                    out[prev] = (parent, np.concatenate([pv, v]), np.concatenate([pf, f + len(pv)]), None)
                    continue
                name = parent
            else:
                name = f"{parent}_{k}"
        out.append((name, v, f, appearance.from_trimesh(geom)))
    if skipped:
        log.warning("%s: skipping %d node(s) without triangles (point clouds or lines have no surface to "
                    "complete): %s", path, len(skipped), ", ".join(skipped))
    if not out:
        if path.suffix.lower() == ".ply":
            _refuse_point_cloud(path)
        raise InputError(f"{path}: the file holds no triangle meshes (empty scene"
                         + (f"; only {', '.join(skipped)}" if skipped else "") + ")")
    return out


def _obj_piece_count(path: Path) -> int:
    """Distinct ``o`` / ``g`` names of an OBJ file."""
    names = set()
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(("o ", "g ")):
                names.add(line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else "")
    return len(names)


def _parts_from_nodes(nodes, path: Path, kind: str) -> Parts:
    nodes = sorted(nodes, key=lambda n: _natural_key(n[0]))
    names = _unique_names([n[0] for n in nodes])
    parts = []
    for name, (_, v, f, app) in zip(names, nodes):
        part = _make_part(name, v, f, str(path), copy=False)  # arrays of the reader, not the caller's
        part.appearance = app
        parts.append(part)
    return Parts(parts, source=str(path), kind=kind, input_paths=(path, *_referenced_files(path)))


def _referenced_files(path: Path) -> tuple[Path, ...]:
    """Files a mesh file makes the reader open besides itself (glTF buffers and
    images, an OBJ's material libraries): protected like the file itself."""
    ext = path.suffix.lower()
    if ext in SCENE_EXTENSIONS:
        from holopart_infer.io import gltf_json

        return gltf_json.referenced_files(path)
    if ext == ".obj":
        libs = []
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("mtllib "):
                    libs.extend(path.parent / name for name in line.split()[1:])
        return tuple(libs)
    return ()


def _merged_nodes(path: Path):
    """The whole file as one mesh: (vertices, faces, appearance per node, face offsets).

    Node order is the scene graph's, as ``trimesh.load(path).dump(concatenate=True)``
    gives it: the face order segmenters such as SAMPart3D label.
    """
    nodes = _scene_mesh_nodes(_read_scene(path), path)
    offsets = np.cumsum([0] + [len(n[1]) for n in nodes[:-1]])
    v = np.concatenate([n[1] for n in nodes], axis=0)
    f = np.concatenate([n[2] + o for n, o in zip(nodes, offsets)], axis=0)
    return v, f, nodes


def _load_single_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """One mesh file as one mesh (world coordinates, file face order) and its appearance."""
    v, f, nodes = _merged_nodes(path)
    return v, f, nodes[0][3] if len(nodes) == 1 else None


def _face_appearance(nodes, labels_mask: np.ndarray):
    """The appearance of the faces selected by ``labels_mask`` when they come from one node."""
    counts = np.cumsum([0] + [len(n[2]) for n in nodes])
    owner = np.searchsorted(counts, np.nonzero(labels_mask)[0], side="right") - 1
    owners = np.unique(owner)
    return (int(owners[0]), counts) if len(owners) == 1 else (None, counts)


def _split_by_labels(v, f, labels: np.ndarray, nodes, path: Path) -> tuple[list[Part], tuple | None]:
    parts = []
    vcounts = np.cumsum([0] + [len(n[1]) for n in nodes])
    for lab in np.unique(labels[labels >= 0]):
        mask = labels == lab
        sel = f[mask]
        used, inverse = np.unique(sel.reshape(-1), return_inverse=True)
        part = _make_part(f"part_{int(lab)}", v[used], inverse.reshape(-1, 3), str(path), copy=False)
        node_i, fcounts = _face_appearance(nodes, mask)
        if node_i is not None and nodes[node_i][3] is not None:
            part.appearance = nodes[node_i][3].subset(used - vcounts[node_i],
                                                      np.nonzero(mask)[0] - fcounts[node_i])
        parts.append(part)
    context = None
    if (labels < 0).any():
        sel = f[labels < 0]
        used, inverse = np.unique(sel.reshape(-1), return_inverse=True)
        context = (v[used].astype(np.float64), inverse.reshape(-1, 3).astype(np.int64))
        log.info("%s: %d faces with negative labels are unassigned: context for the whole object, in no part",
                 path, int((labels < 0).sum()))
    return parts, context


def load_mesh_with_labels(path: str | os.PathLike, labels, kind: str = "mesh+labels",
                          extra_inputs: tuple[Path, ...] = ()) -> Parts:
    """One mesh file plus per-face labels (see :func:`load_parts`); not validated here."""
    path = Path(path)
    inputs: tuple[Path, ...] = (path, *extra_inputs)
    if isinstance(labels, (str, os.PathLike)) and not Path(labels).exists():
        raise InputFileNotFound(f"labels file {labels} does not exist")
    v, f, nodes = _merged_nodes(path)
    if isinstance(labels, (str, os.PathLike)):
        lpath = Path(labels)
        arr = labels_mod.read_labels(lpath, num_faces=len(f))
        lsrc = f"labels file {lpath}"
        inputs = inputs + (lpath,)
    else:
        lsrc = "labels array"
        arr = labels_mod.check_label_array(labels, lsrc)
    if len(arr) != len(f) and path.suffix.lower() == ".obj":
        sizes = labels_mod.obj_polygon_sizes(path)
        if sizes is not None and len(sizes) == len(arr) and (sizes > 3).any():
            # per-polygon labels of an OBJ with quads / n-gons: triangulate the polygons here so
            # every triangle takes its polygon's label
            v, polys = labels_mod.read_obj_polygons(path)
            f, arr = labels_mod.triangulate_polygons(polys, arr)
            nodes = [("mesh", v, f, None)]
            log.info("%s: %d per-polygon labels mapped to %d triangles", lsrc, len(polys), len(f))
    if len(arr) != len(f):
        hint = ""
        if path.suffix.lower() == ".obj":
            sizes = labels_mod.obj_polygon_sizes(path)
            hint = (f" (the OBJ has {0 if sizes is None else len(sizes)} polygons; per-polygon labels are "
                    "accepted too)")
        raise InputError(f"{lsrc}: has {len(arr)} labels but mesh {path} has {len(f)} faces{hint}; "
                         "expected exactly one label per face, in the file's face order")
    if len(nodes) > 1:
        log.info("%s: %d mesh nodes concatenated in scene-graph order for the labels", path, len(nodes))
    parts, context = _split_by_labels(v, f, arr, nodes, path)
    if not parts:
        raise InputError(f"{lsrc}: every label is negative (unassigned), so there are no parts. Labels >= 0 "
                         "name parts; labels < 0 mark context faces that belong to no part")
    return Parts(parts, source=str(path), kind=kind, input_paths=inputs, context=context)


def load_segmenter_files(found: labels_mod.SegmenterFiles) -> Parts:
    """Parts of a segmenter's output, once :mod:`holopart_infer.io.labels` has found its mesh and labels
    (:func:`holopart_infer.io.adapters.load_samesh` / :func:`~holopart_infer.io.adapters.load_sampart3d`)."""
    parts = load_mesh_with_labels(found.mesh, found.labels, kind=found.kind)
    if found.kind == "samesh":
        parts.source = str(found.labels.parent)
    else:
        log.info("SAMPart3D output %s, scale %s: %d parts", found.folder, found.scale, len(parts))
    return parts


def _load_components(path: Path) -> Parts:
    """One part per connected component of the whole file (vertices merged by position)."""
    import trimesh

    v, f, nodes = _merged_nodes(path)
    merged = trimesh.Trimesh(v, f, process=False)
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    labels = trimesh.graph.connected_component_labels(merged.face_adjacency, node_count=len(merged.faces))
    # number components by their first face, so names follow the file's face order
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    parts, _ = _split_by_labels(v, f, rank[labels], nodes, path)
    for p in parts:
        p.name = p.name.replace("part_", "component_", 1)
    if len(parts) < 2:
        raise InputError(f"{path}: --parts components found a single connected piece, so there is nothing to "
                         f"split. Ways in: {WAYS_IN}")
    log.info("%s: split into %d connected components", path, len(parts))
    return Parts(parts, source=str(path), kind="components", input_paths=(path,))


def _load_folder(folder: Path) -> Parts:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS]
    if not files:
        raise InputError(f"folder {folder} holds no mesh files ({', '.join(MESH_EXTENSIONS)}); "
                         "expected one file per part, or a SAMesh / SAMPart3D output folder")
    files.sort(key=lambda p: (_natural_key(p.stem), p.name))
    names = _unique_names([p.stem for p in files])
    parts = []
    for name, fp in zip(names, files):
        v, f, app = _load_single_mesh(fp)
        part = _make_part(name, v, f, str(fp), copy=False)
        part.appearance = app
        parts.append(part)
    return Parts(parts, source=str(folder), kind="folder", input_paths=tuple(files))


def _make_part(name: str, vertices, faces, source: str, copy: bool = True) -> Part:
    """A checked part; ``copy=False`` keeps arrays that are already float64 / int64 (a
    reader's own arrays: one copy of a large input is enough)."""
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
    return Part(name, v.astype(np.float64, copy=copy), f.astype(np.int64, copy=copy))


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
                protect: Iterable[str | os.PathLike] | None = None, overwrite: bool = False,
                vertex_colors: Sequence | None = None, extras: Sequence | None = None) -> Path:
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
        vertex_colors: per part ``None`` or (V, 4) uint8 RGBA per vertex (the
            input's look, :mod:`holopart_infer.io.appearance`); written as the
            glTF ``COLOR_0`` attribute, over a white material.
        extras: per part ``None`` or a JSON-ready dict written as the node's
            glTF ``extras`` (e.g. the part's quality scores, read back by
            ``holopart-infer inspect``).

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
    if extras is not None and len(extras) != len(meshes):
        raise InputError(f"write_scene: {len(meshes)} meshes but {len(extras)} extras")
    node_extras = [None if extras is None or extras[i] is None else dict(extras[i]) for i in range(len(meshes))]

    scene = trimesh.Scene()
    for i, (name, mesh) in enumerate(zip(names, meshes)):
        v, f = mesh_arrays(mesh)
        if len(f) == 0:
            log.warning("part %r has no faces; writing an empty node", name)
            scene.graph.update(frame_from=scene.graph.base_frame, frame_to=name,
                               **({} if node_extras[i] is None else {"metadata": node_extras[i]}))
            continue
        if not np.isfinite(v).all():
            raise InputError(f"write_scene: part {name!r} has NaN or inf vertices")
        vcol = _vertex_colors_of(vertex_colors, i, len(v), name)
        material = PBRMaterial(name=f"{name}_material", baseColorFactor=rgba[i] if vcol is None else
                               (255, 255, 255, 255), metallicFactor=0.0, roughnessFactor=0.8, doubleSided=True)
        tm = trimesh.Trimesh(v, f, process=False, visual=TextureVisuals(material=material))
        if vcol is not None:  # appearance: per-vertex colours (COLOR_0) multiply the white material
            tm.visual.vertex_attributes["color"] = vcol
        scene.add_geometry(tm, node_name=name, geom_name=name, metadata=node_extras[i])
    try:
        data = scene.export(file_type="glb")
    except Exception as e:
        raise InputError(f"output {path}: could not encode the scene as glb ({e})") from e
    fsafe.atomic_write(path, data, overwrite=overwrite)
    log.info("wrote %d parts to %s", len(meshes), path)
    return path


def _vertex_colors_of(vertex_colors, i: int, n_vertices: int, name: str) -> np.ndarray | None:
    """Part i's (V, 4) uint8 vertex colours, or None (appearance output of write_scene)."""
    if vertex_colors is None or vertex_colors[i] is None:
        return None
    c = np.asarray(vertex_colors[i])
    if c.ndim != 2 or c.shape[0] != n_vertices or c.shape[1] not in (3, 4):
        raise InputError(f"write_scene: part {name!r}: vertex colours must be ({n_vertices}, 3|4), got {c.shape}")
    c = _normalize_colors(c, n_vertices)
    return c


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
