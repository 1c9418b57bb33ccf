"""Marching cubes: holopart_infer (threaded C++) vs scikit-image on the same field.

pytest-benchmark suite:
    python -m pytest benchmarks/bench_mcubes.py --benchmark-enable --benchmark-json=mc.json
Pair-by-pair ratios and peak memory (one command, prints a table):
    python benchmarks/bench_mcubes.py --pairs 9
Time pairs alternate ours / scikit-image in one process after a warm-up, on
1 and 2 threads (HOLOPART_NUM_THREADS is set per call; scikit-image is
single-threaded). Peak memory is measured in a fresh subprocess per
implementation and field: the rise of the peak resident set (VmHWM, reset
just before the call) above the resident set before it, after a warm-up call
on a small crop, so imports and the volume itself are not counted.
"""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.extraction.mcubes import marching_cubes

ROUNDS = {128: 10, 256: 5, 512: 3}
KINDS = ("smooth", "hard", "blobs")
_fields: dict[tuple[str, int], np.ndarray] = {}


def smooth_field(n: int) -> np.ndarray:
    """Union of a sphere and a torus (positive inside), n^3 float32 over [-1, 1]^3."""
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
    sph = 0.45 - np.sqrt((X - 0.2) ** 2 + Y ** 2 + Z ** 2)
    tor = 0.15 - np.sqrt((np.sqrt(X ** 2 + Y ** 2) - 0.6) ** 2 + (Z + 0.1) ** 2)
    return np.ascontiguousarray(np.maximum(sph, tor), dtype=np.float32)


def hard_field(n: int) -> np.ndarray:
    """Thin gyroid shell (positive inside a slab of width 0.5 around the gyroid),
    1.5 periods across n points: thin sheets cut by the border, ~1.9 M faces at 256^3."""
    x = np.linspace(0.0, 3.0 * np.pi, n, dtype=np.float32)
    X, Y, Z = x[:, None, None], x[None, :, None], x[None, None, :]
    g = np.sin(X) * np.cos(Y) + np.sin(Y) * np.cos(Z) + np.sin(Z) * np.cos(X)
    # A tiny irrational offset keeps grid values off the level exactly.
    return np.ascontiguousarray(0.25 - np.abs(g) + np.float32(1e-4 * np.sqrt(2.0)), dtype=np.float32)


def blob_field(n: int, waves: int = 24, wavelength: float = 9.0, seed: int = 7) -> np.ndarray:
    """Noise-like field of many small separate blobs: a sum of `waves` random
    plane waves of about `wavelength` points (fixed seed), normalised to unit
    variance and shifted down by 1.6, so about 5% of the points are inside, in
    thousands of small components (14,678 at 256^3, ~3.5 M faces)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = (2.0 * np.pi / wavelength) * dirs * rng.uniform(0.8, 1.25, (waves, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, waves)
    idx = np.arange(n, dtype=np.float32)
    out = np.zeros((n, n, n), np.float32)
    for m in range(waves):
        t = (np.float32(k[m, 0]) * idx)[:, None, None] + (np.float32(k[m, 1]) * idx)[None, :, None]
        t = t + (np.float32(k[m, 2]) * idx + np.float32(phase[m]))[None, None, :]
        np.cos(t, out=t)
        out += t
    out *= np.float32(1.0 / np.sqrt(waves / 2.0))
    out -= np.float32(1.6)
    return out


def field(kind: str, n: int) -> np.ndarray:
    if (kind, n) not in _fields:
        make = {"smooth": smooth_field, "hard": hard_field, "blobs": blob_field}[kind]
        _fields[kind, n] = make(n)
    return _fields[kind, n]


@pytest.mark.parametrize("impl", ["holopart", "skimage"])
@pytest.mark.parametrize("kind,n", [("smooth", 128), ("smooth", 256), ("smooth", 512),
                                    ("hard", 256), ("blobs", 256)])
def test_marching_cubes(benchmark, kind, n, impl):
    skimage_measure = pytest.importorskip("skimage.measure")
    vol = field(kind, n)
    fn = (lambda: marching_cubes(vol, 0.0)) if impl == "holopart" else (
        lambda: skimage_measure.marching_cubes(vol, 0.0))
    benchmark.group = f"mcubes-{kind}-{n}"
    out = benchmark.pedantic(fn, rounds=ROUNDS[n], iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(n=n, kind=kind, impl=impl, vertices=len(out[0]), faces=len(out[1]))


# ------------------------------------------------------------ memory ------

_MEM_CHILD = r"""
import gc, json, resource, sys
import numpy as np
impl, path = sys.argv[1], sys.argv[2]
vol = np.load(path)
if impl == "holopart":
    from holopart_infer.extraction.mcubes import marching_cubes as fn
else:
    from skimage.measure import marching_cubes as fn
x = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
fn(0.5 - np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2),
   0.0)  # warm-up on a small sphere: lazy imports, tables
gc.collect()

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None

try:  # reset the peak-RSS mark (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    method = "VmHWM reset"
except OSError:
    method = "ru_maxrss"
base = status("VmRSS:")
out = fn(vol, 0.0)
peak = status("VmHWM:") if method == "VmHWM reset" else resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"delta": peak - base, "out": int(sum(o.nbytes for o in out)),
                  "faces": int(len(out[1])), "method": method}))
"""


def peak_memory(vol: np.ndarray, impl: str, threads: str) -> dict:
    """Peak resident-set rise of one call in a fresh subprocess (bytes)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vol.npy")
        np.save(path, vol)
        env = dict(os.environ, HOLOPART_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", _MEM_CHILD, impl, path], env=env,
                             capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"memory probe for {impl} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------- pairs ------

def _pairs(rounds: int, kinds: list[str], n: int, threads: list[str], memory: bool) -> None:
    import os
    import platform
    import time

    from skimage import __version__ as sk_version
    from skimage.measure import marching_cubes as sk

    targets = {"1": 2.5, "2": 4.0}
    load0 = os.getloadavg()
    print(f"# marching cubes, ours vs scikit-image {sk_version}, {n}^3, level 0, "
          f"{rounds} pairs (ours, skimage alternating) after a warm-up")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average at start "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    rows, mem_rows = [], []
    for kind in kinds:
        vol = field(kind, n)
        sk_out = sk(vol, 0.0)
        for th in threads:
            os.environ["HOLOPART_NUM_THREADS"] = th
            hp_out = marching_cubes(vol, 0.0)  # warm-up
            th_, ts_, r_ = [], [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                marching_cubes(vol, 0.0)
                t1 = time.perf_counter()
                sk(vol, 0.0)
                t2 = time.perf_counter()
                th_.append(t1 - t0)
                ts_.append(t2 - t1)
                r_.append((t2 - t1) / (t1 - t0))
            r = np.array(r_)
            med = float(np.median(r))
            rows.append((kind, (len(hp_out[0]), len(sk_out[0])), (len(hp_out[1]), len(sk_out[1])),
                         th, np.median(th_) * 1e3,
                         np.median(ts_) * 1e3, med, r.min(), r.max(),
                         "yes" if med >= targets.get(th, 0) else "NO"))
            del hp_out
        if memory:
            ours = peak_memory(vol, "holopart", threads[-1])
            theirs = peak_memory(vol, "skimage", "1")
            mem_rows.append((kind, ours, theirs))
        del sk_out
    load1 = os.getloadavg()
    print()
    print("| field | vertices ours / skimage | faces ours / skimage | threads | ours median ms | "
          "skimage median ms | speed-up median (min..max) | target met |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, (vh, vs), (fh, fs), th, mh, ms, med, lo, hi, ok) in rows:
        tgt = {"1": "2.5x", "2": "4x"}.get(th, "-")
        dv = "" if vh == vs else f" ({vh - vs:+,})"
        df = "" if fh == fs else f" ({(fh - fs) / fs:+.3%})"
        print(f"| {kind} {n}³ | {vh:,} / {vs:,}{dv} | {fh:,} / {fs:,}{df} | {th} | {mh:.0f} | "
              f"{ms:.0f} | **{med:.2f}x** ({lo:.2f}..{hi:.2f}) | {ok} (≥{tgt}) |")
    if mem_rows:
        print()
        print(f"| field | ours peak rise MB ({threads[-1]} threads) | skimage peak rise MB | "
              "ours / skimage | outputs MB ours / skimage |")
        print("|---|---|---|---|---|")
        for kind, o, t in mem_rows:
            print(f"| {kind} {n}³ | {o['delta'] / 2**20:.1f} | {t['delta'] / 2**20:.1f} | "
                  f"{o['delta'] / max(t['delta'], 1):.2f} | {o['out'] / 2**20:.1f} / "
                  f"{t['out'] / 2**20:.1f} |")
        print(f"# memory method: {mem_rows[0][1]['method']} (fresh subprocess per row)")
    print(f"# load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=7, help="timed pairs per field and thread count")
    ap.add_argument("--n", type=int, default=256, help="points per axis")
    ap.add_argument("--fields", default=",".join(KINDS), help=f"comma list of {KINDS}")
    ap.add_argument("--threads", default="1,2", help="comma list of HOLOPART_NUM_THREADS values")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    a = ap.parse_args()
    _pairs(a.pairs, a.fields.split(","), a.n, a.threads.split(","), not a.no_memory)
