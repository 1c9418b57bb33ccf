"""Peak memory of ``holopart-infer run`` against the number of parts and the input size.

Issue 16 item 5: the peak resident set size (RSS) of a run must stay flat in the
number of parts. Each case writes a synthetic object (tori on a grid, one glTF
node per part, made here: no downloads) and runs the CLI on the embedded
holopart-mini model in a fresh subprocess; the peak RSS is that child's
``ru_maxrss`` (``os.wait4``), so nothing of the harness or of another case is
counted. Cheap settings (small depth, few steps) keep a case to a minute or so
on 2 cores; memory, not time, is the figure of merit.

    python benchmarks/bench_memory.py                  # the default series, a table on stdout
    python benchmarks/bench_memory.py --json mem.json  # also write the figures
    python benchmarks/bench_memory.py --cases 10x2000,200x2000 --depth 7 --num-points 20480

A case ``PxF`` is P parts of about F faces each (``200x50000`` is the 10 M-face
input). ``--source DIR`` runs another checkout's package instead (e.g. a ``git
worktree`` of main, with the compiled ``holopart_infer/_cpp*.so`` copied into it)
for a before/after comparison in the same session.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ("10x2000", "50x2000", "200x2000", "10x1000000", "50x200000", "200x50000")


def torus(faces: int, major: float, minor: float) -> tuple[np.ndarray, np.ndarray]:
    """A closed torus of about ``faces`` triangles (an m x n quad grid, 2 m n faces)."""
    n = max(3, int(round(np.sqrt(max(faces, 18) / 2 / 3))))  # around the tube
    m = max(3, int(round(max(faces, 18) / 2 / n)))  # around the ring
    u = np.linspace(0, 2 * np.pi, m, endpoint=False)
    w = np.linspace(0, 2 * np.pi, n, endpoint=False)
    uu, ww = np.meshgrid(u, w, indexing="ij")
    r = major + minor * np.cos(ww)
    v = np.stack([r * np.cos(uu), r * np.sin(uu), minor * np.sin(ww)], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    a = i * n + j
    b = ((i + 1) % m) * n + j
    c = ((i + 1) % m) * n + (j + 1) % n
    d = i * n + (j + 1) % n
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return v, f.astype(np.int64)


def write_object(path: Path, num_parts: int, faces_per_part: int) -> int:
    """A glb of ``num_parts`` tori on a grid (one node per part); returns the face count."""
    import trimesh

    side = int(np.ceil(np.sqrt(num_parts)))
    scene = trimesh.Scene()
    total = 0
    for p in range(num_parts):
        v, f = torus(faces_per_part, 0.3 + 0.05 * (p % 3), 0.1 + 0.02 * (p % 2))
        v = v + np.array([p % side, p // side, 0.0])
        scene.add_geometry(trimesh.Trimesh(v, f, process=False), node_name=f"part_{p}", geom_name=f"part_{p}")
        total += len(f)
    path.write_bytes(scene.export(file_type="glb"))
    return total


#: the child: ``holopart_infer.cli.main`` from SOURCE (or the installed package when empty); an
#: editable install's import redirect is dropped so that SOURCE really is what runs
_CHILD = ("import sys; src = sys.argv.pop(1)\n"
          "if src:\n"
          "    sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]\n"
          "    sys.path.insert(0, src)\n"
          "import holopart_infer.cli as c\n"
          "assert not src or c.__file__.startswith(src), c.__file__\n"
          "sys.exit(c.main(sys.argv[1:]))")


def run_case(python: str, source: str, model: Path, src: Path, out: Path, args: list[str]) -> dict:
    """One CLI run in a fresh child; its peak RSS from ``wait4`` and its wall time."""
    cmd = [python, "-c", _CHILD, source, "run", str(src), "--model", str(model), "-o", str(out),
           "--overwrite", "--quiet", *args]
    env = dict(os.environ)
    t0 = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = out.with_suffix(".log").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    reported = None
    for line in text.splitlines():  # the CLI's own report, when it has one
        if "peak memory" in line:
            reported = line.strip()
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0, "wall_s": wall, "reported": reported}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated PxF (parts x faces/part)")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--num-points", type=int, default=None, help="default: the model's (512 for holopart-mini)")
    ap.add_argument("--extra", default="", help="more CLI flags for every run, e.g. '--no-decimate'")
    ap.add_argument("--python", default=sys.executable, help="interpreter whose holopart_infer runs")
    ap.add_argument("--source", default="", help="run the holopart_infer package of this checkout instead")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args(argv)

    model = REPO / "holopart_infer" / "assets" / "demo_model"
    flags = ["--depth", str(a.depth), "--steps", str(a.steps), *a.extra.split()]
    if a.num_points:
        flags += ["--num-points", str(a.num_points)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for case in a.cases.split(","):
            parts, faces = (int(x) for x in case.lower().split("x"))
            src = Path(tmp) / f"obj_{case}.glb"
            total = write_object(src, parts, faces)
            res = run_case(a.python, a.source, model, src, Path(tmp) / f"out_{case}.glb", flags)
            row = {"case": case, "parts": parts, "input_faces": total,
                   "input_mb": src.stat().st_size / 2 ** 20, **res}
            rows.append(row)
            print(f"{case:>12} {parts:5d} parts {total / 1e6:6.2f} M faces  peak RSS {res['peak_rss_mb']:8.1f} MB"
                  f"  {res['wall_s']:6.1f} s" + (f"  [{res['reported']}]" if res["reported"] else ""), flush=True)
            src.unlink()
    meta = {"label": a.label, "python": a.python, "source": a.source, "flags": flags,
            "machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                        time.gmtime())}
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
