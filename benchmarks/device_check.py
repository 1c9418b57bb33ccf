#!/usr/bin/env python
"""The one-call device check: the end-to-end figure first, then floors, parity, the rest.

    # on a lent GPU (benchmarks/device_check.sh builds first, then runs this):
    python benchmarks/device_check.py --mode device --out $OUT --budget-s 500 --started-at $T0 --build cuda
    # the same driver on a CPU, tiny sizes (tests/bench/test_device_check.py runs it):
    python benchmarks/device_check.py --mode rehearsal --out /tmp/dc

Stages run in a fixed order, most valuable first (``STAGES``): the environment
and the build, the harness's end to end (full-size 8-part object, shape-driven,
the reference in the same run) with the DiT and decoder against their floors,
the kernels' CPU/CUDA parity at real size, the fast torch path's parity, then
the rest. ``--stages`` picks a subset; the order stays. Each stage's record goes
to ``device_check.jsonl`` (one line per stage, appended, flushed and fsynced)
and to ``device_check.json`` (rewritten atomically) the moment it is measured,
so a command killed at its limit still returns every finished stage. Before a
stage starts, the time used since ``--started-at`` (the build counts) plus the
stage's estimate is checked against ``--budget-s``; a stage that would not fit
is recorded as ``not started``. A stage that needs the CUDA kernels where they
are unusable (no GPU, or the CUDA build failed and the script rebuilt without
CUDA: ``--build cpu_fallback``) is ``skipped`` with the reason; one that needs
only torch on a GPU still runs then. A stage's CPU half, where it has one,
always runs; ``ckpt_writer_running`` in its record says whether the background
checkpoint writer was running meanwhile (its figures then share the CPU with
it). A failing stage is ``error`` with its traceback; the run goes on. A short
table is printed last. Exit code: 0 when no stage is ``error``/``fail``.

Files written under ``--out`` (at most 8 with the shell script's build.log and
ckpt.log): device_check.json, device_check.jsonl, pytest.log, harness.json
(both harness calls: the second adds to the first with ``--merge``),
harness.log.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# Sizes per mode. "device": the real sizes of the issue; "rehearsal": tiny, CPU.
SIZES: dict[str, dict[str, Any]] = {
    "device": dict(fps=(20480, 2048), band_cells=254, mc_points=513, depth=9, ckpt_config="full",
                   dit_tokens=2048, decoder_points=4096, encoder_points=20480, demo_steps=50, demo_depth=8,
                   chunks=(8192, 16384, 32768, 65536, 131072), sweep_parts=8, sweep_points=262144,
                   harness=["--config", "full", "--reference", "--repeats", "5", "--warmup", "2"],
                   harness_e2e="ceilings,end_to_end,dit_forward_b16,guided_step_b8,decoder_query",
                   harness_rest="decoder_kv,part_encoder,dit_forward_b2,dit_forward_b8,guided_step_b8_cuda_graph,"
                                "marching_cubes,guided_step_b8_compile", ckpt_wait_s=240),
    "rehearsal": dict(fps=(2048, 128), band_cells=30, mc_points=33, depth=6, ckpt_config="tiny",
                      dit_tokens=32, decoder_points=256, encoder_points=512, demo_steps=1, demo_depth=6,
                      chunks=(1024, 4096), sweep_parts=2, sweep_points=4096,
                      harness=["--config", "tiny", "--reference", "--repeats", "2", "--warmup", "1",
                               "--steps", "2", "--parts", "2", "--query-points", "1024"],
                      harness_e2e="ceilings,end_to_end,dit_forward_b16,guided_step_b2,decoder_query",
                      harness_rest="decoder_kv,part_encoder,dit_forward_b2,dit_forward_b8,guided_step_b2_cuda_graph,"
                                   "marching_cubes,guided_step_b2_compile", ckpt_wait_s=60),
}

#: estimated seconds per stage, in the order the stages run (most valuable first), for the
#: budget. device: an H200 host with 16 cores, the CPU halves from the real-size CPU halves
#: measured on the developers' 2-core machine (e.g. parity_band 10 s, extract_analytic 17 s
#: with nothing else running; 45 s for parity_band while the checkpoint writer ran) and the
#: demo's CPU half (165 s on 2 loaded cores). The harness stages: loading the full checkpoint
#: (~40 s) plus their first sub-stage (the harness checks its own budget per sub-stage).
#: rehearsal: the stages' wall times in a whole rehearsal on the loaded 2-core machine, rounded up.
ESTIMATE_S: dict[str, dict[str, float]] = {
    "environment": {"device": 5, "rehearsal": 3},
    "harness_e2e": {"device": 200, "rehearsal": 100},   # load + ceilings + end to end
    "parity_fps": {"device": 5, "rehearsal": 1},
    "parity_band": {"device": 20, "rehearsal": 1},
    "parity_mcubes": {"device": 10, "rehearsal": 1},
    "extract_analytic": {"device": 35, "rehearsal": 3},
    "fast_torch_parity": {"device": 90, "rehearsal": 10},  # the driver loads the full networks here
    "cuda_tests": {"device": 90, "rehearsal": 1},  # torch.compile of the tiny step included
    "host_round_trips": {"device": 30, "rehearsal": 20},
    "chunk_sweep": {"device": 30, "rehearsal": 10},
    "demo_end_to_end": {"device": 90, "rehearsal": 45},
    "harness_rest": {"device": 60, "rehearsal": 45},   # load + the decoder kv pass
}
STAGES = list(ESTIMATE_S)
#: statuses that make the exit code 1
FAILED = ("error", "fail")
#: what device_check.sh says about the build (--build)
BUILDS = ("cuda", "cpu_fallback", "failed", "none")
#: fault simulations the rehearsal tests (CHECK_SIMULATE, comma-separated; device_check.sh)
SIMULATIONS = ("ckpt_writer", "ckpt_writer_vanish", "cuda_build")


class Skip(Exception):
    """The stage cannot run here; ``partial`` keeps what its CPU half measured."""

    def __init__(self, reason: str, partial: dict | None = None):
        super().__init__(reason)
        self.partial = partial or {}


class Fail(Exception):
    """The stage ran and its check failed; ``record`` keeps the figures."""

    def __init__(self, reason: str, record: dict | None = None):
        super().__init__(reason)
        self.record = record or {}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (the project's one atomic writer)."""
    from holopart_infer import fsafe

    fsafe.atomic_write(Path(path), json.dumps(obj, indent=1, default=str).encode("utf-8"))


def git_commit() -> str:
    """The commit measured: ``HOLOPART_COMMIT`` (the device copy has no .git, so the run
    command sets it), else ``git rev-parse HEAD``, else "unknown"."""
    env = os.environ.get("HOLOPART_COMMIT", "").strip()
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def timed(fn: Callable[[], Any], repeats: int = 3, sync: Callable[[], None] | None = None) -> tuple[Any, dict]:
    """(last result, {median_ms, spread_ms, samples_ms}) of ``fn`` after one warm-up call."""
    out = fn()
    samples = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        out = fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return out, {"median_ms": round(statistics.median(s), 3), "spread_ms": round(q[2] - q[0], 3),
                 "samples_ms": [round(x, 3) for x in s]}


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: kill(0) said it exists
    return state not in ("Z", "X")


class CheckpointWriter:
    """The background checkpoint writer device_check.sh starts, seen through its files.

    ``NAME.writing`` holds the writer's process id while it runs; on exit the
    writer leaves ``NAME.done`` (success) or ``NAME.failed`` (its exit status) and
    removes ``.writing``. A writer killed outright leaves ``.writing`` naming a
    process that is gone.
    """

    def __init__(self, root: Path, name: str):
        self.root, self.name = Path(root), name
        self.writing, self.done = self.root / f"{name}.writing", self.root / f"{name}.done"
        self.failed = self.root / f"{name}.failed"

    def state(self) -> str:
        """'done', 'failed', 'running', 'gone' (died without a word) or 'absent' (none started)."""
        if self.done.exists():
            return "done"
        if self.failed.exists():
            return "failed"
        try:
            text = self.writing.read_text().strip()
        except FileNotFoundError:
            # .writing removed after .failed/.done were written: look once more
            return "done" if self.done.exists() else "failed" if self.failed.exists() else "absent"
        if not text:
            return "running"  # the script creates it and writes the id right after
        try:
            return "running" if _pid_alive(int(text.split()[0])) else "gone"
        except ValueError:
            return "gone"

    def wait(self, cap_s: float, poll_s: float = 0.5) -> tuple[str, float]:
        """Wait while the writer runs, at most ``cap_s`` seconds: (final state or 'timeout', waited s)."""
        t0 = time.time()
        st = self.state()
        while st == "running":
            if time.time() - t0 >= cap_s:
                return "timeout", time.time() - t0
            time.sleep(poll_s)
            st = self.state()
        return st, time.time() - t0


class Check:
    def __init__(self, args: argparse.Namespace):
        from holopart_infer.extraction import native

        self.args = args
        self.mode = args.mode
        self.size = SIZES[self.mode]
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started_at = args.started_at if args.started_at is not None else time.time()
        self.budget = args.budget_s
        self.build = args.build
        self.simulated = [x for x in (args.simulate or "").split(",") if x]
        # the CUDA kernels (cpp_ext's _cuda) and torch on a GPU are separate: after a failed
        # CUDA build the torch stages still run on the GPU
        self.kernels = native.cuda_available() and self.build not in ("cpu_fallback", "failed")
        try:
            import torch

            self.gpu = bool(torch.cuda.is_available())
        except ImportError:
            self.gpu = False
        self.cuda = self.kernels and self.gpu  # stages that need both
        self.stages: dict[str, dict] = {}
        self.jsonl = self.out / "device_check.jsonl"
        self.json = self.out / "device_check.json"
        self.jsonl.write_text("")
        for stale in ("harness.json", "harness.log", "pytest.log"):  # an earlier run's, in a reused --out
            (self.out / stale).unlink(missing_ok=True)
        self.meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "commit": git_commit(), "mode": self.mode, "command": " ".join(sys.argv),
                     "budget_s": self.budget, "started_at": self.started_at, "python": platform.python_version(),
                     "host": platform.node(), "cuda_kernels": native.cuda_status(), "build": self.build_record(),
                     "torch_sees_gpu": self.gpu, "simulated": self.simulated}
        self.notes: list[str] = []
        if self.build in ("cpu_fallback", "failed"):
            self.notes.append(self.meta["build"]["summary"])
        self._ckpt: Path | None = None
        self._ckpt_event: dict | None = None
        self._nets = None
        root = Path(args.ckpt_dir) if args.ckpt_dir else None
        self.writer = CheckpointWriter(root, f"random_{self.size['ckpt_config']}") if root else None

    def build_record(self) -> dict:
        """What device_check.sh said about the build, with build.log's last lines when it failed."""
        sim = " (simulated: CHECK_SIMULATE=cuda_build)" if "cuda_build" in self.simulated else ""
        summary = {"cuda": "cpp_ext built with the CUDA kernels (sm_90)",
                   "cpu_fallback": f"the CUDA build failed{sim}; cpp_ext rebuilt without CUDA: the stages that "
                                   f"need the CUDA kernels are skipped, the torch stages run (build.log)",
                   "failed": f"the CUDA build failed{sim} and so did the rebuild without CUDA (build.log)",
                   "none": "nothing built by this run (the installed build is used)"}[self.build]
        rec: dict[str, Any] = {"result": self.build, "summary": summary}
        log = self.out / "build.log"
        if self.build in ("cpu_fallback", "failed") and log.is_file():
            lines = log.read_text(errors="replace").splitlines()
            rec["log_errors"] = [x[:300] for x in lines if "error" in x.lower()][-10:]
        return rec

    # -- bookkeeping -----------------------------------------------------------------
    def put(self, name: str, rec: dict) -> None:
        rec = {"stage": name, **rec}
        self.stages[name] = rec
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(self.json, {"meta": self.meta, "stages": self.stages})

    def used_s(self) -> float:
        return time.time() - self.started_at

    def left_s(self) -> float | None:
        return None if self.budget is None else self.budget - self.used_s()

    def writer_running(self) -> bool:
        return self.writer is not None and self.writer.state() == "running"

    def run_stage(self, name: str) -> None:
        est = ESTIMATE_S[name][self.mode]
        if self.budget is not None and self.used_s() + est > self.budget:
            self.put(name, {"status": "not started",
                            "reason": f"time budget: {self.used_s():.0f} s used + ~{est:.0f} s estimated > "
                                      f"{self.budget:.0f} s"})
            print(f"[check] {name}: not started", flush=True)
            return
        writer_before = self.writer_running()
        t0 = time.perf_counter()
        try:
            rec = getattr(self, f"stage_{name}")()
            rec.setdefault("status", "ok")
        except Skip as e:
            rec = {**e.partial, "status": "skipped", "reason": str(e)}
        except Fail as e:
            rec = {**e.record, "status": "fail", "reason": str(e)}
        except Exception as e:  # keep going: the window is expensive
            rec = {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        rec["estimate_s"] = est
        event, self._ckpt_event = self._ckpt_event, None  # set when this stage resolved the checkpoint
        if event is not None:
            rec["checkpoint"] = event
        if self.writer is not None:
            # the 9 GiB writer shares the CPU: figures measured beside it say so. A stage that
            # waited for the writer to end measured after the wait: only a writer still running
            # at its end (one left behind at the cap) counts then
            waited = event is not None and event.get("background_writer") in ("done", "failed", "gone")
            rec["ckpt_writer_running"] = (writer_before and not waited) or self.writer_running()
        self.put(name, rec)
        print(f"[check] {name}: {rec['status']} in {rec['wall_s']} s"
              + (f" ({rec.get('reason')})" if rec["status"] != "ok" else ""), flush=True)

    def need_kernels(self, partial: dict | None = None) -> None:
        """Skip (keeping ``partial``) unless the CUDA kernels and a GPU are usable."""
        if self.cuda:
            return
        from holopart_infer.extraction import native

        if self.build in ("cpu_fallback", "failed"):
            raise Skip("CUDA kernels not built: the CUDA build failed"
                       + (" (simulated)" if "cuda_build" in self.simulated else "")
                       + "; rebuilt without CUDA (build.log)", partial)
        raise Skip(f"no GPU ({native.cuda_status()})", partial)

    def need_gpu(self, partial: dict | None = None) -> None:
        """Skip (keeping ``partial``) unless torch sees a GPU (the CUDA kernels are not needed)."""
        if not self.gpu:
            raise Skip("no GPU (torch sees no CUDA device)", partial)

    # -- shared inputs -----------------------------------------------------------------
    def checkpoint(self) -> Path:
        """The random checkpoint of this mode's config.

        With ``--ckpt-dir`` it is the one device_check.sh started writing in the
        background while the extension built: waited for while its writer runs, at
        most ``--ckpt-wait-s``. A writer that failed, vanished or overran the cap is
        recorded (``checkpoint`` in the stage's record, ``meta.checkpoint``, a note
        above the table) and a fresh checkpoint is written in the foreground beside it.
        """
        if self._ckpt is not None:
            return self._ckpt
        from holopart_infer.export.random_checkpoint import write_random_checkpoint

        cfg = self.size["ckpt_config"]
        root = Path(self.args.ckpt_dir or tempfile.mkdtemp(prefix="holopart_check_"))
        ckpt = root / f"random_{cfg}"
        event: dict[str, Any] = {}
        if self.writer is not None:
            cap = self.args.ckpt_wait_s if self.args.ckpt_wait_s is not None else self.size["ckpt_wait_s"]
            state, waited = self.writer.wait(cap)
            event = {"background_writer": state, "waited_s": round(waited, 1)}
            if state in ("failed", "gone", "timeout"):
                why = {"failed": lambda: "failed (" + self.writer.failed.read_text().strip() + ")",
                       "gone": lambda: "vanished without a word (killed?)",
                       "timeout": lambda: f"still running after the {cap:.0f} s cap"}[state]()
                log = self.out / "ckpt.log"
                if log.is_file():
                    event["ckpt_log_tail"] = log.read_text(errors="replace").strip().splitlines()[-5:]
                ckpt = root / f"random_{cfg}_fg"
                t0 = time.perf_counter()
                write_random_checkpoint(ckpt, cfg, seed=0, dtype="fp16", overwrite=True)
                event["foreground_write_s"] = round(time.perf_counter() - t0, 1)
                event["summary"] = (f"the background checkpoint writer {why}; stopped waiting after "
                                    f"{waited:.0f} s and wrote {ckpt.name} in the foreground in "
                                    f"{event['foreground_write_s']:.0f} s")
                self.notes.append(event["summary"])
                print(f"[check] checkpoint: {event['summary']}", flush=True)
        if not (ckpt / "model_index.json").is_file():
            write_random_checkpoint(ckpt, cfg, seed=0, dtype="fp16", overwrite=True)
            event["written_by_driver"] = True
        event["path"] = str(ckpt)
        self.meta["checkpoint"] = event
        self._ckpt_event = event
        self._ckpt = ckpt
        return ckpt

    # -- stages ------------------------------------------------------------------------
    def stage_environment(self) -> dict:
        from holopart_infer.extraction import native

        rec: dict[str, Any] = {"cuda_kernels": native.cuda_status(), "built_with_cuda": native.built_with_cuda(),
                               "numpy": np.__version__}
        try:
            import torch

            rec.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                       torch_sees_gpu=torch.cuda.is_available())
            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(0)
                rec.update(gpu=p.name, capability=f"{p.major}.{p.minor}",
                           gpu_memory_gib=round(p.total_memory / 2**30, 1))
        except ImportError as e:
            rec["torch"] = f"not importable: {e}"
        for mod in ("trimesh", "fast_simplification", "onnxruntime", "cupy"):
            try:
                rec[mod] = __import__(mod).__version__
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                rec[mod] = f"missing ({type(e).__name__})"
        self.meta.update(gpu=rec.get("gpu"), torch=rec.get("torch"))
        rec["build"] = self.meta["build"]
        if self.build in ("cpu_fallback", "failed"):
            # the run goes on (the torch stages need no kernels); the failure is this stage's
            raise Fail(self.meta["build"]["summary"], rec)
        if self.mode == "device" and not (self.gpu and native.cuda_available()):
            raise Fail(f"device mode but the CUDA kernels are unusable: {native.cuda_status()}"
                       + ("" if self.gpu else "; torch sees no GPU either"), rec)
        return rec

    def stage_cuda_tests(self) -> dict:
        """``pytest -m requires_cuda``: the kernels' tests (they skip themselves without the
        kernels), the CUDA-graph and torch.compile steps against eager."""
        self.need_gpu()
        log = self.out / "pytest.log"
        timeout = max(30, min(240, int(self.left_s() or 240) - 60))
        # no -x: one failing kernel test must not hide the CUDA-graph and compile results
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-m", "requires_cuda",
               "tests"]
        with open(log, "w") as f:
            try:
                proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        rec = {"returncode": rc, "summary": tail[0], "timeout_s": timeout}
        if rc not in (0,):
            raise Fail(f"CUDA tests: {tail[0]} (pytest.log)", rec)
        return rec

    def stage_parity_fps(self) -> dict:
        from holopart_infer.extraction import native

        n, k = self.size["fps"]
        xyz = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
        cpu, t_cpu = timed(lambda: native.farthest_point_sampling(xyz, k, device="cpu"), 2)
        rec = {"n": n, "k": k, "cpu": t_cpu}
        self.need_kernels(rec)
        gpu, t_gpu = timed(lambda: native.farthest_point_sampling(xyz, k, device="cuda"), 3)
        rec.update(cuda=t_gpu, identical=bool(np.array_equal(cpu, gpu)))
        if not rec["identical"]:
            raise Fail(f"FPS indices differ at {int((cpu != gpu).sum())} of {k}", rec)
        return rec

    def stage_parity_band(self) -> dict:
        from holopart_infer.extraction import native

        c = self.size["band_cells"]
        rng = np.random.default_rng(1)
        ax = np.linspace(-1.05, 1.05, c + 1, dtype=np.float32)
        x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
        grid = (30.0 * (0.6 - np.sqrt(x * x + y * y + z * z))).astype(np.float32)
        grid += rng.normal(scale=0.3, size=grid.shape).astype(np.float32)
        grid[rng.random(grid.shape) < 0.3] = np.nan  # unknown cells, as between extraction levels
        grid[::2, ::2, ::2] = np.nan_to_num(grid[::2, ::2, ::2])  # coarse lattice known

        def run(dev):
            band = native.band_cells(grid, 0.95, device=dev)
            dil = native.dilate_cells(band, 1, device=dev)
            ref = native.refine_points(dil, grid, device=dev)
            return band, dil, ref

        cpu, t_cpu = timed(lambda: run("cpu"), 2)
        rec = {"cells": c, "unknown_fraction": float(np.isnan(grid).mean()), "band_cells": int(cpu[0].sum()),
               "refine_points": int(len(cpu[2])), "cpu": t_cpu}
        self.need_kernels(rec)
        gpu, t_gpu = timed(lambda: run("cuda"), 3)
        same = [bool(np.array_equal(a, b)) for a, b in zip(cpu, gpu)]
        rec.update(cuda=t_gpu, identical={"band": same[0], "dilate": same[1], "refine": same[2]})
        if not all(same):
            raise Fail(f"band/dilate/refine differ between CPU and CUDA: {rec['identical']}", rec)
        return rec

    def stage_parity_mcubes(self) -> dict:
        from holopart_infer.extraction.mcubes import marching_cubes

        n = self.size["mc_points"]
        ax = np.linspace(-1.05, 1.05, n, dtype=np.float32)
        x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
        vol = np.ascontiguousarray(0.7 - np.sqrt(x * x + y * y + z * z)
                                   + 0.05 * np.sin(9 * x) * np.sin(7 * y) * np.sin(8 * z), dtype=np.float32)
        cpu, t_cpu = timed(lambda: marching_cubes(vol, 0.0, device="cpu"), 2)
        rec = {"grid_points": n, "vertices": int(len(cpu[0])), "faces": int(len(cpu[1])), "cpu": t_cpu,
               "bytes_floor": int(vol.nbytes + cpu[0].nbytes + cpu[1].nbytes)}
        self.need_kernels(rec)
        gpu, t_gpu = timed(lambda: marching_cubes(vol, 0.0, device="cuda"), 3)
        rec.update(cuda=t_gpu, vertices_identical=bool(np.array_equal(cpu[0], gpu[0])),
                   faces_identical=bool(np.array_equal(cpu[1], gpu[1])),
                   normals_max_abs_diff=float(np.abs(cpu[2] - gpu[2]).max()) if len(cpu[2]) else 0.0)
        if not (rec["vertices_identical"] and rec["faces_identical"]):
            raise Fail("marching cubes vertices/faces differ between CPU and CUDA", rec)
        return rec

    def stage_extract_analytic(self) -> dict:
        """Depth-9 extraction of an analytic field: part 0 is cut by the box (capped), part 1 is inside."""
        from holopart_infer.postprocess.cleanup import edge_manifold
        from holopart_infer.extraction.extract import extract_meshes

        centres = np.array([[0.8, 0.0, 0.0], [-0.1, 0.1, 0.0]], dtype=np.float32)
        radii = np.array([0.5, 0.4], dtype=np.float32)

        def decode(pts):
            return [40.0 * (radii[p] - np.linalg.norm(q - centres[p], axis=1)) for p, q in enumerate(pts)]

        depth = self.size["depth"]
        (cpu, st), t_cpu = timed(lambda: extract_meshes(decode, 2, depth=depth, device="cpu",
                                                        chunk_points=1 << 20), 1)
        rec = {"depth": depth, "queries_per_part": [int(sum(q)) for q in st.queries_per_part],
               "closed": [bool(edge_manifold(m.faces)) for m in cpu], "cpu": t_cpu,
               "capped_max_abs_coord": float(np.abs(cpu[0].vertices).max())}
        if not all(rec["closed"]):
            raise Fail("a CPU-extracted mesh is not closed", rec)
        self.need_kernels(rec)
        (gpu, _), t_gpu = timed(lambda: extract_meshes(decode, 2, depth=depth, device="cuda",
                                                       chunk_points=1 << 20), 2)
        same = [bool(np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces))
                for a, b in zip(cpu, gpu)]
        rec.update(cuda=t_gpu, identical=same)
        if not all(same):
            raise Fail("CPU and CUDA extraction give different meshes", rec)
        return rec

    def networks(self):
        if self._nets is None:
            from holopart_infer.networks.load import load_networks

            self._nets = load_networks(self.checkpoint(), precision="fp32", device="cpu")
        return self._nets

    def stage_fast_torch_parity(self) -> dict:
        """Fast torch path on CUDA (fp32 with TF32 off; bf16) against CPU fp32, one part, real token counts."""
        import torch

        from holopart_infer.engines.pytorch import FastTorchBackend

        nets = self.networks()
        T, Q, N = self.size["dit_tokens"], self.size["decoder_points"], self.size["encoder_points"]
        K = nets.part_encoder.cfg.num_tokens
        tc = nets.transformer.cfg
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, T, tc.in_channels, generator=g)
        pc = torch.randn(1, K, tc.cross_attention_dim, generator=g)
        wc = torch.randn(1, K, tc.cross_attention_2_dim, generator=g)
        pts = (torch.rand(1, Q, 3, generator=g) * 2.1 - 1.05)
        enc_in = (torch.randn(1, K, 6, generator=g), torch.randn(1, N, 7, generator=g),
                  torch.randn(1, K, 6, generator=g), torch.randn(1, N, 6, generator=g))

        def outputs(be):
            with torch.inference_mode():
                step = np.asarray(be.guided_step(x, 500.0, 0.02, 3.5, pc, wc), dtype=np.float32)
                kv = be.decoder_kv(x)
                logits = np.asarray(be.decoder_query(pts, kv), dtype=np.float32)
                w, p = be.encode(*enc_in)
            return {"guided_step": step, "decoder_query": logits,
                    "encoder": np.concatenate([np.asarray(w, np.float32).ravel(), np.asarray(p, np.float32).ravel()])}

        t0 = time.perf_counter()
        ref = outputs(FastTorchBackend(nets, "cpu", "fp32"))
        rec: dict[str, Any] = {"config": self.size["ckpt_config"], "tokens": T, "decoder_points": Q,
                               "cpu_fp32_s": round(time.perf_counter() - t0, 2)}
        self.need_gpu(rec)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        limits = {"fp32": 1e-4, "bf16": 5e-2}
        bad = []
        for prec, tol in limits.items():
            got = outputs(FastTorchBackend(nets, "cuda", prec))
            errs = {k: float(np.abs(got[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), 1e-12)) for k in ref}
            rec[f"cuda_{prec}_rel_err"] = errs
            bad += [f"{prec} {k} {e:.2e} > {tol:g}" for k, e in errs.items() if not e <= tol]
            torch.cuda.empty_cache()
        if bad:
            raise Fail("; ".join(bad), rec)
        return rec

    def stage_chunk_sweep(self) -> dict:
        """Decoder points per part per call vs. queries/s, the pipeline's way (host points in, host logits out)."""
        import torch

        from holopart_infer.engines.pytorch import FastTorchBackend

        nets = self.networks()
        dev = "cuda" if self.gpu else "cpu"  # torch only: runs after a failed CUDA build too
        be = FastTorchBackend(nets, dev, "bf16" if self.gpu else "fp32")  # load()'s defaults
        P, total = self.size["sweep_parts"], self.size["sweep_points"]
        T = self.size["dit_tokens"]
        lat = torch.randn(P, T, nets.transformer.cfg.in_channels, generator=torch.Generator().manual_seed(3))
        kv = be.decoder_kv(lat)
        pts = np.random.default_rng(4).uniform(-1.05, 1.05, size=(P, total, 3)).astype(np.float32)
        sync = torch.cuda.synchronize if dev == "cuda" else None
        rows = {}
        for chunk in self.size["chunks"]:
            def run(chunk=chunk):
                for s in range(0, total, chunk):
                    np.asarray(be.decoder_query(pts[:, s:s + chunk], kv))

            _, t = timed(run, 2, sync)
            rows[str(chunk)] = {**t, "queries_per_s": round(P * total / (t["median_ms"] * 1e-3)),
                                "calls": -(-total // chunk)}
        best = max(rows, key=lambda c: rows[c]["queries_per_s"])
        from holopart_infer.extraction.extract import QUERY_CHUNK_POINTS_BY_DEVICE as CHUNK_POINTS_DEFAULT

        rec = {"device": dev, "parts": P, "points_per_part": total, "by_chunk": rows, "best_chunk_points": int(best),
               "current_default": CHUNK_POINTS_DEFAULT[dev],
               "default_over_best": round(rows[str(CHUNK_POINTS_DEFAULT[dev])]["median_ms"] / rows[best]["median_ms"], 3)
               if str(CHUNK_POINTS_DEFAULT[dev]) in rows else None}
        if not self.gpu:
            raise Skip("no GPU: the CPU sweep ran; the GPU default is chosen on a GPU", rec)
        return rec

    def stage_host_round_trips(self) -> dict:
        """Resident extraction (holopart_infer.extraction.resident) on CUDA against the host path.

        The same decoder answers both: the host path (points and logits through
        the host every decode call, band and marching cubes on the CUDA kernels)
        and the resident path (grids, points and logits stay on the GPU). Checks:
        equal query counts, the same meshes, and device-to-host copies that do not
        grow with the number of decode calls (counted by the profiler at two chunk
        sizes; what remains is per part and level: point counts and the meshes).
        """
        import torch
        from torch.profiler import ProfilerActivity, profile

        from holopart_infer.engines.pytorch import FastTorchBackend
        from holopart_infer.extraction.extract import extract_meshes
        from holopart_infer.extraction.resident import extract_meshes_resident

        nets = self.networks()
        dev_name = "cuda" if self.cuda else "cpu"  # rehearsal: the comparison on the CPU, no copy count
        be = FastTorchBackend(nets, dev_name, "bf16" if self.cuda else "fp32")
        lat = torch.randn(2, self.size["dit_tokens"], nets.transformer.cfg.in_channels,
                          generator=torch.Generator().manual_seed(5))
        kv = be.decoder_kv(lat)

        def decode(pts):
            n = max(len(p) for p in pts)
            batch = np.zeros((len(pts), n, 3), np.float32)
            for i, p in enumerate(pts):
                batch[i, :len(p)] = p
            out = np.asarray(be.decoder_query(batch, kv)).reshape(len(pts), n)
            return [out[i, :len(p)] for i, p in enumerate(pts)]

        def copies(fn):
            if not self.cuda:
                return fn(), None, None
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                res = fn()
                torch.cuda.synchronize()
            names = [e.name for e in prof.events()]
            dtoh = sum(1 for n in names if "DtoH" in n or "Device -> Pageable" in n or "Device -> Pinned" in n)
            htod = sum(1 for n in names if "HtoD" in n or "Pageable -> Device" in n or "Pinned -> Device" in n)
            return res, dtoh, htod

        # two levels either way; the rehearsal's noise field is kept small for the CPU
        depth, lo = (7, 32) if self.cuda else (6, 16)
        t0 = time.perf_counter()
        (host, hs), h_dtoh, h_htod = copies(lambda: extract_meshes(decode, 2, depth=depth, device=dev_name,
                                                                   min_resolution=lo, chunk_points=65536))
        host_s = time.perf_counter() - t0
        query = lambda pts: be.query_on_device(pts, kv)  # noqa: E731
        t0 = time.perf_counter()
        (dev, ds), dtoh, htod = copies(lambda: extract_meshes_resident(query, 2, device=dev_name, depth=depth,
                                                                       min_resolution=lo, chunk_points=65536))
        dev_s = time.perf_counter() - t0
        ds_small, dtoh_small = ds, None
        if self.cuda:  # the same extraction in 8x more decode calls
            (_, ds_small), dtoh_small, _ = copies(lambda: extract_meshes_resident(
                query, 2, device=dev_name, depth=depth, min_resolution=lo, chunk_points=8192))
        dists = [_surface_distance(a.vertices, b.vertices) if len(a.faces) and len(b.faces) else 0.0
                 for a, b in zip(host, dev)]
        rec = {"depth": depth, "host": {"decode_calls": hs.decode_calls, "device_to_host_copies": h_dtoh,
                                        "host_to_device_copies": h_htod, "seconds": round(host_s, 3)},
               "resident": {"decode_calls": ds.decode_calls, "device_to_host_copies": dtoh,
                            "host_to_device_copies": htod, "seconds": round(dev_s, 3),
                            "decode_calls_small_chunk": ds_small.decode_calls,
                            "device_to_host_copies_small_chunk": dtoh_small},
               "queries_per_level": ds.queries_per_level, "faces": [len(m.faces) for m in dev],
               "max_surface_distance": max(dists)}
        bad = []
        if ds.queries_per_level != hs.queries_per_level:
            bad.append(f"query counts differ: resident {ds.queries_per_level} vs host {hs.queries_per_level}")
        if [len(m.faces) for m in dev] != [len(m.faces) for m in host] or max(dists) > 1e-4:
            bad.append("resident and host meshes differ")
        if self.cuda and ds_small.decode_calls > ds.decode_calls and dtoh_small > dtoh:
            bad.append(f"device-to-host copies grow with decode calls ({dtoh} in {ds.decode_calls} calls, "
                       f"{dtoh_small} in {ds_small.decode_calls}): points or logits still travel through the host")
        if bad:
            raise Fail("; ".join(bad), rec)
        if not self.cuda:
            try:
                self.need_kernels()
            except Skip as e:
                raise Skip(f"{e}: resident and host extraction agreed on the CPU; copies are counted with "
                           f"the CUDA kernels on a GPU", rec) from None
        return rec

    def stage_demo_end_to_end(self) -> dict:
        """The demo object through the embedded mini checkpoint: CUDA (fp32) vs CPU (fp32), as geometry."""
        import holopart_infer as hp
        from holopart_infer import assets

        ckpt = REPO / "export" / "holopart_mini"
        opts = dict(steps=self.size["demo_steps"], depth=self.size["demo_depth"], seed=0, decimate=None)
        t0 = time.perf_counter()
        cpu = hp.load(ckpt, backend="torch", device="cpu", precision="fp32").complete(
            assets.demo_object_path(), **opts)
        rec: dict[str, Any] = {"cpu_s": round(time.perf_counter() - t0, 2), "parts": len(cpu.parts),
                               "cpu_timings": {k: round(v, 3) for k, v in cpu.timings.items()}}
        self.need_gpu(rec)
        model = hp.load(ckpt, backend="torch", device="cuda", precision="fp32")
        model.complete(assets.demo_object_path(), **{**opts, "steps": 1, "depth": 6})  # warm-up
        t0 = time.perf_counter()
        gpu = model.complete(assets.demo_object_path(), **opts)
        rec.update(cuda_s=round(time.perf_counter() - t0, 2), extract_device=model.extract_device,
                   cuda_timings={k: round(v, 3) for k, v in gpu.timings.items()})
        dists, vols = [], []
        for a, b in zip(cpu.parts, gpu.parts):
            dists.append(_surface_distance(a.vertices, b.vertices))
            vols.append(_volume(b.vertices, b.faces) / max(abs(_volume(a.vertices, a.faces)), 1e-12))
        extent = float(np.ptp(np.concatenate([p.vertices for p in cpu.parts]), axis=0).max())
        rec.update(max_surface_distance_rel=max(dists) / extent, volume_ratio=vols)
        if rec["max_surface_distance_rel"] > 0.01 or not all(0.97 < v < 1.03 for v in vols):
            raise Fail("CUDA and CPU demo meshes disagree (surface distance or volume)", rec)
        return rec

    def _harness(self, which: str) -> dict:
        """benchmarks/gpu_harness.py on this mode's sizes, its ``--stages`` from ``SIZES[mode][which]``.

        Both calls write harness.json (the second with ``--merge``, keeping the first's
        stages and ceilings) and harness.log (appended); the harness checks the
        budget before each of its own stages.
        """
        left = self.left_s()
        merge = which == "harness_rest"
        args = [sys.executable, str(REPO / "benchmarks" / "gpu_harness.py"), *self.size["harness"],
                "--stages", self.size[which], "--device", "cuda" if self.gpu else "cpu",
                "--out", str(self.out / "harness.json"), "--weights", str(self.checkpoint()),
                "--e2e-field", "shape"] + (["--merge"] if merge else [])
        if self.budget is not None:
            args += ["--budget-s", f"{self.budget:.0f}", "--started-at", f"{self.started_at:.3f}"]
        # the harness starts no stage past the budget; one started just before it may run on
        # into the 60 s between the budget and the command's limit (500 of 560 s)
        timeout = None if left is None else max(10.0, left + 30)
        with open(self.out / "harness.log", "a" if merge else "w") as f:
            f.write(f"== {which}: {' '.join(args[1:])}\n")
            f.flush()
            try:
                rc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        rec: dict[str, Any] = {"returncode": rc, "command": " ".join(args[1:])}
        try:
            res = json.loads((self.out / "harness.json").read_text())
            asked = self.size[which].split(",")
            mine = {n: r for n, r in res.get("stages", {}).items()
                    if any(n == a or n.startswith(a) or (a == "ceilings" and n in ("matmul_ceiling", "copy_bandwidth"))
                           for a in asked)}
            rec["stages"] = {n: r.get("status") for n, r in mine.items()}
            for n, r in mine.items():
                if r.get("status") != "ok":
                    continue
                if n.startswith("end_to_end"):
                    rec["end_to_end_s"] = round(r["median_ms"] / 1e3, 3)
                    rec["end_to_end_speedup_vs_reference"] = r.get("speedup_vs_reference")
                elif r.get("measured_over_floor") is not None and n not in ("matmul_ceiling", "copy_bandwidth"):
                    rec.setdefault("measured_over_floor", {})[n] = round(r["measured_over_floor"], 3)
        except (OSError, ValueError) as e:
            rec["stages"] = f"harness.json unreadable: {e}"
        if rc != 0:
            raise Fail(f"harness exit {rc} (harness.log)", rec)
        return rec

    def stage_harness_e2e(self) -> dict:
        """The harness's end to end (full-size 8-part object, 50 steps, depth 9, shape-driven,
        the reference in the same run), then the DiT b16, the guided step and the decoder
        queries against their floors; the ceilings first (every floor needs them)."""
        return self._harness("harness_e2e")

    def stage_harness_rest(self) -> dict:
        """The harness's other stages (kv pass, encoder, DiT b2/b8, CUDA graph, marching
        cubes, torch.compile), added to the same harness.json."""
        return self._harness("harness_rest")

    # -- driver ------------------------------------------------------------------------
    def run(self) -> int:
        write_json_atomic(self.json, {"meta": self.meta, "stages": self.stages})
        asked = set(self.args.stages.split(",")) if self.args.stages else set(STAGES)
        for name in STAGES:  # always the order of value, whatever order --stages lists them in
            if name in asked:
                self.run_stage(name)
        self.meta["total_s"] = round(self.used_s(), 1)
        self.meta["notes"] = self.notes
        write_json_atomic(self.json, {"meta": self.meta, "stages": self.stages})
        print(table(self.stages, self.meta), flush=True)
        return 1 if any(r["status"] in FAILED for r in self.stages.values()) else 0


def _surface_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric max nearest-vertex distance (Hausdorff over vertices)."""
    from scipy.spatial import cKDTree

    if not len(a) or not len(b):
        return 0.0 if len(a) == len(b) else float("inf")
    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()))


def _volume(v: np.ndarray, f: np.ndarray) -> float:
    t = np.asarray(v, np.float64)[f]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def table(stages: dict, meta: dict) -> str:
    rows = [("stage", "status", "wall s", "note")]
    for name, r in stages.items():
        note = r.get("reason") or ""
        for key in ("summary", "identical", "best_chunk_points", "end_to_end_s", "max_surface_distance_rel"):
            if key in r and not note:
                note = f"{key}={r[key]}"
        rows.append((name, r["status"], str(r.get("wall_s", "")), str(note)[:70]))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(x) for c, x in zip(row, w)) for row in rows]
    head = [f"device check ({meta['mode']}) commit {meta['commit'][:10]}  {meta.get('gpu') or 'no GPU'}  "
            f"build {meta.get('build', {}).get('result', '?')}  total {meta.get('total_s', '?')} s"]
    head += [f"NOTE: {n}" for n in meta.get("notes") or []]
    return "\n".join(head + lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True, help="folder for the JSON records and logs ($OUT on the device)")
    ap.add_argument("--budget-s", dest="budget_s", type=float,
                    help="seconds since --started-at after which no stage is started (estimate included)")
    ap.add_argument("--started-at", dest="started_at", type=float, help="epoch seconds (default: now)")
    ap.add_argument("--ckpt-dir", dest="ckpt_dir", help="folder holding/receiving the random checkpoint")
    ap.add_argument("--stages", help=f"comma-separated subset of: {','.join(STAGES)} (run in that order)")
    ap.add_argument("--build", choices=BUILDS, default="none",
                    help="what device_check.sh's build gave: cuda (the kernels), cpu_fallback (the CUDA build "
                         "failed, rebuilt without CUDA: kernel stages skip, torch stages run), failed (both "
                         "builds failed), none (nothing built by this run; default)")
    ap.add_argument("--simulate", default=os.environ.get("CHECK_SIMULATE", ""),
                    help=f"fault simulations in force (recorded; device_check.sh acts on them): "
                         f"{','.join(SIMULATIONS)}; default $CHECK_SIMULATE")
    ap.add_argument("--ckpt-wait-s", dest="ckpt_wait_s", type=float,
                    help="longest wait for the background checkpoint writer (default 240 s device, 60 s "
                         "rehearsal); a writer that failed or vanished is not waited for")
    args = ap.parse_args(argv)
    bad = {x for x in args.simulate.split(",") if x} - set(SIMULATIONS)
    if bad:
        ap.error(f"unknown simulation(s): {', '.join(sorted(bad))} (known: {', '.join(SIMULATIONS)})")
    if args.stages:
        unknown = set(args.stages.split(",")) - set(STAGES)
        if unknown:
            ap.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    return Check(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
