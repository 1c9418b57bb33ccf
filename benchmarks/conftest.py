"""Collect ``bench_*.py`` files as test modules (pytest's default is ``test_*.py``).

Run e.g.: python -m pytest benchmarks/bench_mcubes.py --benchmark-enable
"""
from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
