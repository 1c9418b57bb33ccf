"""Issues 24, 25 and 29: options that silently did nothing, inputs that ended as
internal errors or wrong results, and what a new user trips on. One test per case,
named after it (``test_29_1_*`` is issue 29, item 1). README "Guarantees and exit
codes" points here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from holopart_infer import assets

FAST_OPTS = dict(steps=2, depth=6, num_points=1024, latent_tokens=64)


def cli(*args, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def _parse(*argv):
    from holopart_infer import cli as cli_mod

    argv = [str(a) for a in argv]
    return cli_mod.build_parser(argv).parse_args(argv)


# --------------------------------------------------------------------------- 29.1: off flags whose value is None
def _none_off_flags():
    from holopart_infer.pipeline import option_fields

    return [f for f in option_fields() if f.metadata["off_flag"] and f.metadata["optional"]]


def test_29_1_there_is_an_off_flag_meaning_none():
    assert [f.name for f in _none_off_flags()] == ["decimate"]  # a new one gets the tests below for free


@pytest.mark.parametrize("command", ["run", "batch"])
@pytest.mark.parametrize("field", _none_off_flags(), ids=lambda f: f.metadata["off_flag"])
def test_29_1_off_flag_meaning_none_reaches_the_options(command, field, tmp_path):
    from holopart_infer import cli as cli_mod
    from holopart_infer.pipeline import CompletionOptions

    base = CompletionOptions()
    assert getattr(base, field.name) is not None
    args = _parse(command, "x.glb", "-o", tmp_path / "o", "--model", "m", field.metadata["off_flag"])
    assert getattr(cli_mod.options.options_from(args, base), field.name) is None
    args = _parse(command, "x.glb", "-o", tmp_path / "o", "--model", "m")  # not given: the base's value stays
    assert getattr(cli_mod.options.options_from(args, base), field.name) == getattr(base, field.name)


def test_29_1_no_decimate_keeps_the_full_mesh(tmp_path):
    """End to end: with --no-decimate a part has more faces than the decimation target."""
    import trimesh

    out = tmp_path / "o.glb"
    r = cli("run", assets.demo_object_path("table"), "-o", out, "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "--no-decimate", "--decimate", "1000", "-q")
    # the later flag wins in argparse: --decimate 1000 after --no-decimate decimates
    assert r.returncode == 0, r.stderr
    faces = [len(g.faces) for g in trimesh.load(out, force="scene").geometry.values()]
    assert max(faces) <= 1000
    out2 = tmp_path / "o2.glb"
    r = cli("run", assets.demo_object_path("table"), "-o", out2, "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "--decimate", "1000", "--no-decimate", "-q")
    assert r.returncode == 0, r.stderr
    faces = [len(g.faces) for g in trimesh.load(out2, force="scene").geometry.values()]
    assert max(faces) > 1000, faces


# --------------------------------------------------------------------------- 29.2 / 24.12: coordinate scales
SCALES = [1e-9, 1e-7, 1e12, 1e30]


@pytest.mark.parametrize("scale", SCALES)
def test_29_2_decimation_does_not_depend_on_the_unit(scale):
    import trimesh

    from holopart_infer.decimate import decimate
    from tests.support import assert_same_surface

    sphere = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces
    v, f = decimate(sphere.vertices, sphere.faces, 500)
    vs, fs = decimate(sphere.vertices * scale, sphere.faces, 500)
    assert abs(len(fs) - len(f)) <= 10 and len(fs) <= 500
    assert_same_surface((vs / scale, fs), (v, f), name=f"scale {scale:g}")


def _two_boxes(scale: float):
    from holopart_infer.parts_io import Parts
    from tests.support import box

    return Parts.from_meshes([(v * scale, f) for v, f in (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))])


@pytest.fixture(scope="module")
def mini():
    import holopart_infer as hp

    return hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")


def test_29_2_completion_at_extreme_scales_is_the_same_shape(mini):
    from tests.support import assert_same_surface

    ref = mini.complete(_two_boxes(1.0), decimate=500, **FAST_OPTS)
    for scale in (1e-9, 1e30):
        res = mini.complete(_two_boxes(scale), decimate=500, **FAST_OPTS)
        for a, b in zip(res.parts, ref.parts):
            assert 0 < len(a.faces) <= 500
            assert_same_surface((a.vertices / scale, a.faces), b, rel_dist=1e-3, name=f"{a.name} at {scale:g}")


@pytest.mark.parametrize("scale, offset, expected", [
    (1e37, 0.0, r"coordinates reach .*Scale the object down"),
    (1e-31, 0.0, r"bounding box is only .*Scale the object up"),
    (1e-3, 1e3, r"lies 1e\+03 from the origin.*Move it near the origin")])
def test_24_12_coordinates_outside_the_accepted_range_are_refused(scale, offset, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import Parts
    from tests.support import box

    meshes = [(v * scale + offset, f) for v, f in (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))]
    with pytest.raises(InputError, match=expected):
        Parts.from_meshes(meshes, source="boxes.glb")
    with pytest.raises(InputError, match="boxes.glb: .*accepted: every"):
        Parts.from_meshes(meshes, source="boxes.glb")


def test_24_12_cli_refuses_a_file_outside_the_range_with_exit_2(tmp_path):
    import trimesh

    from tests.support import box

    scene = trimesh.Scene()
    for name, (v, f) in zip(("a", "b"), (box((0, 0, 0), (1, .4, 1)), box((.6, 0, 0), (.3, .3, .8)))):
        scene.add_geometry(trimesh.Trimesh(v * 1e-3 + 1e3, f, process=False), node_name=name, geom_name=name)
    src = tmp_path / "far.glb"
    scene.export(src)
    r = cli("run", src, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2 and str(src) in r.stderr and "Move it near the origin" in r.stderr, r.stderr
    assert not (tmp_path / "o.glb").exists()


def test_29_2_every_part_emptied_by_clean_up_is_exit_1_with_its_own_explanation(mini, monkeypatch):
    from holopart_infer import cleanup
    from holopart_infer.errors import EmptyResult

    monkeypatch.setattr(cleanup, "remove_floaters", lambda v, f, m: (v[:0], f[:0]))
    with pytest.raises(EmptyResult, match="no faces left after clean-up and decimation.*--no-decimate"):
        mini.complete(_two_boxes(1.0), decimate=500, min_component=0.2, **FAST_OPTS)


def test_29_2_decimation_that_would_empty_a_part_keeps_its_closed_mesh(mini, monkeypatch):
    """Decimation never opens a closed part (issue 23): one that comes back empty (not closed)
    leaves the part its full marching-cubes mesh, with the warning, never an empty part."""
    from holopart_infer import decimate as decimate_mod

    ref = mini.complete(_two_boxes(1.0), decimate=None, guard=False, **FAST_OPTS)
    monkeypatch.setattr(decimate_mod, "decimate", lambda v, f, n: (v[:0], f[:0]))
    res = mini.complete(_two_boxes(1.0), decimate=500, guard=False, **FAST_OPTS)
    assert sorted(res.stats["decimation_non_manifold"]) == sorted(p.name for p in res.parts)
    for a, b in zip(res.parts, ref.parts):
        assert len(a.faces) == len(b.faces) > 500


# --------------------------------------------------------------------------- 24.10: face2label.json types and ranges
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
def test_24_10_face2label_json_types_and_ranges_exit_2_naming_the_key(tmp_path, entry, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

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
def test_24_10_json_list_labels_types_and_ranges(tmp_path, content, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.labels import read_labels

    labels = tmp_path / "labels.json"
    labels.write_text(content)
    with pytest.raises(InputError, match=expected):
        read_labels(labels)


def test_24_10_txt_and_npy_labels_beyond_int64(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.labels import read_labels

    txt = tmp_path / "labels.txt"
    txt.write_text("0\n1\n9223372036854775808\n")
    with pytest.raises(InputError, match=r"label '9223372036854775808' \(face 2\) does not fit a 64-bit integer"):
        read_labels(txt)
    npy = tmp_path / "labels.npy"
    np.save(npy, np.array([0, 2**63], dtype=np.uint64))
    with pytest.raises(InputError, match=r"label 9223372036854775808 \(face 1\) does not fit"):
        read_labels(npy)


def test_24_10_faces_a_face2label_json_does_not_name_are_unassigned(tmp_path):
    from holopart_infer.parts_io import load_parts

    mesh = _mesh_file(tmp_path)
    labels = tmp_path / "face2label.json"
    labels.write_text("{" + ", ".join(f'"{i}": {int(i >= 12)}' for i in range(22)) + "}")  # faces 22, 23 unnamed
    parts = load_parts(mesh, labels=labels)
    assert [len(p.faces) for p in parts] == [12, 10] and len(parts.context[1]) == 2


def test_24_10_cli_exit_2_for_a_string_label(tmp_path):
    mesh = _mesh_file(tmp_path)
    labels = tmp_path / "face2label.json"
    labels.write_text("{" + ", ".join(f'"{i}": "{int(i >= 12)}"' for i in range(24)) + "}")
    r = cli("run", mesh, "--labels", labels, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2 and str(labels) in r.stderr and "key '0' is str '0'" in r.stderr, r.stderr


# --------------------------------------------------------------------------- 29.3: hostile nesting, bad face indices
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


def test_29_3_a_deeply_nested_node_graph_is_exit_2(tmp_path):
    from holopart_infer.gltf_json import MAX_NODE_DEPTH
    from holopart_infer.parts_io import load_parts

    assert len(load_parts(_tetra_gltf(tmp_path / "ok.gltf", depth=50))) == 2
    deep = _tetra_gltf(tmp_path / "deep.gltf", depth=100_000)
    r = cli("run", deep, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2, r.stderr
    assert f"{deep}: the node graph is nested more than {MAX_NODE_DEPTH} levels deep" in r.stderr


def test_29_3_deeply_nested_json_is_exit_2(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

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


def test_29_3_ply_face_index_out_of_range_with_labels_is_exit_2(tmp_path):
    ply = _tetra_pair_ply(tmp_path / "m.ply", bad_index=99)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(int(i >= 12)) for i in range(24)))
    r = cli("run", ply, "--labels", labels, "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(), "-q")
    assert r.returncode == 2, r.stderr
    assert f"{ply}: mesh" in r.stderr and "face 5 refers to vertices" in r.stderr and "16 vertices" in r.stderr


# --------------------------------------------------------------------------- 24.11: what a glTF URI may name
def test_24_11_a_gltf_buffer_uri_naming_a_fifo_is_refused_without_reading(tmp_path):
    import os

    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

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
def test_24_11_a_gltf_uri_must_name_an_existing_regular_file(tmp_path, uri, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

    (tmp_path / "sub").mkdir()
    gltf = _tetra_gltf(tmp_path / "m.gltf", uri=uri)
    if uri == "missing.bin":
        (tmp_path / "missing.bin").unlink()
    with pytest.raises(InputError, match=expected):
        load_parts(gltf)


def test_24_11_a_gltf_uri_naming_a_huge_file_is_refused(tmp_path, monkeypatch):
    from holopart_infer import parts_io
    from holopart_infer.errors import InputError

    gltf = _tetra_gltf(tmp_path / "m.gltf", uri="data.bin")
    assert len(parts_io.load_parts(gltf)) == 2  # a regular file below the limit is read
    monkeypatch.setattr(parts_io, "MAX_REFERENCED_BYTES", 50)
    with pytest.raises(InputError, match=r"data\.bin, which is 96 bytes, more than the 50 accepted"):
        parts_io.load_parts(gltf)


# --------------------------------------------------------------------------- 24.14: OBJ mtllib and face indices
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


def test_24_14_obj_mtllib_naming_a_device_is_refused(tmp_path):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

    obj = tmp_path / "m.obj"
    obj.write_text(_OBJ.format(lib="/dev/zero", last=8))
    with pytest.raises(InputError, match=r"m\.obj: mtllib names /dev/zero, which is a device"):
        load_parts(obj)


@pytest.mark.parametrize("lib, said", [("/etc/passwd", "defines no material"), ("nope.mtl", "does not exist")])
def test_24_14_obj_mtllib_that_is_ignored_is_said(tmp_path, caplog, lib, said):
    from holopart_infer.parts_io import load_parts

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
def test_24_14_obj_face_indices_out_of_range_are_refused_naming_the_line(tmp_path, last, expected):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

    obj = tmp_path / "m.obj"
    obj.write_text(_OBJ.format(lib="m.mtl", last=last))
    (tmp_path / "m.mtl").write_text("newmtl red\nKd 1 0 0\n")
    with pytest.raises(InputError, match=rf"m\.obj, {expected}"):
        load_parts(obj)
    obj.write_text(_OBJ.format(lib="m.mtl", last="-1"))  # relative indices are fine
    assert len(load_parts(obj)) == 2


# --------------------------------------------------------------------------- 24.13: manifests stay in their dir
@pytest.fixture
def model_copy(tmp_path) -> Path:
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(assets.demo_model_path(), dst)
    return dst


def _edit_manifest(model_dir: Path, edit) -> Path:
    import json

    mpath = model_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(m))
    return mpath


@pytest.mark.parametrize("where", ["../outside.onnx", "/abs/dit.onnx", "onnx/../../model2/onnx/dit.onnx", "~/dit.onnx"])
def test_24_13_a_manifest_graph_file_outside_the_model_dir_is_refused(model_copy, where):
    import shutil

    from holopart_infer.errors import ModelDirError
    from holopart_infer.manifest import load_manifest

    shutil.copy(model_copy / "onnx" / "dit.onnx", model_copy.parent / "outside.onnx")  # a real file is there
    shutil.copytree(model_copy, model_copy.parent / "model2")
    mpath = _edit_manifest(model_copy, lambda m: m["graphs"]["dit"].__setitem__("file", where))
    with pytest.raises(ModelDirError, match=rf"{mpath}: graph 'dit': file .* points outside the model directory"):
        load_manifest(model_copy, verify_hashes=False)


def test_24_13_a_manifest_external_data_outside_the_model_dir_is_refused(model_copy):
    from holopart_infer.errors import ModelDirError
    from holopart_infer.manifest import load_manifest

    _edit_manifest(model_copy, lambda m: m["graphs"]["dit"].__setitem__(
        "external_data", {"file": "../../etc/passwd", "bytes": 10, "sha256": ""}))
    with pytest.raises(ModelDirError, match=r"graph 'dit': external_data.file '../../etc/passwd' points outside"):
        load_manifest(model_copy, verify_hashes=False)


@pytest.mark.parametrize("comp, key, value, expected", [
    ("transformer", "num_layers", 10**18, r"config\.transformer\.num_layers must be an integer in \[1, 1048576\]"),
    ("part_encoder", "num_tokens", "16", r"config\.part_encoder\.num_tokens must be an integer >= 1, got '16'"),
    ("vae", "embed_include_pi", 1, r"config\.vae\.embed_include_pi must be true or false"),
    ("scheduler", "shift", float("inf"), r"config\.scheduler\.shift must be a finite number > 0")])
def test_24_13_manifest_config_fields_have_types_and_ranges(model_copy, tmp_path, comp, key, value, expected):
    from holopart_infer.errors import ModelDirError
    from holopart_infer.manifest import load_manifest

    _edit_manifest(model_copy, lambda m: m["config"][comp].__setitem__(key, value))
    with pytest.raises(ModelDirError, match=expected):
        load_manifest(model_copy, verify_hashes=False)
    if key == "num_layers":
        r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", model_copy, "-q")
        assert r.returncode == 2 and "num_layers" in r.stderr and "manifest.json" in r.stderr, r.stderr


def test_24_13_checkpoint_config_counts_have_a_range():
    from holopart_infer.checkpoint import config_field_problem

    assert config_field_problem("num_layers", 21) is None
    assert "[1, 1048576]" in config_field_problem("num_layers", 10**18)


# --------------------------------------------------------------------------- 29.4: say what the file is
def test_29_4_a_gltf_1_binary_is_named_as_such(tmp_path):
    import json
    import struct

    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

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
def test_29_4_a_faceless_ply_is_named_a_point_cloud(tmp_path, faces, binary):
    from holopart_infer.errors import InputError
    from holopart_infer.parts_io import load_parts

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


# --------------------------------------------------------------------------- 25.1: -q / -v before the subcommand
@pytest.mark.parametrize("command", [["run", "x.glb", "-o", "o.glb", "--model", "m"],
                                     ["batch", "x.glb", "-o", "out", "--model", "m"],
                                     ["demo"], ["verify", "golden", "--backend", "onnxruntime"],
                                     ["export", "ckpt", "out"], ["serve"]], ids=lambda c: c[0])
@pytest.mark.parametrize("flag, dest", [("-q", "quiet"), ("-v", "verbose"), ("--quiet", "quiet")])
def test_25_1_verbosity_flags_work_before_and_after_the_subcommand(command, flag, dest):
    before = _parse(flag, *command)
    after = _parse(*command, flag)
    neither = _parse(*command)
    assert getattr(before, dest) is True and getattr(after, dest) is True
    assert neither.quiet is False and neither.verbose is False


def test_25_1_quiet_before_verify_hides_the_export_bar(monkeypatch, tmp_path):
    """-q verify --backend onnxruntime (no --model) exports the golden weights first: without a bar."""
    from holopart_infer import cli as cli_mod
    from holopart_infer.cli import verify as cli_verify

    seen = {}

    class FakeExport:
        @staticmethod
        def export_model(weights, out, precision, progress=True, **kw):
            seen["progress"] = progress
            raise cli_mod.InputError("stop here")

    monkeypatch.setattr(cli_verify, "torch_side", lambda module, what: FakeExport)
    args = _parse("-q", "verify", tmp_path, "--backend", "onnxruntime")
    with pytest.raises(cli_mod.InputError, match="stop here"):
        cli_verify._make_verify_backend(args, tmp_path / "weights", tmp_path)
    assert seen["progress"] is False


# --------------------------------------------------------------------------- 25.2: --decimate None
@pytest.mark.parametrize("text", ["None", "none", "off"])
def test_25_2_an_optional_option_accepts_none_as_its_help_says(tmp_path, text):
    from holopart_infer import cli as cli_mod
    from holopart_infer.pipeline import CompletionOptions

    args = _parse("run", "x.glb", "-o", tmp_path / "o.glb", "--model", "m", "--decimate", text)
    assert cli_mod.options.options_from(args, CompletionOptions()).decimate is None
    r = cli("run", "x.glb", "-o", tmp_path / "o.glb", "--model", "m", "--help")
    assert "None or an integer >= 4" in " ".join(r.stdout.split())


def test_25_2_other_words_are_still_refused(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--decimate", "nothing")
    assert r.returncode == 2 and "argument --decimate: expected None or an integer >= 4, got 'nothing'" in r.stderr


# --------------------------------------------------------------------------- 25.5: what the CLI says
def _summary(stdout: str) -> dict[str, float]:
    rows = {}
    for line in stdout.splitlines():
        words = line.rsplit(None, 2)
        if line.startswith("  ") and len(words) == 3 and words[2] == "s":
            rows[words[0].strip()] = float(words[1])
    return rows


def test_25_5_the_timing_summary_adds_up_to_its_total(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--preview", tmp_path / "p.png", "--steps", "2", "--depth", "6", "-q")
    assert r.returncode == 0, r.stderr
    rows = _summary(r.stdout)
    total = rows.pop("total")
    assert {"read input", "preview", "save"} <= set(rows), rows
    assert abs(sum(rows.values()) - total) <= 0.01 * len(rows) + 1e-9, (rows, total)  # rounding of each row only


def test_25_5_batch_prints_its_settings_line(tmp_path):
    r = cli("batch", assets.demo_object_path("table"), "-o", tmp_path / "out", "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "-q")
    assert r.returncode == 0, r.stderr
    assert "settings: depth 6, 2 steps; from --depth, --steps" in r.stdout, r.stdout


def test_25_5_backend_and_device_have_help():
    for command in ("run", "demo", "batch"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "auto (default) picks TensorRT" in text and "never a silent fallback" in text, command


def test_25_5_exploded_without_a_picture_is_refused(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--exploded", "0.5", "-q")
    assert r.returncode == 2 and "--exploded 0.5" in r.stderr and "--preview" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_25_5_readme_demo_usage_lists_demo_flags():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("holopart-infer demo"))
    for flag in ("-o", "--object", "--preview", "--exploded", "--turntable"):
        assert flag in line, flag


def test_25_5_demo_outputs_in_the_repo_root_are_ignored_by_git():
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "demo.glb", "demo.png", "holopart_demo.glb", "holopart_demo.png"],
                       cwd=root, capture_output=True, text=True)
    assert r.stdout.split() == ["demo.glb", "demo.png", "holopart_demo.glb", "holopart_demo.png"], r


# --------------------------------------------------------------------------- 25.4: the test command says what it skipped
def test_25_4_skips_are_summarised_with_how_to_run_them():
    from types import SimpleNamespace

    from tests.support import FULL_INSTALL, skip_summary

    reports = [
        SimpleNamespace(nodeid="tests/runtime/serve/test_app.py", when="collect",
                        longrepr=("tests/runtime/serve/test_app.py", 21, "Skipped: needs the [serve] extra")),
        SimpleNamespace(nodeid="tests/runtime/serve/test_page.py::test_page_renders", when="setup",
                        longrepr=("tests/runtime/serve/test_page.py", 23,
                                  "Skipped: needs Chromium (apt-get install chromium; .ci/run does)")),
    ]
    lines = skip_summary(reports)
    text = "\n".join(lines)
    app_tests = (Path(__file__).parent / "serve" / "test_app.py").read_text().count("\ndef test_")
    assert app_tests > 1
    assert f"tests/runtime/serve/test_app.py (whole module, {app_tests} test functions)" in text
    assert FULL_INSTALL in text and "install Chromium" in text
    assert skip_summary([]) == []


def test_25_4_readme_setup_installs_what_the_tests_use():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    setup = next(ln for ln in readme.splitlines() if ln.startswith("python3 -m venv .venv"))
    for extra in ("torch", "test", "serve", "ray", "draco"):
        assert extra in setup.split("-e", 1)[1].split()[0], extra


def test_24_11_a_missing_gltf_image_is_ignored_with_a_warning(tmp_path, caplog):
    import json

    from holopart_infer.parts_io import load_parts

    gltf = _tetra_gltf(tmp_path / "m.gltf")
    doc = json.loads(gltf.read_text())
    doc["images"] = [{"uri": "tex.png"}]
    gltf.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="holopart_infer"):
        assert len(load_parts(gltf)) == 2
    assert any("tex.png does not exist; ignored" in r.getMessage() for r in caplog.records)
