"""Shared fixtures: tiny random-weight checkpoints and the golden folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_root() -> Path:
    return Path(os.environ.get("HOLOPART_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


def golden_dirs() -> list[Path]:
    root = golden_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "cases.npz").is_file())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="writing checkpoints needs the [torch] extra")
    from export.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)
