"""Packed decoder feed vs one padded row per part, end to end (issue 28 item 1).

Runs ``HoloPart.complete`` on the same parts twice per pair -- the packed feed
(extract.PackedFeed: rows of ``chunk_points // 8`` points, each queried against
its own part's key/values) and the padded feed it replaced (one row per part,
padded to the call's longest part: pipeline._kv_row_taker forced to None) --
alternating which goes first, in one process. Per run: wall seconds of the
whole call and of its extract stage, decoder queries, points the decoder
computed (padding included) and their ratio; per pair: are the meshes the same
(faces equal, largest vertex difference). Prints a JSON line per run and a
summary (median and interquartile spread per mode, speed-up per pair).

    python benchmarks/bench_feed.py --object OBJ [--parts 8] [--depth 7 8] [--pairs 3]
    python benchmarks/bench_feed.py --row-lengths 8192 1024 256 [--pairs 4]

``--row-lengths``: one decoder call of 8 x 8192 points against 8 parts' gathered
key/values, cut into rows of each length in turn (interleaved), times and
whether the logits are bitwise those of the first length.

Default object: a stand-in for a many-part mechanical assembly, the 68-part
"VW new beetle" of the sweethome3d furniture library (KatorLegaz.sh3f, OBJ
groups as parts) when /usr/share/sweethome3d is installed, else the demo table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SH3F = Path("/usr/share/sweethome3d/furniture/KatorLegaz.sh3f")
STANDIN = "katorlegaz/VW-new-beetle/VW-new-beetle.obj"


def standin_object(tmp: Path) -> Path | None:
    """The 68-part stand-in, unpacked under ``tmp``; None without sweethome3d."""
    if not SH3F.exists():
        return None
    with zipfile.ZipFile(SH3F) as z:
        for name in z.namelist():
            if name.startswith(str(Path(STANDIN).parent) + "/"):
                z.extract(name, tmp)
    return tmp / STANDIN


def _quantiles(xs):
    a = np.asarray(xs, float)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def row_lengths(lengths, repeats: int, model_path=None) -> int:
    import holopart_infer as hp
    from holopart_infer import assets

    model = hp.load(model_path or assets.demo_model_path())
    backend = model.backend
    rng = np.random.default_rng(0)
    shape = (8, model.default_options().latent_tokens, model.latent_channels)
    kv = backend.decoder_kv(rng.normal(size=shape).astype(np.float32))
    pts = rng.uniform(-1, 1, (8 * 8192, 3)).astype(np.float32)
    times, outs = {L: [] for L in lengths}, {}
    for _ in range(max(1, repeats)):
        for L in lengths:
            R = len(pts) // L
            kv_rows = tuple(a[np.repeat(np.arange(8), R // 8)] for a in kv)
            t0 = time.perf_counter()
            outs[L] = np.asarray(backend.decoder_query(pts.reshape(R, L, 3), kv_rows)).reshape(-1)
            times[L].append(time.perf_counter() - t0)
    for L in lengths:
        med, lo, hi = _quantiles(times[L])
        print(f"rows of {L:>5}: {len(pts) // L:>4} rows, median {med:.3f} s [p25 {lo:.3f} - p75 {hi:.3f}], "
              f"{len(pts) / med:,.0f} points/s, logits bitwise those of rows of {lengths[0]}: "
              f"{np.array_equal(outs[L], outs[lengths[0]])}")
    return 0


def main(argv=None) -> int:
    import holopart_infer as hp
    from holopart_infer import assets, pipeline
    from holopart_infer.io.parts_io import Parts, load_parts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object", help="parts file (default: the stand-in, else the demo table)")
    ap.add_argument("--parts", type=int, default=8, help="first N parts of the object (0: all)")
    ap.add_argument("--depth", type=int, nargs="+", default=[7, 8])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--model", default=None, help="model dir or checkpoint (default: the embedded model)")
    ap.add_argument("--json", default=None, help="write every run here")
    ap.add_argument("--row-lengths", type=int, nargs="+", default=None)
    args = ap.parse_args(argv)
    if args.row_lengths:
        return row_lengths(args.row_lengths, args.pairs, args.model)

    tmp = Path(tempfile.mkdtemp(prefix="bench_feed_"))
    obj = Path(args.object) if args.object else (standin_object(tmp) or assets.demo_object_path())
    parts = load_parts(obj)
    if args.parts:
        parts = Parts(parts=parts.parts[:args.parts], source=parts.source, kind=parts.kind)
    model = hp.load(args.model or assets.demo_model_path())
    opts = dict(seed=0, decimate=None)
    if args.steps:
        opts["steps"] = args.steps
    taker = pipeline._kv_row_taker
    modes = {"packed": taker, "padded": lambda kv: None}
    print(f"# object {obj} ({len(parts)} parts), backend {model.backend_name}, chunk {model.chunk_points}, "
          f"{opts}", flush=True)
    runs = []
    try:
        for depth in args.depth:
            for pair in range(args.pairs):
                order = ["packed", "padded"] if pair % 2 == 0 else ["padded", "packed"]
                got = {}
                for mode in order:
                    pipeline._kv_row_taker = modes[mode]
                    t0 = time.perf_counter()
                    res = model.complete(parts, depth=depth, **opts)
                    wall = time.perf_counter() - t0
                    real = int(sum(res.stats["decoder_queries_per_level"].values()))
                    fed = int(res.stats["decoder_points_fed"])
                    rec = dict(depth=depth, pair=pair, mode=mode, seconds=round(wall, 3),
                               extract_seconds=round(res.timings.get("extract", 0.0), 3), queries=real,
                               points_fed=fed, padded_over_real=round(fed / real, 4))
                    got[mode] = res
                    runs.append(rec)
                    print(json.dumps(rec), flush=True)
                a, b = got["packed"].parts, got["padded"].parts
                same = all(np.array_equal(x.faces, y.faces) and x.vertices.shape == y.vertices.shape
                           for x, y in zip(a, b))
                dv = max((float(np.abs(np.asarray(x.vertices, np.float64) - y.vertices).max())
                          for x, y in zip(a, b) if same and len(x.vertices)), default=0.0)
                runs.append(dict(depth=depth, pair=pair, mode="identity", faces_equal=same,
                                 max_vertex_difference=dv if same else None))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        pipeline._kv_row_taker = taker
    print("\n| depth | feed | run s median [p25-p75] | extract s median [p25-p75] | queries | points fed | "
          "fed/real | speed-up (padded/packed, per pair) | meshes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for depth in args.depth:
        rs = [r for r in runs if r["depth"] == depth]
        idn = [r for r in rs if r["mode"] == "identity"]
        ident = ("identical (max vertex diff %g)" % max(r["max_vertex_difference"] for r in idn)
                 if all(r["faces_equal"] for r in idn) else "DIFFERENT")
        by = {m: [r for r in rs if r["mode"] == m] for m in ("padded", "packed")}
        ratio = [p["extract_seconds"] / q["extract_seconds"] for p, q in zip(by["padded"], by["packed"])]
        for m in ("padded", "packed"):
            s, e = _quantiles([r["seconds"] for r in by[m]]), _quantiles([r["extract_seconds"] for r in by[m]])
            r0 = by[m][0]
            sp = ("extract %.2fx [%.2f-%.2f]" % (np.median(ratio), min(ratio), max(ratio))) if m == "packed" else ""
            print(f"| {depth} | {m} | {s[0]:.1f} [{s[1]:.1f}-{s[2]:.1f}] | {e[0]:.1f} [{e[1]:.1f}-{e[2]:.1f}] | "
                  f"{r0['queries']:,} | {r0['points_fed']:,} | {r0['padded_over_real']:.3f} | {sp} | {ident} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
