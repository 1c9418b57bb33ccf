#!/usr/bin/env python
"""The one-call device check: CUDA parity at real sizes, then the full-size harness.

    # on a lent GPU (benchmarks/device_check.sh builds first, then runs this):
    python benchmarks/device_check.py --mode device --out $OUT --budget-s 540 --started-at $T0
    # the same driver on a CPU, tiny sizes (tests/bench/test_device_check.py runs it):
    python benchmarks/device_check.py --mode rehearsal --out /tmp/dc

Stages run in a fixed order; each one's record goes to ``device_check.jsonl``
(one line per stage, appended, flushed and fsynced) and to ``device_check.json``
(rewritten atomically) the moment it is measured, so a command killed at its
limit still returns every finished stage. Before a stage starts, the time used
since ``--started-at`` (the build counts) plus the stage's estimate is checked
against ``--budget-s``; a stage that would not fit is recorded as
``not started``. A stage that needs CUDA where there is none is recorded as
``skipped`` with the reason "no GPU" (its CPU half, where it has one, still
runs). A failing stage is ``error`` with its traceback; the run goes on.
A short table is printed last. Exit code: 0 when no stage is ``error``/``fail``.

Files written under ``--out`` (at most 8 with the shell script's build.log):
device_check.json, device_check.jsonl, pytest.log, harness.json, harness.log.
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
                   harness=["--config", "full", "--reference", "--repeats", "5", "--warmup", "2"]),
    "rehearsal": dict(fps=(2048, 128), band_cells=30, mc_points=33, depth=6, ckpt_config="tiny",
                      dit_tokens=32, decoder_points=256, encoder_points=512, demo_steps=1, demo_depth=6,
                      chunks=(1024, 4096), sweep_parts=2, sweep_points=4096,
                      harness=["--config", "tiny", "--reference", "--repeats", "2", "--warmup", "1",
                               "--steps", "2", "--parts", "2", "--query-points", "1024"]),
}

#: estimated seconds per stage (device mode, H200; rehearsal: 2-core CPU), for the budget
ESTIMATE_S: dict[str, dict[str, float]] = {
    "environment": {"device": 5, "rehearsal": 2},
    "cuda_tests": {"device": 60, "rehearsal": 1},
    "parity_fps": {"device": 5, "rehearsal": 1},
    "parity_band": {"device": 10, "rehearsal": 1},
    "parity_mcubes": {"device": 15, "rehearsal": 1},
    "extract_analytic": {"device": 30, "rehearsal": 3},
    "fast_torch_parity": {"device": 60, "rehearsal": 8},
    "chunk_sweep": {"device": 30, "rehearsal": 5},
    "host_round_trips": {"device": 20, "rehearsal": 10},
    "demo_end_to_end": {"device": 40, "rehearsal": 15},
    "harness": {"device": 240, "rehearsal": 60},
}
STAGES = list(ESTIMATE_S)
#: statuses that make the exit code 1
FAILED = ("error", "fail")


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


class Check:
    def __init__(self, args: argparse.Namespace):
        from holopart_infer import native

        self.args = args
        self.mode = args.mode
        self.size = SIZES[self.mode]
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started_at = args.started_at if args.started_at is not None else time.time()
        self.budget = args.budget_s
        self.cuda = native.cuda_available()
        self.stages: dict[str, dict] = {}
        self.jsonl = self.out / "device_check.jsonl"
        self.json = self.out / "device_check.json"
        self.jsonl.write_text("")
        self.meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "commit": git_commit(), "mode": self.mode, "command": " ".join(sys.argv),
                     "budget_s": self.budget, "started_at": self.started_at, "python": platform.python_version(),
                     "host": platform.node(), "cuda_kernels": native.cuda_status()}
        self._ckpt: Path | None = None
        self._nets = None

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

    def run_stage(self, name: str) -> None:
        est = ESTIMATE_S[name][self.mode]
        if self.budget is not None and self.used_s() + est > self.budget:
            self.put(name, {"status": "not started",
                            "reason": f"time budget: {self.used_s():.0f} s used + ~{est:.0f} s estimated > "
                                      f"{self.budget:.0f} s"})
            print(f"[check] {name}: not started", flush=True)
            return
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
        self.put(name, rec)
        print(f"[check] {name}: {rec['status']} in {rec['wall_s']} s"
              + (f" ({rec.get('reason')})" if rec["status"] != "ok" else ""), flush=True)

    def need_cuda(self, partial: dict | None = None) -> None:
        if not self.cuda:
            from holopart_infer import native

            raise Skip(f"no GPU ({native.cuda_status()})", partial)

    # -- shared inputs -----------------------------------------------------------------
    def checkpoint(self) -> Path:
        """The random checkpoint of this mode's config (``--ckpt-dir`` reuses one the
        shell script started writing while the extension built)."""
        if self._ckpt is None:
            from holopart_infer.export.random_checkpoint import write_random_checkpoint

            root = Path(self.args.ckpt_dir or tempfile.mkdtemp(prefix="holopart_check_"))
            name = f"random_{self.size['ckpt_config']}"
            ckpt, writing, done = root / name, root / f"{name}.writing", root / f"{name}.done"
            deadline = time.time() + 300
            while writing.exists() and not done.exists() and time.time() < deadline:
                time.sleep(1)  # device_check.sh is still writing it in the background
            if writing.exists() and not done.exists():
                # the background writer failed or is stuck: write a fresh one beside it
                ckpt = root / f"{name}_fg"
                write_random_checkpoint(ckpt, self.size["ckpt_config"], seed=0, dtype="fp16", overwrite=True)
            elif not (ckpt / "model_index.json").is_file():
                write_random_checkpoint(ckpt, self.size["ckpt_config"], seed=0, dtype="fp16", overwrite=True)
                done.write_text("ok")
            self._ckpt = ckpt
        return self._ckpt

    # -- stages ------------------------------------------------------------------------
    def stage_environment(self) -> dict:
        from holopart_infer import native

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
        if self.mode == "device" and not native.cuda_available():
            raise Fail(f"device mode but the CUDA kernels are unusable: {native.cuda_status()}", rec)
        return rec

    def stage_cuda_tests(self) -> dict:
        self.need_cuda()
        log = self.out / "pytest.log"
        timeout = max(30, min(240, int(self.left_s() or 240) - 60))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "requires_cuda",
               "-x", "tests"]
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
        from holopart_infer import native

        n, k = self.size["fps"]
        xyz = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
        cpu, t_cpu = timed(lambda: native.farthest_point_sampling(xyz, k, device="cpu"), 2)
        rec = {"n": n, "k": k, "cpu": t_cpu}
        self.need_cuda(rec)
        gpu, t_gpu = timed(lambda: native.farthest_point_sampling(xyz, k, device="cuda"), 3)
        rec.update(cuda=t_gpu, identical=bool(np.array_equal(cpu, gpu)))
        if not rec["identical"]:
            raise Fail(f"FPS indices differ at {int((cpu != gpu).sum())} of {k}", rec)
        return rec

    def stage_parity_band(self) -> dict:
        from holopart_infer import native

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
        self.need_cuda(rec)
        gpu, t_gpu = timed(lambda: run("cuda"), 3)
        same = [bool(np.array_equal(a, b)) for a, b in zip(cpu, gpu)]
        rec.update(cuda=t_gpu, identical={"band": same[0], "dilate": same[1], "refine": same[2]})
        if not all(same):
            raise Fail(f"band/dilate/refine differ between CPU and CUDA: {rec['identical']}", rec)
        return rec

    def stage_parity_mcubes(self) -> dict:
        from holopart_infer.mcubes import marching_cubes

        n = self.size["mc_points"]
        ax = np.linspace(-1.05, 1.05, n, dtype=np.float32)
        x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
        vol = np.ascontiguousarray(0.7 - np.sqrt(x * x + y * y + z * z)
                                   + 0.05 * np.sin(9 * x) * np.sin(7 * y) * np.sin(8 * z), dtype=np.float32)
        cpu, t_cpu = timed(lambda: marching_cubes(vol, 0.0, device="cpu"), 2)
        rec = {"grid_points": n, "vertices": int(len(cpu[0])), "faces": int(len(cpu[1])), "cpu": t_cpu,
               "bytes_floor": int(vol.nbytes + cpu[0].nbytes + cpu[1].nbytes)}
        self.need_cuda(rec)
        gpu, t_gpu = timed(lambda: marching_cubes(vol, 0.0, device="cuda"), 3)
        rec.update(cuda=t_gpu, vertices_identical=bool(np.array_equal(cpu[0], gpu[0])),
                   faces_identical=bool(np.array_equal(cpu[1], gpu[1])),
                   normals_max_abs_diff=float(np.abs(cpu[2] - gpu[2]).max()) if len(cpu[2]) else 0.0)
        if not (rec["vertices_identical"] and rec["faces_identical"]):
            raise Fail("marching cubes vertices/faces differ between CPU and CUDA", rec)
        return rec

    def stage_extract_analytic(self) -> dict:
        """Depth-9 extraction of an analytic field: part 0 is cut by the box (capped), part 1 is inside."""
        from holopart_infer.cleanup import edge_manifold
        from holopart_infer.extract import extract_meshes

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
        self.need_cuda(rec)
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
        self.need_cuda(rec)
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
        dev = "cuda" if self.cuda else "cpu"
        be = FastTorchBackend(nets, dev, "bf16" if self.cuda else "fp32")  # load()'s defaults
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
        from holopart_infer.extract import QUERY_CHUNK_POINTS_BY_DEVICE as CHUNK_POINTS_DEFAULT

        rec = {"device": dev, "parts": P, "points_per_part": total, "by_chunk": rows, "best_chunk_points": int(best),
               "current_default": CHUNK_POINTS_DEFAULT[dev],
               "default_over_best": round(rows[str(CHUNK_POINTS_DEFAULT[dev])]["median_ms"] / rows[best]["median_ms"], 3)
               if str(CHUNK_POINTS_DEFAULT[dev]) in rows else None}
        if not self.cuda:
            raise Skip("no GPU: the CPU sweep ran; the GPU default is chosen on a GPU", rec)
        return rec

    def stage_host_round_trips(self) -> dict:
        """Resident extraction (holopart_infer.resident) on CUDA against the host path.

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
        from holopart_infer.extract import extract_meshes
        from holopart_infer.resident import extract_meshes_resident

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
            raise Skip("no GPU: resident and host extraction agreed on the CPU; copies are counted on a GPU", rec)
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
        self.need_cuda(rec)
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

    def stage_harness(self) -> dict:
        left = self.left_s()
        args = [sys.executable, str(REPO / "benchmarks" / "gpu_harness.py"), *self.size["harness"],
                "--device", "cuda" if self.cuda else "cpu", "--out", str(self.out / "harness.json"),
                "--ckpt-dir", str(self.checkpoint().parent)]
        if self.budget is not None:
            args += ["--budget-s", f"{self.budget:.0f}", "--started-at", f"{self.started_at:.3f}"]
        timeout = None if left is None else max(10.0, left)
        with open(self.out / "harness.log", "w") as f:
            try:
                rc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        rec: dict[str, Any] = {"returncode": rc, "command": " ".join(args[1:])}
        try:
            res = json.loads((self.out / "harness.json").read_text())
            rec["stages"] = {n: r.get("status") for n, r in res.get("stages", {}).items()}
            e2e = next((r for n, r in res.get("stages", {}).items() if n.startswith("end_to_end")), {})
            if e2e.get("status") == "ok":
                rec["end_to_end_s"] = round(e2e["median_ms"] / 1e3, 3)
                rec["end_to_end_speedup_vs_reference"] = e2e.get("speedup_vs_reference")
        except (OSError, ValueError) as e:
            rec["stages"] = f"harness.json unreadable: {e}"
        if rc != 0:
            raise Fail(f"harness exit {rc} (harness.log)", rec)
        return rec

    # -- driver ------------------------------------------------------------------------
    def run(self) -> int:
        write_json_atomic(self.json, {"meta": self.meta, "stages": self.stages})
        names = self.args.stages.split(",") if self.args.stages else STAGES
        for name in names:
            self.run_stage(name)
        self.meta["total_s"] = round(self.used_s(), 1)
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
    return "\n".join([f"device check ({meta['mode']}) commit {meta['commit'][:10]}  {meta.get('gpu') or 'no GPU'}  "
                      f"total {meta.get('total_s', '?')} s"] + lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True, help="folder for the JSON records and logs ($OUT on the device)")
    ap.add_argument("--budget-s", dest="budget_s", type=float,
                    help="seconds since --started-at after which no stage is started (estimate included)")
    ap.add_argument("--started-at", dest="started_at", type=float, help="epoch seconds (default: now)")
    ap.add_argument("--ckpt-dir", dest="ckpt_dir", help="folder holding/receiving the random checkpoint")
    ap.add_argument("--stages", help=f"comma-separated subset of: {','.join(STAGES)}")
    args = ap.parse_args(argv)
    if args.stages:
        unknown = set(args.stages.split(",")) - set(STAGES)
        if unknown:
            ap.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    return Check(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
