"""CPU defaults of the embedded model: end-to-end time and quality cost per preset (issue 16 item 4).

Timing: the 10-part test object (a synthetic chair and shelf of the export
side's generator, side by side: :func:`ten_part_object`) completed by the
embedded holopart-mini model on the CPU with each ``--quality`` preset, runs
interleaved (draft, balanced, high?, draft, ...) so that a shared machine's
load hits every preset alike; prints median and spread per preset.

Quality: per-part volume IoU of each preset's meshes against the depth-9 /
50-step result (the reference settings, the ``high`` preset) on the embedded
demo objects (mug, lamp, table) and the 10-part object, same seed.

    python benchmarks/cpu_defaults.py timing [--repeats 3] [--with-high]
    python benchmarks/cpu_defaults.py quality [--objects mug lamp table ten] [--all-settings]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ten_part_object(path: str | os.PathLike) -> Path:
    """Write the 10-part test object: synthetic chair (6 parts) and shelf (4 parts) side by side."""
    from export.synthetic import make_object
    from holopart_infer.io.parts_io import write_scene

    chair, shelf = make_object((9100, 0), "chair", n_views=8), make_object((9100, 0), "shelf", n_views=8)
    meshes, names = [], []
    xmax = max(float(np.asarray(v)[:, 0].max()) for v, _ in chair.patches())
    xmin = min(float(np.asarray(v)[:, 0].min()) for v, _ in shelf.patches())
    shift = np.array([xmax - xmin + 0.1, 0.0, 0.0])
    for obj, off, tag in ((chair, np.zeros(3), "chair"), (shelf, shift, "shelf")):
        for name, (v, f) in zip(obj.names, obj.patches()):
            meshes.append((np.asarray(v, np.float64) + off, np.asarray(f)))
            names.append(f"{tag}_{name}")
    assert len(meshes) == 10, len(meshes)
    return write_scene(meshes, names, path, overwrite=True)


def _object(name: str, tmp: Path) -> Path:
    from holopart_infer import assets

    return ten_part_object(tmp / "ten_parts.glb") if name == "ten" else assets.demo_object_path(name)


def _run(model, path, **opts):
    t0 = time.perf_counter()
    res = model.complete(path, **opts)
    return time.perf_counter() - t0, res


def timing(args) -> None:
    from holopart_infer import assets
    from holopart_infer.pipeline import QUALITY_PRESETS, load

    presets = [p for p in QUALITY_PRESETS if p != "high" or args.with_high]
    model = load(assets.demo_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        obj = _object(args.object, Path(tmp))
        times: dict[str, list[float]] = {p: [] for p in presets}
        extract_s: dict[str, list[float]] = {p: [] for p in presets}
        queries: dict[str, int] = {}
        _run(model, obj, **QUALITY_PRESETS["draft"])  # warm-up (sessions, caches)
        for _ in range(args.repeats):
            for p in presets:
                sec, res = _run(model, obj, **QUALITY_PRESETS[p])
                times[p].append(sec)
                extract_s[p].append(res.timings.get("extract", 0.0) + res.timings.get("thin_parts", 0.0))
                queries[p] = int(sum(res.stats.get("decoder_queries_per_level", {}).values()))
    print(f"object {args.object} ({obj.name}), embedded model, CPU, {os.cpu_count()} cores visible, "
          f"{args.repeats} interleaved runs each")
    print(f"{'preset':<10} {'depth':>5} {'steps':>5} {'median s':>9} {'min-max s':>14} {'extract s':>10} "
          f"{'decoder queries':>16}")
    for p in presets:
        t = times[p]
        print(f"{p:<10} {QUALITY_PRESETS[p]['depth']:>5} {QUALITY_PRESETS[p]['steps']:>5} "
              f"{statistics.median(t):>9.2f} {min(t):>6.2f}-{max(t):<7.2f} "
              f"{statistics.median(extract_s[p]):>10.2f} {queries[p]:>16,}")


def quality(args) -> None:
    from export.evaluate import volume_iou
    from holopart_infer import assets
    from holopart_infer.pipeline import QUALITY_PRESETS, load

    model = load(assets.demo_model_path())
    configs = [("draft", QUALITY_PRESETS["draft"]), ("balanced", QUALITY_PRESETS["balanced"]),
               ("depth 7, 50 steps", dict(depth=7, steps=50)), ("depth 8, 20 steps", dict(depth=8, steps=20)),
               ("depth 9, 20 steps", dict(depth=9, steps=20))]
    configs = [(n, c) for n, c in configs if args.all_settings or n in ("draft", "balanced")]
    rows: dict[str, list[float]] = {name: [] for name, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for obj_name in args.objects:
            obj = _object(obj_name, Path(tmp))
            _, ref = _run(model, obj, **QUALITY_PRESETS["high"])
            for name, cfg in configs:
                _, res = _run(model, obj, **cfg)
                ious = [volume_iou((a.vertices, a.faces), (b.vertices, b.faces), 40000, np.random.default_rng(0))
                        for a, b in zip(res.parts, ref.parts)]
                rows[name] += ious
                print(f"{obj_name:<6} {name:<20} IoU vs depth 9 / 50 steps: mean {np.mean(ious):.3f} "
                      f"min {np.min(ious):.3f} ({len(ious)} parts)", flush=True)
    print(f"{'setting':<20} {'mean IoU':>9} {'median':>7} {'min':>6} parts (vs depth 9 / 50 steps)")
    for name, v in rows.items():
        print(f"{name:<20} {np.mean(v):>9.3f} {np.median(v):>7.3f} {np.min(v):>6.3f} {len(v)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--object", default="ten", choices=["ten", "mug", "lamp", "table"])
    t.add_argument("--with-high", action="store_true", help="also time the high preset (minutes per run)")
    q = sub.add_parser("quality")
    q.add_argument("--objects", nargs="+", default=["mug", "lamp", "table", "ten"])
    q.add_argument("--all-settings", action="store_true",
                   help="also depth 7 at 50 steps and depth 8 and 9 at 20 steps (separates the cost of depth "
                   "from that of steps)")
    args = p.parse_args()
    timing(args) if args.cmd == "timing" else quality(args)


if __name__ == "__main__":
    main()
