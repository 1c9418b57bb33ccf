"""Golden check: `holopart-infer verify` on every folder of ../shared/golden.

Runs the same command users run, through the faithful reference model and
through every runtime backend available on this machine (ONNX Runtime exports
the golden weights first; TensorRT and CUDA devices where present). Folders are
discovered, never named, so new golden folders are checked as they appear.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.support import golden_dirs, golden_root

from holopart_infer.engines import backend_status

pytest.importorskip("torch", reason="verify --backend reference needs the [torch] extra")

GOLDEN = golden_dirs()
# (backend, device) pairs that can run here: the reference model, then every registered backend
RUNS = [("reference", "cpu")] + [(name, dev) for dev in ("cpu", "cuda")
                                 for name, (ok, _) in backend_status(dev).items() if ok]


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", "verify", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not GOLDEN, reason=f"no golden folders under {golden_root()}")
@pytest.mark.parametrize("backend,device", RUNS, ids=[f"{b}-{d}" for b, d in RUNS])
@pytest.mark.parametrize("folder", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden(folder, backend, device):
    r = _verify(str(folder), "--backend", backend, "--device", device)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "rel_err=" in ln]
    assert len(lines) == 9 and all(ln.endswith("ok") for ln in lines), r.stdout


@pytest.mark.skipif(not GOLDEN, reason=f"no golden folders under {golden_root()}")
def test_verify_fails_on_wrong_expectation(tmp_path):
    src = GOLDEN[0]
    dst = tmp_path / "g"
    shutil.copytree(src, dst)
    with np.load(dst / "cases.npz") as z:
        cases = {k: z[k] for k in z.files}
    cases["dit.out"] = cases["dit.out"] * 1.001
    np.savez(dst / "cases.npz", **cases)
    r = _verify(str(dst))
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(ln.startswith("dit.out") and ln.endswith("FAIL") for ln in r.stdout.splitlines())


def test_verify_unusable_folder_exits_2(tmp_path):
    r = _verify(str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _verify(str(tmp_path / "empty"))
    assert r.returncode == 2 and "cases.npz" in r.stderr


@pytest.mark.skipif(not GOLDEN, reason=f"no golden folders under {golden_root()}")
def test_verify_missing_weights_exits_2(tmp_path):
    dst = tmp_path / "g"
    dst.mkdir()
    shutil.copy(GOLDEN[0] / "cases.npz", dst / "cases.npz")
    r = _verify(str(dst))
    assert r.returncode == 2 and "weights" in r.stderr
