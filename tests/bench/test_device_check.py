"""The device check's rehearsal: the same driver as on a lent GPU, tiny sizes, on this CPU.

CUDA stages must say "no GPU" explicitly, CPU stages must really run, every
record must be on disk as soon as its stage ends, the stages must run most
valuable first whatever order they are asked in, the time budget must stop
later stages from starting, and a failed checkpoint writer or CUDA build must
be recorded and survived.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the device check drives the torch path")

from holopart_infer.extraction import native  # noqa: E402
from tests.support import REPO  # noqa: E402

#: the order of value the issue asks for: environment and build, the end to end (with the
#: DiT and decoder against their floors), parity at real size, then the rest
ORDER = ["environment", "harness_e2e", "parity_fps", "parity_band", "parity_mcubes", "extract_analytic",
         "fast_torch_parity", "cuda_tests", "host_round_trips", "chunk_sweep", "demo_end_to_end", "harness_rest"]
CPU_STAGES = [n for n in ORDER if not n.startswith(("harness", "cuda_tests"))]
needs_no_gpu = pytest.mark.skipif(native.cuda_available(), reason="the rehearsal's expectations are for a CPU")


def _records(out: Path) -> tuple[dict, list[dict]]:
    whole = json.loads((out / "device_check.json").read_text())
    lines = [json.loads(x) for x in (out / "device_check.jsonl").read_text().splitlines()]
    return whole, lines


def test_stage_order_is_by_value():
    from benchmarks import device_check

    assert device_check.STAGES == ORDER
    # the harness's first call: the end to end first, then the DiT and decoder against floors
    for mode in ("device", "rehearsal"):
        first = device_check.SIZES[mode]["harness_e2e"].split(",")
        assert first[:2] == ["ceilings", "end_to_end"] and "decoder_query" in first
        assert any(x.startswith("dit_forward_b16") for x in first)


def _shell(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/device_check.sh in rehearsal mode (no build), records under tmp_path/out."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), CHECK_MODE="rehearsal", BUDGET_S="900",
               PYTHON=sys.executable, CKPT_DIR=str(tmp_path / "ckpt"), SITE_DIR=str(tmp_path / "site"), **env)
    return subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@needs_no_gpu
def test_rehearsal_runs_every_stage_and_records_each(tmp_path):
    """Through the shell script, as on the device: preflight, the background checkpoint writer,
    the stages asked in reverse and run (and recorded) in the order of value all the same."""
    out = tmp_path / "out"
    proc = _shell(tmp_path, CHECK_STAGES=",".join(reversed(CPU_STAGES)))
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
    # the background writer's checkpoint, waited for by the first stage that needed it; every
    # record says whether the writer ran beside it, and none after that stage can say yes
    ck = st["fast_torch_parity"]["checkpoint"]
    assert ck["background_writer"] == "done" and ck["path"].endswith("random_tiny") and "written_by_driver" not in ck
    assert (tmp_path / "ckpt" / "random_tiny.done").is_file() and not (tmp_path / "ckpt" / "random_tiny.writing").exists()
    assert all(isinstance(r["ckpt_writer_running"], bool) for r in st.values())
    later = CPU_STAGES[CPU_STAGES.index("fast_torch_parity"):]
    assert not any(st[n]["ckpt_writer_running"] for n in later)
    assert whole["meta"]["build"]["result"] == "none" and whole["meta"]["notes"] == []
    assert len(list(out.iterdir())) <= 8
    # the table comes last
    assert proc.stdout.strip().splitlines()[-len(CPU_STAGES) - 1].startswith("stage")


def test_budget_stops_later_stages(tmp_path, capsys):
    """In this process (the driver's own imports are already paid for here)."""
    from benchmarks import device_check

    out = tmp_path / "out"
    # 12 s of a 100 s budget left: the environment stage (estimate 3 s) runs; the end to end
    # (100 s) and the rest do not start, and are recorded in the order of value
    rc = device_check.main(["--mode", "rehearsal", "--out", str(out), "--budget-s", "100",
                            "--started-at", str(time.time() - 88),
                            "--stages", "harness_rest,demo_end_to_end,environment,harness_e2e"])
    assert rc == 0, capsys.readouterr().out[-4000:]
    whole, lines = _records(out)
    st = whole["stages"]
    assert st["environment"]["status"] == "ok"
    for name in ("harness_e2e", "demo_end_to_end", "harness_rest"):
        assert st[name]["status"] == "not started" and "time budget" in st[name]["reason"], st[name]
    assert [r["stage"] for r in lines] == ["environment", "harness_e2e", "demo_end_to_end", "harness_rest"]
    # a budget already spent before the driver started (the build counts): nothing starts,
    # and every stage is recorded, in the order of value
    out2 = tmp_path / "out2"
    rc = device_check.main(["--mode", "rehearsal", "--out", str(out2), "--budget-s", "100",
                            "--started-at", str(time.time() - 99.5)])
    assert rc == 0
    whole, lines = _records(out2)
    assert [r["stage"] for r in lines] == ORDER
    assert all(r["status"] == "not started" for r in lines)
    assert whole["meta"]["build"]["result"] == "none"
    table = capsys.readouterr().out.strip().splitlines()
    assert [row.split()[0] for row in table[-len(ORDER):]] == ORDER  # the table last, in that order


@needs_no_gpu
def test_shell_rehearsal_survives_writer_and_cuda_build_failures(tmp_path):
    """benchmarks/device_check.sh in rehearsal mode with both simulated faults: the background
    checkpoint writer fails and the CUDA build fails. The run goes on, records both, and says so."""
    out = tmp_path / "out"
    env = dict(CHECK_STAGES="fast_torch_parity,parity_fps,environment", CHECK_SIMULATE="ckpt_writer,cuda_build",
               HOLOPART_COMMIT="0123456789abcdef0123456789abcdef01234567")
    proc = _shell(tmp_path, **env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]  # the build failure is a failure; the run still finished
    whole = json.loads((out / "device_check.json").read_text())
    st, meta = whole["stages"], whole["meta"]
    assert list(st) == ["environment", "parity_fps", "fast_torch_parity"]  # every stage ran, in order
    assert meta["commit"] == env["HOLOPART_COMMIT"]  # from the variable, not from .git
    assert meta["simulated"] == ["ckpt_writer", "cuda_build"]
    # the CUDA build failure: recorded by the environment stage, kernel stages skipped for it
    # (their CPU halves still measured), the torch stage ran
    assert meta["build"]["result"] == "cpu_fallback"
    assert st["environment"]["status"] == "fail" and "CUDA build failed" in st["environment"]["reason"]
    assert st["parity_fps"]["status"] == "skipped"
    assert st["parity_fps"]["reason"].startswith("CUDA kernels not built: the CUDA build failed (simulated)")
    assert st["parity_fps"]["cpu"]["median_ms"] > 0
    ftp = st["fast_torch_parity"]
    assert ftp["reason"] == "no GPU (torch sees no CUDA device)" and ftp["cpu_fp32_s"] > 0
    # the writer's failure: recorded, not waited for, the checkpoint written in the foreground
    ck = ftp["checkpoint"]
    assert ck["background_writer"] == "failed" and ck["waited_s"] < 30, ck
    assert ck["path"].endswith("random_tiny_fg") and Path(ck["path"], "model_index.json").is_file()
    assert (tmp_path / "ckpt" / "random_tiny.failed").read_text().startswith("exit status")
    assert not (tmp_path / "ckpt" / "random_tiny.writing").exists()
    # and it says so: the preflight first, both notes above the table, the table last
    assert "preflight: nvcc:" in proc.stdout and "preflight: site-packages:" in proc.stdout
    assert "simulated: the CUDA build failed" in proc.stdout
    notes = [x for x in proc.stdout.splitlines() if x.startswith("NOTE: ")]
    assert len(notes) == 2 and "CUDA build failed" in notes[0] and "checkpoint writer failed" in notes[1]
    assert proc.stdout.strip().splitlines()[-4].startswith("stage")
    assert "pybind11:" in (out / "build.log").read_text()
    assert len(list(out.iterdir())) <= 8


def _check(tmp_path: Path, *extra: str):
    from benchmarks import device_check

    args = device_check.parse_args(["--mode", "rehearsal", "--out", str(tmp_path / "out"),
                                    "--ckpt-dir", str(tmp_path / "ckpt"), *extra])
    (tmp_path / "ckpt").mkdir()
    return device_check.Check(args), tmp_path / "ckpt" / "random_tiny"


def test_writer_that_vanished_is_not_waited_for(tmp_path):
    """A writer killed outright leaves NAME.writing naming a dead process: no wait, a fresh write."""
    check, ck = _check(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    Path(f"{ck}.writing").write_text(f"{gone.pid}\n")
    assert check.writer.state() == "gone"
    t0 = time.time()
    path = check.checkpoint()
    assert time.time() - t0 < 30 and path.name == "random_tiny_fg" and (path / "model_index.json").is_file()
    ev = check.meta["checkpoint"]
    assert ev["background_writer"] == "gone" and "vanished" in ev["summary"] and check.notes == [ev["summary"]]


def test_writer_wait_is_capped(tmp_path):
    """A writer still running after --ckpt-wait-s is left alone; the driver writes its own."""
    check, ck = _check(tmp_path, "--ckpt-wait-s", "1")
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Path(f"{ck}.writing").write_text(str(stuck.pid))
        assert check.writer.state() == "running"
        assert check.writer_running()
        path = check.checkpoint()
        ev = check.meta["checkpoint"]
        assert ev["background_writer"] == "timeout" and 1 <= ev["waited_s"] < 10, ev
        assert path.name == "random_tiny_fg" and "still running after the 1 s cap" in ev["summary"]
    finally:
        stuck.kill()
        stuck.wait()
    # the writer's own verdicts, read from its files
    Path(f"{ck}.writing").unlink()
    assert check.writer.state() == "absent"
    Path(f"{ck}.failed").write_text("exit status 137")
    assert check.writer.state() == "failed"
    Path(f"{ck}.done").write_text("ok")
    assert check.writer.state() == "done"


def test_call_prints_the_one_call_with_this_commit():
    """`device_check.sh --call`: the runbook's one call, HOLOPART_COMMIT set to this checkout's sha."""
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if sha.returncode != 0:
        pytest.skip("no git checkout here")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--call"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f'run(command="HOLOPART_COMMIT={sha.stdout.strip()} bash '
                                   f'benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)')
