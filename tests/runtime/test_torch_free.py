"""The runtime never imports torch, onnx or the export side (docs/contracts.md).

The parent exports a model with torch; a child Python in which some modules
cannot be imported (a meta-path blocker installed before anything else runs)
runs a runtime path, then reports which of the blocked modules ended up loaded.
Two blockers: everything torch-side (torch, onnx, holopart_infer.export), and
the export side alone (torch importable), which proves the torch backend is a
runtime backend that needs torch but not holopart_infer.export.
"""
from __future__ import annotations

import pytest

from tests.support import EXPORT_SIDE, REPO, golden_dirs, loaded_modules, run_blocked_child

pytest.importorskip("torch", reason="exporting the model needs the [torch] extra")
pytest.importorskip("onnxruntime")

from tests.support import exported_model  # noqa: E402


def test_blocker_works():
    r = run_blocked_child("""
        for name in ("torch", "holopart_infer.export.onnx_export"):
            try:
                __import__(name)
                print("IMPORTED", name)
            except ModuleNotFoundError:
                print("BLOCKED", name)
    """)
    assert "BLOCKED torch" in r.stdout and "BLOCKED holopart_infer.export" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not golden_dirs(), reason="no golden folder under ../shared/golden")
def test_verify_onnxruntime_without_torch():
    model = exported_model("golden")
    r = run_blocked_child(f"""
        from holopart_infer.cli import main
        rc = main(["verify", {str(golden_dirs()[0])!r}, "--backend", "onnxruntime", "--model", {str(model)!r}])
        print("RC=" + str(rc))
    """)
    assert "RC=0" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 9, r.stdout
    assert loaded_modules(r) == []


def test_backend_api_without_torch():
    model = exported_model("golden")
    r = run_blocked_child(f"""
        import numpy as np
        from holopart_infer.engines import open_backend
        b = open_backend({str(model)!r})  # auto: ONNX Runtime on the CPU here
        kv = b.decoder_kv(np.zeros((1, 6, b.latent_channels), np.float32))
        print("NAME=" + b.name, "SHAPE=" + str(b.decoder_query(np.zeros((1, 5, 3), np.float32), kv).shape))
    """)
    assert "SHAPE=(1, 5, 1)" in r.stdout, r.stdout + r.stderr
    assert loaded_modules(r) == []


def test_pipeline_and_cli_run_without_torch_or_export(tmp_path):
    """The whole runtime path (load, complete, write) with torch and the export side blocked."""
    out = tmp_path / "out.glb"
    r = run_blocked_child(f"""
        from holopart_infer.cli import main
        rc = main(["run", __import__("holopart_infer.assets").assets.demo_object_path("mug").as_posix(),
                   "-o", {str(out)!r}, "--model", __import__("holopart_infer.assets").assets.demo_model_path().as_posix(),
                   "--steps", "1", "--depth", "6", "--decimate", "500", "-q"])
        print("RC=" + str(rc))
    """)
    assert "RC=0" in r.stdout, r.stdout + r.stderr
    assert out.is_file()
    assert loaded_modules(r) == []


def test_checkpoint_without_torch_says_what_to_install(tiny_checkpoint):
    """torch blocked: a checkpoint dir cannot run, and the error names the extra (no silent fallback)."""
    r = run_blocked_child(f"""
        sys.modules["torch"] = None  # as when torch is not installed: find_spec("torch") is None
        import holopart_infer as hp
        try:
            hp.load({str(tiny_checkpoint)!r})
        except hp.BackendUnavailable as e:
            print("ERR=" + str(e))
    """)
    assert "ERR=" in r.stdout and "holopart-infer[torch]" in r.stdout, r.stdout + r.stderr
    assert loaded_modules(r) == []


def test_torch_backend_runs_without_the_export_side(tiny_checkpoint):
    """export side blocked, torch importable: the torch backend is a runtime backend."""
    r = run_blocked_child(f"""
        import numpy as np
        from holopart_infer.engines import open_backend
        b = open_backend({str(tiny_checkpoint)!r}, backend="torch", device="cpu")
        x = np.zeros((1, 8, b.latent_channels), np.float32)
        K = b.num_tokens
        D = b.config["transformer"]["cross_attention_dim"]
        c = np.zeros((1, K, D), np.float32)
        print("NAME=" + b.name, "SHAPE=" + str(np.asarray(b.guided_step(x, 500.0, 0.1, 3.5, c, c)).shape))
    """, blocked=EXPORT_SIDE)
    assert "NAME=torch SHAPE=(1, 8," in r.stdout, r.stdout + r.stderr
    assert loaded_modules(r) == []


def test_export_side_installs_inside_the_package():
    """The wheel claims no top-level name but holopart_infer: export/ is holopart_infer.export."""
    import importlib.util
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["scikit-build"]["wheel"]["packages"]
    assert cfg == {"holopart_infer": "holopart_infer", "holopart_infer/export": "export"}
    spec = importlib.util.find_spec("holopart_infer.export")
    assert spec is not None and spec.origin == str(REPO / "export" / "__init__.py")
