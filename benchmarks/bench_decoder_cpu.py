"""Decoder query throughput on the CPU against the same CPU's matrix-multiply rate (issue 16 item 1).

What it measures, per thread count (each in its own subprocess, so the BLAS
and ONNX Runtime thread pools are sized before anything starts):

* the CPU's matrix-multiply rate: a float32 GEMM of the decoder's own dominant
  shape, (parts*chunk, W) x (W, 4W) -- the feed-forward input projection --
  through ONNX Runtime's MatMul (MLAS, the kernels the decoder runs on) and
  through numpy (its BLAS). The higher of the two is the rate of the floor.
* decoder queries/s of ``vae_query`` (keys/values precomputed once, as
  extraction does) for each variant below, measured round-robin: every round
  runs every variant once, so a ratio is taken between runs seconds apart on
  the same (shared, noisy) machine; medians and spreads over rounds.
* flips: the share of query points whose inside/outside answer (sign of the
  logit) differs from the ``before`` row -- 0 for every fp32 variant.
* measured/floor = (seconds per query) / (matmul FLOP per query / GEMM rate):
  1.0 would mean the decoder runs as fast as its matrix products alone at the
  measured GEMM rate.

FLOP per query (one multiply-add = 2 FLOP; E = in_channels * (2F + 1) is the
frequency embedding's width, W the decoder width, T the latent tokens)::

    proj_query  2 E W         q projection  2 W^2      q k^T  2 T W
    p v         2 T W         out proj      2 W^2      MLP    16 W^2
    proj_out    2 W
    total       2 E W + 20 W^2 + 4 T W + 2 W     (benchmarks/flops.py)

Elementwise work is listed separately, not in the floor (it does not run at
GEMM rate): embedding 3F multiplies + 6F sin/cos, 3 LayerNorms (~8W), softmax
over H*T scores (exp), GELU over 4W (erf), residual/bias adds (~8W).

Variants, all the same function (max|diff| is the largest logit difference to
the first row), each a vae_query graph exported here from the same weights:

* ``before``       the export before issue 16 (the exporter's own GELU), ONNX
                   Runtime's default SessionOptions: what the backend ran before
* ``export-now``   today's export (GELU in the form ORT fuses into BiasGelu), default options
* ``now``          today's export with cpu_session_options(threads), the backend's CPU default
* ``backend``      (demo only) OrtBackend.decoder_query on the embedded model: the shipped path
* ``ort-spin`` / ``ort-nospin``  today's export, intra-op spinning on / off
* ``ort-basic``    graph optimization level BASIC instead of ALL
* ``ort-noarena``  no CPU memory arena and no memory pattern
* ``fused``        today's export through onnxruntime.transformers' fusions (adds a
                   second SkipLayerNormalization) -- an export-side candidate, not shipped
* ``int8``, ``int8-7bit``, ``int8-7bit-inner``, ...  onnxruntime.quantization.quantize_dynamic
                   (u8/s8 MatMulInteger), the recipes of ``decoder_int8_gate.py``, which
                   scores them on extracted surfaces -- speed probes here

Run (about 3-6 min on 2 busy cores)::

    .venv/bin/python benchmarks/bench_decoder_cpu.py                   # demo + mid, 1 and 2 threads
    .venv/bin/python benchmarks/bench_decoder_cpu.py --configs demo,mid,full --rounds 7
    .venv/bin/python benchmarks/bench_decoder_cpu.py --chunks 1024,2048,4096,8192,16384

The larger configs (random weights of export.random_checkpoint's presets; only
their vae_query graph is exported, into a temporary folder) need the torch extra.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# the larger configs: (preset, latent tokens T, query points per part per call)
LARGE = {"mid": ("mid", 512, 2048), "full": ("full", 2048, 256)}


# --------------------------------------------------------------------------- FLOPs
def embed_dim(vae_cfg: dict) -> int:
    return int(vae_cfg.get("in_channels", 3)) * (2 * int(vae_cfg["embed_frequency"]) + 1)


def query_flops(vae_cfg: dict, tokens: int) -> dict:
    """Matmul FLOP per query point (breakdown + "total"), as in benchmarks/flops.py."""
    from flops import decoder_query_per_point

    return decoder_query_per_point(vae_cfg, tokens)


def query_elementwise(vae_cfg: dict, tokens: int) -> dict:
    """Elementwise operations per query point (not part of the GEMM floor)."""
    W, H, F = int(vae_cfg["width_decoder"]), int(vae_cfg["num_attention_heads"]), int(vae_cfg["embed_frequency"])
    c = int(vae_cfg.get("in_channels", 3))
    return {"embed_mul": c * F, "sin_cos": 2 * c * F, "layernorm": 3 * 8 * W, "softmax_exp": H * tokens,
            "gelu_erf": 4 * W, "adds": 8 * W}


# --------------------------------------------------------------------------- worker
def _median(xs):
    import numpy as np

    return float(np.median(np.asarray(xs, dtype=np.float64)))


def _spread(xs):
    import numpy as np

    a = np.asarray(xs, dtype=np.float64)
    return float(np.percentile(a, 25)), float(np.percentile(a, 75))


def gemm_rates(rows: int, width: int, threads: int, repeats: int) -> dict:
    """GFLOP/s of a (rows, W) x (W, 4W) float32 product: ORT MatMul and numpy."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, width)).astype(np.float32)
    b = rng.standard_normal((width, 4 * width)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", width])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4 * width])],
                          [numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    flop = 2.0 * rows * width * 4 * width
    out = {"ort": [], "numpy": []}
    sess.run(None, {"a": a})
    a @ b
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"a": a})
        out["ort"].append(flop / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        a @ b
        out["numpy"].append(flop / (time.perf_counter() - t) / 1e9)
    return {k: _median(v) for k, v in out.items()}


def export_query_graphs(name: str, out_dir: Path):
    """vae_query of ``name`` exported twice: (before, now) paths, vae cfg, tokens, chunk, keys/values maker.

    "before" keeps the exporter's own GELU (the export before issue 16), "now" is
    what ``holopart-infer export`` writes today. demo: the embedded model's
    checkpoint (export/holopart_mini); mid/full: random weights of the preset.
    """
    import torch

    from holopart_infer.export.graphs.vae import graphs
    from holopart_infer.export.onnx_export import _export_graph
    from holopart_infer.export.random_checkpoint import PRESETS
    from holopart_infer.networks.vae import VAEConfig, VAEDecoder

    if name == "demo":
        from holopart_infer.export.make_demo_model import MINI_CHECKPOINT
        from holopart_infer.networks.load import load_networks

        ref = load_networks(MINI_CHECKPOINT).vae
        cfg = json.loads((MINI_CHECKPOINT / "vae" / "config.json").read_text())
        tokens = int(json.loads((MINI_CHECKPOINT / "model_index.json").read_text())
                     .get("inference_defaults", {}).get("latent_tokens", 64))
        chunk = None
    else:
        preset, tokens, chunk = LARGE[name]
        cfg = dict(PRESETS[preset]["vae"])
        torch.manual_seed(0)
        ref = VAEDecoder(VAEConfig.from_dict(cfg)).eval()
    paths = []
    for tag, fusable in (("before", False), ("now", True)):
        d = out_dir / tag
        d.mkdir(parents=True)
        g = [g for g in graphs(ref, torch.float32, tokens, fusable_gelu=fusable) if g.name == "vae_query"][0]
        paths.append(_export_graph(g, d, big=False))

    def make_kv(parts: int):
        gen = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            k, v = ref.decode_kv(torch.randn((parts, tokens, cfg["latent_channels"]), generator=gen))
        return k.numpy(), v.numpy()

    return paths[0], paths[1], cfg, tokens, chunk, make_kv


def variant_graphs(src: Path, vae_cfg: dict, out_dir: Path, want: set) -> dict:
    """Extra graph files of the export-side candidates: {"fused": path, "int8...": path}."""
    out = {}
    if "fused" in want:
        import logging

        from onnxruntime.transformers import optimizer

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        m = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(vae_cfg["num_attention_heads"]),
                                     hidden_size=int(vae_cfg["width_decoder"]), opt_level=0, use_gpu=False)
        out["fused"] = out_dir / "vae_query.fused.onnx"
        m.save_model_to_file(str(out["fused"]))
    from decoder_int8_gate import VARIANTS as INT8_VARIANTS, quantize  # the recipes the quality gate scores

    for v in sorted(want & set(INT8_VARIANTS)):
        out[v] = quantize(src, out_dir / f"vae_query.{v}.onnx", v)
    return out


def worker(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    from holopart_infer.engines.onnxruntime import OrtBackend, cpu_session_options
    from holopart_infer.model.manifest import load_manifest

    ort.set_default_logger_severity(3)
    threads = args.threads
    res = {"threads": threads, "configs": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_decoder_cpu_"))
    for name in args.configs.split(","):
        rng = np.random.default_rng(0)
        d = tmp / name
        before, src, vae_cfg, tokens, chunk, make_kv = export_query_graphs(name, d)
        chunk = chunk or args.chunk
        keys, values = make_kv(args.parts)
        backends = {}
        if name == "demo":  # the shipped path: OrtBackend on the embedded model, its default options
            from holopart_infer.assets import demo_model_path

            be = OrtBackend(load_manifest(demo_model_path()), session_options=cpu_session_options(threads))
            backends = {"backend": be}
        W = int(vae_cfg["width_decoder"])
        want = set(args.variants.split(",")) if args.variants else set()
        vdir = d / "variants"
        vdir.mkdir()
        extra = variant_graphs(Path(src), vae_cfg, vdir, want)

        def session(path, **opts):
            so = cpu_session_options(threads, **opts)
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def plain_session(path):  # ONNX Runtime's default SessionOptions: what the backend used before
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        runners = {}
        for v, s in (("before", plain_session(before)), ("export-now", plain_session(src)),
                     ("now", session(src))):
            runners[v] = (lambda s: lambda p: s.run(None, {"points": p, "keys": keys, "values": values})[0])(s)
        for bname, be in backends.items():
            runners[bname] = (lambda be: lambda p: be.decoder_query(p, (keys, values)))(be)
        sess_variants = {"ort-spin": dict(spinning=True), "ort-nospin": dict(spinning=False),
                         "ort-basic": dict(graph_optimization="basic"),
                         "ort-noarena": dict(memory_arena=False)}
        for v, opts in sess_variants.items():
            if v in want:
                s = session(src, **opts)
                runners[v] = (lambda s: lambda p: s.run(None, {"points": p, "keys": keys, "values": values})[0])(s)
        for v, path in extra.items():
            s = session(path)
            runners[v] = (lambda s: lambda p: s.run(None, {"points": p, "keys": keys, "values": values})[0])(s)

        pts = rng.uniform(-1.05, 1.05, (args.parts, chunk, 3)).astype(np.float32)
        ref_out = next(iter(runners.values()))(pts)
        agree, flips = {}, {}
        for v, r in runners.items():
            out = r(pts)
            agree[v] = float(np.max(np.abs(out - ref_out)))
            flips[v] = float(np.mean((out > 0) != (ref_out > 0)))  # inside/outside answers that change
        times = {v: [] for v in runners}
        gemm = {"ort": [], "numpy": []}
        order = list(runners)
        for i in range(args.rounds):
            # rotate the order each round, so no variant always follows the GEMM or another variant
            for v in order[i % len(order):] + order[:i % len(order)]:
                r = runners[v]
                t = time.perf_counter()
                r(pts)
                times[v].append(time.perf_counter() - t)
            g = gemm_rates(args.parts * chunk if name == "demo" else min(args.parts * chunk, 65536), W, threads, 1)
            for k in gemm:
                gemm[k].append(g[k])
        chunks = {}
        if name == "demo" and args.chunks:
            sizes = [int(c) for c in args.chunks.split(",")]
            total = max(sizes) * args.parts
            big = rng.uniform(-1.05, 1.05, (args.parts, max(sizes), 3)).astype(np.float32)
            run = runners["backend"]  # the shipped path
            ct = {c: [] for c in sizes}
            for _ in range(args.rounds):
                for c in sizes:
                    t = time.perf_counter()
                    for s0 in range(0, max(sizes), c):
                        run(big[:, s0:s0 + c])
                    ct[c].append(time.perf_counter() - t)
            chunks = {c: {"qps_median": total / _median(ct[c]),
                          "qps_iqr": [total / x for x in reversed(_spread(ct[c]))]} for c in sizes}
        fl = query_flops(vae_cfg, tokens)
        rate = max(_median(gemm["ort"]), _median(gemm["numpy"]))
        floor_s = fl["total"] / (rate * 1e9)
        q = args.parts * chunk
        base = "before"
        rows = {}
        for v, ts in times.items():
            sec_per_q = _median(ts) / q
            ratios = [b / t for b, t in zip(times[base], ts)]
            rows[v] = {"qps_median": q / _median(ts), "qps_iqr": [q / x for x in reversed(_spread(ts))],
                       "measured_over_floor": sec_per_q / floor_s, "speedup_vs_" + base: _median(ratios),
                       "speedup_iqr": list(_spread(ratios)), "max_abs_diff": agree[v],
                       "occupancy_flips": flips[v]}
        res["configs"][name] = {"width": W, "heads": int(vae_cfg["num_attention_heads"]), "tokens": tokens,
                                "parts": args.parts, "chunk": chunk, "flops_per_query": fl,
                                "elementwise_per_query": query_elementwise(vae_cfg, tokens),
                                "gemm_gflops": {k: _median(v) for k, v in gemm.items()},
                                "floor_qps": 1.0 / floor_s, "variants": rows, "chunk_sweep": chunks,
                                "baseline": base}
    return res


# --------------------------------------------------------------------------- driver
def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        for name, c in r["configs"].items():
            lines.append(f"\n== {name}: W={c['width']} H={c['heads']} T={c['tokens']}, {c['parts']} parts x "
                         f"{c['chunk']} points per call, {r['threads']} thread(s) ==")
            fl = c["flops_per_query"]
            lines.append(f"matmul FLOP/query {fl['total']:,} ({', '.join(f'{k} {v:,}' for k, v in fl.items() if k != 'total')})")
            g = c["gemm_gflops"]
            lines.append(f"GEMM ({c['parts'] * c['chunk']}x{c['width']} @ {c['width']}x{4 * c['width']}): "
                         f"ORT {g['ort']:.1f} GFLOP/s, numpy {g['numpy']:.1f} GFLOP/s -> floor "
                         f"{c['floor_qps'] / 1e6:.3f} M queries/s")
            lines.append(f"{'variant':<16} {'M q/s median':>12} {'[IQR]':>17} {'meas/floor':>10} "
                         f"{'x vs ' + c['baseline']:>12} {'[IQR]':>13} {'max|diff|':>9} {'flips':>7}")
            for v, row in c["variants"].items():
                sp = row[[k for k in row if k.startswith("speedup_vs_")][0]]
                lo, hi = row["qps_iqr"]
                slo, shi = row["speedup_iqr"]
                lines.append(f"{v:<16} {row['qps_median'] / 1e6:>12.3f} [{lo / 1e6:6.3f}, {hi / 1e6:6.3f}] "
                             f"{row['measured_over_floor']:>10.2f} {sp:>12.3f} [{slo:5.2f},{shi:5.2f}] "
                             f"{row['max_abs_diff']:>9.1e} {row['occupancy_flips']:>7.2%}")
            if c["chunk_sweep"]:
                lines.append("points per part per call (backend):  " + ",  ".join(
                    f"{k}: {v['qps_median'] / 1e6:.3f} M q/s" for k, v in c["chunk_sweep"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="demo,mid", help="comma list of demo, mid, full")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=8192, help="points per part per call (demo)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="ort-spin,ort-nospin,ort-basic,ort-noarena,fused,int8,int8-7bit,"
                                          "int8-7bit-inner")
    ap.add_argument("--chunks", default="1024,2048,4096,8192,16384",
                    help="points-per-call sweep on the demo model ('' to skip)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        print(json.dumps(worker(args)))
        return 0
    results = []
    for th in (int(t) for t in args.threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=str(th), OPENBLAS_NUM_THREADS=str(th), MKL_NUM_THREADS=str(th))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(th), "--configs", args.configs,
               "--parts", str(args.parts), "--chunk", str(args.chunk), "--rounds", str(args.rounds),
               "--variants", args.variants, "--chunks", args.chunks]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            sys.stderr.write(p.stderr)
            return p.returncode
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    head = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu_name(),
            "cores": os.cpu_count(), "onnxruntime": __import__("onnxruntime").__version__,
            "commit": _commit(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    print(" | ".join(f"{k}: {v}" for k, v in head.items()))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"run": head, "results": results}, indent=1))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
