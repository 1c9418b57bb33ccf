"""The GPU harness runs end to end on CPU at the tiny config and writes a complete JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the harness needs the [torch] extra")

from tests.support import REPO  # noqa: E402
TIMING_FIELDS = ("median_ms", "spread_ms", "p25_ms", "p75_ms", "repeats", "floor_ms", "floor_bound",
                 "measured_over_floor")


def _check_timing(rec: dict, name: str, floor: bool = True) -> None:
    """The summary statistics are those of the recorded samples (so a broken timer shows)."""
    import statistics

    s = sorted(rec["samples_ms"])
    assert len(s) == rec["repeats"] and all(x > 0 for x in s), (name, s)
    assert rec["median_ms"] == pytest.approx(statistics.median(s)), name
    assert rec["min_ms"] == s[0] and rec["max_ms"] == s[-1], name
    assert s[0] <= rec["p25_ms"] <= rec["median_ms"] <= rec["p75_ms"] <= s[-1], name
    assert rec["spread_ms"] == pytest.approx(rec["p75_ms"] - rec["p25_ms"]), name
    if floor and rec.get("floor_ms"):
        assert rec["measured_over_floor"] == pytest.approx(rec["median_ms"] / rec["floor_ms"]), name


def test_harness_cpu_smoke(tmp_path):
    from benchmarks import gpu_harness

    out = tmp_path / "results.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_harness.py"), "--config", "tiny", "--device", "cpu",
           "--out", str(out), "--reference", "--ckpt-dir", str(tmp_path / "ckpt"),
           "--repeats", "2", "--warmup", "1", "--steps", "2", "--parts", "2", "--query-points", "1024"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "stage" in proc.stdout.splitlines()[-len(json.loads(out.read_text())["stages"]) - 1]  # table last

    res = json.loads(out.read_text())
    assert res["meta"]["device"] == "cpu" and res["meta"]["reference"] is True
    assert res["ceilings"]["matmul_flops_per_s"] > 0 and res["ceilings"]["copy_bytes_per_s"] > 0
    assert res["predicted"]["savings"]["uncond_no_cross"] > 0
    stages = res["stages"]
    expected = gpu_harness.stage_names(res["meta"]["plan"])
    assert list(stages) == expected
    for name in expected:
        rec = stages[name]
        assert rec["status"] in ("ok", "skipped"), (name, rec.get("reason"))
        if rec["status"] == "skipped":
            assert rec["reason"], name
            continue
        for f in TIMING_FIELDS:
            assert f in rec, (name, f)
        _check_timing(rec, name)
    # GPU-only stages are skipped with a reason on CPU; everything else ran
    P = res["meta"]["plan"]["parts"]
    graph = stages[f"guided_step_b{P}_cuda_graph"]
    assert graph["status"] == "skipped" and "CUDA" in graph["reason"]
    comp = stages[f"guided_step_b{P}_compile"]
    assert comp["status"] == "skipped" and "torch.compile" in comp["reason"] and "CUDA-only" in comp["reason"]
    assert all(r["status"] == "ok" for n, r in stages.items() if not n.endswith(("cuda_graph", "compile"))
               and not n.startswith("marching_cubes")), {n: r.get("reason") for n, r in stages.items()}
    # most valuable first: the ceilings, then the end to end, then the DiT and decoder
    assert expected[:6] == ["matmul_ceiling", "copy_bandwidth", f"end_to_end_{P}parts_2steps",
                            "dit_forward_b16", f"guided_step_b{P}", "decoder_query"]
    # the reference ran in the same run for the model stages, with a speed-up
    for name in expected:
        if (name.startswith(("dit_forward", "guided_step_b2", "decoder_query", "end_to_end"))
                and not name.endswith(("cuda_graph", "compile"))):
            ref = stages[name]["reference"]
            _check_timing(ref, name + " reference", floor=False)
            # the reported ratio is the two medians of this run, not a number from elsewhere
            assert stages[name]["speedup_vs_reference"] == pytest.approx(ref["median_ms"] / stages[name]["median_ms"])
    assert stages["decoder_query"]["queries_per_s"] > 0
    assert stages["end_to_end_2parts_2steps"]["decoder_queries"] > 0


def test_harness_budget_records_not_started_and_writes_json(tmp_path):
    """--budget-s: stages that would not fit are 'not started'. With --merge and --stages, the
    stages and ceilings of an earlier run stay in the JSON and only the named stages are added,
    in the run's order (the device check's second harness call)."""
    import time

    out = tmp_path / "results.json"
    earlier = {"meta": {"commit": "earlier"}, "ceilings": {"matmul_flops_per_s": 1e12, "copy_bytes_per_s": 1e11},
               "stages": {"end_to_end_8parts_50steps": {"status": "ok", "median_ms": 9000.0}}}
    out.write_text(json.dumps(earlier))
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_harness.py"), "--config", "tiny", "--device", "cpu",
           "--out", str(out), "--ckpt-dir", str(tmp_path / "ckpt"), "--budget-s", "60",
           "--started-at", str(time.time() - 59.99), "--merge", "--stages", "marching_cubes,decoder_kv"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOLOPART_COMMIT": "feedc0de"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["meta"]["budget_s"] == 60 and res["meta"]["e2e_field"] == "shape"
    assert res["meta"]["commit"] == "feedc0de" and res["meta"]["previous_run"]["commit"] == "earlier"
    assert res["ceilings"] == earlier["ceilings"]  # kept: no ceiling stage re-run
    stages = res["stages"]
    assert list(stages) == ["end_to_end_8parts_50steps", "decoder_kv_b8", "marching_cubes_32", "marching_cubes_64"]
    assert stages["end_to_end_8parts_50steps"] == earlier["stages"]["end_to_end_8parts_50steps"]
    new = [r for n, r in stages.items() if n != "end_to_end_8parts_50steps"]
    assert all(r["status"] == "not started" and "budget" in r["reason"] for r in new), stages


def test_select_stages():
    from benchmarks.gpu_harness import PLANS, select_stages

    plan = PLANS["full"]
    every = select_stages(None, plan)
    assert every[:3] == ["matmul_ceiling", "copy_bandwidth", "end_to_end_8parts_50steps"]
    assert every[-1] == "guided_step_b8_compile"
    # the run's order whatever order they are named in; an exact name selects only itself
    assert select_stages("decoder_query,guided_step_b8,end_to_end,ceilings", plan) == [
        "matmul_ceiling", "copy_bandwidth", "end_to_end_8parts_50steps", "guided_step_b8", "decoder_query"]
    assert select_stages("dit_forward", plan) == ["dit_forward_b16", "dit_forward_b2", "dit_forward_b8"]
    with pytest.raises(ValueError, match="names no stage"):
        select_stages("end_to_end,warp_drive", plan)


def test_shape_driven_decoder_runs_the_real_decoder_on_the_same_points():
    from benchmarks.gpu_harness import ShapeDriven, shape_logits

    seen = []

    class Inner:
        name = "inner"

        def decoder_query(self, points, kv):
            seen.append((np.array(points), kv))
            return np.zeros(points.shape[:2] + (1,), np.float32)

        def decoder_kv(self, latents):
            return "kv"

    be = ShapeDriven(Inner())
    pts = np.zeros((2, 3, 3), np.float32)
    pts[:, 1] = [0.0, 0.0, 0.0]
    pts[:, 2] = [1.0, 1.0, 1.0]
    out = be.decoder_query(pts, be.decoder_kv(None))
    assert len(seen) == 1 and seen[0][1] == "kv" and np.array_equal(seen[0][0], pts)
    assert out.shape == (2, 3, 1) and be.decoder_points == 6
    np.testing.assert_array_equal(out, shape_logits(pts))
    assert (out[:, 1] > 0).all() and (out[:, 2] < 0).all()  # the centre is inside, a box corner outside
    assert be.name == "inner+shape"
