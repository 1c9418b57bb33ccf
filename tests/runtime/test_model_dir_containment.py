"""Model dirs stay in their dir (README "Guarantees and exit codes"): every file a manifest
names lies inside the model dir, and every config field has its type and range, in
manifests and checkpoints alike.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from holopart_infer import assets
from tests.support import cli


# --------------------------------------------------------------------------- manifests stay in their dir
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
def test_a_manifest_graph_file_outside_the_model_dir_is_refused(model_copy, where):
    import shutil

    from holopart_infer.errors import ModelDirError
    from holopart_infer.model.manifest import load_manifest

    shutil.copy(model_copy / "onnx" / "dit.onnx", model_copy.parent / "outside.onnx")  # a real file is there
    shutil.copytree(model_copy, model_copy.parent / "model2")
    mpath = _edit_manifest(model_copy, lambda m: m["graphs"]["dit"].__setitem__("file", where))
    with pytest.raises(ModelDirError, match=rf"{mpath}: graph 'dit': file .* points outside the model directory"):
        load_manifest(model_copy, verify_hashes=False)


def test_a_manifest_external_data_outside_the_model_dir_is_refused(model_copy):
    from holopart_infer.errors import ModelDirError
    from holopart_infer.model.manifest import load_manifest

    _edit_manifest(model_copy, lambda m: m["graphs"]["dit"].__setitem__(
        "external_data", {"file": "../../etc/passwd", "bytes": 10, "sha256": ""}))
    with pytest.raises(ModelDirError, match=r"graph 'dit': external_data.file '../../etc/passwd' points outside"):
        load_manifest(model_copy, verify_hashes=False)


@pytest.mark.parametrize("comp, key, value, expected", [
    ("transformer", "num_layers", 10**18, r"config\.transformer\.num_layers must be an integer in \[1, 1048576\]"),
    ("part_encoder", "num_tokens", "16", r"config\.part_encoder\.num_tokens must be an integer >= 1, got '16'"),
    ("vae", "embed_include_pi", 1, r"config\.vae\.embed_include_pi must be true or false"),
    ("scheduler", "shift", float("inf"), r"config\.scheduler\.shift must be a finite number > 0")])
def test_manifest_config_fields_have_types_and_ranges(model_copy, tmp_path, comp, key, value, expected):
    from holopart_infer.errors import ModelDirError
    from holopart_infer.model.manifest import load_manifest

    _edit_manifest(model_copy, lambda m: m["config"][comp].__setitem__(key, value))
    with pytest.raises(ModelDirError, match=expected):
        load_manifest(model_copy, verify_hashes=False)
    if key == "num_layers":
        r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", model_copy, "-q")
        assert r.returncode == 2 and "num_layers" in r.stderr and "manifest.json" in r.stderr, r.stderr


def test_checkpoint_config_counts_have_a_range():
    from holopart_infer.model.checkpoint import config_field_problem

    assert config_field_problem("num_layers", 21) is None
    assert "[1, 1048576]" in config_field_problem("num_layers", 10**18)
