"""Golden check: `holopart-infer verify` on every folder of ../shared/golden.

Runs the same command users run. Folders are discovered, never named, so new
golden folders are checked as they appear.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import golden_dirs, golden_root

pytest.importorskip("torch", reason="verify --backend torch needs the [torch] extra")

GOLDEN = golden_dirs()


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", "verify", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not GOLDEN, reason=f"no golden folders under {golden_root()}")
@pytest.mark.parametrize("folder", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_torch(folder):
    r = _verify(str(folder), "--backend", "torch")
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
