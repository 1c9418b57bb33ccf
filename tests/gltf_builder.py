"""A tiny glTF writer for tests: primitives of any mode, nodes with any transforms,
extensions and deliberately malformed graphs (trimesh cannot write these)."""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np


def gltf_doc(prims, nodes, scene_nodes=(0,), extra=None) -> dict:
    """prims: per mesh a list of (positions (V,3), indices or None, mode); nodes: glTF node dicts."""
    buf = b""
    views, accs, meshes = [], [], []
    for mesh in prims:
        out = []
        for pos, idx, mode in mesh:
            pos = np.asarray(pos, np.float32)
            views.append({"buffer": 0, "byteOffset": len(buf), "byteLength": pos.nbytes})
            buf += pos.tobytes()
            accs.append({"bufferView": len(views) - 1, "componentType": 5126, "count": len(pos), "type": "VEC3",
                         "min": pos.min(0).tolist(), "max": pos.max(0).tolist()})
            p = {"attributes": {"POSITION": len(accs) - 1}, "mode": mode}
            if idx is not None:
                idx = np.asarray(idx, np.uint32)
                views.append({"buffer": 0, "byteOffset": len(buf), "byteLength": idx.nbytes})
                buf += idx.tobytes()
                accs.append({"bufferView": len(views) - 1, "componentType": 5125, "count": len(idx),
                             "type": "SCALAR"})
                p["indices"] = len(accs) - 1
            out.append(p)
        meshes.append({"primitives": out, "name": f"mesh{len(meshes)}"})
    doc = {"asset": {"version": "2.0"},
           "buffers": [{"byteLength": len(buf),
                        "uri": "data:application/octet-stream;base64," + base64.b64encode(buf).decode()}],
           "bufferViews": views, "accessors": accs, "meshes": meshes, "nodes": nodes,
           "scenes": [{"nodes": list(scene_nodes)}], "scene": 0}
    doc.update(extra or {})
    return doc


def write_gltf(path: Path, doc: dict) -> Path:
    path = Path(path)
    if path.suffix == ".glb":
        # move the data-URI buffer into the BIN chunk
        raw = base64.b64decode(doc["buffers"][0]["uri"].split(",", 1)[1])
        doc = dict(doc, buffers=[{"byteLength": len(raw)}])
        text = json.dumps(doc).encode()
        text += b" " * (-len(text) % 4)
        raw += b"\0" * (-len(raw) % 4)
        body = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(raw), b"BIN\0") + raw
        path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    else:
        path.write_text(json.dumps(doc))
    return path


def box_arrays(center=(0, 0, 0), size=1.0):
    import trimesh

    m = trimesh.creation.box(extents=(size, size, size))
    return np.asarray(m.vertices) + center, np.asarray(m.faces)
