"""One frame convention (issue 22 item 1): up axes of inputs and models, the exact rotations
between them, and where they are declared (load_parts, the manifest, the CLI, batch lists)."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from holopart_infer.io import frames
from holopart_infer.errors import CheckpointError, InputError, ModelDirError
from holopart_infer.io.frames import UP_AXES, up_rotation
from holopart_infer.io.parts_io import Parts, load_parts
from tests.support import box


def _axis(name: str) -> np.ndarray:
    v = np.zeros(3)
    v["xyz".index(name[1])] = 1.0 if name[0] == "+" else -1.0
    return v


@pytest.mark.parametrize("src,dst", list(itertools.product(UP_AXES, UP_AXES)))
def test_up_rotation_is_an_exact_proper_rotation(src, dst):
    r = up_rotation(src, dst)
    m = r.matrix
    assert round(np.linalg.det(m)) == 1 and (m @ m.T == np.eye(3)).all()
    assert (m @ _axis(src) == _axis(dst)).all()  # the input's up becomes the model's
    pts = np.random.default_rng(0).standard_normal((50, 3)) * 1e3
    turned = r.apply(pts)
    assert np.array_equal(turned, pts @ m.T)  # swapping and negating numbers: no rounding
    assert np.array_equal(r.inverse().apply(turned), pts)
    assert r.is_identity == (src == dst)


def test_z_up_to_y_up_is_the_gltf_exporters_convention():
    # Blender's glTF exporter: (x, y, z) Z-up -> (x, z, -y) Y-up; a Z-up file's -y front faces +z
    assert up_rotation("+z", "+y").apply(np.array([[1.0, 2.0, 3.0]])).tolist() == [[1.0, 3.0, -2.0]]
    assert up_rotation("+y", "+z").apply(np.array([[1.0, 3.0, -2.0]])).tolist() == [[1.0, 2.0, 3.0]]


def test_a_proper_rotation_keeps_the_winding():
    v, f = box(size=(1.0, 2.0, 3.0))
    before = trimesh.Trimesh(v, f, process=False).volume
    for dst in UP_AXES:
        after = trimesh.Trimesh(up_rotation("+z", dst).apply(v), f, process=False).volume
        assert after == pytest.approx(before) and after > 0  # outward normals stay outward


def test_check_up_names_the_option():
    assert frames.check_up("Z") == "+z" and frames.check_up(" -y ") == "-y"
    for bad in ("up", "+w", "", 3, None, "++z"):
        with pytest.raises(InputError, match=r"--up must be one of \+x, -x, \+y, -y, \+z, -z"):
            frames.check_up(bad, "--up")


# ---------------------------------------------------------------------------- inputs


def _two_boxes():
    return [box((0, 0, 0)), box((0, 0, 2.0), (0.5, 0.5, 3.0))]


def _write_obj(path, meshes, names):
    lines, base = [], 1
    for name, (v, f) in zip(names, meshes):
        lines.append(f"o {name}")
        lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in np.asarray(v).tolist()]
        lines += [f"f {a + base} {b + base} {c + base}" for a, b, c in np.asarray(f).tolist()]
        base += len(v)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_default_up_per_format(tmp_path):
    meshes = _two_boxes()
    _write_obj(tmp_path / "o.obj", meshes, ["a", "b"])
    assert load_parts(tmp_path / "o.obj").up == "+y"
    stl = tmp_path / "o.stl"
    stl.write_bytes(b"".join(trimesh.Trimesh(*m, process=False).export(file_type="stl_ascii").encode()
                             .replace(b"solid ", f"solid p{i}".encode() + b" ", 1) for i, m in enumerate(meshes)))
    assert load_parts(stl).up == "+z"
    ply = tmp_path / "o.ply"
    trimesh.Trimesh(np.vstack([meshes[0][0], meshes[1][0]]),
                    np.vstack([meshes[0][1], meshes[1][1] + len(meshes[0][0])]), process=False).export(str(ply))
    assert load_parts(ply, parts="components").up == "+y"
    assert load_parts(stl, up="-x").up == "-x"  # the caller's word wins
    assert frames.DEFAULT_UP == {".glb": "+y", ".gltf": "+y", ".obj": "+y", ".ply": "+y", ".stl": "+z", ".off": "+z"}


def test_bad_up_is_an_input_error_before_reading(tmp_path):
    _write_obj(tmp_path / "o.obj", _two_boxes(), ["a", "b"])
    with pytest.raises(InputError, match=r"up must be one of .* got 'top'"):
        load_parts(tmp_path / "o.obj", up="top")
    with pytest.raises(InputError, match="up must be one of"):
        Parts.from_meshes(_two_boxes(), up="y-")
    assert Parts.from_meshes(_two_boxes()).up is None  # in memory: already in the model's frame
    assert Parts.from_meshes(_two_boxes(), up="z").up == "+z"


def test_gltf_override_is_recorded(tmp_path):
    from holopart_infer.io.parts_io import write_scene

    glb = write_scene(_two_boxes(), ["a", "b"], tmp_path / "s.glb")
    assert load_parts(glb).up == "+y"
    assert load_parts(glb, up="+z").up == "+z"  # documented override for files authored Z-up


# ---------------------------------------------------------------------------- conditioning


def test_conditioning_turns_the_object_into_the_model_frame_and_back():
    from holopart_infer.model.conditioning import build_conditions

    z_up = _two_boxes()
    turn = up_rotation("+z", "+y")
    y_up = [(turn.apply(v), f) for v, f in z_up]
    cz = build_conditions(Parts.from_meshes(z_up, up="+z"), num_points=512, seed=3, model_up="+y")
    cy = build_conditions(Parts.from_meshes(y_up, up="+y"), num_points=512, seed=3, model_up="+y")
    assert cz.input_up == "+z" and cz.model_up == "+y" and cy.axes is None
    # the same object in two frames gives the model the same samples (up to float rounding of the
    # face areas, which can move a sample to a neighbouring face: compare as point sets)
    from scipy.spatial import cKDTree

    for a, b in ((cz.part_local[1, :, :3], cy.part_local[1, :, :3]), (cz.whole_points[:, :3], cy.whole_points[:, :3])):
        assert cKDTree(a).query(b)[0].max() < 1e-5
    np.testing.assert_allclose(cz.centers, cy.centers, atol=1e-6)
    # in the model frame the tall box stands along the model's up (+y)
    assert np.ptp(cz.part_local[1, :, :3], axis=0).argmax() == 1
    # and results go back to the input's frame
    for i, (v, _) in enumerate(z_up):
        np.testing.assert_allclose(cz.to_input_frame(i, cz.to_part_frame(i, v)), v, atol=1e-12)
    # no model_up: the input's axes are the model's (the training / evaluation path)
    c0 = build_conditions(Parts.from_meshes(z_up, up="+z"), num_points=512, seed=3)
    assert c0.axes is None and np.ptp(c0.part_local[1, :, :3], axis=0).argmax() == 2


# ---------------------------------------------------------------------------- models


def test_shipped_demo_model_states_its_frame():
    from holopart_infer import assets
    from holopart_infer.model.checkpoint import checkpoint_up_axis
    from holopart_infer.export.make_demo_model import MINI_CHECKPOINT, SYNTHETIC_UP
    from holopart_infer.model.manifest import load_manifest

    m = load_manifest(assets.demo_model_path(), verify_hashes=True)  # still intact after the new field
    assert SYNTHETIC_UP == "+z"  # the synthetic templates stand along z; the shipped weights were refolded
    assert m.up_axis == "+y" == checkpoint_up_axis(MINI_CHECKPOINT)
    import holopart_infer as hp

    assert hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu").up_axis == "+y"


def test_manifest_up_axis_absent_means_y_and_bad_is_named(tmp_path):
    from holopart_infer import assets
    from holopart_infer.model.manifest import load_manifest

    md = tmp_path / "m"
    shutil.copytree(assets.demo_model_path(), md)
    raw = json.loads((md / "manifest.json").read_text())
    del raw["up_axis"]
    (md / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(md, verify_hashes=False).up_axis == "+y"
    raw["up_axis"] = "z-up"
    (md / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match=r"manifest.json: 'up_axis' must be one of .* got 'z-up'"):
        load_manifest(md, verify_hashes=False).up_axis


def test_checkpoint_up_axis(tmp_path):
    from holopart_infer.model.checkpoint import checkpoint_up_axis

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "HoloPartPipeline"}))
    assert checkpoint_up_axis(tmp_path) == "+y"
    (tmp_path / "model_index.json").write_text(json.dumps({"up_axis": "-Z"}))
    assert checkpoint_up_axis(tmp_path) == "-z"
    (tmp_path / "model_index.json").write_text(json.dumps({"up_axis": [0, 0, 1]}))
    with pytest.raises(CheckpointError, match=r"model_index.json: up_axis must be one of"):
        checkpoint_up_axis(tmp_path)


# ---------------------------------------------------------------------------- CLI, batch lists, pictures


def test_cli_bad_up_exits_2_naming_the_option(tmp_path):
    obj = _write_obj(tmp_path / "o.obj", _two_boxes(), ["a", "b"])
    r = subprocess.run([sys.executable, "-m", "holopart_infer.cli", "run", str(obj), "-o", str(tmp_path / "x.glb"),
                        "--model", "nowhere", "--up", "sideways"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--up" in r.stderr and "sideways" in r.stderr, r.stderr
    assert not (tmp_path / "x.glb").exists()


def test_cli_negative_up_values_parse():
    from holopart_infer import cli

    assert cli.options.join_up_values(["run", "a.obj", "--up", "-z", "-o", "b.glb"]) == \
        ["run", "a.obj", "--up=-z", "-o", "b.glb"]
    args = cli.build_parser().parse_args(["run", "a.obj", "-o", "b.glb", "--model", "m", "--up=-z"])
    assert args.up == "-z"


@pytest.mark.parametrize("given, read", [("+Z", "+z"), ("z", "+z"), ("-Y", "-y"), ("+x", "+x")])
def test_cli_up_reads_as_the_api_does(given, read):
    """--up takes what load_parts(up=) takes: any case, and a bare axis as its + direction."""
    from holopart_infer import cli

    argv = cli.options.join_up_values(["run", "a.obj", "-o", "b.glb", "--model", "m", "--up", given])
    assert cli.build_parser().parse_args(argv).up == read


def test_batch_jsonl_up(tmp_path):
    from holopart_infer.scale.batch import collect_items

    (tmp_path / "a.obj").write_text("o a\n")
    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"input": "a.obj", "up": "+z", "id": "good"}) + "\n"
                   + json.dumps({"input": "a.obj", "up": "north", "id": "bad"}) + "\n")
    good, bad = collect_items([lst])
    assert good.up == "+z" and good.error is None
    assert bad.up is None and "list.jsonl:2" in bad.error and '"up" must be one of' in bad.error


def test_preview_camera_up_is_the_objects_up(tmp_path):
    from PIL import Image

    from holopart_infer.postprocess.preview import render_preview

    z_up = _two_boxes()
    y_up = [(up_rotation("+z", "+y").apply(v), f) for v, f in z_up]
    a = render_preview(z_up, None, tmp_path / "z.png", size=(80, 60), up="+z")
    b = render_preview(y_up, None, tmp_path / "y.png", size=(80, 60))
    c = render_preview(z_up, None, tmp_path / "lying.png", size=(80, 60))  # read as Y-up: on its side
    pa, pb, pc = (np.asarray(Image.open(p)) for p in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)
