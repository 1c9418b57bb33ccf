"""Service latency and throughput under a fixed concurrent load, with and without dynamic batching.

Starts two `holopart-infer serve` processes on the embedded holopart-mini (same
options; one with dynamic batching, one with ``--no-batching``) and runs the
same closed-loop load against each, alternating rounds (A B A B ...) so both
see the same machine conditions. Each of ``--clients`` threads posts
``--requests`` uploads of an embedded object one after the other; a round ends
when all have their glb.

    python benchmarks/bench_serve.py --clients 4 --rounds 3 --object mug

Prints per-configuration medians and spreads (min..max over rounds) of the
request latency p50/p99 and of the throughput, and the batched/unbatched ratios
measured round by round; ``--json`` writes everything.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.runtime.serve.serve_util import Server  # noqa: E402  (the test suite's server-process helper)

CONFIGS = {"batched": ["--batch-wait-ms", "100", "--max-batch-objects", "16", "--max-batch-parts", "64"],
           "unbatched": ["--no-batching"]}


def run_round(srv: Server, body: bytes, clients: int, requests: int) -> dict:
    def client(_):
        lat = []
        for _ in range(requests):
            t0 = time.perf_counter()
            status, _, out = srv.post("/v1/complete", body, headers={"Content-Type": "model/gltf-binary"},
                                      timeout=1800)
            if status != 200:
                raise RuntimeError(f"request failed: {status} {out[:300]!r}")
            lat.append(time.perf_counter() - t0)
        return lat

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(client, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    return {"latencies": lat, "wall_s": wall, "p50": float(np.quantile(lat, 0.5)),
            "p99": float(np.quantile(lat, 0.99)), "objects_per_min": 60.0 * len(lat) / wall}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=1, help="requests per client per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--object", default="mug", help="embedded object to upload (mug, lamp, table)")
    ap.add_argument("--option", action="append", default=["steps=4", "depth=6", "decimate=none"],
                    help="server option NAME=VALUE (default: steps=4 depth=6 decimate=none)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)

    from holopart_infer import assets
    from holopart_infer.io.parts_io import load_parts

    body = assets.demo_object_path(args.object).read_bytes()
    n_parts = len(load_parts(assets.demo_object_path(args.object)))
    opts = [x for o in args.option for x in ("--option", o)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    servers = {}
    try:
        for name, flags in CONFIGS.items():
            servers[name] = Server(tmp, *opts, "--device", args.device, "--max-queue", str(4 * args.clients),
                                   *flags)
        # warm-up: one request each (first-run allocations)
        for srv in servers.values():
            run_round(srv, body, 1, 1)
        rounds = {name: [] for name in servers}
        for r in range(args.rounds):
            for name, srv in servers.items():
                res = run_round(srv, body, args.clients, args.requests)
                rounds[name].append(res)
                print(f"round {r + 1} {name:<9} p50 {res['p50']:6.2f} s  p99 {res['p99']:6.2f} s  "
                      f"{res['objects_per_min']:6.2f} objects/min", flush=True)
        batches = {name: srv.metrics() for name, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"\n{args.clients} clients x {args.requests} request(s) of '{args.object}' ({n_parts} parts), "
          f"{args.rounds} rounds, options {' '.join(args.option)}; commit {commit}; {platform.machine()}, "
          f"{platform.processor() or ''}")
    print("| config | latency p50 s | latency p99 s | objects/min | parts/s | objects per batch (mean) |")
    print("|---|---|---|---|---|---|")
    for name, rs in rounds.items():
        m = batches[name]
        per_batch = m.get("holopart_batch_objects_sum", 0) / max(m.get("holopart_batch_objects_count", 1), 1)
        print(f"| {name} | {spread([x['p50'] for x in rs])} | {spread([x['p99'] for x in rs])} | "
              f"{spread([x['objects_per_min'] for x in rs])} | "
              f"{spread([x['objects_per_min'] * n_parts / 60 for x in rs])} | {per_batch:.2f} |")
    ratio_tp = [a["objects_per_min"] / b["objects_per_min"] for a, b in zip(rounds["batched"], rounds["unbatched"])]
    ratio_p50 = [a["p50"] / b["p50"] for a, b in zip(rounds["batched"], rounds["unbatched"])]
    ratio_p99 = [a["p99"] / b["p99"] for a, b in zip(rounds["batched"], rounds["unbatched"])]
    print(f"\nbatched / unbatched, per round: throughput {spread(ratio_tp)}, p50 latency {spread(ratio_p50)}, "
          f"p99 latency {spread(ratio_p99)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "commit": commit, "rounds": rounds,
                                               "ratios": {"throughput": ratio_tp, "p50": ratio_p50,
                                                          "p99": ratio_p99}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
