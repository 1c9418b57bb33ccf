"""The device check's rehearsal: the same driver as on a lent GPU, tiny sizes, on this CPU.

CUDA stages must say "no GPU" explicitly, CPU stages must really run, every
record must be on disk as soon as its stage ends, and the time budget must stop
later stages from starting.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the device check drives the torch path")

from holopart_infer import native  # noqa: E402
from tests.support import REPO  # noqa: E402
CPU_STAGES = ["environment", "parity_fps", "parity_band", "parity_mcubes", "extract_analytic",
              "fast_torch_parity", "chunk_sweep", "host_round_trips", "demo_end_to_end"]
needs_no_gpu = pytest.mark.skipif(native.cuda_available(), reason="the rehearsal's expectations are for a CPU")


def _run(out: Path, *extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--mode", "rehearsal",
           "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _records(out: Path) -> tuple[dict, list[dict]]:
    whole = json.loads((out / "device_check.json").read_text())
    lines = [json.loads(x) for x in (out / "device_check.jsonl").read_text().splitlines()]
    return whole, lines


@needs_no_gpu
def test_rehearsal_runs_every_stage_and_records_each(tmp_path):
    out = tmp_path / "out"
    proc = _run(out, "--stages", ",".join(CPU_STAGES), "--ckpt-dir", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    whole, lines = _records(out)
    assert [r["stage"] for r in lines] == CPU_STAGES  # one appended line per stage, in order
    assert list(whole["stages"]) == CPU_STAGES and whole["meta"]["mode"] == "rehearsal"
    st = whole["stages"]
    assert st["environment"]["status"] == "ok" and st["environment"]["built_with_cuda"] in (True, False)
    # CUDA-only stages: explicitly skipped for want of a GPU
    # resident extraction vs the host path: compared on the CPU, copies counted only on a GPU
    hrt = st["host_round_trips"]
    assert hrt["status"] == "skipped" and hrt["reason"].startswith("no GPU"), hrt
    assert hrt["host"]["decode_calls"] == hrt["resident"]["decode_calls"] > 0
    assert hrt["resident"]["device_to_host_copies"] is None and hrt["max_surface_distance"] <= 1e-4
    # parity stages: the CPU half ran and measured, the CUDA half was skipped with the reason
    for name in ("parity_fps", "parity_band", "parity_mcubes", "extract_analytic"):
        assert st[name]["status"] == "skipped" and st[name]["reason"].startswith("no GPU"), st[name]
        assert st[name]["cpu"]["median_ms"] > 0, name
    assert st["parity_band"]["refine_points"] > 0 and 0.2 < st["parity_band"]["unknown_fraction"] < 0.4
    assert st["parity_mcubes"]["faces"] > 0
    ea = st["extract_analytic"]
    assert all(ea["closed"]) and ea["capped_max_abs_coord"] == pytest.approx(1.05, abs=1e-4)
    assert all(q > 0 for q in ea["queries_per_part"])
    assert st["fast_torch_parity"]["cpu_fp32_s"] > 0 and st["fast_torch_parity"]["config"] == "tiny"
    sweep = st["chunk_sweep"]
    assert sweep["device"] == "cpu" and str(sweep["best_chunk_points"]) in sweep["by_chunk"]
    assert all(r["queries_per_s"] > 0 for r in sweep["by_chunk"].values())
    assert st["demo_end_to_end"]["parts"] == 5 and "cuda_s" not in st["demo_end_to_end"]
    # the table comes last
    assert proc.stdout.strip().splitlines()[-len(CPU_STAGES) - 1].startswith("stage")


def test_budget_stops_later_stages(tmp_path):
    out = tmp_path / "out"
    # 2 s of budget: the environment stage (estimate 2 s) starts at ~0 s and runs; nothing after it fits
    proc = _run(out, "--budget-s", "2.5", "--stages", "environment,parity_fps,harness")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    whole, lines = _records(out)
    st = whole["stages"]
    assert st["environment"]["status"] == "ok"
    for name in ("parity_fps", "harness"):
        assert st[name]["status"] == "not started" and "time budget" in st[name]["reason"], st[name]
    assert [r["stage"] for r in lines] == ["environment", "parity_fps", "harness"]
    # a budget already spent before the driver started (the build counts): nothing starts
    out2 = tmp_path / "out2"
    import time

    proc = _run(out2, "--budget-s", "100", "--started-at", str(time.time() - 99), "--stages", "environment")
    assert json.loads((out2 / "device_check.json").read_text())["stages"]["environment"]["status"] == "not started"


@needs_no_gpu
def test_shell_script_rehearsal(tmp_path):
    """benchmarks/device_check.sh in rehearsal mode: same entry point, no build, records under $OUT."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), CHECK_MODE="rehearsal", BUDGET_S="120",
               CHECK_STAGES="parity_fps", PYTHON=sys.executable, CKPT_DIR=str(tmp_path / "ckpt"),
               SITE_DIR=str(tmp_path / "site"))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    whole = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert list(whole["stages"]) == ["parity_fps"]
    assert whole["stages"]["parity_fps"]["reason"].startswith("no GPU")
    assert whole["stages"]["parity_fps"]["cpu"]["median_ms"] > 0
    assert len(list((tmp_path / "out").iterdir())) <= 8
