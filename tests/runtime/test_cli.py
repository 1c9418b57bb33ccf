"""The CLI as a user runs it: run / demo, exit codes, never overwriting, atomic outputs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import trimesh

from holopart_infer import assets
from tests.support import FAST_FLAGS, write_transformed_scene


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _node_names(path) -> list[str]:
    scene = trimesh.load(str(path), force="scene")
    return sorted(n for n in scene.graph.nodes_geometry)


def _glb_part_nodes(path) -> list[str]:
    import json
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    gltf = json.loads(data[20:20 + length])
    root = gltf["scenes"][gltf.get("scene", 0)]["nodes"]
    return [gltf["nodes"][i]["name"] for i in root]


def test_run_scene_with_transformed_nodes(tmp_path):
    src = tmp_path / "chair.glb"
    expected = write_transformed_scene(src)
    before = src.read_bytes()
    out, png = tmp_path / "out.glb", tmp_path / "out.png"
    r = cli("run", src, "-o", out, "--model", assets.demo_model_path(), "--preview", png, *FAST_FLAGS)
    assert r.returncode == 0, r.stderr
    assert _node_names(out) == sorted(expected)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert src.read_bytes() == before  # input untouched
    assert "denoise" in r.stdout and "total" in r.stdout  # timing summary


def test_run_mesh_with_labels(tmp_path):
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    b.apply_translation([0, 0.9, 0])
    mesh = trimesh.util.concatenate([a, b])
    mesh_path, labels_path = tmp_path / "obj.ply", tmp_path / "labels.npy"
    mesh.export(mesh_path)
    np.save(labels_path, np.r_[np.zeros(len(a.faces), np.int64), np.ones(len(b.faces), np.int64)])
    out = tmp_path / "out.glb"
    r = cli("run", mesh_path, "--labels", labels_path, "-o", out, "--model", assets.demo_model_path(), *FAST_FLAGS)
    assert r.returncode == 0, r.stderr
    assert len(_node_names(out)) == 2


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    model = assets.demo_model_path()
    out = tmp_path / "out.glb"
    r = cli("run", tmp_path / "missing.glb", "-o", out, "--model", model)
    assert r.returncode == 2 and "missing.glb" in r.stderr
    mesh_path = tmp_path / "m.ply"
    trimesh.creation.box().export(mesh_path)
    np.save(tmp_path / "bad.npy", np.zeros(5, np.int64))
    r = cli("run", mesh_path, "--labels", tmp_path / "bad.npy", "-o", out, "--model", model, *FAST_FLAGS)
    assert r.returncode == 2 and "bad.npy" in r.stderr and "12" in r.stderr, r.stderr
    r = cli("run", mesh_path, "-o", out)
    assert r.returncode == 2 and "--weights" in r.stderr
    (tmp_path / "not_a_model").mkdir()
    r = cli("run", mesh_path, "-o", out, "--model", tmp_path / "not_a_model")
    assert r.returncode == 2 and "neither an exported model dir" in r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "m.ply", "not_a_model"]  # no temp files


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out.glb"
    out.write_bytes(b"precious")
    args = ["run", assets.demo_object_path(), "-o", out, "--model", assets.demo_model_path(), *FAST_FLAGS]
    r = cli(*args)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert out.read_bytes() == b"precious"
    r = cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"glTF"


def test_output_equal_to_input_is_refused(tmp_path):
    src = tmp_path / "in.glb"
    write_transformed_scene(src)
    before = src.read_bytes()
    r = cli("run", src, "-o", src, "--model", assets.demo_model_path(), "--overwrite", *FAST_FLAGS)
    assert r.returncode == 2 and "is the input" in r.stderr
    assert src.read_bytes() == before


def test_demo_writes_glb_and_preview_of_each_embedded_object(tmp_path):
    out = tmp_path / "demo.glb"
    r = cli("demo", "-o", out, "--steps", "2", "--depth", "6", "-q")  # the model's own latent length / samples
    assert r.returncode == 0, r.stderr
    assert "holopart-mini" in r.stdout and "'mug'" in r.stdout
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert _node_names(out) == ["body", "handle", "saucer"]
    for name, count in (("lamp", 4), ("table", 5)):
        o = tmp_path / f"{name}.glb"
        r = cli("demo", "--object", name, "-o", o, *FAST_FLAGS)
        assert r.returncode == 0, r.stderr
        # every input part has its node (at 2 steps a thin part may come out empty: an empty node)
        assert len(_glb_part_nodes(o)) == count
    r = cli("demo", "--object", "teapot", "-o", tmp_path / "t.glb", *FAST_FLAGS)
    assert r.returncode == 2 and "invalid choice: 'teapot'" in r.stderr


def test_export_without_torch_gives_install_hint(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; import importlib.util as u; "
            "u.find_spec = (lambda f: (lambda n, *a: None if n == 'torch' else f(n, *a)))(u.find_spec); "
            "from holopart_infer.cli import main; sys.exit(main(['export', 'w', 'o']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "holopart-infer[torch]" in r.stderr, r.stderr


def test_run_components_with_side_by_side_preview_and_turntable(tmp_path):
    from PIL import Image

    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    b.apply_translation([0, 1.2, 0])
    src = tmp_path / "two.stl"
    trimesh.util.concatenate([a, b]).export(src)
    before = src.read_bytes()
    out, png, gif = tmp_path / "out.glb", tmp_path / "cmp.png", tmp_path / "turn.gif"
    # without --parts components a single mesh is refused, naming the ways in
    r = cli("run", src, "-o", out, "--model", assets.demo_model_path(), *FAST_FLAGS)
    assert r.returncode == 2 and "--parts components" in r.stderr and not out.exists()
    # a bad turntable extension is refused before any work
    r = cli("run", src, "-o", out, "--model", assets.demo_model_path(), "--parts", "components",
            "--turntable", tmp_path / "t.avi", *FAST_FLAGS)
    assert r.returncode == 2 and "t.avi" in r.stderr and not out.exists()
    r = cli("run", src, "-o", out, "--model", assets.demo_model_path(), "--parts", "components", "--preview", png,
            "--turntable", gif, "--exploded", "0.5", "--no-appearance", *FAST_FLAGS)
    assert r.returncode == 0, r.stderr
    assert _node_names(out) == ["component_0", "component_1"]
    with Image.open(png) as im:
        assert im.size == (1280, 480)  # two 640x480 panels
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.png", "out.glb", "turn.gif", "two.stl"]
