"""Host-side extraction work with a free decoder: this tree's extract.py against
an earlier commit's, side by side in one process (issue 28 item 2).

Eight analytic parts (spheres, thin slabs, tori; logits = 60 x signed distance,
as sharp as the model's) are extracted by both versions of
``holopart_infer.extract`` (the earlier one read with ``git show REV:...`` and
imported under another name), alternating which goes first. The decoder is an
analytic field; its time (``stats.decode_seconds``) is subtracted, so "host" is
the extraction's own work: band, dilation, refinement, growth rounds, the fine
grid, marching cubes. Each pair checks that queries per part and meshes
(vertices and faces) are identical.

    python benchmarks/bench_extract_host.py [--depth 8 9] [--pairs 3] [--before REV]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the tree before issue 28's extraction work
BEFORE = "d07185d"


def parts(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    fields = []
    for i in range(n):
        c = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
        r = np.float32(rng.uniform(0.3, 0.7))
        kind = i % 3

        def f(p, c=c, r=r, kind=kind):
            p = p.astype(np.float32) - c
            if kind == 0:
                d = r - np.sqrt((p * p).sum(1))
            elif kind == 1:
                d = np.minimum(0.05 - np.abs(p[:, 1]), r - np.abs(p).max(1))
            else:
                q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - r
                d = 0.12 - np.sqrt(q * q + p[:, 1] ** 2)
            return (60.0 * d).astype(np.float32)

        fields.append(f)
    return fields


def load_before(rev: str):
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:holopart_infer/extract.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="extract_before_")) / "extract_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("extract_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["extract_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    from holopart_infer import extract as after

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs="+", default=[8, 9])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--before", default=BEFORE)
    args = ap.parse_args(argv)
    before = load_before(args.before)
    fields = parts(args.parts)

    def decode(batch):
        return [f(p) for f, p in zip(fields, batch)]

    rows = []
    for depth in args.depth:
        for pair in range(args.pairs):
            order = [("before", before), ("after", after)]
            if pair % 2:
                order.reverse()
            got = {}
            for name, mod in order:
                meshes, st = mod.extract_meshes(decode, len(fields), depth=depth, chunk_points=8192)
                got[name] = (meshes, st)
                rec = dict(depth=depth, pair=pair, version=name, host_seconds=round(st.total_seconds -
                                                                                   st.decode_seconds, 3),
                           total_seconds=round(st.total_seconds, 3), queries=st.total_queries,
                           decode_calls=st.decode_calls)
                rows.append(rec)
                print(json.dumps(rec), flush=True)
            (mb, sb), (ma, sa) = got["before"], got["after"]
            same = sb.queries_per_part == sa.queries_per_part and all(
                np.array_equal(x.vertices, y.vertices) and np.array_equal(x.faces, y.faces) for x, y in zip(mb, ma))
            rows.append(dict(depth=depth, pair=pair, version="identity", identical=bool(same)))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| depth | version | host s median [p25-p75] | queries | before/after per pair | meshes, queries |")
    print("|---|---|---|---|---|---|")
    for depth in args.depth:
        rs = [r for r in rows if r["depth"] == depth]
        same = all(r["identical"] for r in rs if r["version"] == "identity")
        by = {v: [r for r in rs if r["version"] == v] for v in ("before", "after")}
        ratio = [b["host_seconds"] / a["host_seconds"] for b, a in zip(by["before"], by["after"])]
        for v in ("before", "after"):
            h = np.asarray([r["host_seconds"] for r in by[v]])
            sp = "%.2fx [%.2f-%.2f]" % (np.median(ratio), min(ratio), max(ratio)) if v == "after" else ""
            print(f"| {depth} | {v} | {np.median(h):.2f} [{np.percentile(h, 25):.2f}-{np.percentile(h, 75):.2f}] | "
                  f"{by[v][0]['queries']:,} | {sp} | {'identical' if same else 'DIFFERENT'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
