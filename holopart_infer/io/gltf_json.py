"""The one glTF reader: the container, accessors and the node tree; the checks on a file's
JSON before trimesh reads it, and the one rewrite it needs.

Shared by every glTF path: :mod:`holopart_infer.io.parts_io` (files, through :func:`inspect`),
:mod:`holopart_infer.postprocess.quality` (scores stored in a result) and the service's upload limits
(:mod:`holopart_infer.serve.limits`: :func:`read_container` with ``strict=True``, then
:func:`summarise`, then a comparison with its limits). Messages start with the file's name.

:func:`inspect` checks a file before trimesh reads it: trimesh reads glTF well,
but some valid or malformed files give a wrong or unhelpful result there (found
on a peer project's corpus of unusual files):

* Draco-compressed meshes (``KHR_draco_mesh_compression``) decode only with the
  optional ``DracoPy`` package; without it their accessors are zeros and every
  part looks like it has no surface area. Said up front, with the install hint.
* meshopt-compressed buffers cannot be decoded at all here: said up front.
* A node graph with a cycle (a node that is its own ancestor) is invalid glTF;
  reported as such, naming the nodes. One nested deeper than
  :data:`MAX_NODE_DEPTH` is refused too (trimesh walks it recursively).
* ``TRIANGLE_FAN`` primitives (mode 6) are skipped by trimesh: rewritten here
  as triangle lists (``TRIANGLE_STRIP`` is triangulated by trimesh itself).
* ``POINTS`` and ``LINES`` primitives have no surface: listed so the reader can
  warn, naming them.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from holopart_infer.errors import InputError

DRACO = "KHR_draco_mesh_compression"
_UNDECODABLE = ("EXT_meshopt_compression", "KHR_meshopt_compression")
_MODES = {0: "POINTS", 1: "LINES", 2: "LINE_LOOP", 3: "LINE_STRIP", 4: "TRIANGLES", 5: "TRIANGLE_STRIP",
          6: "TRIANGLE_FAN"}
TRIANGLE_MODES = (4, 5, 6)  # triangles, strip, fan: everything else is not a surface
_INDEX_DTYPES = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}
#: bytes of one component, per accessor componentType; components per accessor type
COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
#: the glb container: magic, and the chunk types as little-endian integers
GLB_MAGIC = b"glTF"
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
#: deepest node hierarchy read (deeper is refused: readers walk it recursively, and slowly)
MAX_NODE_DEPTH = 1000


@dataclass
class GltfReport:
    """What :func:`inspect` found.

    Attributes:
        rewritten: the file's bytes with fans turned into triangle lists (None
            when nothing needed rewriting).
        skipped: ``"mesh 'name' primitive k (POINTS)"`` descriptions of
            primitives without surface.
        uses_draco: whether any primitive is Draco-compressed.
    """

    rewritten: bytes | None = None
    skipped: list[str] = field(default_factory=list)
    uses_draco: bool = False


def inspect(path: Path) -> GltfReport:
    """Check a ``.glb``/``.gltf`` file's JSON (see module docstring).

    Raises:
        InputError: Draco without DracoPy, meshopt compression, a cyclic node
            graph, or JSON that cannot be parsed; each naming the file.
    """
    data = path.read_bytes()
    container = read_container(data, str(path))
    doc, is_glb, bin_chunk = container.doc, container.is_glb, container.bin_chunk(data)
    version = doc["asset"].get("version") if isinstance(doc.get("asset"), dict) else None
    if isinstance(version, str) and not version.startswith("2."):
        raise InputError(f"{path}: a glTF {version} file (asset.version {version!r}); only glTF 2.0 is read. "
                         "Convert it to glTF 2.0 (e.g. import and re-export it in Blender, or gltf-pipeline)")
    used = set(doc.get("extensionsUsed", []) or []) | set(doc.get("extensionsRequired", []) or [])
    report = GltfReport()
    meshes = doc.get("meshes", []) or []
    for m in meshes:
        for p in (m.get("primitives", []) if isinstance(m, dict) else []):
            if isinstance(p, dict) and DRACO in (p.get("extensions") or {}):
                report.uses_draco = True
    report.uses_draco |= DRACO in used
    if report.uses_draco and importlib.util.find_spec("DracoPy") is None:
        raise InputError(
            f"{path}: the meshes are Draco-compressed ({DRACO}); reading them needs the optional "
            "package DracoPy. Install it with: pip install 'holopart-infer[draco]' (or pip install DracoPy), "
            "or re-export the file without Draco compression")
    bad = sorted(used & set(_UNDECODABLE))
    if bad:
        raise InputError(f"{path}: the buffers use {', '.join(bad)}, which cannot be decoded here; re-export "
                         "the file without meshopt compression (e.g. gltfpack without -c, or Blender)")
    nodes = doc.get("nodes")
    check_node_tree(nodes if isinstance(nodes, list) else [], str(path))

    fans = []
    for mi, m in enumerate(meshes):
        name = m.get("name", f"mesh {mi}") if isinstance(m, dict) else f"mesh {mi}"
        for pi, p in enumerate(m.get("primitives", []) if isinstance(m, dict) else []):
            mode = p.get("mode", 4) if isinstance(p, dict) else 4
            if mode in (0, 1, 2, 3):
                report.skipped.append(f"mesh {name!r} primitive {pi} ({_MODES[mode]})")
            elif mode == 6:
                fans.append(p)
    if fans:
        report.rewritten = _rewrite_fans(doc, bin_chunk, fans, is_glb, path)
    return report


def referenced_files(path: Path) -> tuple[Path, ...]:
    """Files a glTF reads besides itself: buffer and image URIs that are not
    ``data:`` URIs, resolved against the file's folder (they are inputs too, so
    no output may replace them). Unreadable JSON gives ``()`` (the reader says why)."""
    return tuple(dict.fromkeys(p for _, p in referenced_uris(path)))


def referenced_uris(path: Path) -> list[tuple[str, Path]]:
    """``("buffer" | "image", path)`` for each URI of :func:`referenced_files`."""
    from urllib.parse import unquote

    try:
        doc = read_container(path.read_bytes(), str(path)).doc
    except (OSError, InputError, struct.error):
        return []
    out = []
    for key in ("buffers", "images"):
        for item in doc.get(key, []) or [] if isinstance(doc, dict) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and uri and not uri.startswith("data:") and "://" not in uri:
                out.append((key[:-1], path.parent / unquote(uri)))
    return out


# ----------------------------------------------------------------------------- the container

class GltfError(InputError):
    """A glTF file (or upload) that cannot be read as glTF 2.0; the message starts with
    where it came from. ``unsupported`` marks valid glTF this project does not read."""

    def __init__(self, message: str, unsupported: bool = False):
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True)
class Container:
    """A parsed ``.glb`` or ``.gltf``: its JSON document and where its BIN chunk lies.

    ``bin_offset``/``bin_length`` locate the first BIN chunk's payload in the data
    that was parsed (``bin_length`` 0 and ``bin_offset`` None when there is none), so
    a caller holding an ``mmap`` never copies it; :meth:`bin_chunk` slices it out.
    ``json_end`` is where the JSON chunk ends (what follows it is kept as it is
    when a glb is rewritten).
    """

    doc: dict
    is_glb: bool
    bin_offset: int | None = None
    bin_length: int = 0
    json_end: int = 0

    def bin_chunk(self, data) -> bytes | None:
        if self.bin_offset is None:
            return None
        return bytes(data[self.bin_offset:self.bin_offset + self.bin_length])


def _loads(raw, where: str, what: str, encoding: str):
    try:
        return json.loads(bytes(raw).decode(encoding))
    except RecursionError:
        raise GltfError(f"{where}: {what} is nested too deeply to read (thousands of levels of arrays or "
                        "objects); the file is malformed or hostile") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise GltfError(f"{where}: {what} is not valid JSON ({e})") from None


def read_container(data, where: str, *, strict: bool = False) -> Container:
    """Split a ``.glb`` (data starting with ``b"glTF"``) or parse a ``.gltf``'s JSON.

    Every chunk length is checked against the bytes present before anything is
    sliced. ``strict`` (untrusted uploads) also requires the glb header's total
    length to be the data's length and the first chunk to be the JSON chunk; files
    on disk are read as leniently as trimesh reads them.

    Args:
        data: the file's bytes (or an ``mmap`` of them).
        where: the file name or path, the start of every message.

    Raises:
        GltfError: not glTF 2.0, a truncated container, JSON that cannot be parsed
            or is not an object.
    """
    if data[:4] != GLB_MAGIC:
        try:
            doc = json.loads(bytes(data).decode("utf-8-sig"))
        except RecursionError:
            raise GltfError(f"{where}: the glTF JSON is nested too deeply to read (thousands of levels of "
                            "arrays or objects); the file is malformed or hostile") from None
        except (UnicodeDecodeError, ValueError) as e:
            what = ("neither a binary glTF (those start with b'glTF', this one with "
                    f"{bytes(data[:4])!r}) nor" if where.lower().endswith(".glb") else "not")
            raise GltfError(f"{where}: cannot read this file: it is {what} glTF JSON ({e}). Is it a valid "
                            f"{Path(where).suffix.lower() or 'glTF'} file?") from None
        return Container(_object(doc, where), is_glb=False)
    n = len(data)
    if n >= 8:
        (version,) = struct.unpack_from("<I", data, 4)
        if version != 2:
            raise GltfError(f"{where}: a binary glTF of version {version}"
                            + (" (glTF 1.0)" if version == 1 else "") + "; only glTF 2.0 is read. Convert it "
                            "to glTF 2.0 (e.g. import and re-export it in Blender, or gltf-pipeline)")
    if n < 20:
        raise GltfError(f"{where}: truncated .glb ({n} bytes; the header and a chunk header alone are 20)")
    if strict:
        (length,) = struct.unpack_from("<I", data, 8)
        if length != n:
            raise GltfError(f"{where}: the glb header declares {length} bytes but the upload has {n}")
        (first,) = struct.unpack_from("<4s", data, 16)
        if first != b"JSON":
            raise GltfError(f"{where}: the first glb chunk must be JSON (type 0x{CHUNK_JSON:08x}), got "
                            f"0x{int.from_bytes(first, 'little'):08x}")
    pos, doc, bin_at, bin_len, json_end = 12, None, None, 0, 0
    while pos + 8 <= n:
        length, kind = struct.unpack_from("<I4s", data, pos)
        if length > n - pos - 8:
            name = {b"JSON": "JSON chunk", b"BIN\x00": "BIN chunk"}.get(kind, "a chunk")
            raise GltfError(f"{where}: truncated .glb: the {name} declares {length} bytes but only "
                            f"{n - pos - 8} follow")
        if kind == b"JSON" and doc is None:
            doc = _loads(data[pos + 8:pos + 8 + length], where, "the .glb's JSON chunk", "utf-8")
            json_end = pos + 8 + length
        elif kind == b"BIN\x00" and bin_at is None:
            bin_at, bin_len = pos + 8, length
        pos += 8 + length
    if doc is None:
        raise GltfError(f"{where}: the .glb has no JSON chunk")
    return Container(_object(doc, where), True, bin_at, bin_len, json_end)


def _object(doc, where: str) -> dict:
    if not isinstance(doc, dict):
        raise GltfError(f"{where}: the glTF JSON is a {type(doc).__name__}, not an object; is it a glTF file?")
    return doc


def glb_header(json_length: int, rest_length: int) -> bytes:
    """The glb header and JSON chunk header for a JSON chunk of ``json_length`` (padded)
    bytes followed by ``rest_length`` bytes of further chunks."""
    return (struct.pack("<4sII", GLB_MAGIC, 2, 12 + 8 + json_length + rest_length)
            + struct.pack("<I4s", json_length, b"JSON"))


def bin_chunk_bytes(payload: bytes) -> bytes:
    """A BIN chunk (header and 4-byte padding) holding ``payload``."""
    b = payload + b"\x00" * (-len(payload) % 4)
    return struct.pack("<I4s", len(b), b"BIN\x00") + b


# ----------------------------------------------------------------------------- accessors

def element_bytes(accessor: dict) -> int:
    """Bytes of one element of ``accessor`` (componentType x type).

    Raises:
        KeyError / TypeError: an unknown componentType or type.
    """
    return COMPONENT_BYTES[accessor["componentType"]] * TYPE_COMPONENTS[accessor["type"]]


def accessor_span(accessor: dict, stride: int | None) -> int:
    """Bytes of its bufferView an accessor reaches: offset + (count - 1) strides + one element."""
    count, elem = int(accessor["count"]), element_bytes(accessor)
    return int(accessor.get("byteOffset", 0)) + (count - 1) * (stride or elem) + elem if count else 0


# ----------------------------------------------------------------------------- the node tree

def node_name(nodes, i: int) -> str:
    n = nodes[i] if isinstance(nodes[i], dict) else {}
    return f"node {i}" + (f" {n['name']!r}" if n.get("name") else "")


def node_children(nodes: list, where: str, *, strict: bool = False) -> list[list[int]]:
    """Each node's children. Lenient (files): entries that are not node indices are
    skipped, as trimesh skips them. ``strict`` (uploads): they, a node listed as its
    own child and a node with two parents are errors."""
    out: list[list[int]] = []
    parent = [-1] * len(nodes)
    for i, node in enumerate(nodes):
        children = node.get("children", []) if isinstance(node, dict) else []
        if not strict:
            out.append([c for c in children if isinstance(c, int) and 0 <= c < len(nodes)]
                       if isinstance(children, list) else [])
            continue
        if not isinstance(children, list):
            raise GltfError(f"{where}: nodes[{i}].children must be a list of node indices, got {children!r}")
        for c in children:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(nodes) or c == i:
                raise GltfError(f"{where}: nodes[{i}] has an invalid child {c!r}")
            if parent[c] != -1:
                raise GltfError(f"{where}: nodes[{c}] has two parents ({parent[c]} and {i}); a glTF node tree "
                                "has one")
            parent[c] = i
        out.append(list(children))
    return out


def check_node_tree(nodes: list, where: str, *, strict: bool = False) -> list[list[int]]:
    """:func:`node_children`, then refuse a cycle (a node that is its own ancestor,
    named) or a hierarchy deeper than :data:`MAX_NODE_DEPTH`. Iterative: a hostile
    depth cannot exhaust the stack here."""
    children = node_children(nodes, where, strict=strict)
    state = [0] * len(nodes)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack = [(root, iter(children[root]))]
        trail = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                trail.pop()
                continue
            if state[nxt] == 1:
                loop = trail[trail.index(nxt):] + [nxt]
                names = " -> ".join(node_name(nodes, i) for i in loop)
                raise GltfError(f"{where}: the node graph has a cycle ({names}); a glTF node may not be its "
                                "own ancestor. Fix the 'children' lists in the file (re-export it)")
            if state[nxt] == 0:
                state[nxt] = 1
                trail.append(nxt)
                stack.append((nxt, iter(children[nxt])))
                if len(trail) > MAX_NODE_DEPTH:
                    raise GltfError(
                        f"{where}: the node graph is nested more than {MAX_NODE_DEPTH} levels deep (from "
                        f"{node_name(nodes, trail[0])} down to {node_name(nodes, nxt)}); real scenes are a few "
                        "dozen levels deep at most, so this file is malformed or hostile. Flatten the hierarchy "
                        "(e.g. re-export it with transforms applied)")
    return children


# ----------------------------------------------------------------------------- what a file declares

@dataclass
class GltfSummary:
    """What a glTF declares: mesh nodes (parts), triangles and vertices over all of them
    (counted per mesh *instance*: a mesh used by several nodes counts each time), the
    node count and the largest accessor element count."""

    mesh_nodes: int
    faces: int
    vertices: int
    nodes: int = 0
    max_accessor_count: int = 0


def _list(doc: dict, key: str, where: str) -> list:
    val = doc.get(key, [])
    if not isinstance(val, list) or not all(isinstance(x, dict) for x in val):
        raise GltfError(f"{where}: '{key}' must be a list of objects")
    return val


def _index(value, size: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < size


def summarise(doc: dict, where: str) -> GltfSummary:
    """Count what ``doc`` declares (see :class:`GltfSummary`), checking every reference
    the counting follows (accessor counts, primitive attributes and indices, node
    meshes). The data itself is not read.

    Raises:
        GltfError: a reference to something that does not exist, a value of the
            wrong JSON type.
    """
    accessors = _list(doc, "accessors", where)
    counts = []
    for i, a in enumerate(accessors):
        c = a.get("count")
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise GltfError(f"{where}: accessors[{i}]: 'count' must be an integer >= 0, got {c!r}")
        counts.append(c)
    mesh_cost = []  # (faces, vertices) per mesh
    for m, mesh in enumerate(_list(doc, "meshes", where)):
        faces = verts = 0
        prims = mesh.get("primitives", [])
        if not isinstance(prims, list):
            raise GltfError(f"{where}: meshes[{m}].primitives must be a list")
        for p, prim in enumerate(prims):
            w = f"{where}: meshes[{m}].primitives[{p}]"
            if not isinstance(prim, dict):
                raise GltfError(f"{w}: must be an object")
            attrs = prim.get("attributes", {})
            if not isinstance(attrs, dict):
                raise GltfError(f"{w}: attributes must be an object")
            for name, idx in attrs.items():
                if not _index(idx, len(counts)):
                    raise GltfError(f"{w}: attribute {name} refers to accessor {idx!r}, which does not exist")
            if "POSITION" not in attrs:
                continue
            nv = counts[attrs["POSITION"]]
            ni = nv
            if "indices" in prim:
                if not _index(prim["indices"], len(counts)):
                    raise GltfError(f"{w}: indices refer to accessor {prim['indices']!r}, which does not exist")
                ni = counts[prim["indices"]]
            verts += nv
            mode = prim.get("mode", 4)
            if mode in TRIANGLE_MODES:
                faces += ni // 3 if mode == 4 else max(ni - 2, 0)
        mesh_cost.append((faces, verts))
    nodes = _list(doc, "nodes", where)
    mesh_nodes = faces = verts = 0
    for i, node in enumerate(nodes):
        if "mesh" in node:
            if not _index(node["mesh"], len(mesh_cost)):
                raise GltfError(f"{where}: nodes[{i}] refers to mesh {node['mesh']!r}, which does not exist")
            mesh_nodes += 1
            faces += mesh_cost[node["mesh"]][0]
            verts += mesh_cost[node["mesh"]][1]
    return GltfSummary(mesh_nodes, faces, verts, len(nodes), max(counts, default=0))


# ----------------------------------------------------------------------------- reading data, the fan rewrite

def _buffer_bytes(doc: dict, index: int, bin_chunk: bytes | None, path: Path) -> bytes:
    buf = doc["buffers"][index]
    uri = buf.get("uri")
    if uri is None:
        if bin_chunk is None:
            raise InputError(f"{path}: buffer {index} has no uri and the file has no BIN chunk")
        return bin_chunk
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    return (path.parent / uri).read_bytes()


def _read_indices(doc: dict, acc_index: int, bin_chunk, path: Path) -> np.ndarray:
    acc = doc["accessors"][acc_index]
    dtype = _INDEX_DTYPES.get(acc.get("componentType"))
    if dtype is None or acc.get("type") != "SCALAR":
        raise InputError(f"{path}: accessor {acc_index} is not a valid index accessor "
                         f"(componentType {acc.get('componentType')}, type {acc.get('type')})")
    view = doc["bufferViews"][acc["bufferView"]]
    raw = _buffer_bytes(doc, view["buffer"], bin_chunk, path)
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    count = int(acc["count"])
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
    return arr.astype(np.int64)


def _rewrite_fans(doc: dict, bin_chunk, fans: list[dict], is_glb: bool, path: Path) -> bytes:
    """Turn fan primitives into triangle lists stored in one new data-URI buffer."""
    blob = bytearray()
    doc.setdefault("bufferViews", [])
    doc.setdefault("accessors", [])
    doc.setdefault("buffers", [])
    new_buffer = len(doc["buffers"])
    for p in fans:
        if "indices" in p:
            idx = _read_indices(doc, p["indices"], bin_chunk, path)
        else:
            idx = np.arange(int(doc["accessors"][p["attributes"]["POSITION"]]["count"]), dtype=np.int64)
        n = max(len(idx) - 2, 0)
        tris = np.stack([np.full(n, idx[0] if len(idx) else 0), idx[1:1 + n], idx[2:2 + n]], axis=1)
        data = tris.astype(np.uint32).tobytes()
        doc["bufferViews"].append({"buffer": new_buffer, "byteOffset": len(blob), "byteLength": len(data)})
        doc["accessors"].append({"bufferView": len(doc["bufferViews"]) - 1, "componentType": 5125,
                                 "count": int(tris.size), "type": "SCALAR"})
        p["indices"] = len(doc["accessors"]) - 1
        p["mode"] = 4
        blob += data
    doc["buffers"].append({"byteLength": len(blob),
                           "uri": "data:application/octet-stream;base64," + base64.b64encode(bytes(blob)).decode()})
    text = json.dumps(doc).encode("utf-8")
    if not is_glb:
        return text
    text += b" " * (-len(text) % 4)
    rest = bin_chunk_bytes(bin_chunk) if bin_chunk is not None else b""
    return glb_header(len(text), len(rest)) + text + rest
