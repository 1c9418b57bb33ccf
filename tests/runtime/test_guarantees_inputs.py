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
    assert getattr(cli_mod._options_from(args, base), field.name) is None
    args = _parse(command, "x.glb", "-o", tmp_path / "o", "--model", "m")  # not given: the base's value stays
    assert getattr(cli_mod._options_from(args, base), field.name) == getattr(base, field.name)


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


def test_29_2_every_part_emptied_by_decimation_is_exit_1_with_its_own_explanation(mini, monkeypatch):
    from holopart_infer import decimate as decimate_mod
    from holopart_infer.errors import EmptyResult

    monkeypatch.setattr(decimate_mod, "decimate", lambda v, f, n: (v[:0], f[:0]))
    with pytest.raises(EmptyResult, match="no faces left after clean-up and decimation.*--no-decimate"):
        mini.complete(_two_boxes(1.0), decimate=500, **FAST_OPTS)


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
