"""Throughput over many small objects: one object at a time vs packed batches
(HoloPart.complete_many) vs Ray workers, measured round by round in one run.

    python benchmarks/bench_throughput.py                       # CPU, embedded model
    python benchmarks/bench_throughput.py --rounds 5 --synthetic 6 --json out.json
    python benchmarks/bench_throughput.py --device cuda --model MODEL_DIR --no-ray   # the GPU variant

From Python (e.g. a device check): ``run_throughput(device="cuda", model_dir=..., ray_workers=0)``
returns the same dict that ``--json`` writes.

Objects: the three embedded demo objects plus ``--synthetic`` assemblies from
``export.synthetic`` (2-6 parts each; visible patches as input, like training).
Each round runs every mode once, in the order single, packed, ray, so the
ratios compare modes under the same machine load; the medians and min-max of
the per-round figures are reported. Parts are read before timing (no file IO
in the figures); Ray actors are started and warmed up before the rounds.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_objects(n_synthetic: int, seed: int = 0) -> list:
    """Demo objects + synthetic ones, as loaded Parts."""
    from holopart_infer import assets
    from holopart_infer.io.parts_io import load_parts

    objs = [load_parts(assets.demo_object_path(n)) for n in sorted(assets.DEMO_OBJECTS)]
    if n_synthetic:
        from holopart_infer.export import synthetic

        with tempfile.TemporaryDirectory() as tmp:
            for i, obj in enumerate(synthetic.iter_dataset(seed, n_synthetic, n_views=24)):
                objs.append(load_parts(synthetic.write_example(obj, Path(tmp) / f"syn{i}.glb")))
    return objs


def run_throughput(device: str = "cpu", model_dir: str | None = None, *, rounds: int = 3, synthetic: int = 3,
                   parts_per_batch: int = 8, ray_workers: int = 2, steps: int = 10, depth: int = 6,
                   backend: str = "auto") -> dict:
    """Measure objects/min and parts/s per mode; returns medians, spreads, per-round ratios."""
    import holopart_infer as hp
    from holopart_infer import assets
    from holopart_infer.pipeline import CompletionJob, CompletionOptions

    model_dir = str(model_dir or assets.demo_model_path())
    model = hp.load(model_dir, backend=backend, device=device)
    opts = CompletionOptions(**{**model.default_options().__dict__, "steps": steps, "depth": depth,
                                "decimate": None, "parts_per_batch": parts_per_batch})
    objs = make_objects(synthetic)
    n_parts = sum(len(o) for o in objs)

    def jobs():
        return [CompletionJob(o, options=opts, key=i) for i, o in enumerate(objs)]

    def single():
        for o in objs:
            model.complete(o, options=opts)

    def packed():
        out = list(model.complete_many(jobs(), parts_per_batch=parts_per_batch))
        assert all(isinstance(r, hp.CompletionResult) for _, r in out), out

    modes = {"single": single, "packed": packed}
    pool = None
    if ray_workers:
        import ray

        from holopart_infer.scale.ray_runner import RayPool

        ray.init(num_cpus=ray_workers if device == "cpu" else None, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        pool = RayPool(model_dir, backend=backend, device=device, num_workers=ray_workers,
                       parts_per_batch=parts_per_batch, objects_per_task=max(1, len(objs) // (2 * ray_workers)))

        def on_ray():
            out = list(pool.run(jobs(), close=False))
            assert len(out) == len(objs) and all(isinstance(r, hp.CompletionResult) for _, r in out), out

        on_ray()  # warm-up: actors load the model, first sessions are created
        modes[f"ray x{ray_workers}"] = on_ray
    single()  # warm-up of this process's sessions
    secs: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for _ in range(rounds):
            for name, fn in modes.items():
                t0 = time.perf_counter()
                fn()
                secs[name].append(time.perf_counter() - t0)
    finally:
        if pool is not None:
            pool.close()
            import ray

            ray.shutdown()

    def spread(xs):
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device, "backend": model.backend_name, "machine": f"{platform.machine()} {platform.processor()}",
        "commit": _commit(), "objects": len(objs), "parts": n_parts, "rounds": rounds,
        "options": {"steps": steps, "depth": depth, "parts_per_batch": parts_per_batch,
                    "latent_tokens": opts.latent_tokens, "num_points": opts.num_points},
        "modes": {},
    }
    for name, xs in secs.items():
        result["modes"][name] = {
            "seconds": spread(xs),
            "objects_per_min": spread([len(objs) * 60.0 / x for x in xs]),
            "parts_per_s": spread([n_parts / x for x in xs]),
            "speedup_vs_single": spread([s / x for s, x in zip(secs["single"], xs)]),
        }
    return result


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_table(r: dict) -> str:
    lines = [f"{r['objects']} objects, {r['parts']} parts, {r['rounds']} rounds, {r['device']} ({r['backend']}), "
             f"commit {r['commit']}, {r['date']}",
             "| mode | objects/min median (min-max) | parts/s median (min-max) | speed-up vs single median (min-max) |",
             "|---|---|---|---|"]
    for name, m in r["modes"].items():
        o, p, s = m["objects_per_min"], m["parts_per_s"], m["speedup_vs_single"]
        lines.append(f"| {name} | {o['median']:.1f} ({o['min']:.1f}-{o['max']:.1f}) | "
                     f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f}) | "
                     f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", help="model dir (default: the embedded holopart-mini)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synthetic", type=int, default=3, help="synthetic objects added to the 3 demo objects")
    ap.add_argument("--parts-per-batch", type=int, default=8)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    r = run_throughput(a.device, a.model, rounds=a.rounds, synthetic=a.synthetic, parts_per_batch=a.parts_per_batch,
                       ray_workers=0 if a.no_ray else a.ray_workers, steps=a.steps, depth=a.depth, backend=a.backend)
    print(format_table(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
