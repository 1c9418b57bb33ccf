"""Start-up cost of a run (issue 28 item 5): imports and model load, each in a
fresh interpreter, ``--repeats`` times; median and range.

Rows: ``import holopart_infer.cli``; ``holopart-infer run --help``; then, in one
fresh process, the steps a ``run`` takes before its first part: importing the
library, trimesh (read/write of glTF), onnxruntime, and ``hp.load`` of the
embedded model dir (ONNX Runtime CPU sessions; hashes already recorded). Also the
biggest cumulative imports of ``run --help`` from ``-X importtime``.

    python benchmarks/bench_startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

STEPS = r"""
import json, time
t0 = time.perf_counter()
import holopart_infer as hp
t1 = time.perf_counter()
import trimesh
t2 = time.perf_counter()
import onnxruntime
t3 = time.perf_counter()
from holopart_infer import assets
m = hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
t4 = time.perf_counter()
print(json.dumps({"import holopart_infer": t1 - t0, "import trimesh": t2 - t1, "import onnxruntime": t3 - t2,
                  "hp.load(demo model)": t4 - t3, "all": t4 - t0}))
"""


def wall(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    py = sys.executable
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        rows.setdefault("python -c pass (interpreter)", []).append(wall([py, "-c", "pass"]))
        rows.setdefault("import holopart_infer.cli", []).append(wall([py, "-c", "import holopart_infer.cli"]))
        rows.setdefault("holopart-infer run --help", []).append(wall([py, "-m", "holopart_infer.cli", "run", "--help"]))
        out = subprocess.run([py, "-c", STEPS], check=True, capture_output=True, text=True).stdout
        for k, v in json.loads(out.strip().splitlines()[-1]).items():
            rows.setdefault(f"run path: {k}", []).append(v)
    print("| step | seconds, median [min-max] |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {np.median(v):.3f} [{min(v):.3f}-{max(v):.3f}] |")
    err = subprocess.run([py, "-X", "importtime", "-m", "holopart_infer.cli", "run", "--help"], capture_output=True,
                         text=True).stderr
    cum = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, c, name = line[len("import time:"):].split("|")
            if c.strip().isdigit() and not name[1:].startswith(" "):  # nested imports are indented
                cum.append((int(c), name.strip()))
    print("\n`run --help`, top-level imports by cumulative time (one run, -X importtime):")
    for c, name in sorted(cum, reverse=True)[:8]:
        print(f"- {name}: {c / 1e6:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
