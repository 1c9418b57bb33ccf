"""Fixtures shared by every test folder (helpers they build on: tests/support.py).

tests/ mirrors the packages: runtime/ (holopart_infer), runtime/engines/
(holopart_infer.engines, with the backend conformance suite), export_side/
(holopart_infer.export, the repo's export/ folder), native/ (cpp_ext), bench/
(benchmarks/). Folder names never equal a real package name, so no test folder
shadows one on sys.path.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests import support


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight checkpoint in the published layout (seed 0)."""
    pytest.importorskip("torch", reason="writing checkpoints needs the [torch] extra")
    from holopart_infer.export.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def golden_model_dir() -> Path:
    """The golden weights (or the tiny preset) exported to an fp32 model dir, once per session."""
    pytest.importorskip("torch", reason="exporting needs the [torch] extra")
    return support.exported_model("golden")


@pytest.fixture(scope="session")
def variant_model_dir() -> Path:
    """A model unlike the golden one (other widths, heads, shift 3, inference defaults), exported once."""
    pytest.importorskip("torch", reason="exporting needs the [torch] extra")
    return support.exported_model("variant")


@pytest.fixture
def golden_dir() -> Path:
    """The first golden folder (../shared/golden or $HOLOPART_GOLDEN_DIR); skips when there is none."""
    dirs = support.golden_dirs()
    if not dirs:
        pytest.skip("no golden folder under ../shared/golden")
    return dirs[0]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly what this run did not run and how to run it (README's test command)."""
    lines = support.skip_summary(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("NOT RUN here (skipped)", sep="=", yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(line, yellow=True)
