"""The runtime never imports torch, onnx or export/ (architecture rule, docs/contracts.md).

The parent exports a model with torch; a child Python in which torch and onnx
cannot be imported (a meta-path blocker installed before anything else runs)
verifies the golden folder with the ONNX Runtime backend, then reports which
modules ended up loaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.support import REPO, golden_dirs

pytest.importorskip("torch", reason="exporting the model needs the [torch] extra")
pytest.importorskip("onnxruntime")

from tests.support import exported_model  # noqa: E402

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc

    class _Block(importlib.abc.MetaPathFinder):
        BLOCKED = ("torch", "onnx", "onnxscript", "export", "holopart_infer.export")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, _Block())
""")


def _run_child(body: str) -> subprocess.CompletedProcess:
    code = BLOCKER + textwrap.dedent(body) + textwrap.dedent("""
        import json
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("torch", "onnx", "onnxscript", "export", "holopart_infer.export"))
        print("LOADED=" + json.dumps(loaded))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(REPO))


def _loaded(r: subprocess.CompletedProcess) -> list[str]:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("LOADED=")]
    assert lines, r.stdout + r.stderr
    return json.loads(lines[-1][len("LOADED="):])


def test_blocker_works():
    r = _run_child("""
        try:
            import torch
            print("IMPORTED")
        except ModuleNotFoundError:
            print("BLOCKED")
    """)
    assert "BLOCKED" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not golden_dirs(), reason="no golden folder under ../shared/golden")
def test_verify_onnxruntime_without_torch():
    model = exported_model("golden")
    r = _run_child(f"""
        from holopart_infer.cli import main
        rc = main(["verify", {str(golden_dirs()[0])!r}, "--backend", "onnxruntime", "--model", {str(model)!r}])
        print("RC=" + str(rc))
    """)
    assert "RC=0" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 9, r.stdout
    assert _loaded(r) == []


def test_backend_api_without_torch():
    model = exported_model("golden")
    r = _run_child(f"""
        import numpy as np
        from holopart_infer.engines.onnxruntime import OrtBackend
        from holopart_infer.engines.base import get_backend
        b = get_backend("onnxruntime", "cpu").load_factory()({str(model)!r})
        C = b.config["transformer"]["in_channels"]
        kv = b.decoder_kv(np.zeros((1, 6, C), np.float32))
        print("SHAPE=" + str(b.decoder_query(np.zeros((1, 5, 3), np.float32), kv).shape))
    """)
    assert "SHAPE=(1, 5, 1)" in r.stdout, r.stdout + r.stderr
    assert _loaded(r) == []
