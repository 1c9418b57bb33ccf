"""Host-side extraction work with a free decoder: this tree's extract.py against
an earlier commit's, side by side in one process (issue 28 item 2).

Eight analytic parts (spheres, thin slabs, tori, wavy shells; logits = 60 x signed distance,
as sharp as the model's) are extracted by both versions of
``holopart_infer.extraction.extract`` (the earlier one read with ``git show REV:...`` and
imported under another name), alternating which goes first. The decoder is an
analytic field; its time (``stats.decode_seconds``) is subtracted, so "host" is
the extraction's own work: band, dilation, refinement, growth rounds, the fine
grid, marching cubes. Each pair checks that queries per part and meshes
(vertices and faces) are identical.

    python benchmarks/bench_extract_host.py [--depth 8 9] [--pairs 3] [--before REV] [--model-object OBJ]
    python benchmarks/bench_extract_host.py --resident [--depth 7 8] [--before REV]
                                           [--before-kernels] [--threads 1 2]

``--resident``: the same for ``holopart_infer.extraction.resident.extract_meshes_resident``
on CPU torch tensors (the decoder: the same analytic fields through numpy), the
earlier commit's resident.py run against that commit's extract.py.
``--before-kernels`` also builds REV's cpp_ext (CMake, CPU module only, into a
temporary folder) and runs the earlier extract.py on those kernels, so "before"
is REV's code throughout (without it the earlier extract.py runs on this tree's
band_cells / refine_points). ``--threads N ...`` repeats everything with
HOLOPART_NUM_THREADS=N (both versions' kernels read it on every call).

``--model-object OBJ`` (or ``standin``: bench_feed.py's 68-part stand-in) takes the
parts' fields from the embedded model instead: one ``HoloPart.complete`` call on
the object's first ``--parts`` parts captures the pipeline's decode callback
(the real decoder against the sampled key/values), and both versions extract
with it. Model fields are noisier than the analytic ones: the final level grows
for several rounds (the analytic parts need one).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

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
        kind = i % 4

        def f(p, c=c, r=r, kind=kind):
            p = p.astype(np.float32) - c
            if kind == 0:
                d = r - np.sqrt((p * p).sum(1))
            elif kind == 1:
                d = np.minimum(0.05 - np.abs(p[:, 1]), r - np.abs(p).max(1))
            elif kind == 2:
                q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - r
                d = 0.12 - np.sqrt(q * q + p[:, 1] ** 2)
            else:  # a wavy shell: the surface wanders through dilation cells (more growth rounds)
                w = np.sin(157.0 * p[:, 0]) * np.sin(161.0 * p[:, 1]) * np.sin(163.0 * p[:, 2])
                d = r - np.sqrt((p * p).sum(1)) + np.float32(0.02) * w
            return (60.0 * d).astype(np.float32)

        fields.append(f)
    return fields


def load_before(rev: str, module: str = "extract"):
    """``holopart_infer.<module>`` as of ``rev``, imported as ``<module>_before``; an
    earlier resident.py is bound to the earlier extract.py."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:holopart_infer/{module}.py"], check=True,
                         capture_output=True, text=True).stdout
    if module == "resident":
        load_before(rev, "extract")
        src = src.replace("from holopart_infer import extract, native",
                          "import extract_before as extract\nfrom holopart_infer import native")
    path = Path(tempfile.mkdtemp(prefix=f"{module}_before_")) / f"{module}_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"{module}_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"{module}_before"] = mod
    _alias_flat_modules()  # a revision from before the layout by concern imports the flat names
    spec.loader.exec_module(mod)
    return mod


def _alias_flat_modules() -> None:
    """Make ``from holopart_infer import native`` (and the other modules an earlier
    extract.py / resident.py imports by their flat names) resolve to today's modules."""
    import holopart_infer
    from holopart_infer.extraction import mcubes, native
    from holopart_infer.postprocess import cleanup

    for name, mod in (("native", native), ("mcubes", mcubes), ("cleanup", cleanup)):
        sys.modules.setdefault(f"holopart_infer.{name}", mod)
        if not hasattr(holopart_infer, name):
            setattr(holopart_infer, name, mod)


def resident_runner(mod, fields):
    """mod.extract_meshes_resident as an extract_meshes-like call: CPU torch
    tensors, the analytic fields computed by numpy on the same points."""
    import torch

    def query(pts):
        host = pts.numpy()
        return torch.from_numpy(np.stack([f(host[i]) for i, f in enumerate(fields)]))

    return lambda decode, n, **kw: mod.extract_meshes_resident(query, n, device="cpu", **kw)


def build_kernels(rev: str):
    """REV's CPU kernels module (cpp_ext built with CMake into a temporary folder)."""
    import os

    import pybind11

    d = Path(tempfile.mkdtemp(prefix="cpp_before_"))
    subprocess.run(f"git -C '{REPO}' archive {rev} cpp_ext | tar -x -C '{d}'", shell=True, check=True)
    gen = ["-G", "Ninja"] if subprocess.run(["which", "ninja"], capture_output=True).returncode == 0 else []
    subprocess.run(["cmake", "-S", str(d / "cpp_ext"), "-B", str(d / "build"), "-DHOLOPART_CUDA=OFF",
                    "-DCMAKE_BUILD_TYPE=Release", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                    f"-DPython_EXECUTABLE={sys.executable}", *gen], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(d / "build"), "--target", "_cpp", "-j", str(os.cpu_count() or 1)],
                   check=True, capture_output=True)
    so = next((d / "build").glob("_cpp*.so"))
    spec = importlib.util.spec_from_file_location("kernels_before._cpp", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class KernelShim:
    """The parts of holopart_infer.extraction.native an earlier extract.py calls, on another kernels module."""

    def __init__(self, mod):
        self.mod = mod

    def kernels(self, device="cpu"):
        return self.mod

    def band_cells(self, values, band, device="cpu"):
        return self.mod.band_cells(np.ascontiguousarray(values, np.float32), float(band))

    def dilate_cells(self, cells, radius=1, device="cpu"):
        return self.mod.dilate_cells(np.ascontiguousarray(cells, np.uint8), int(radius))

    def refine_points(self, cells, coarse_values=None, device="cpu"):
        cv = None if coarse_values is None else np.ascontiguousarray(coarse_values, np.float32)
        return self.mod.refine_points(np.ascontiguousarray(cells, np.uint8), cv)


def capture_model_decode(obj: str, n: int, depth: int):
    """The embedded model's decode callback for the first ``n`` parts of ``obj``
    (captured from one ``complete`` call) and the number of parts."""
    import holopart_infer as hp
    from holopart_infer import assets
    from holopart_infer.extraction import extract as ex
    from holopart_infer.io.parts_io import Parts, load_parts

    if obj == "standin":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_feed import standin_object

        obj = str(standin_object(Path(tempfile.mkdtemp(prefix="standin_"))))
    ps = load_parts(obj)
    ps = Parts(parts=ps.parts[:n], source=ps.source, kind=ps.kind)
    captured, real = [], ex.extract_meshes

    def spy(decode, num_parts, **kw):
        if not captured:
            captured.append((decode, num_parts))
        return real(decode, num_parts, **kw)

    ex.extract_meshes = spy
    try:
        hp.load(assets.demo_model_path()).complete(ps, depth=depth, seed=0, decimate=None, thin_parts=False)
    finally:
        ex.extract_meshes = real
    return captured[0]


def main(argv=None) -> int:
    from holopart_infer.extraction import extract as after

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs="+", default=[8, 9])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--model-object", default=None)
    ap.add_argument("--resident", action="store_true", help="resident.extract_meshes_resident, CPU tensors")
    ap.add_argument("--before-kernels", action="store_true")
    ap.add_argument("--threads", type=int, nargs="+", default=[0], help="HOLOPART_NUM_THREADS values (0: unset)")
    args = ap.parse_args(argv)
    fields = parts(args.parts)
    if args.resident:
        from holopart_infer.extraction import resident

        before = SimpleNamespace(extract_meshes=resident_runner(load_before(args.before, "resident"), fields))
        after = SimpleNamespace(extract_meshes=resident_runner(resident, fields))
    else:
        before = load_before(args.before)
        if args.before_kernels:
            before.native = KernelShim(build_kernels(args.before))

    def decode(batch):
        return [f(p) for f, p in zip(fields, batch)]

    n_parts = len(fields)
    if args.model_object and not args.resident:
        decode, n_parts = capture_model_decode(args.model_object, args.parts, max(args.depth))

    import os

    rows = []
    for threads in args.threads:
        if threads:
            os.environ["HOLOPART_NUM_THREADS"] = str(threads)
        else:
            os.environ.pop("HOLOPART_NUM_THREADS", None)
        for depth in args.depth:
            for pair in range(args.pairs):
                order = [("before", before), ("after", after)]
                if pair % 2:
                    order.reverse()
                got = {}
                for name, mod in order:
                    meshes, st = mod.extract_meshes(decode, n_parts, depth=depth, chunk_points=8192)
                    got[name] = (meshes, st)
                    rec = dict(threads=threads, depth=depth, pair=pair, version=name,
                               host_seconds=round(st.total_seconds - st.decode_seconds, 3),
                               total_seconds=round(st.total_seconds, 3), queries=st.total_queries,
                               decode_calls=st.decode_calls)
                    rows.append(rec)
                    print(json.dumps(rec), flush=True)
                (mb, sb), (ma, sa) = got["before"], got["after"]
                same = sb.queries_per_part == sa.queries_per_part and all(
                    np.array_equal(x.vertices, y.vertices) and np.array_equal(x.faces, y.faces)
                    for x, y in zip(mb, ma))
                rows.append(dict(threads=threads, depth=depth, pair=pair, version="identity", identical=bool(same)))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| threads | depth | version | host s median [p25-p75] | queries | before/after per pair | meshes, queries |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for depth in args.depth:
            rs = [r for r in rows if r["depth"] == depth and r["threads"] == threads]
            same = all(r["identical"] for r in rs if r["version"] == "identity")
            by = {v: [r for r in rs if r["version"] == v] for v in ("before", "after")}
            ratio = [b["host_seconds"] / a["host_seconds"] for b, a in zip(by["before"], by["after"])]
            for v in ("before", "after"):
                h = np.asarray([r["host_seconds"] for r in by[v]])
                sp = "%.2fx [%.2f-%.2f]" % (np.median(ratio), min(ratio), max(ratio)) if v == "after" else ""
                print(f"| {threads or 'all'} | {depth} | {v} | {np.median(h):.2f} [{np.percentile(h, 25):.2f}-"
                      f"{np.percentile(h, 75):.2f}] | {by[v][0]['queries']:,} | {sp} | "
                      f"{'identical' if same else 'DIFFERENT'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
