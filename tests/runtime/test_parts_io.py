"""Parts IO: glb scenes with transforms, mesh + labels, folders, errors, the scene writer."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh

from holopart_infer.errors import InputError, InputFileNotFound
from holopart_infer.io.parts_io import Parts, load_parts, part_colors, write_scene
from tests.support import box, write_transformed_scene


def _glb_json(path: Path) -> dict:
    data = Path(path).read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + length])


def _two_box_mesh():
    a_v, a_f = box((-2, 0, 0))
    b_v, b_f = box((2, 0, 0), (1, 2, 1))
    v = np.concatenate([a_v, b_v])
    f = np.concatenate([a_f, b_f + len(a_v)])
    labels = np.r_[np.full(len(a_f), 3), np.full(len(b_f), 7)]
    return v, f, labels


# ---------------------------------------------------------------------------
# scenes


def test_scene_applies_full_node_transforms(tmp_path):
    path = tmp_path / "chair.glb"
    expected = write_transformed_scene(path)
    parts = load_parts(path)
    assert parts.kind == "scene" and parts.source == str(path)
    assert parts.names == ["back rest", "leg", "seat"]  # natural sort of node names
    for p in parts:
        assert p.vertices.dtype == np.float64 and p.faces.dtype == np.int64
        np.testing.assert_allclose(p.vertices, expected[p.name], atol=1e-5)


def test_write_scene_round_trip_keeps_names_coords_colors(tmp_path):
    src = tmp_path / "chair.glb"
    expected = write_transformed_scene(src)
    parts = load_parts(src)
    out = tmp_path / "out" / "completed.glb"
    colors = part_colors(len(parts))
    result = write_scene([(p.vertices, p.faces) for p in parts], parts.names, out, colors=colors,
                         protect=[src])
    assert result == out and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file left behind
    again = load_parts(out)
    assert again.names == parts.names
    for p in again:
        np.testing.assert_allclose(p.vertices, expected[p.name], atol=1e-5)
    # one named node per part, identity transforms, one colour per part
    scene = trimesh.load_scene(str(out))
    for i, name in enumerate(parts.names):
        transform, geom = scene.graph[name]
        np.testing.assert_allclose(transform, np.eye(4))
        material = scene.geometry[geom].visual.material
        np.testing.assert_array_equal(np.asarray(material.baseColorFactor), colors[i])


def test_write_scene_keeps_names_exactly_and_empty_parts(tmp_path):
    v, f = box()
    names = ["Leg (front) #1", "leg.002", "empty"]
    out = write_scene([(v, f), (v + 2, f), (np.zeros((0, 3)), np.zeros((0, 3), int))], names,
                      tmp_path / "x.glb")
    node_names = [n["name"] for n in _glb_json(out)["nodes"]]
    assert sorted(node_names) == sorted(names)


def test_part_colors_deterministic_and_distinct():
    a, b = part_colors(12), part_colors(12)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 4) and a.dtype == np.uint8 and (a[:, 3] == 255).all()
    assert len({tuple(c) for c in a}) == 12


def test_write_scene_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "chair.glb"
    write_transformed_scene(src)
    parts = load_parts(src)
    before = src.read_bytes()
    with pytest.raises(InputError, match="is the input .*never modified"):
        write_scene([(p.vertices, p.faces) for p in parts], parts.names, src, protect=parts.input_paths)
    # a different spelling of the same file is caught too
    with pytest.raises(InputError, match="chair.glb"):
        write_scene([(p.vertices, p.faces) for p in parts], parts.names,
                    tmp_path / "sub" / ".." / "chair.glb", protect=[str(src)])
    assert src.read_bytes() == before


def test_write_scene_bad_arguments(tmp_path):
    v, f = box()
    with pytest.raises(InputError, match=r"\.obj"):
        write_scene([(v, f), (v, f)], ["a", "b"], tmp_path / "x.obj")
    with pytest.raises(InputError, match="unique"):
        write_scene([(v, f), (v, f)], ["a", "a"], tmp_path / "x.glb")
    with pytest.raises(InputError, match="2 meshes but 1 names"):
        write_scene([(v, f), (v, f)], ["a"], tmp_path / "x.glb")
    with pytest.raises(InputError, match="colors"):
        write_scene([(v, f), (v, f)], ["a", "b"], tmp_path / "x.glb", colors=[(1, 2, 3)])


# ---------------------------------------------------------------------------
# mesh + labels, folders


@pytest.mark.parametrize("ext", [".obj", ".ply", ".glb", ".stl"])
def test_mesh_with_label_file(tmp_path, ext):
    v, f, labels = _two_box_mesh()
    mesh_path = tmp_path / f"object{ext}"
    trimesh.Trimesh(v, f, process=False).export(str(mesh_path))
    np.save(tmp_path / "labels.npy", labels)
    parts = load_parts(mesh_path, labels=tmp_path / "labels.npy")
    assert parts.kind == "mesh+labels"
    assert parts.names == ["part_3", "part_7"]
    assert [len(p.faces) for p in parts] == [12, 12]
    lo = [p.vertices.min(axis=0) for p in parts]
    np.testing.assert_allclose(lo[0], [-2.5, -0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(lo[1], [1.5, -1.0, -0.5], atol=1e-6)
    assert tmp_path / "labels.npy" in parts.input_paths


def test_mesh_with_label_array(tmp_path):
    v, f, labels = _two_box_mesh()
    mesh_path = tmp_path / "object.obj"
    trimesh.Trimesh(v, f, process=False).export(str(mesh_path))
    parts = load_parts(mesh_path, labels=labels.astype(np.uint8))
    assert parts.names == ["part_3", "part_7"]
    np.testing.assert_allclose(sum(p.area for p in parts), 6 + 10, rtol=1e-9)


def test_folder_of_part_meshes(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (name, ext) in enumerate([("b", ".obj"), ("a10", ".stl"), ("a2", ".ply"), ("a", ".glb")]):
        v, f = box((3.0 * i, 0, 0))
        trimesh.Trimesh(v, f, process=False).export(str(folder / f"{name}{ext}"))
    (folder / "notes.txt").write_text("not a mesh")
    # .stl is +z up by default, the others +y: the folder's frame must be said
    with pytest.raises(InputError, match=r"different default up axes \(.*\.stl \+z.*--up"):
        load_parts(folder)
    parts = load_parts(folder, up="+y")
    assert parts.kind == "folder" and parts.up == "+y"
    assert parts.names == ["a", "a2", "a10", "b"]
    np.testing.assert_allclose(parts[0].vertices.min(axis=0), [8.5, -0.5, -0.5], atol=1e-6)
    assert len(parts.input_paths) == 4


def test_parts_from_meshes_dedupes_names():
    v, f = box()
    parts = Parts.from_meshes([(v, f), (v + 2, f), (v + 4, f)], ["leg", "leg", "leg"])
    assert parts.names == ["leg", "leg_1", "leg_2"]


def test_demo_asset():
    from holopart_infer.assets import demo_object_path
    from holopart_infer.export.demo_table import build_demo_scene

    path = demo_object_path()
    assert path.is_file() and path.stat().st_size < 200_000
    parts = load_parts(path)
    assert len(parts) == 5 and "top" in parts.names
    nodes = {n["name"]: n for n in _glb_json(path)["nodes"]}
    for name in parts.names + ["table"]:
        matrix = np.asarray(nodes[name]["matrix"]).reshape(4, 4)
        assert not np.allclose(matrix, np.eye(4)), name
    # reproducible from the generator
    fresh = {}
    scene = build_demo_scene()
    for node in scene.graph.nodes_geometry:
        T, g = scene.graph[node]
        fresh[node] = scene.geometry[g].vertices @ T[:3, :3].T + T[:3, 3]
    for p in parts:
        np.testing.assert_allclose(p.vertices, fresh[p.name], atol=1e-6)


def test_synthetic_demo_objects_match_their_recipe():
    pytest.importorskip("trimesh")
    from holopart_infer.export.make_demo_model import SYNTHETIC_DEMO_OBJECTS, demo_object
    from holopart_infer.assets import DEFAULT_DEMO_OBJECT, DEMO_OBJECTS, demo_object_path
    from holopart_infer.errors import InputError

    assert DEFAULT_DEMO_OBJECT in DEMO_OBJECTS and set(SYNTHETIC_DEMO_OBJECTS) <= set(DEMO_OBJECTS)
    for name in SYNTHETIC_DEMO_OBJECTS:
        obj = demo_object(name)
        parts = load_parts(demo_object_path(name))
        assert sorted(parts.names) == sorted(obj.names) and parts.up == "+y"
        assert min(p.visible_fraction for p in obj.parts) < 0.6  # something is really hidden
        stored = {n: (v, f) for n, v, f in zip(parts.names, parts.vertices, parts.faces)}
        for p in obj.parts:
            v, f = p.patch  # synthetic objects stand along +z; the glTF file is +y up: (x, y, z) -> (x, z, -y)
            np.testing.assert_allclose(stored[p.name][0], np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1), atol=1e-6)
            np.testing.assert_array_equal(stored[p.name][1], f)
        if name == "lamp":  # upright in the file: the pole (the longest extent) runs along y
            lo, hi = parts.bounds()
            assert np.argmax(hi - lo) == 1
    with pytest.raises(InputError, match="unknown demo object 'teapot'"):
        demo_object_path("teapot")


# ---------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFound, match="nope.glb"):
        load_parts(tmp_path / "nope.glb")


def test_missing_labels_file(tmp_path):
    v, f, _ = _two_box_mesh()
    trimesh.Trimesh(v, f).export(str(tmp_path / "m.obj"))
    with pytest.raises(InputFileNotFound, match="labels file .*missing.npy"):
        load_parts(tmp_path / "m.obj", labels=tmp_path / "missing.npy")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "object.fbx"
    p.write_bytes(b"x")
    with pytest.raises(InputError, match=r"object\.fbx.*unsupported extension '\.fbx'"):
        load_parts(p)


def test_unreadable_file(tmp_path):
    p = tmp_path / "broken.glb"
    p.write_text("this is not a glb file at all")
    with pytest.raises(InputError, match="broken.glb: cannot read"):
        load_parts(p)


def test_empty_scene(tmp_path):
    p = tmp_path / "empty.obj"
    p.write_text("# nothing here\n")
    with pytest.raises(InputError, match="empty.obj.*empty scene"):
        load_parts(p, labels=np.zeros(0, int))


def test_zero_area_part_is_named(tmp_path):
    scene = trimesh.Scene()
    v, f = box()
    scene.add_geometry(trimesh.Trimesh(v, f, process=False), node_name="good", geom_name="good")
    flat_v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float)  # collinear: no area
    scene.add_geometry(trimesh.Trimesh(flat_v, [[0, 1, 2]], process=False), node_name="sliver",
                       geom_name="sliver")
    scene.export(str(tmp_path / "s.glb"))
    with pytest.raises(InputError, match=r"s\.glb: part 'sliver' has no surface area"):
        load_parts(tmp_path / "s.glb")


def test_nan_vertices_name_the_part(tmp_path):
    v, f, labels = _two_box_mesh()
    v[12] = np.nan  # a vertex of the second box (label 7)
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError, match=r"m\.ply: part 'part_7' has 1 vertices with NaN or inf"):
        load_parts(tmp_path / "m.ply", labels=labels)
    with pytest.raises(InputError, match="part 'right' has 1 vertices with NaN or inf"):
        Parts.from_meshes([(v[:8], f[:12]), (v[8:], f[12:] - 8)], ["left", "right"])


def test_labels_length_mismatch(tmp_path):
    v, f, labels = _two_box_mesh()
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    np.save(tmp_path / "l.npy", labels[:-2])
    with pytest.raises(InputError, match=r"l\.npy: has 22 labels but mesh .*m\.ply has 24 faces"):
        load_parts(tmp_path / "m.ply", labels=tmp_path / "l.npy")


def test_labels_not_integer(tmp_path):
    v, f, labels = _two_box_mesh()
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError, match="labels must be integers, got dtype float64"):
        load_parts(tmp_path / "m.ply", labels=labels.astype(np.float64))


def test_single_part_explains(tmp_path):
    v, f, labels = _two_box_mesh()
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.ply"))
    with pytest.raises(InputError, match=r"m\.ply: found a single part .*at least 2 parts"):
        load_parts(tmp_path / "m.ply", labels=np.zeros_like(labels))


def test_single_mesh_without_labels(tmp_path):
    v, f, _ = _two_box_mesh()
    trimesh.Trimesh(v, f, process=False).export(str(tmp_path / "m.obj"))
    with pytest.raises(InputError, match=r"m\.obj is a single \.obj mesh without part labels"):
        load_parts(tmp_path / "m.obj")


def test_labels_with_multi_node_scene_follow_scene_graph_order(tmp_path):
    # SAMPart3D labels the faces of trimesh.load(path).dump(concatenate=True): nodes in scene-graph order
    expected = write_transformed_scene(tmp_path / "chair.glb")
    scene = trimesh.load_scene(str(tmp_path / "chair.glb"))
    order = list(scene.graph.nodes_geometry)
    labels = np.concatenate([np.full(12, i) for i in range(len(order))])
    parts = load_parts(tmp_path / "chair.glb", labels=labels)
    for i, node in enumerate(order):
        got = parts[parts.names.index(f"part_{i}")].vertices
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected[node], axis=0), atol=1e-5)
    with pytest.raises(InputError, match=r"has 35 labels but mesh .*chair\.glb has 36 faces"):
        load_parts(tmp_path / "chair.glb", labels=labels[:35])


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="holds no mesh files"):
        load_parts(tmp_path)
