"""Checks on a glTF file's JSON before trimesh reads it, and the one rewrite it needs.

trimesh reads glTF well, but some valid or malformed files give a wrong or
unhelpful result there (found on a peer project's corpus of unusual files):

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
_INDEX_DTYPES = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32}
_GLB_MAGIC = b"glTF"
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
    is_glb = data[:4] == _GLB_MAGIC
    doc, bin_chunk = _split(data, is_glb, path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: the glTF JSON is a {type(doc).__name__}, not an object; is it a glTF file?")
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
    _check_cycles(doc, path)

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
        data = path.read_bytes()
        doc, _ = _split(data, data[:4] == _GLB_MAGIC, path)
    except (OSError, InputError, struct.error):
        return []
    out = []
    for key in ("buffers", "images"):
        for item in doc.get(key, []) or [] if isinstance(doc, dict) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and uri and not uri.startswith("data:") and "://" not in uri:
                out.append((key[:-1], path.parent / unquote(uri)))
    return out


def _split(data: bytes, is_glb: bool, path: Path):
    if not is_glb:
        try:
            return json.loads(data.decode("utf-8-sig")), None
        except RecursionError:
            raise InputError(f"{path}: the glTF JSON is nested too deeply to read (thousands of levels of "
                             "arrays or objects); the file is malformed or hostile") from None
        except (UnicodeDecodeError, ValueError) as e:
            what = ("neither a binary glTF (those start with b'glTF', this one with "
                    f"{data[:4]!r}) nor" if path.suffix.lower() == ".glb" else "not")
            raise InputError(f"{path}: cannot read this file: it is {what} glTF JSON ({e}). Is it a valid "
                             f"{path.suffix.lower()} file?") from None
    if len(data) >= 8:
        (version,) = struct.unpack_from("<I", data, 4)
        if version != 2:
            raise InputError(f"{path}: a binary glTF of version {version}"
                             + (" (glTF 1.0)" if version == 1 else "") + "; only glTF 2.0 is read. Convert it "
                             "to glTF 2.0 (e.g. import and re-export it in Blender, or gltf-pipeline)")
    if len(data) < 20:
        raise InputError(f"{path}: truncated .glb ({len(data)} bytes; a header alone is 20)")
    pos, doc, bin_chunk = 12, None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from("<I4s", data, pos)
        chunk = data[pos + 8:pos + 8 + length]
        if len(chunk) != length:
            raise InputError(f"{path}: truncated .glb (a chunk claims {length} bytes, {len(chunk)} are there)")
        if kind == b"JSON" and doc is None:
            try:
                doc = json.loads(chunk.decode("utf-8"))
            except RecursionError:
                raise InputError(f"{path}: the .glb's JSON chunk is nested too deeply to read (thousands of levels "
                                 "of arrays or objects); the file is malformed or hostile") from None
            except (UnicodeDecodeError, ValueError) as e:
                raise InputError(f"{path}: the .glb's JSON chunk is not valid JSON ({e})") from None
        elif kind == b"BIN\x00" and bin_chunk is None:
            bin_chunk = chunk
        pos += 8 + length
    if doc is None:
        raise InputError(f"{path}: the .glb has no JSON chunk")
    return doc, bin_chunk


def _check_cycles(doc: dict, path: Path) -> None:
    nodes = doc.get("nodes", []) or []
    children = []
    for n in nodes:
        ch = n.get("children", []) if isinstance(n, dict) else []
        children.append([c for c in ch if isinstance(c, int) and 0 <= c < len(nodes)])
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
                names = " -> ".join(_node_name(nodes, i) for i in loop)
                raise InputError(f"{path}: the node graph has a cycle ({names}); a glTF node may not be its "
                                 "own ancestor. Fix the 'children' lists in the file (re-export it)")
            if state[nxt] == 0:
                state[nxt] = 1
                trail.append(nxt)
                stack.append((nxt, iter(children[nxt])))
                if len(trail) > MAX_NODE_DEPTH:
                    raise InputError(
                        f"{path}: the node graph is nested more than {MAX_NODE_DEPTH} levels deep (from "
                        f"{_node_name(nodes, trail[0])} down to {_node_name(nodes, nxt)}); real scenes are a few "
                        "dozen levels deep at most, so this file is malformed or hostile. Flatten the hierarchy "
                        "(e.g. re-export it with transforms applied)")


def _node_name(nodes, i: int) -> str:
    n = nodes[i] if isinstance(nodes[i], dict) else {}
    return f"node {i}" + (f" {n['name']!r}" if n.get("name") else "")


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
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if bin_chunk is not None:
        b = bin_chunk + b"\x00" * (-len(bin_chunk) % 4)
        chunks += struct.pack("<I4s", len(b), b"BIN\x00") + b
    return struct.pack("<4sII", _GLB_MAGIC, 2, 12 + len(chunks)) + chunks
