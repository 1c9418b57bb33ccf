"""The Ray node dies mid-run (its raylet killed for real, as the dashboard
agent's fate-sharing or an OOM kill do). Every wait is bounded; a local cluster the run
started itself is restarted and the unfinished objects redone, each object exactly once in
the outputs and the ledger; on a cluster the run only joined, the objects left fail with a
clear error (the batch's exit 3) and the finished ones are kept."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from holopart_infer import assets
from holopart_infer.scale.batch import collect_items, run_batch
from tests.support import StallOnce, check_ledger_agrees_with_files, fast_options, ledger_lines, two_box_glb

pytestmark = pytest.mark.ray


def _descendants(root: int) -> dict[int, str]:
    """pid -> command name of every process below ``root`` (from /proc)."""
    parent, name = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            comm_end = stat.rindex(")")
            name[int(d.name)] = stat[stat.index("(") + 1:comm_end]
            parent[int(d.name)] = int(stat[comm_end + 2:].split()[1])
    out, frontier = {}, {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in out}
        out.update({p: name[p] for p in frontier})
    return out


def _kill_raylet() -> list[int]:
    """SIGKILL the raylet of the Ray node this process started (only this process's own)."""
    pids = [p for p, n in _descendants(os.getpid()).items() if n == "raylet"]
    for p in pids:
        os.kill(p, signal.SIGKILL)
    return pids


def _objects(tmp_path: Path, n: int) -> Path:
    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(n):
        two_box_glb(objs / f"o{i}.glb", float(i))
    return objs


@pytest.fixture
def no_ray_yet():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'holopart-infer[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def test_own_cluster_node_killed_is_restarted_and_every_object_done_once(no_ray_yet, tmp_path, caplog):
    from holopart_infer.scale.ray_runner import RayExecutor

    objs = _objects(tmp_path, 6)
    marker = tmp_path / "stall-marker"
    marker.write_text("the first worker given o0 hangs: its group is in flight when the node dies")
    killed: list = []

    def kill_node_after_first(item, entry):
        if not killed:
            killed.append(_kill_raylet())

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        s = run_batch(assets.demo_model_path(), collect_items([objs]), out, options=fast_options(), on_result=kill_node_after_first,
                      executor=RayExecutor("local", workers=2, parts_per_batch=4, hook=StallOnce("o0", marker)))
    assert killed and killed[0], "no raylet found to kill"
    assert not marker.exists()
    assert s.cluster_restarts == 1 and "restarting the local cluster" in caplog.text
    assert (s.ok, s.failed, s.skipped) == (6, 0, 0)
    assert sorted(e["id"] for e in ledger_lines(out)) == [f"o{i}" for i in range(6)]  # each exactly once
    check_ledger_agrees_with_files(out)
    assert not no_ray_yet.is_initialized()  # the pool shut its cluster down


def test_joined_cluster_node_killed_fails_the_rest_clearly(no_ray_yet, tmp_path):
    from holopart_infer.scale.ray_runner import RayExecutor

    ray = no_ray_yet
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    objs = _objects(tmp_path, 6)
    marker = tmp_path / "stall-marker"
    marker.write_text("o0 hangs")
    killed: list = []

    def kill_node_after_first(item, entry):
        if not killed:
            killed.append(_kill_raylet())

    out = tmp_path / "out"
    s = run_batch(assets.demo_model_path(), collect_items([objs]), out, options=fast_options(), on_result=kill_node_after_first,
                  executor=RayExecutor("auto", workers=2, parts_per_batch=4, hook=StallOnce("o0", marker)))
    assert killed and killed[0]
    assert s.ok >= 1 and s.failed >= 1 and s.ok + s.failed == 6 and s.cluster_restarts == 0
    lines = ledger_lines(out)
    assert sorted(e["id"] for e in lines) == [f"o{i}" for i in range(6)]  # each exactly once
    failed = [e for e in lines if e["status"] == "failed"]
    assert all(e["error_type"] == "ClusterLost" and "no live node" in e["error"] for e in failed), failed
    assert "o0" in {e["id"] for e in failed}
    check_ledger_agrees_with_files(out)
