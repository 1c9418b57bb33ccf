"""Quality gate for a coarser first extraction level (issue 28 item 4).

The coarse-to-fine extraction starts from a grid of at least
``CompletionOptions.coarse_min_resolution`` cells per axis
(``levels_for_depth(depth, min_resolution)``; 32: 61^3 points at depth 7); a
coarser start (16: 31^3 points at depth 7; depth 9 is the same for both, its
63-cell level being odd) queries the
decoder 3x less but can lose thin pieces the coarse band never sees. This script
runs the embedded model (ONNX Runtime CPU, the model's defaults, seed 0, no
decimation, no guard: every part is the model's own surface, none replaced by its patch) on the demo objects (mug, table, lamp: held-out real parts) and on
synthetic objects with thin parts (benchmarks/thin_parts.py's built objects),
once with each start, and scores every part of the coarser run against today's:

* surface distance in the object's normalized frame (distances divided by the
  diagonal of the object's bounding box): symmetric Chamfer distance (mean of
  the two directions' mean distances from 20,000 surface samples of one mesh
  to the other mesh's triangles) and a Hausdorff-like distance (the larger of the two directions' 99th
  percentiles);
* thin-part survival: each part's face count and enclosed volume (|signed
  volume|) as a ratio coarser / today, and no part that today's run gives
  surface may come back empty.

The thresholds (``GATE``) are fixed here, before any scoring. The gate passes
only when every part of every object passes all of them; the script prints one
Markdown row per part and the verdict, and exits 0 when it passes, 1 when not.

    python benchmarks/coarse_gate.py [--objects mug table lamp table_thin_top fan_blades cabinet_sheets book]
                                     [--coarse 16] [--depth D] [--steps S]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

#: Fixed before scoring. Distances are fractions of the object's bounding-box
#: diagonal (a depth-7 cell is ~0.5% of it for an object filling the box).
GATE = {
    "chamfer_max": 0.001,       # mean surface distance: well under a fifth of a cell
    "hausdorff99_max": 0.005,   # 99th percentile: about one cell
    "face_ratio_min": 0.98,     # thin-part survival: at most 2% of a part's faces lost
    "face_ratio_max": 1.02,
    "volume_ratio_min": 0.98,   # and at most 2% of its volume
    "volume_ratio_max": 1.02,
}
SAMPLES = 20_000
DEFAULT_OBJECTS = ["mug", "table", "lamp", "table_thin_top", "fan_blades", "cabinet_sheets", "book"]


def load_objects(names):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from thin_parts import built_objects

    from holopart_infer import assets
    from holopart_infer.io.parts_io import load_parts

    built = None
    out = {}
    for n in names:
        if n in assets.DEMO_OBJECTS:
            out[n] = load_parts(assets.demo_object_path(n))
        else:
            built = built if built is not None else built_objects()
            out[n] = built[n]
    return out


def run(model, parts, min_resolution: int, **opts):
    """complete() with the first extraction level's minimum resolution set
    (CompletionOptions.coarse_min_resolution), everything else the model's defaults."""
    t = time.perf_counter()
    res = model.complete(parts, seed=0, decimate=None, guard=False, coarse_min_resolution=min_resolution, **opts)
    return res, time.perf_counter() - t


def _samples(v, f, rng):
    import trimesh

    if not len(f):
        return np.zeros((0, 3))
    m = trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False)
    pts, _ = trimesh.sample.sample_surface(m, SAMPLES, seed=int(rng.integers(1 << 31)))
    return pts


def _volume(v, f):
    if not len(f):
        return 0.0
    v = np.asarray(v, np.float64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)


def score(base, coarse, diag):
    from holopart_infer.postprocess.quality import _surface_distance  # point to triangle mesh, exact near the samples

    rng = np.random.default_rng(0)
    rows = []
    for pb, pc in zip(base.parts, coarse.parts):
        sb, sc = _samples(pb.vertices, pb.faces, rng), _samples(pc.vertices, pc.faces, rng)
        row = dict(part=pb.name, faces=len(pb.faces), faces_coarse=len(pc.faces))
        if len(sb) and len(sc):
            d1 = _surface_distance(sb, np.asarray(pc.vertices, np.float64), np.asarray(pc.faces), rng) / diag
            d2 = _surface_distance(sc, np.asarray(pb.vertices, np.float64), np.asarray(pb.faces), rng) / diag
            row["chamfer"] = 0.5 * (d1.mean() + d2.mean())
            row["hausdorff99"] = max(np.percentile(d1, 99), np.percentile(d2, 99))
        else:
            row["chamfer"] = row["hausdorff99"] = 0.0 if len(sb) == len(sc) else np.inf
        vb, vc = _volume(pb.vertices, pb.faces), _volume(pc.vertices, pc.faces)
        row["face_ratio"] = len(pc.faces) / len(pb.faces) if len(pb.faces) else (1.0 if not len(pc.faces) else np.inf)
        row["volume_ratio"] = vc / vb if vb > 0 else (1.0 if vc == 0 else np.inf)
        row["empty_lost"] = bool(len(pb.faces) and not len(pc.faces))
        row["pass"] = bool(not row["empty_lost"] and row["chamfer"] <= GATE["chamfer_max"]
                           and row["hausdorff99"] <= GATE["hausdorff99_max"]
                           and GATE["face_ratio_min"] <= row["face_ratio"] <= GATE["face_ratio_max"]
                           and GATE["volume_ratio_min"] <= row["volume_ratio"] <= GATE["volume_ratio_max"])
        rows.append(row)
    return rows


def main(argv=None) -> int:
    import holopart_infer as hp
    from holopart_infer import assets
    from holopart_infer.extraction import extract

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", nargs="+", default=DEFAULT_OBJECTS)
    ap.add_argument("--coarse", type=int, default=16, help="coarse_min_resolution of the coarser start")
    ap.add_argument("--today", type=int, default=32, help="coarse_min_resolution compared against")
    ap.add_argument("--depth", type=int, default=None, help="default: the model's")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    args = ap.parse_args(argv)
    model = hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
    opts = {k: v for k, v in (("depth", args.depth), ("steps", args.steps)) if v is not None}
    depth = args.depth or model.default_options().depth
    print(f"gate {GATE}; depth {depth} levels today {extract.levels_for_depth(depth, args.today)} vs "
          f"coarser {extract.levels_for_depth(depth, args.coarse)}", flush=True)
    print("\n| object | part | faces today | faces coarser | face ratio | volume ratio | Chamfer | Hausdorff p99 "
          "| queries today/coarser | seconds today/coarser | pass |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name, parts in load_objects(args.objects).items():
        base, tb = run(model, parts, args.today, **opts)
        coarse, tc = run(model, parts, args.coarse, **opts)
        allv = np.concatenate([p.vertices for p in base.parts if len(p.vertices)] or [np.zeros((1, 3))])
        diag = float(np.linalg.norm(allv.max(0) - allv.min(0))) or 1.0
        qb = sum(base.stats.get("decoder_queries_per_level", {}).values())
        qc = sum(coarse.stats.get("decoder_queries_per_level", {}).values())
        for row in score(base, coarse, diag):
            ok &= row["pass"]
            print(f"| {name} | {row['part']} | {row['faces']:,} | {row['faces_coarse']:,} | {row['face_ratio']:.4f} "
                  f"| {row['volume_ratio']:.4f} | {row['chamfer']:.5f} | {row['hausdorff99']:.5f} "
                  f"| {qb:,}/{qc:,} | {tb:.1f}/{tc:.1f} | {'yes' if row['pass'] else 'NO'} |", flush=True)
    print(f"\ngate: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
