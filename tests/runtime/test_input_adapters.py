"""Ways in: label files, segmenter outputs, multi-piece files, unusual and malformed glTF."""
from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import trimesh

from holopart_infer.io import adapters
from holopart_infer.model.conditioning import build_conditions
from holopart_infer.errors import InputError
from holopart_infer.io.parts_io import load_parts
from tests.gltf_builder import box_arrays, gltf_doc, write_gltf


def _three_boxes():
    meshes = [trimesh.creation.box(extents=(1, 1, 1)) for _ in range(3)]
    for i, m in enumerate(meshes):
        m.apply_translation([2.0 * i, 0, 0])
    return meshes


def _concat(meshes):
    v = np.concatenate([m.vertices for m in meshes])
    offs = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    f = np.concatenate([m.faces + o for m, o in zip(meshes, offs)])
    return v, f


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- label files


@pytest.mark.parametrize("fmt", ["npy", "json_list", "json_dict", "txt"])
def test_label_file_formats(tmp_path, fmt):
    v, f = _concat(_three_boxes())
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    labels = np.repeat([5, 1, 9], 12)
    if fmt == "npy":
        lp = tmp_path / "l.npy"
        np.save(lp, labels)
    elif fmt == "json_list":
        lp = tmp_path / "l.json"
        lp.write_text(json.dumps(labels.tolist()))
    elif fmt == "json_dict":  # SAMesh face2label.json
        lp = tmp_path / "l.json"
        lp.write_text(json.dumps({str(i): int(x) for i, x in enumerate(labels)}))
    else:
        lp = tmp_path / "l.txt"
        lp.write_text("\n".join(str(x) for x in labels) + "\n")
    parts = load_parts(tmp_path / "m.ply", labels=lp)
    assert parts.names == ["part_1", "part_5", "part_9"]
    assert [len(p.faces) for p in parts] == [12, 12, 12]
    np.testing.assert_allclose(parts[0].vertices.mean(axis=0), [2, 0, 0], atol=1e-6)
    assert lp in parts.input_paths


def test_label_text_file_with_a_word_names_it(tmp_path):
    v, f = _concat(_three_boxes())
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    (tmp_path / "l.txt").write_text("1 2 leg 3")
    with pytest.raises(InputError, match=r"l\.txt: 'leg' is not an integer"):
        load_parts(tmp_path / "m.ply", labels=tmp_path / "l.txt")


def test_negative_labels_are_context_not_parts(tmp_path):
    meshes = _three_boxes()
    v, f = _concat(meshes)
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    labels = np.repeat([0, -1, 1], 12)
    parts = load_parts(tmp_path / "m.ply", labels=labels)
    assert parts.names == ["part_0", "part_1"]  # no part_-1
    assert parts.context is not None and len(parts.context[1]) == 12
    np.testing.assert_allclose(parts.context[0].mean(axis=0), [2, 0, 0], atol=1e-6)
    cond = build_conditions(parts, num_points=3000, seed=0)
    # the whole object includes the context box; its samples are in no part's mask
    whole_x = cond.whole[0, :, 0] * cond.object_scale + cond.object_center[0]
    on_context = np.abs(whole_x - 2.0) < 0.51
    assert 600 < on_context.sum() < 1400
    assert (cond.whole[:, on_context, 6] == 0).all()
    assert (cond.whole[:, ~on_context, 6].sum(axis=0) == 1).all()


def test_all_negative_labels_explain(tmp_path):
    v, f = _concat(_three_boxes())
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError, match="every label is negative"):
        load_parts(tmp_path / "m.ply", labels=np.full(36, -1))


def test_obj_quads_per_polygon_labels(tmp_path):
    # two unit cubes written as quads: 12 polygons, 24 triangles
    lines = []
    for k, x in enumerate((0.0, 3.0)):
        for c in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]:
            lines.append(f"v {c[0] + x} {c[1]} {c[2]}")
    quads = [(1, 4, 3, 2), (5, 6, 7, 8), (1, 2, 6, 5), (2, 3, 7, 6), (3, 4, 8, 7), (4, 1, 5, 8)]
    for k in range(2):
        lines += ["f " + " ".join(str(i + 8 * k) for i in q) for q in quads]
    (tmp_path / "q.obj").write_text("\n".join(lines) + "\n")
    parts = load_parts(tmp_path / "q.obj", labels=np.repeat([0, 1], 6))
    assert [len(p.faces) for p in parts] == [12, 12]
    assert abs(parts[1].vertices[:, 0].mean() - 3.5) < 1e-9
    for p in parts:
        m = trimesh.Trimesh(p.vertices, p.faces)
        assert m.is_watertight and abs(abs(m.volume) - 1.0) < 1e-9
    with pytest.raises(InputError, match=r"has 7 labels but mesh .*q\.obj has 24 faces \(the OBJ has 12 polygons"):
        load_parts(tmp_path / "q.obj", labels=np.zeros(7, int))


# --------------------------------------------------------------------------- segmenter outputs


def test_samesh_output_folder(tmp_path):
    # SAMesh writes <out>/<name>/<name>_segmented.glb and <name>_face2label.json ({"face": label})
    out = tmp_path / "chair"
    out.mkdir()
    v, f = _concat(_three_boxes())
    trimesh.Trimesh(v, f, process=False).export(str(out / "chair_segmented.glb"))
    labels = np.repeat([2, 0, 1], 12)
    (out / "chair_face2label.json").write_text(json.dumps({str(i): int(x) for i, x in enumerate(labels)}))
    parts = load_parts(out)
    assert parts.kind == "samesh" and parts.names == ["part_0", "part_1", "part_2"]
    assert abs(parts[0].vertices[:, 0].mean() - 2.0) < 1e-6
    assert {p.name for p in parts.input_paths} == {"chair_segmented.glb", "chair_face2label.json"}


def test_samesh_json_without_mesh_explains(tmp_path):
    (tmp_path / "x_face2label.json").write_text(json.dumps({"0": 1}))
    with pytest.raises(InputError, match="expected x_segmented.glb"):
        load_parts(tmp_path)


def _sampart3d_layout(root, scales):
    v, f = _concat(_three_boxes())
    mesh = trimesh.Trimesh(v, f, process=False)
    for s in scales:
        (root / "results" / "last").mkdir(parents=True, exist_ok=True)
        (root / "vis_pcd" / "last").mkdir(parents=True, exist_ok=True)
        np.save(root / "results" / "last" / f"mesh_{s}.npy", np.repeat([0, 1, 1 if s == "2.0" else 2], 12))
        mesh.export(str(root / "vis_pcd" / "last" / f"mesh_{s}.ply"))
        # the point cloud it also writes has no faces: not a part source
        trimesh.PointCloud(v).export(str(root / "vis_pcd" / "last" / f"{s}.ply"))


def test_sampart3d_output_folder(tmp_path):
    _sampart3d_layout(tmp_path, ["0.5"])
    parts = load_parts(tmp_path)
    assert parts.kind == "sampart3d" and parts.names == ["part_0", "part_1", "part_2"]
    _sampart3d_layout(tmp_path, ["2.0"])
    with pytest.raises(InputError, match=r"2 scales \(0\.5, 2\.0\); choose one: .*mesh_0\.5\.ply --labels"):
        load_parts(tmp_path)
    coarse = adapters.load_sampart3d(tmp_path, scale=2.0)
    assert coarse.names == ["part_0", "part_1"]


# --------------------------------------------------------------------------- multi-piece files


def test_obj_groups_and_objects_are_parts(tmp_path):
    a, b, c = _three_boxes()
    lines = []
    offset = 0
    for tag, name, m in (("o", "seat", a), ("o", "leg", b), ("g", "back", c)):
        lines.append(f"{tag} {name}")
        lines += [f"v {x} {y} {z}" for x, y, z in m.vertices]
        lines += ["f " + " ".join(str(i + 1 + offset) for i in face) for face in m.faces]
        offset += len(m.vertices)
    (tmp_path / "chair.obj").write_text("\n".join(lines) + "\n")
    parts = load_parts(tmp_path / "chair.obj")
    assert parts.kind == "pieces" and len(parts) == 3
    assert any("seat" in n for n in parts.names) and any("leg" in n for n in parts.names)
    assert sorted(round(p.vertices[:, 0].mean()) for p in parts) == [0, 2, 4]


def test_multi_solid_stl_is_parts(tmp_path):
    a, b, _ = _three_boxes()
    text = trimesh.exchange.stl.export_stl_ascii(a).replace("solid", "solid left", 1)
    text += trimesh.exchange.stl.export_stl_ascii(b).replace("solid", "solid right", 1)
    (tmp_path / "two.stl").write_text(text)
    parts = load_parts(tmp_path / "two.stl")
    assert len(parts) == 2 and [len(p.faces) for p in parts] == [12, 12]


def test_gltf_primitives_on_request(tmp_path):
    a, b = box_arrays((0, 0, 0)), box_arrays((3, 0, 0))
    doc = gltf_doc([[(a[0], a[1].reshape(-1), 4), (b[0], b[1].reshape(-1), 4)]], [{"mesh": 0, "name": "body"}])
    path = write_gltf(tmp_path / "one_mesh.glb", doc)
    with pytest.raises(InputError, match="single part.*--parts primitives"):
        load_parts(path)
    parts = load_parts(path, parts="primitives")
    assert parts.kind == "primitives" and parts.names == ["body_0", "body_1"]
    assert sorted(round(p.vertices[:, 0].mean()) for p in parts) == [0, 3]


def test_components_on_request(tmp_path):
    meshes = _three_boxes()
    v, f = _concat(meshes)
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.stl"))  # STL: vertices unshared
    parts = load_parts(tmp_path / "m.stl", parts="components")
    assert parts.names == ["component_0", "component_1", "component_2"]
    assert [round(p.vertices[:, 0].mean()) for p in parts] == [0, 2, 4]
    single = tmp_path / "one.ply"
    meshes[0].export(str(single))
    with pytest.raises(InputError, match="single connected piece.*Ways in"):
        load_parts(single, parts="components")


def test_single_mesh_names_the_ways_in(tmp_path):
    trimesh.creation.box().export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError) as e:
        load_parts(tmp_path / "m.ply")
    msg = str(e.value)
    for way in ("--labels", "face2label.json", "mesh_<scale>.npy", "--parts components", "--parts primitives",
                "folder", "several solids"):
        assert way in msg


# --------------------------------------------------------------------------- unusual / malformed glTF


def _nothing_written(before, folder):
    assert _snapshot(folder) == before


def test_mirrored_node_flips_winding(tmp_path):
    v, f = box_arrays()
    doc = gltf_doc([[(v, f.reshape(-1), 4)], [(v, f.reshape(-1), 4)]],
                   [{"mesh": 0, "name": "plain", "translation": [3, 0, 0]},
                    {"mesh": 1, "name": "mirrored", "scale": [-1, 1, 1]}, {"children": [0, 1]}],
                   scene_nodes=(2,))
    parts = load_parts(write_gltf(tmp_path / "m.gltf", doc))
    for p in parts:
        m = trimesh.Trimesh(p.vertices, p.faces, process=False)
        assert m.volume > 0.99, p.name  # outward-facing: positive signed volume


def test_triangle_fan_and_strip_are_triangulated(tmp_path):
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    hexagon = np.array([[0, 0, 0]] + [[np.cos(a), np.sin(a), 1.0] for a in np.linspace(0, 2 * np.pi, 7)])
    for ext in ("glb", "gltf"):
        doc = gltf_doc([[(square, [0, 1, 3, 2], 5)], [(hexagon + [3, 0, 0], list(range(8)), 6)],
                        [(hexagon - [3, 0, 0], None, 6)]],
                       [{"mesh": 0, "name": "strip"}, {"mesh": 1, "name": "fan"}, {"mesh": 2, "name": "fan_arrays"},
                        {"children": [0, 1, 2]}], scene_nodes=(3,))
        parts = load_parts(write_gltf(tmp_path / f"modes.{ext}", doc))
        by = {p.name: p for p in parts}
        assert len(by["strip"].faces) == 2 and abs(by["strip"].area - 1.0) < 1e-6
        assert len(by["fan"].faces) == 6 and len(by["fan_arrays"].faces) == 6
        area = 6 * 0.5 * np.linalg.norm(np.cross(hexagon[1] - hexagon[0], hexagon[2] - hexagon[0]))
        assert abs(by["fan"].area - area) < 1e-5


def test_points_and_lines_skipped_with_warning_naming_them(tmp_path, caplog):
    a, b = box_arrays(), box_arrays((3, 0, 0))
    doc = gltf_doc([[(a[0], a[1].reshape(-1), 4)], [(b[0], b[1].reshape(-1), 4)],
                    [(np.random.default_rng(0).random((20, 3)), None, 0)], [(a[0][:4], [0, 1, 1, 2], 1)]],
                   [{"mesh": 0, "name": "A"}, {"mesh": 1, "name": "B"}, {"mesh": 2, "name": "scan_points"},
                    {"mesh": 3, "name": "outline"}, {"children": [0, 1, 2, 3]}], scene_nodes=(4,))
    path = write_gltf(tmp_path / "mixed.glb", doc)
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        parts = load_parts(path)
    assert parts.names == ["A", "B"]
    text = caplog.text
    assert "mesh2" in text and "POINTS" in text and "mesh3" in text and "LINES" in text
    assert "mixed.glb" in text


def test_cyclic_node_graph(tmp_path):
    v, f = box_arrays()
    doc = gltf_doc([[(v, f.reshape(-1), 4)]], [{"mesh": 0, "name": "a", "children": [1]},
                                              {"name": "b", "children": [0]}])
    path = write_gltf(tmp_path / "cyc.glb", doc)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=r"cyc\.glb: the node graph has a cycle \(node 0 'a' -> node 1 'b' -> node 0"):
        load_parts(path)
    _nothing_written(before, tmp_path)


def test_draco_without_dracopy_says_draco(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "DracoPy" else real(n, *a))
    v, f = box_arrays()
    doc = gltf_doc([[(v, f.reshape(-1), 4)]], [{"mesh": 0}],
                   extra={"extensionsUsed": ["KHR_draco_mesh_compression"],
                          "extensionsRequired": ["KHR_draco_mesh_compression"]})
    with pytest.raises(InputError, match=r"d\.glb: the meshes are Draco-compressed.*pip install 'holopart-infer\[draco\]'"):
        load_parts(write_gltf(tmp_path / "d.glb", doc))


def test_draco_glb_reads_when_dracopy_installed(tmp_path):
    pytest.importorskip("DracoPy", reason="the [draco] extra is not installed")
    scene = trimesh.Scene()
    for i, m in enumerate(_three_boxes()[:2]):
        scene.add_geometry(m, node_name=f"p{i}", geom_name=f"p{i}")
    path = tmp_path / "d.glb"
    path.write_bytes(trimesh.exchange.gltf.export_glb(scene, extension_draco=True))
    assert b"KHR_draco_mesh_compression" in path.read_bytes()[:4000]
    parts = load_parts(path)
    assert len(parts) == 2 and all(abs(p.area - 6.0) < 1e-2 for p in parts)


def test_empty_file(tmp_path):
    for name in ("e.glb", "e.obj", "e.stl"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(InputError, match=rf"{name} is an empty file \(0 bytes\)"):
            load_parts(tmp_path / name)
    (tmp_path / "l.npy").write_bytes(b"")
    trimesh.creation.box().export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError, match=r"l\.npy is an empty file"):
        load_parts(tmp_path / "m.ply", labels=tmp_path / "l.npy")


def test_assertion_without_reason_is_described(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise AssertionError()  # what a bare `assert` in a third-party reader raises

    monkeypatch.setattr(trimesh, "load_scene", broken)
    trimesh.creation.box().export(str(tmp_path / "m.obj"))
    with pytest.raises(InputError) as e:
        load_parts(tmp_path / "m.obj")
    msg = str(e.value)
    assert "m.obj" in msg and "AssertionError: )" not in msg and "malformed" in msg
    assert "test_input_adapters.py" in msg  # where the check failed


def test_missing_reader_dependency_is_named_not_blamed_on_file(tmp_path, monkeypatch):
    def needs_package(*a, **k):
        raise ModuleNotFoundError("No module named 'charset_normalizer'", name="charset_normalizer")

    monkeypatch.setattr(trimesh, "load_scene", needs_package)
    trimesh.creation.box().export(str(tmp_path / "m.obj"))
    with pytest.raises(InputError, match=r"needs the Python package 'charset_normalizer'.*not a problem with the "
                                         r"file.*pip install charset_normalizer"):
        load_parts(tmp_path / "m.obj")


def test_no_runtime_warnings_before_a_clean_error(tmp_path):
    v, f = box_arrays()
    v2 = v.copy() * 3e38  # finite in float32; times the node scale: inf in float64
    doc = gltf_doc([[(v, f.reshape(-1), 4)], [(v2, f.reshape(-1), 4)]],
                   [{"mesh": 0, "name": "a"}, {"mesh": 1, "name": "b", "scale": [1e308, 1e308, 1e308]},
                    {"children": [0, 1]}], scene_nodes=(2,))
    path = write_gltf(tmp_path / "huge.gltf", doc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"huge\.gltf: part 'b' has .* NaN or inf"):
            load_parts(path)


# --------------------------------------------------------------------------- through the CLI: exit 2, nothing written


def _malformed_files(tmp_path):
    v, f = box_arrays()
    files = {}
    files["empty.glb"] = tmp_path / "empty.glb"
    files["empty.glb"].write_bytes(b"")
    files["cycle.glb"] = write_gltf(tmp_path / "cycle.glb", gltf_doc(
        [[(v, f.reshape(-1), 4)]], [{"mesh": 0, "name": "a", "children": [1]}, {"name": "b", "children": [0]}]))
    files["points_only.gltf"] = write_gltf(tmp_path / "points_only.gltf", gltf_doc(
        [[(v, None, 0)]], [{"mesh": 0, "name": "scan"}]))
    files["meshopt.glb"] = write_gltf(tmp_path / "meshopt.glb", gltf_doc(
        [[(v, f.reshape(-1), 4)]], [{"mesh": 0}], extra={"extensionsRequired": ["EXT_meshopt_compression"],
                                                         "extensionsUsed": ["EXT_meshopt_compression"]}))
    return files


@pytest.mark.parametrize("name,expected", [
    ("empty.glb", "empty file"), ("cycle.glb", "has a cycle"), ("points_only.gltf", "no triangle meshes"),
    ("meshopt.glb", "EXT_meshopt_compression")])
def test_cli_malformed_exit_2_nothing_written(tmp_path, capsys, name, expected):
    from holopart_infer import assets
    from holopart_infer.cli import main

    files = _malformed_files(tmp_path)
    before = _snapshot(tmp_path)
    out = tmp_path / "out" / "x.glb"
    (tmp_path / "out").mkdir()
    code = main(["run", str(files[name]), "-o", str(out), "--model", str(assets.demo_model_path()), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and name in err and expected in err, err
    assert "Traceback" not in err and "AssertionError: )" not in err
    assert not any((tmp_path / "out").iterdir())
    assert {k: v for k, v in _snapshot(tmp_path).items()} == before


def test_obj_materials_alone_are_not_parts(tmp_path):
    lines = ["mtllib m.mtl"]
    a, b, _ = _three_boxes()
    lines += [f"v {x} {y} {z}" for x, y, z in np.concatenate([a.vertices, b.vertices])]
    for k, m in enumerate((a, b)):
        lines.append("usemtl " + ("red", "blue")[k])
        lines += ["f " + " ".join(str(i + 1 + 8 * k) for i in face) for face in m.faces]
    (tmp_path / "m.obj").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.mtl").write_text("newmtl red\nKd 1 0 0\nnewmtl blue\nKd 0 0 1\n")
    with pytest.raises(InputError, match=r"m\.obj is a single \.obj mesh without part labels"):
        load_parts(tmp_path / "m.obj")
    parts = load_parts(tmp_path / "m.obj", parts="components")
    assert len(parts) == 2
    # materials carried as appearance
    assert {tuple(p.appearance.base_color[:3]) for p in parts} == {(255, 0, 0), (0, 0, 255)}


def test_fan_with_broken_accessor_is_described(tmp_path):
    sq = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    doc = gltf_doc([[(sq, [0, 1, 2, 3], 6)]], [{"mesh": 0, "name": "fan"}])
    doc["accessors"][1]["bufferView"] = 99
    with pytest.raises(InputError, match=r"bad\.gltf: malformed glTF: IndexError"):
        load_parts(write_gltf(tmp_path / "bad.gltf", doc))
