"""Hostile or mistaken input files are exit 2 naming the file and what is wrong, never an
internal error, a hang or a quiet wrong result (README "Guarantees and exit codes"):
label types and ranges, deep nesting, face indices out of range, what a glTF URI or an
OBJ mtllib may name, files that are not what they seem; a missing image is a warning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from holopart_infer import assets
from tests.support import cli


# --------------------------------------------------------------------------- face2label.json types and ranges
def _mesh_file(tmp_path, name="mesh.ply") -> Path:
    import trimesh

    from tests.support import box

    a, b = box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8))
    mesh = trimesh.Trimesh(np.vstack([a[0], b[0]]), np.vstack([a[1], b[1] + len(a[0])]), process=False)
    path = tmp_path / name
    mesh.export(path)
    return path  # 24 faces: 12 per box


@pytest.mark.parametrize("entry, expected", [
    ('"3": "1"', r"label of key '3' is str '1'"),
    ('"3": 1.5', r"label of key '3' is float 1.5"),
    ('"3": 1.0', r"label of key '3' is float 1.0"),
    ('"3": true', r"label of key '3' is bool True"),
    ('"3": 9223372036854775808', r"label of key '3' does not fit a 64-bit integer"),
    ('"100000000000000": 1', r"key '100000000000000' names face 100000000000000, but the mesh has 24 faces"),
    ('"1180591620717411303424": 1', r"key '1180591620717411303424' names face .* the mesh has 24 faces"),
    ('"1e14": 1', r"key '1e14' is not a face index"),
    ('"-1": 1', r"key '-1' is not a face index"),
    ('" 3": 1', r"key ' 3' is not a face index")])
def test_face2label_json_types_and_ranges_exit_2_naming_the_key(tmp_path, entry, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    mesh = _mesh_file(tmp_path)
    good = ", ".join(f'"{i}": {int(i >= 12)}' for i in range(24) if i != 3)
    labels = tmp_path / "face2label.json"
    labels.write_text("{" + good + ", " + entry + "}")
    with pytest.raises(InputError, match=f"labels file {labels}: .*{expected}"):
        load_parts(mesh, labels=labels)


@pytest.mark.parametrize("content, expected", [
    ("[0, 1, \"2\"]", r"entry 2 \(the label of face 2\) is str '2'"),
    ("[0, 1.5]", r"entry 1 \(the label of face 1\) is float 1.5"),
    ("[false, 1]", r"entry 0 \(the label of face 0\) is bool False"),
    ("[0, 9223372036854775808]", r"entry 1 \(the label of face 1\) does not fit a 64-bit integer")])
def test_json_list_labels_types_and_ranges(tmp_path, content, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.io.labels import read_labels

    labels = tmp_path / "labels.json"
    labels.write_text(content)
    with pytest.raises(InputError, match=expected):
        read_labels(labels)


def test_txt_and_npy_labels_beyond_int64(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.io.labels import read_labels

    txt = tmp_path / "labels.txt"
    txt.write_text("0\n1\n9223372036854775808\n")
    with pytest.raises(InputError, match=r"label '9223372036854775808' \(face 2\) does not fit a 64-bit integer"):
        read_labels(txt)
    npy = tmp_path / "labels.npy"
    np.save(npy, np.array([0, 2**63], dtype=np.uint64))
    with pytest.raises(InputError, match=r"label 9223372036854775808 \(face 1\) does not fit"):
        read_labels(npy)


def test_faces_a_face2label_json_does_not_name_are_unassigned(tmp_path):
    from holopart_infer.io.parts_io import load_parts

    mesh = _mesh_file(tmp_path)
    labels = tmp_path / "face2label.json"
    labels.write_text("{" + ", ".join(f'"{i}": {int(i >= 12)}' for i in range(22)) + "}")  # faces 22, 23 unnamed
    parts = load_parts(mesh, labels=labels)
    assert [len(p.faces) for p in parts] == [12, 10] and len(parts.context[1]) == 2


def test_cli_exit_2_for_a_string_label(tmp_path):
    mesh = _mesh_file(tmp_path)
    labels = tmp_path / "face2label.json"
    labels.write_text("{" + ", ".join(f'"{i}": "{int(i >= 12)}"' for i in range(24)) + "}")
    r = cli("run", mesh, "--labels", labels, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2 and str(labels) in r.stderr and "key '0' is str '0'" in r.stderr, r.stderr


# --------------------------------------------------------------------------- hostile nesting, bad face indices
def _tetra_gltf(path: Path, depth: int = 0, uri: str | None = None, nested_extras: int = 0) -> Path:
    """Two tetrahedra; the first under a chain of ``depth`` nodes; the buffer at ``uri`` (a file
    written beside it) or embedded."""
    import base64
    import json

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3], np.uint32)
    blob = v.tobytes() + f.tobytes()
    buffer = {"byteLength": len(blob)}
    if uri is None:
        buffer["uri"] = "data:application/octet-stream;base64," + base64.b64encode(blob).decode()
    else:
        buffer["uri"] = uri
        if not (path.parent / uri).exists():
            (path.parent / uri).write_bytes(blob)
    nodes = [{"children": [i + 1]} for i in range(depth)] + [{"mesh": 0, "name": "a"},
                                                            {"mesh": 0, "name": "b", "translation": [2, 0, 0]}]
    doc = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0, depth + 1]}], "buffers": [buffer],
           "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 48},
                           {"buffer": 0, "byteOffset": 48, "byteLength": 48}],
           "accessors": [{"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3",
                          "min": [0, 0, 0], "max": [1, 1, 1]},
                         {"bufferView": 1, "componentType": 5125, "count": 12, "type": "SCALAR"}],
           "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}], "nodes": nodes}
    text = json.dumps(doc)
    if nested_extras:
        text = text[:-1] + ', "extras": ' + "[" * nested_extras + "]" * nested_extras + "}"
    path.write_text(text)
    return path


def test_a_deeply_nested_node_graph_is_exit_2(tmp_path):
    from holopart_infer.io.gltf_json import MAX_NODE_DEPTH
    from holopart_infer.io.parts_io import load_parts

    assert len(load_parts(_tetra_gltf(tmp_path / "ok.gltf", depth=50))) == 2
    deep = _tetra_gltf(tmp_path / "deep.gltf", depth=100_000)
    r = cli("run", deep, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2, r.stderr
    assert f"{deep}: the node graph is nested more than {MAX_NODE_DEPTH} levels deep" in r.stderr


def test_deeply_nested_json_is_exit_2(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    deep = _tetra_gltf(tmp_path / "deep.gltf", nested_extras=100_000)
    with pytest.raises(InputError, match="nested too deeply"):
        load_parts(deep)


def _tetra_pair_ply(path: Path, bad_index: int | None = None) -> Path:
    from tests.support import box

    a, b = box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8))
    v, f = np.vstack([a[0], b[0]]), np.vstack([a[1], b[1] + len(a[0])])
    if bad_index is not None:
        f[5, 1] = bad_index
    lines = ["ply", "format ascii 1.0", f"element vertex {len(v)}", "property float x", "property float y",
             "property float z", f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    lines += [" ".join(map(str, p)) for p in v] + ["3 " + " ".join(map(str, t)) for t in f]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ply_face_index_out_of_range_with_labels_is_exit_2(tmp_path):
    ply = _tetra_pair_ply(tmp_path / "m.ply", bad_index=99)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(int(i >= 12)) for i in range(24)))
    r = cli("run", ply, "--labels", labels, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2, r.stderr
    assert f"{ply}: mesh" in r.stderr and "face 5 refers to vertices" in r.stderr and "16 vertices" in r.stderr


# --------------------------------------------------------------------------- what a glTF URI may name
def test_a_gltf_buffer_uri_naming_a_fifo_is_refused_without_reading(tmp_path):
    import os

    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    import errno
    import threading
    import time

    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes
    stop = threading.Event()

    def unblock():  # should the reader open it anyway, let it see end-of-file instead of hanging the suite
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    return
                time.sleep(0.05)

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    gltf = _tetra_gltf(tmp_path / "m.gltf", uri="pipe.bin")
    try:
        with pytest.raises(InputError, match=r"m\.gltf: a buffer URI names .*pipe\.bin, which is a FIFO"):
            load_parts(gltf)
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("uri, expected", [("/dev/zero", "which is a device"), ("sub", "which is a folder"),
                                           ("missing.bin", "which does not exist")])
def test_a_gltf_uri_must_name_an_existing_regular_file(tmp_path, uri, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    (tmp_path / "sub").mkdir()
    gltf = _tetra_gltf(tmp_path / "m.gltf", uri=uri)
    if uri == "missing.bin":
        (tmp_path / "missing.bin").unlink()
    with pytest.raises(InputError, match=expected):
        load_parts(gltf)


def test_a_gltf_uri_naming_a_huge_file_is_refused(tmp_path, monkeypatch):
    from holopart_infer.io import parts_io
    from holopart_infer.errors import InputError

    gltf = _tetra_gltf(tmp_path / "m.gltf", uri="data.bin")
    assert len(parts_io.load_parts(gltf)) == 2  # a regular file below the limit is read
    monkeypatch.setattr(parts_io, "MAX_REFERENCED_BYTES", 50)
    with pytest.raises(InputError, match=r"data\.bin, which is 96 bytes, more than the 50 accepted"):
        parts_io.load_parts(gltf)


# --------------------------------------------------------------------------- OBJ mtllib and face indices
_OBJ = """mtllib {lib}
o a
v 0 0 0
v 1 0 0
v 0 1 0
v 0 0 1
f 1 3 2
f 1 2 4
f 1 4 3
f 2 3 4
o b
v 2 0 0
v 3 0 0
v 2 1 0
v 2 0 1
f 5 7 6
f 5 6 8
f 5 8 7
f 6 7 {last}
"""


def test_obj_mtllib_naming_a_device_is_refused(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    obj = tmp_path / "m.obj"
    obj.write_text(_OBJ.format(lib="/dev/zero", last=8))
    with pytest.raises(InputError, match=r"m\.obj: mtllib names /dev/zero, which is a device"):
        load_parts(obj)


@pytest.mark.parametrize("lib, said", [("/etc/passwd", "defines no material"), ("nope.mtl", "does not exist")])
def test_obj_mtllib_that_is_ignored_is_said(tmp_path, caplog, lib, said):
    from holopart_infer.io.parts_io import load_parts

    obj = tmp_path / "m.obj"
    obj.write_text(_OBJ.format(lib=lib, last=8))
    with caplog.at_level("WARNING", logger="holopart_infer"):
        assert len(load_parts(obj)) == 2
    assert any(said in r.getMessage() and lib in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("last, expected", [
    ("0", r"line 19: a face refers to vertex 0, but OBJ vertex indices start at 1"),
    ("9", r"line 19: a face refers to vertex 9, but the file has only 8 vertices"),
    ("-9", r"line 19: a face refers to vertex -9 \(counting back\), but only 8 vertices come before it")])
def test_obj_face_indices_out_of_range_are_refused_naming_the_line(tmp_path, last, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    obj = tmp_path / "m.obj"
    obj.write_text(_OBJ.format(lib="m.mtl", last=last))
    (tmp_path / "m.mtl").write_text("newmtl red\nKd 1 0 0\n")
    with pytest.raises(InputError, match=rf"m\.obj, {expected}"):
        load_parts(obj)
    obj.write_text(_OBJ.format(lib="m.mtl", last="-1"))  # relative indices are fine
    assert len(load_parts(obj)) == 2

# --------------------------------------------------------------------------- say what the file is
def test_a_gltf_1_binary_is_named_as_such(tmp_path):
    import json
    import struct

    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    content = json.dumps({"scene": "s", "scenes": {"s": {"nodes": []}}}).encode()
    glb = tmp_path / "old.glb"  # glTF 1.0 binary: header, then contentLength + contentFormat 0, then the JSON
    glb.write_bytes(struct.pack("<4sIIII", b"glTF", 1, 20 + len(content), len(content), 0) + content)
    with pytest.raises(InputError, match=r"old\.glb: a binary glTF of version 1 \(glTF 1\.0\); only glTF 2\.0"):
        load_parts(glb)
    gltf = tmp_path / "old.gltf"
    gltf.write_text(json.dumps({"asset": {"version": "1.0"}, "scene": "s", "scenes": {"s": {"nodes": []}}}))
    with pytest.raises(InputError, match=r"old\.gltf: a glTF 1\.0 file .*only glTF 2\.0"):
        load_parts(gltf)


@pytest.mark.parametrize("faces", [None, 0])
@pytest.mark.parametrize("binary", [True, False])
def test_a_faceless_ply_is_named_a_point_cloud(tmp_path, faces, binary):
    from holopart_infer.errors import InputError
    from holopart_infer.io.parts_io import load_parts

    pts = np.random.default_rng(0).random((40, 3)).astype("<f4")
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "element vertex 40",
              "property float x", "property float y", "property float z"]
    if faces is not None:
        header += [f"element face {faces}", "property list uchar int vertex_indices"]
    body = pts.tobytes() if binary else "".join(f"{x} {y} {z}\n" for x, y, z in pts).encode()
    ply = tmp_path / "scan.ply"
    ply.write_bytes(("\n".join(header) + "\nend_header\n").encode() + body)
    for kw in ({"parts": "components"}, {"labels": np.zeros(0, np.int64)}):
        with pytest.raises(InputError, match=r"scan\.ply is a point cloud \(40 points.*Reconstruct a mesh first"):
            load_parts(ply, **kw)

def test_a_missing_gltf_image_is_ignored_with_a_warning(tmp_path, caplog):
    import json

    from holopart_infer.io.parts_io import load_parts

    gltf = _tetra_gltf(tmp_path / "m.gltf")
    doc = json.loads(gltf.read_text())
    doc["images"] = [{"uri": "tex.png"}]
    gltf.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="holopart_infer"):
        assert len(load_parts(gltf)) == 2
    assert any("tex.png does not exist; ignored" in r.getMessage() for r in caplog.records)
