#!/usr/bin/env python
"""One-run GPU (or CPU) benchmark of holopart-infer: ceilings, stages, floors, reference ratio.

    python benchmarks/gpu_harness.py --config full --device cuda --out results.json --reference

Writes a random-weight checkpoint of the chosen config (or uses --weights) and
times, in one process and in this order (most valuable first; ``--stages``
picks a subset, ``--merge`` adds to an earlier run's JSON):

* ceilings: a large GEMM (bf16 on CUDA, fp32 on CPU) and a device-to-device copy;
* end to end for an 8-part object at 50 steps through holopart_infer.pipeline;
* the DiT forward at 16 sequences, one guided step for the object's parts, and
  decoder queries per second (kv cached, large point batches), against floors;
* the decoder key/value pass and the part encoder for those parts;
* the DiT forward at 2 and 8 sequences; the guided step as a captured CUDA graph;
* marching cubes at 256^3 and 512^3 (CUDA kernels when usable, plus the CPU kernels);
* the guided step through torch.compile (GPU only; its compile time is recorded).

Every stage records median and spread over repeats (CUDA events around each
repeat, after warm-up; host clock + synchronize for stages with host work),
its floor from benchmarks/flops.py at the ceilings measured in this run
(max(FLOP / GEMM rate, bytes / copy rate)) and measured/floor. With
--reference each stage is also run the way the original pipeline runs
(fp16 eager, original head layout, CFG as a doubled batch with zero conditions
through full cross-attention, decoder stack recomputed for every 10000-point
chunk) and the speed-up is recorded. Prints a short table last; the JSON has
everything.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
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
import torch  # noqa: E402


from benchmarks import flops  # noqa: E402

# per-config sizes of the timed work (the network sizes come from the checkpoint's configs)
PLANS: dict[str, dict[str, Any]] = {
    "full": dict(latent_tokens=2048, dit_batches=(2, 8, 16), parts=8, query_points=262144, num_points=20480,
                 mc_sizes=(256, 512), steps=50, depth=9, gemm=8192, copy_mib=1024, repeats=10, warmup=3,
                 ref_repeats=3, e2e_repeats=2),
    "mid": dict(latent_tokens=2048, dit_batches=(2, 8, 16), parts=8, query_points=262144, num_points=20480,
                mc_sizes=(256, 512), steps=50, depth=9, gemm=8192, copy_mib=1024, repeats=10, warmup=3,
                ref_repeats=3, e2e_repeats=2),
    "tiny": dict(latent_tokens=32, dit_batches=(2, 8, 16), parts=8, query_points=4096, num_points=512,
                 mc_sizes=(32, 64), steps=50, depth=6, gemm=512, copy_mib=16, repeats=5, warmup=1,
                 ref_repeats=2, e2e_repeats=1),
}
from holopart_infer.export.reference_backend import REFERENCE_CHUNK, ReferenceBackend  # noqa: E402

#: rough seconds per stage at the full config on an H200 (fast + reference), for the time
#: budget; other configs scale by BUDGET_SCALE. The end to end: two fast runs (<= 11 s each
#: is the goal) after a small warm-up, one reference run (~4x), the shape's host numpy on
#: every decode call; the decoder query: 10 fast repeats + 3 reference repeats that rebuild
#: the decoder stack per 10000-point chunk; torch.compile: the compile itself dominates.
STAGE_ESTIMATE_S = {"matmul_ceiling": 5, "copy_bandwidth": 3, "dit_forward": 12, "guided_step": 15,
                    "cuda_graph": 25, "compile": 120, "part_encoder": 8, "decoder_kv": 8, "decoder_query": 40,
                    "marching_cubes_256": 8, "marching_cubes_512": 40, "end_to_end": 150}
BUDGET_SCALE = {"full": 1.0, "mid": 0.5, "tiny": 0.02}


def stage_names(plan: dict) -> list[str]:
    """Every stage of a plan, in the order a run takes them (most valuable first).

    The ceilings come first (every floor needs them, ~8 s), then the end-to-end
    figure, then the DiT and decoder against their floors, then the rest, the
    compiled step (its compile time) last.
    """
    P, bs = plan["parts"], list(plan["dit_batches"])
    big = max(bs)
    names = ["matmul_ceiling", "copy_bandwidth", f"end_to_end_{P}parts_{plan['steps']}steps",
             f"dit_forward_b{big}", f"guided_step_b{P}", "decoder_query", f"decoder_kv_b{P}",
             f"part_encoder_b{P}"]
    names += [f"dit_forward_b{b}" for b in bs if b != big]
    names += [f"guided_step_b{P}_cuda_graph"]
    names += [f"marching_cubes_{n}" for n in plan["mc_sizes"]]
    names += [f"guided_step_b{P}_compile"]
    return names


def select_stages(spec: str | None, plan: dict) -> list[str]:
    """The stages ``--stages`` names, in the run's order (:func:`stage_names`).

    ``spec`` is comma-separated; each item is a stage's full name or a prefix of
    names (``end_to_end``, ``dit_forward``, ``marching_cubes``, ``ceilings`` for
    both ceilings). An exact name selects only itself (``guided_step_b8`` is the
    eager step, not its graph or compiled variants). Raises ValueError on an item
    that selects nothing.
    """
    every = stage_names(plan)
    if not spec:
        return every
    chosen: set[str] = set()
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if item == "ceilings":
            hit = ["matmul_ceiling", "copy_bandwidth"]
        elif item in every:
            hit = [item]
        else:
            hit = [n for n in every if n.startswith(item)]
        if not hit:
            raise ValueError(f"--stages: {item!r} names no stage of this plan (stages: {', '.join(every)})")
        chosen.update(hit)
    return [n for n in every if n in chosen]


# --------------------------------------------------------------------------- timing
class Skip(Exception):
    """A stage that cannot run here (the reason goes into the JSON)."""


class Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], Any], warmup: int, repeats: int, host: bool = False) -> dict:
        """Median and spread (ms) of ``fn`` over ``repeats`` after ``warmup`` calls.

        CUDA events around each call on GPU (``host=False``); host clock after a
        synchronize otherwise (stages that do host work between kernels).
        """
        for _ in range(warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(repeats):
            if self.cuda and not host:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)
                samples.append(start.elapsed_time(end))
            else:
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                samples.append((time.perf_counter() - t0) * 1e3)
        return summarize(samples)


def summarize(samples: list[float]) -> dict:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median_ms": statistics.median(s), "spread_ms": q[2] - q[0], "p25_ms": q[0], "p75_ms": q[2],
            "min_ms": s[0], "max_ms": s[-1], "repeats": len(s), "samples_ms": s}


# --------------------------------------------------------------------------- end-to-end field
#: logits per unit of signed distance of the known shape: |logit| < band (0.95) is
#: about two final cells (2.1 / 504) either side of the surface at depth 9, the
#: width a trained decoder's band has (a few million queries per part)
SHAPE_LOGITS_PER_UNIT = 0.95 / (2 * 2.1 / 504)


def shape_logits(points: np.ndarray) -> np.ndarray:
    """Logits of a known shape per batch row (row b: an ellipsoid of its own size), inside > 0.

    points float32 (B, Q, 3) in the part's normalized frame -> float32 (B, Q, 1).
    """
    p = np.asarray(points, dtype=np.float32)
    out = np.empty(p.shape[:2] + (1,), dtype=np.float32)
    for b in range(p.shape[0]):
        radii = np.array([0.75, 0.55, 0.65], dtype=np.float32) * (1.0 - 0.06 * (b % 5))
        centre = np.array([0.05 * (b % 3), -0.04 * (b % 2), 0.0], dtype=np.float32)
        q = (p[b] - centre) / radii
        # first-order signed distance of an ellipsoid: (|q| - 1) * min radius
        d = (np.sqrt(np.einsum("ij,ij->i", q, q)) - 1.0) * radii.min()
        out[b, :, 0] = -SHAPE_LOGITS_PER_UNIT * d
    return out


class ShapeDriven:
    """A backend whose decoder does its full work but a known shape answers.

    With random weights the decoder's field is noise (50-100% of the cells fall
    in the band at depth 9, ~1e9 queries per object), which says nothing about
    a trained model. This wrapper lets a known analytic shape (:func:`shape_logits`)
    drive the band and refinement decisions while the real decoder (the
    wrapped backend's ``decoder_query``, host copy included) computes on exactly
    the points that shape makes extraction ask for: the cost of a real run on a
    real surface. Every other call goes to the wrapped backend unchanged.
    """

    def __init__(self, backend: Any):
        self.inner = backend
        self.name = f"{getattr(backend, 'name', 'backend')}+shape"
        self.decoder_points = 0  # points (padding rows included) the real decoder computed

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def decoder_query(self, points, kv):
        pts = np.asarray(points, dtype=np.float32)
        np.asarray(self.inner.decoder_query(pts, kv))  # the real cost; waits for the device
        self.decoder_points += int(pts.shape[0] * pts.shape[1])
        return shape_logits(pts)


# --------------------------------------------------------------------------- helpers
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


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sm_count=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def make_parts(n: int, seed: int = 0):
    """An n-part synthetic object (closed boxes on a ring around a central box: a table-like layout)."""
    from holopart_infer.io.parts_io import Part, Parts

    rng = np.random.default_rng(seed)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int64)
    parts = []
    for i in range(n):
        if i == 0:
            lo, size = np.array([-0.6, 0.3, -0.6]), np.array([1.2, 0.08, 1.2])
        else:
            a = 2 * math.pi * i / max(n - 1, 1)
            lo = np.array([0.45 * math.cos(a) - 0.05, -0.6, 0.45 * math.sin(a) - 0.05])
            size = np.array([0.1, 0.9, 0.1]) * (1 + 0.1 * rng.random(3))
        parts.append(Part(f"part_{i}", lo + corners * size, faces.copy()))
    return Parts(parts)


def _inference(fn, *args):
    with torch.inference_mode():
        return fn(*args)


class _capture_extract:
    """Run the pipeline with extraction progress off, keeping each extraction's stats.

    The harness does not use progress reports (this keeps the end-to-end stage
    independent of the progress-callback signature); the stats give the
    decoder queries per part.
    """

    def __enter__(self):
        from holopart_infer.extraction import extract

        self.mod, self.orig = extract, extract.extract_meshes
        self.stats: list = []

        def wrapped(*args, **kwargs):
            kwargs["progress"] = None
            meshes, stats = self.orig(*args, **kwargs)
            self.stats.append(stats)
            return meshes, stats

        extract.extract_meshes = wrapped
        return self

    def __exit__(self, *exc):
        self.mod.extract_meshes = self.orig
        return False

    def queries_per_part(self) -> list[int]:
        return [int(sum(q)) for st in self.stats for q in st.queries_per_part]

    def decode_calls(self) -> int:
        return int(sum(st.decode_calls for st in self.stats))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (the project's one atomic writer)."""
    from holopart_infer import fsafe

    fsafe.atomic_write(Path(path), json.dumps(obj, indent=1, default=str).encode("utf-8"))


def floor_ms(flop: float, nbytes: float, ceil: dict) -> tuple[float | None, str]:
    t, bound = flops.floor_seconds(flop, nbytes, ceil.get("matmul_flops_per_s"), ceil.get("copy_bytes_per_s"))
    return (t * 1e3 if t is not None else None), bound


# --------------------------------------------------------------------------- the run
class Harness:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.plan = dict(PLANS[args.config])
        for key in ("repeats", "warmup", "steps", "depth", "query_points", "gemm", "parts"):
            if getattr(args, key, None) is not None:
                self.plan[key] = getattr(args, key)
        self.timer = Timer(self.device)
        self.ceil: dict[str, float] = {}
        self.stages: dict[str, dict] = {}
        self.precision = args.precision or ("bf16" if self.cuda else "fp32")
        self.started_at = args.started_at if args.started_at is not None else time.time()
        self.out = Path(args.out)
        self.e2e_field = args.e2e_field if args.e2e_field != "auto" else ("model" if args.weights else "shape")
        self.ref = None
        self.tcfg = self.vcfg = self.pcfg = None
        self.previous_meta: dict | None = None

    def result(self) -> dict:
        """Everything measured so far (the JSON's content)."""
        p = self.plan
        res = {"meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "commit": git_commit(), "command": " ".join(sys.argv), "config": self.args.config,
                        "precision": self.precision, "reference": bool(self.args.reference),
                        "checkpoint": str(getattr(self, "ckpt", "")), "e2e_field": self.e2e_field,
                        "budget_s": self.args.budget_s, "stages_asked": self.args.stages,
                        **({"previous_run": self.previous_meta} if self.previous_meta else {}),
                        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
                        **device_info(self.device)},
               "ceilings": dict(self.ceil), "stages": dict(self.stages)}
        if self.tcfg is not None:
            T, K = p["latent_tokens"], self.pcfg.num_tokens
            res["predicted"] = {
                "dit_forward_tflop_per_sequence": flops.dit_forward(self.tcfg, T, K)["total"] / 1e12,
                "decoder_mflop_per_point": flops.decoder_query_per_point(self.vcfg, T)["total"] / 1e6,
                "savings": flops.savings(self.tcfg, T, K, batch=p["parts"], steps=p["steps"]),
            }
        return res

    def write(self) -> None:
        """Rewrite the JSON atomically (temp file + rename): a run killed at any point
        leaves every stage measured before it."""
        write_json_atomic(self.out, self.result())

    # -- bookkeeping ------------------------------------------------------------------
    def estimate_s(self, name: str) -> float:
        """Rough seconds ``name`` takes (fast + reference) at this config, for the budget."""
        key = next((k for k in ("compile", "cuda_graph") if name.endswith(k)), None)
        if key is None:
            key = next((k for k in STAGE_ESTIMATE_S if name.startswith(k)), "decoder_query")
        est = STAGE_ESTIMATE_S[key] * BUDGET_SCALE.get(self.args.config, 1.0)
        return est * (1.0 if self.args.reference else 0.6)

    def record(self, name: str, fn: Callable[[], dict]) -> None:
        budget = self.args.budget_s
        if budget is not None:
            used = time.time() - self.started_at
            est = self.estimate_s(name)
            if used + est > budget:
                self.stages[name] = {"status": "not started",
                                     "reason": f"time budget: {used:.0f} s used + ~{est:.0f} s estimated "
                                               f"> {budget:.0f} s (--budget-s)"}
                print(f"[harness] {name}: not started ({self.stages[name]['reason']})", flush=True)
                self.write()
                return
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            rec = fn()
            rec.setdefault("status", "ok")
        except Skip as e:
            rec = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # keep going: a lost GPU run is expensive
            rec = {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        if self.cuda:
            rec["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        rec["wall_s"] = round(time.perf_counter() - t0, 3)
        self.stages[name] = rec
        self.write()
        msg = rec.get("median_ms")
        print(f"[harness] {name}: {rec['status']}" + (f" median {msg:.3f} ms" if msg is not None else "")
              + (f" ({rec['reason']})" if rec["status"] != "ok" else ""), flush=True)
        self.gc()

    def gc(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    def finish(self, rec: dict, flop: float, nbytes: float) -> dict:
        """Add floor fields to a timing record (and to its reference sub-record)."""
        fl, bound = floor_ms(flop, nbytes, self.ceil)
        rec.update(flops=flop, bytes=nbytes, floor_ms=fl, floor_bound=bound,
                   measured_over_floor=(rec["median_ms"] / fl) if fl else None)
        if rec["median_ms"] and flop:
            rec["achieved_tflops"] = flop / (rec["median_ms"] * 1e-3) / 1e12
        ref = rec.get("reference")
        if isinstance(ref, dict) and "median_ms" in ref:
            ref["measured_over_floor"] = ref["median_ms"] / fl if fl else None
            rec["speedup_vs_reference"] = ref["median_ms"] / rec["median_ms"]
        return rec

    def measure(self, fn, host: bool = False, reps: int | None = None, warm: int | None = None) -> dict:
        return self.timer.measure(fn, self.plan["warmup"] if warm is None else warm,
                                  reps or self.plan["repeats"], host=host)

    def ref_measure(self, fn, host: bool = False) -> dict:
        return self.timer.measure(fn, 1, self.plan["ref_repeats"], host=host)

    # -- setup ---------------------------------------------------------------------------
    def load(self) -> None:
        from holopart_infer.engines.pytorch import FastTorchBackend
        from holopart_infer.networks.load import load_networks
        from holopart_infer.export.random_checkpoint import write_random_checkpoint

        if self.args.weights:
            ckpt = Path(self.args.weights)
        else:
            root = Path(self.args.ckpt_dir or tempfile.mkdtemp(prefix="holopart_bench_"))
            ckpt = root / f"random_{self.args.config}"
            if not (ckpt / "model_index.json").is_file():
                t0 = time.perf_counter()
                write_random_checkpoint(ckpt, self.args.config, seed=0, dtype="fp16", overwrite=True)
                print(f"[harness] wrote random {self.args.config} checkpoint to {ckpt} "
                      f"in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        self.nets = load_networks(ckpt, precision="fp32", device="cpu")
        self.fast = FastTorchBackend(self.nets, str(self.device), self.precision)
        self.graphed = None
        self.ref = ReferenceBackend(self.nets, self.device) if self.args.reference else None
        self.ckpt = ckpt
        self.tcfg = self.nets.transformer.cfg
        self.vcfg = self.nets.vae.cfg
        self.pcfg = self.nets.part_encoder.cfg
        print(f"[harness] loaded networks in {time.perf_counter() - t0:.1f} s "
              f"(fast path {self.precision}{', reference fp16' if self.ref else ''})", flush=True)

    def randn(self, *shape, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(*shape, generator=g, device=self.device, dtype=torch.float32).to(dtype)

    # -- stages ---------------------------------------------------------------------------
    def stage_matmul(self) -> dict:
        n = self.plan["gemm"]
        dtype = torch.bfloat16 if self.cuda else torch.float32
        mats = [(self.randn(n, n, dtype=dtype, seed=2 * i), self.randn(n, n, dtype=dtype, seed=2 * i + 1))
                for i in range(2)]
        out = torch.empty(n, n, device=self.device, dtype=dtype)
        it = iter(range(1 << 30))

        def run():
            a, b = mats[next(it) % 2]
            torch.mm(a, b, out=out)

        rec = self.measure(run)
        flop = 2.0 * n ** 3
        self.ceil["matmul_flops_per_s"] = flop / (rec["median_ms"] * 1e-3)
        rec.update(n=n, dtype=str(dtype), flops=flop, floor_ms=rec["median_ms"], floor_bound="ceiling",
                   measured_over_floor=1.0, achieved_tflops=self.ceil["matmul_flops_per_s"] / 1e12)
        return rec

    def stage_copy(self) -> dict:
        numel = self.plan["copy_mib"] * 2**20 // 4
        a = self.randn(numel, seed=7)
        b = torch.empty_like(a)
        rec = self.measure(lambda: b.copy_(a))
        nbytes = 2.0 * numel * 4  # read + write
        self.ceil["copy_bytes_per_s"] = nbytes / (rec["median_ms"] * 1e-3)
        rec.update(bytes=nbytes, floor_ms=rec["median_ms"], floor_bound="ceiling", measured_over_floor=1.0,
                   achieved_gb_per_s=self.ceil["copy_bytes_per_s"] / 1e9)
        return rec

    def _conds(self, B: int, seed: int):
        K = self.pcfg.num_tokens
        return (self.randn(B, K, self.tcfg.cross_attention_dim, seed=seed),
                self.randn(B, K, self.tcfg.cross_attention_2_dim, seed=seed + 1))

    def dit_weight_bytes(self, itemsize: int) -> float:
        return flops.dit_params(self.tcfg) * itemsize

    def stage_dit(self, B: int) -> dict:
        T, C = self.plan["latent_tokens"], self.tcfg.in_channels
        K = self.pcfg.num_tokens
        fd = self.fast.dit_path
        pc, wc = self._conds(B, seed=100 + B)
        cache = fd.prepare(pc, wc)
        xs = [self.randn(B, T, C, dtype=fd.dtype, seed=200 + i) for i in range(2)]
        t = torch.full((1,), 500.0, device=self.device)
        it = iter(range(1 << 30))

        def run():
            with torch.inference_mode():
                fd.forward(xs[next(it) % 2], t, cache.kv, B)

        rec = self.measure(run)
        rec["tokens"], rec["cond_tokens"], rec["batch"] = T, K, B
        if self.ref:
            xr = self.randn(B, T, C, dtype=self.ref.dtype, seed=300)
            e1, e2 = pc.to(self.ref.dtype), wc.to(self.ref.dtype)
            tt = torch.full((B,), 500.0, device=self.device)
            ref = self.ref_measure(lambda: self.ref.forward(xr, tt, e1, e2))
            ref["flops"] = B * flops.dit_forward(self.tcfg, T, K)["total"]
            rec["reference"] = ref
        flop = B * flops.dit_forward(self.tcfg, T, K, cross_kv=False)["total"]
        nbytes = self.dit_weight_bytes(torch.finfo(fd.dtype).bits // 8) + 2 * B * T * C * 4
        return self.finish(rec, flop, nbytes)

    def _step_inputs(self):
        B, T, C = self.plan["parts"], self.plan["latent_tokens"], self.tcfg.in_channels
        pc, wc = self._conds(B, seed=400)
        return B, T, C, pc, wc, self.randn(B, T, C, seed=401)

    def step_floor(self, B: int, T: int) -> tuple[float, float]:
        flop = flops.guided_step(self.tcfg, B, T, self.pcfg.num_tokens, mode="fast")
        nbytes = self.dit_weight_bytes(torch.finfo(self.fast.dit_path.dtype).bits // 8) + 2 * B * T * self.tcfg.in_channels * 4
        return flop, nbytes

    def stage_guided(self) -> dict:
        B, T, C, pc, wc, x = self._step_inputs()
        fd = self.fast.dit_path
        rec = self.measure(lambda: fd.guided_step(x, 500.0, 0.02, 3.5, pc, wc))
        rec.update(batch=B, guidance=3.5, graph="eager")
        if self.ref:
            xr = x.to(self.ref.dtype)
            ref = self.ref_measure(lambda: self.ref.guided_step(xr, 500.0, 0.02, 3.5, pc, wc))
            ref["flops"] = flops.guided_step(self.tcfg, B, T, self.pcfg.num_tokens, mode="reference")
            rec["reference"] = ref
        return self.finish(rec, *self.step_floor(B, T))

    def stage_guided_graph(self) -> dict:
        if not self.cuda:
            raise Skip("CUDA graphs need a CUDA device (this run is on CPU)")
        from holopart_infer.engines.pytorch import FastDiT

        B, T, C, pc, wc, x = self._step_inputs()
        if self.graphed is None:
            self.graphed = FastDiT(self.nets.transformer, self.device, self.precision, graph="cuda_graph")
        g = self.graphed
        rec = self.measure(lambda: g.guided_step(x, 500.0, 0.02, 3.5, pc, wc))
        rec.update(batch=B, guidance=3.5, graph="cuda_graph")
        eager = self.stages.get(f"guided_step_b{B}", {})
        if eager.get("median_ms"):
            rec["speedup_vs_eager"] = eager["median_ms"] / rec["median_ms"]
        # a correctness check in the same run: graph replay vs eager on fresh inputs
        with torch.inference_mode():
            want = self.fast.dit_path.guided_step(x, 321.0, 0.05, 3.5, pc, wc)
            got = g.guided_step(x, 321.0, 0.05, 3.5, pc, wc)
        rec["rel_error_vs_eager"] = float((got - want).abs().max() / want.abs().max())
        self.graphed.clear_cache()
        self.graphed = None
        return self.finish(rec, *self.step_floor(B, T))

    def stage_part_encoder(self) -> dict:
        B, K, N = self.plan["parts"], self.pcfg.num_tokens, self.plan["num_points"]
        args = (self.randn(B, K, 6, seed=500), self.randn(B, N, 7, seed=501),
                self.randn(B, K, 6, seed=502), self.randn(B, N, 6, seed=503))
        rec = self.measure(lambda: self.fast.encode(*args))
        rec.update(batch=B, num_points=N)
        if self.ref:
            rec["reference"] = self.ref_measure(lambda: self.ref.encode(*args))
        flop = B * flops.part_encoder(self.pcfg, N)["total"]
        nbytes = flops.part_encoder_params(self.pcfg) * (torch.finfo(self.fast.dtype).bits // 8)
        return self.finish(rec, flop, nbytes)

    def stage_decoder_kv(self) -> dict:
        B, T = self.plan["parts"], self.plan["latent_tokens"]
        lat = self.randn(B, T, self.vcfg.latent_channels, seed=600)
        rec = self.measure(lambda: self.fast.decoder_kv(lat))
        rec["batch"] = B
        if self.ref:
            lr = lat.to(self.ref.dtype)
            rec["reference"] = self.ref_measure(lambda: _inference(self.ref.vae.decode_kv, lr))
        flop = B * flops.decoder_kv(self.vcfg, T)["total"]
        nbytes = flops.decoder_params(self.vcfg) * (torch.finfo(self.fast.dtype).bits // 8)
        return self.finish(rec, flop, nbytes)

    def stage_decoder_query(self) -> dict:
        B, T, Q = self.plan["parts"], self.plan["latent_tokens"], self.plan["query_points"]
        lat = self.randn(B, T, self.vcfg.latent_channels, seed=700)
        kv = self.fast.decoder_kv(lat)
        pts = [self.randn(B, Q, 3, seed=701 + i).clamp_(-1.05, 1.05) for i in range(2)]
        it = iter(range(1 << 30))
        rec = self.measure(lambda: self.fast.decoder.query(pts[next(it) % 2], kv))
        n = B * Q
        rec.update(batch=B, points_per_part=Q, queries_per_s=n / (rec["median_ms"] * 1e-3))
        if self.ref:
            rkv = self.ref.decoder_kv(lat)
            ref = self.ref_measure(lambda: self.ref.decoder_query(pts[0], rkv), host=True)
            ref["queries_per_s"] = n / (ref["median_ms"] * 1e-3)
            ref["chunk_points"] = REFERENCE_CHUNK
            rec["reference"] = ref
        flop = n * flops.decoder_query_per_point(self.vcfg, T)["total"]
        itemsize = torch.finfo(self.fast.dtype).bits // 8
        nbytes = 2 * B * T * self.vcfg.width_decoder * itemsize + n * (3 + 1) * 4
        return self.finish(rec, flop, nbytes)

    def stage_marching_cubes(self, n: int) -> dict:
        from holopart_infer.extraction import native
        from holopart_infer.extraction.mcubes import marching_cubes

        try:
            native.kernels("cpu")
        except Exception as e:
            raise Skip(f"native kernels not built: {e}") from e
        dev = "cuda" if (self.cuda and native.cuda_available()) else "cpu"
        # a lumpy sphere: a real surface with many crossings, never an all-zero volume
        ax = np.linspace(-1.05, 1.05, n + 1, dtype=np.float32)
        x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
        vol = (0.7 - np.sqrt(x * x + y * y + z * z) + 0.05 * np.sin(9 * x) * np.sin(7 * y) * np.sin(8 * z))
        vol = np.ascontiguousarray(vol, dtype=np.float32)
        out = {}

        def run(device):
            out["mesh"] = marching_cubes(vol, 0.0, device=device)

        rec = self.measure(lambda: run(dev), host=True, reps=max(3, self.plan["repeats"] // 2), warm=1)
        v, f = out["mesh"][0], out["mesh"][1]
        rec.update(grid_points=n + 1, kernel_device=dev, vertices=int(len(v)), faces=int(len(f)))
        if dev == "cpu" and self.cuda:
            rec["note"] = f"CUDA marching cubes unusable here ({native.cuda_status()}); timed the CPU kernel"
        if dev == "cuda":  # the CPU kernels as the comparison, in the same run
            rec["reference"] = self.timer.measure(lambda: run("cpu"), 0, 2, host=True)
            rec["reference"]["kernel_device"] = "cpu"
        nbytes = vol.nbytes + v.nbytes + f.nbytes  # volume read once, mesh written once
        return self.finish(rec, 0.0, nbytes)

    def stage_end_to_end(self) -> dict:
        from holopart_infer.pipeline import HoloPart

        P, steps, depth = self.plan["parts"], self.plan["steps"], self.plan["depth"]
        parts = make_parts(P)
        opts = dict(steps=steps, depth=depth, parts_per_batch=P, decimate=None, num_points=self.plan["num_points"],
                    latent_tokens=self.plan["latent_tokens"], seed=0)
        shaped = self.e2e_field == "shape"
        wrap = ShapeDriven if shaped else (lambda b: b)
        model = HoloPart(wrap(self.fast))
        res, caps = {}, {}

        def run(m, key):
            with _capture_extract() as cap:
                res[key] = m.complete(parts, **opts)
            caps[key] = cap

        if self.cuda:
            # the first call's one-time costs (cuBLAS handles, lazy kernel loading, the
            # allocator's first growth) stay out of the samples: a 2-step, depth-6 run first
            warm = {**opts, "steps": 2, "depth": 6}
            HoloPart(wrap(self.fast)).complete(parts, **warm)
            if self.ref:
                HoloPart(wrap(self.ref)).complete(parts, **warm)
        reps = self.plan["e2e_repeats"]
        rec = self.timer.measure(lambda: run(model, "fast"), 0, reps, host=True)
        r = res["fast"]
        queries = sum(int(v) for v in r.stats.get("decoder_queries_per_level", {}).values())
        per_part = caps["fast"].queries_per_part()
        rec.update(parts=P, steps=steps, depth=depth, decoder_queries=queries,
                   decoder_queries_per_part=per_part, decode_calls=caps["fast"].decode_calls(),
                   chunk_points=model.chunk_points,
                   field=("known shape drives band/refine; the real decoder computes on exactly those points "
                          "(benchmarks/gpu_harness.py ShapeDriven)") if shaped else "the decoder's own field",
                   stage_seconds={k: round(v, 4) for k, v in r.timings.items()},
                   faces=[int(len(p.faces)) for p in r.parts])
        if self.ref:
            refm = HoloPart(wrap(self.ref))
            ref = self.timer.measure(lambda: run(refm, "ref"), 0, 1, host=True)
            ref["stage_seconds"] = {k: round(v, 4) for k, v in res["ref"].timings.items()}
            ref["decoder_queries_per_part"] = caps["ref"].queries_per_part()
            rec["reference"] = ref
        T, K = self.plan["latent_tokens"], self.pcfg.num_tokens
        flop = (flops.sampling_run(self.tcfg, P, T, K, steps, mode="fast")
                + P * flops.decoder_kv(self.vcfg, T)["total"]
                + P * flops.part_encoder(self.pcfg, self.plan["num_points"])["total"]
                + queries * flops.decoder_query_per_point(self.vcfg, T)["total"])
        return self.finish(rec, flop, 0.0)

    def stage_guided_compile(self) -> dict:
        """The guided step through ``torch.compile(mode="reduce-overhead")`` (``graph="compile"``).

        The first call compiles (``compile_s``); the timing is over the calls after
        it, and the result is compared with the eager step on the same inputs.
        """
        if not self.cuda:
            raise Skip("torch.compile (graph='compile') is CUDA-only in the fast path (this run is on CPU)")
        from holopart_infer.engines.pytorch import FastDiT

        B, T, C, pc, wc, x = self._step_inputs()
        comp = FastDiT(self.nets.transformer, self.device, self.precision, graph="compile")
        t0 = time.perf_counter()
        with torch.inference_mode():
            comp.guided_step(x, 500.0, 0.02, 3.5, pc, wc)
        self.timer.sync()
        compile_s = time.perf_counter() - t0
        rec = self.measure(lambda: comp.guided_step(x, 500.0, 0.02, 3.5, pc, wc))
        rec.update(batch=B, guidance=3.5, graph="compile", compile_s=round(compile_s, 2))
        eager = self.stages.get(f"guided_step_b{B}", {})
        if eager.get("median_ms"):
            rec["speedup_vs_eager"] = eager["median_ms"] / rec["median_ms"]
        with torch.inference_mode():
            want = self.fast.dit_path.guided_step(x, 321.0, 0.05, 3.5, pc, wc)
            got = comp.guided_step(x, 321.0, 0.05, 3.5, pc, wc)
        rec["rel_error_vs_eager"] = float((got - want).abs().max() / want.abs().max())
        comp.clear_cache()
        del comp
        return self.finish(rec, *self.step_floor(B, T))

    # -- driver ---------------------------------------------------------------------------
    def stage_fns(self) -> dict[str, Callable[[], dict]]:
        p = self.plan
        P = p["parts"]
        fns: dict[str, Callable[[], dict]] = {"matmul_ceiling": self.stage_matmul, "copy_bandwidth": self.stage_copy}
        for b in p["dit_batches"]:
            fns[f"dit_forward_b{b}"] = lambda b=b: self.stage_dit(b)
        fns[f"guided_step_b{P}"] = self.stage_guided
        fns[f"guided_step_b{P}_cuda_graph"] = self.stage_guided_graph
        fns[f"guided_step_b{P}_compile"] = self.stage_guided_compile
        fns[f"part_encoder_b{P}"] = self.stage_part_encoder
        fns[f"decoder_kv_b{P}"] = self.stage_decoder_kv
        fns["decoder_query"] = self.stage_decoder_query
        for n in p["mc_sizes"]:
            fns[f"marching_cubes_{n}"] = lambda n=n: self.stage_marching_cubes(n)
        fns[f"end_to_end_{P}parts_{p['steps']}steps"] = self.stage_end_to_end
        return fns

    def merge_previous(self) -> None:
        """``--merge``: keep the stages and ceilings an earlier run wrote to ``--out``
        (the device check's second harness call adds to the first one's JSON)."""
        try:
            prev = json.loads(self.out.read_text())
        except (OSError, ValueError):
            return
        self.ceil.update(prev.get("ceilings") or {})
        self.stages.update(prev.get("stages") or {})
        self.previous_meta = {k: v for k, v in (prev.get("meta") or {}).items() if k != "previous_run"}

    def run(self) -> dict:
        torch.backends.cuda.matmul.allow_tf32 = False
        names = select_stages(self.args.stages, self.plan)
        if self.args.merge:
            self.merge_previous()
            # floors need the ceilings: measure them first unless an earlier run did
            if not {"matmul_flops_per_s", "copy_bytes_per_s"} <= set(self.ceil):
                names = ["matmul_ceiling", "copy_bandwidth"] + [n for n in names if n not in
                                                                ("matmul_ceiling", "copy_bandwidth")]
        self.write()
        self.load()
        self.write()
        fns = self.stage_fns()
        for name in names:
            if name.startswith("end_to_end") and self.args.skip_e2e:
                self.stages[name] = {"status": "skipped", "reason": "--skip-e2e"}
                self.write()
                continue
            self.record(name, fns[name])
        return self.result()


def table(result: dict) -> str:
    rows = [("stage", "median ms", "spread", "floor ms", "x floor", "ref ms", "speedup")]
    for name, r in result["stages"].items():
        if r.get("status") != "ok":
            rows.append((name, r.get("status", "?"), (r.get("reason") or "")[:40], "", "", "", ""))
            continue
        ref = r.get("reference") or {}
        f = lambda v, fmt="{:.3f}": "-" if v is None else fmt.format(v)  # noqa: E731
        rows.append((name, f(r.get("median_ms")), f(r.get("spread_ms")), f(r.get("floor_ms")),
                     f(r.get("measured_over_floor"), "{:.2f}"), f(ref.get("median_ms")),
                     f(r.get("speedup_vs_reference"), "{:.2f}x")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    c = result["ceilings"]
    head = (f"device {result['meta'].get('gpu', result['meta']['device'])}  commit {result['meta']['commit'][:10]}  "
            f"GEMM {c.get('matmul_flops_per_s', 0) / 1e12:.1f} TFLOP/s  copy {c.get('copy_bytes_per_s', 0) / 1e9:.0f} GB/s")
    return "\n".join([head] + lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PLANS), default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True, help="results JSON path")
    ap.add_argument("--reference", action="store_true", help="also time the original pipeline's way, same run")
    ap.add_argument("--weights", help="checkpoint folder (default: write a random one of --config)")
    ap.add_argument("--ckpt-dir", help="where to write/reuse the random checkpoint (default: a temp folder)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="fast path (default bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--steps", type=int, help="end-to-end sampling steps (default 50)")
    ap.add_argument("--depth", type=int, help="end-to-end extraction depth")
    ap.add_argument("--query-points", dest="query_points", type=int, help="decoder points per part")
    ap.add_argument("--gemm", type=int, help="GEMM ceiling size n (n x n x n)")
    ap.add_argument("--parts", type=int, help="parts per object (default 8)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--stages", help="comma-separated stages to run, always in the run's order (most valuable "
                                     "first): full names or prefixes (end_to_end, dit_forward, marching_cubes, "
                                     "ceilings); default: all")
    ap.add_argument("--merge", action="store_true",
                    help="keep the stages and ceilings already in --out (a second call adding to a first one's "
                         "JSON); the ceilings are measured first if --out has none")
    ap.add_argument("--e2e-field", dest="e2e_field", choices=("auto", "shape", "model"), default="auto",
                    help="what drives end-to-end extraction: 'shape' = a known analytic shape decides the band "
                         "while the real decoder computes on exactly those points (the cost of a trained model; "
                         "the default with random weights), 'model' = the decoder's own field (default with "
                         "--weights)")
    ap.add_argument("--budget-s", dest="budget_s", type=float,
                    help="do not start a stage once this many seconds (since --started-at) plus the stage's "
                         "estimate would be exceeded; it is recorded as 'not started'")
    ap.add_argument("--started-at", dest="started_at", type=float,
                    help="epoch seconds the budget counts from (default: now)")
    args = ap.parse_args(argv)
    try:
        select_stages(args.stages, {**PLANS[args.config], **{k: getattr(args, k) for k in ("parts", "steps")
                                                              if getattr(args, k) is not None}})
    except ValueError as e:
        ap.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    result = Harness(args).run()
    out = Path(args.out)
    write_json_atomic(out, result)
    print(f"[harness] wrote {out}")
    print(table(result))
    return 1 if any(r.get("status") == "error" for r in result["stages"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
