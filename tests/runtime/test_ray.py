"""Batch runs on a local Ray cluster (2 CPUs, small object store), with a worker
process killed mid-run: every object completed exactly once, no partial output,
the ledger agrees with the files."""
from __future__ import annotations

import importlib.util
import logging

import pytest

from holopart_infer import assets
from holopart_infer.scale.batch import Ledger, collect_items, run_batch
from holopart_infer.errors import BackendUnavailable
from tests.support import (
    FAST_FLAGS_NO_DECIMATE, CrashOnce, check_ledger_agrees_with_files, fast_options, ledger_lines, two_box_glb,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'holopart-infer[ray]')")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 ** 2, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_worker_killed_mid_run_every_object_once(local_ray, tmp_path):
    from holopart_infer.scale.ray_runner import RayExecutor

    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(5):
        two_box_glb(objs / f"o{i}.glb", float(i))
    (objs / "broken.glb").write_bytes(b"not a glb")
    marker = tmp_path / "crash-marker"
    marker.write_text("the first worker given o3 exits")
    out = tmp_path / "out"
    s = run_batch(assets.demo_model_path(), collect_items([objs]), out, options=fast_options(),
                  executor=RayExecutor("auto", workers=2, parts_per_batch=4, hook=CrashOnce("o3", marker)))
    assert not marker.exists(), "the fault was not injected"
    assert (s.ok, s.failed, s.skipped) == (5, 1, 0) and s.failed_ids == ["broken"]
    assert s.worker_restarts == 1
    lines = ledger_lines(out)
    assert sorted(e["id"] for e in lines) == sorted(["broken"] + [f"o{i}" for i in range(5)])  # each once
    last = check_ledger_agrees_with_files(out)
    workers = {e["worker"] for e in last.values() if e["status"] == "ok"}
    assert len(workers) >= 2  # both actors (or an actor and its replacement) did work
    # a re-run on Ray has nothing left but the broken object
    s2 = run_batch(assets.demo_model_path(), collect_items([objs]), out, options=fast_options(),
                   executor=RayExecutor("auto", workers=2))
    assert (s2.ok, s2.failed, s2.skipped) == (0, 1, 5)
    assert Ledger(out).read()["o3"]["status"] == "ok"


def test_ray_missing_gives_the_install_hint(monkeypatch):
    from holopart_infer.scale import ray_runner

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(BackendUnavailable, match=r"pip install 'holopart-infer\[ray\]'"):
        ray_runner.RayPool(assets.demo_model_path())


def test_cli_batch_on_ray(local_ray, tmp_path, capsys):
    from holopart_infer.cli import main

    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(3):
        two_box_glb(objs / f"o{i}.glb", float(i))
    out = tmp_path / "out"
    code = main(["batch", str(objs), "-o", str(out), "--model", str(assets.demo_model_path()), "--ray", "auto",
                 "--ray-workers", "2", "--parts-per-batch", "4", *FAST_FLAGS_NO_DECIMATE])
    assert code == 0, capsys.readouterr()
    assert "3 objects: 3 completed" in capsys.readouterr().out
    assert sorted(check_ledger_agrees_with_files(out)) == ["o0", "o1", "o2"]
