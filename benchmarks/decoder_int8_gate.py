"""Quality gate for a reduced-precision decoder on the CPU (issue 16 item 1).

The decoder's ``vae_query`` graph quantized to int8 (ONNX Runtime dynamic
quantization: int8 weights, uint8 activations quantized per call, MatMulInteger)
is faster on the CPU (``bench_decoder_cpu.py``), but it moves the logits. Speed
alone does not decide; this gate does, on the extracted surface.

Protocol (fixed before any object was scored):

* objects: held-out synthetic assemblies (``export.synthetic.dataset_object``
  of data seed 4000, one of the embedded model's test seeds; never trained on),
  plus the shipped demo objects, completed by the embedded holopart-mini;
* each object is completed with the same seed and settings: once with
  the shipped fp32 ``vae_query``, then once per int8 variant swapped in (the
  denoised latents are the same; only the decoder differs);
* per part: volume IoU (40,000 points, ``export.evaluate.volume_iou``) and
  mean symmetric surface distance beyond sampling noise (20,000 surface
  samples a side, as tests/support.py measures it) over the part's
  bounding-box diagonal;
* pass: mean IoU >= 0.99, every part's IoU >= 0.97, every part's mean surface
  distance <= 0.2% of its diagonal (the tolerance the tests use for "the same
  solid", tests/support.py:assert_same_surface), and no part empty in one run
  but not the other. For scale: the ``balanced`` preset against the reference
  settings costs a mean IoU of about 0.976 (RESULTS.md, issue 16 item 4); a
  precision change must cost far less than a preset choice.

    .venv/bin/python benchmarks/decoder_int8_gate.py [--objects 8] [--depth 7] [--steps 20] [--variants int8,...]

Prints one line per object and variant, then each variant's verdict; the exit
status is 0 when every variant passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import surface_distance  # noqa: E402  (the measure the tests call "the same solid")

GATE = {"mean_iou": 0.99, "min_iou": 0.97, "max_rel_dist": 2e-3}


#: int8 variants: name -> (per-channel weights, keep the first and last weight MatMul in fp32, 7-bit weights)
VARIANTS = {"int8": (False, False, False), "int8-per-channel": (True, False, False), "int8-inner": (True, True, False),
            "int8-7bit": (False, False, True), "int8-7bit-per-channel": (True, False, True),
            "int8-7bit-inner": (True, True, True)}


def quantize(src: Path, dst: Path, variant: str) -> Path:
    """``src`` quantized dynamically to int8 weights (ONNX Runtime's quantize_dynamic) as ``variant``.

    ``int8``: every MatMul with a weight, one scale per tensor; ``int8-per-channel``:
    one scale per output channel; ``int8-inner``: per channel, but the first
    weight MatMul (the frequency embedding's projection) and the last (the
    projection to the logit) stay fp32. ``-7bit``: weights in 7 bits
    (``reduce_range``): on x86 CPUs without VNNI the u8 x s8 kernels add
    pairs of products in 16 bits, which can saturate with full-range weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel, inner, reduce_range = VARIANTS[variant]
    exclude = []
    if inner:
        model = onnx.load(str(src))
        weights = {i.name for i in model.graph.initializer}
        mm = [n.name for n in model.graph.node
              if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)]
        exclude = [mm[0], mm[-1]]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, nodes_to_exclude=exclude)
    return dst


def objects(n: int, tmp: Path) -> list[tuple[str, Path]]:
    from export.synthetic import dataset_object, write_example
    from holopart_infer import assets

    out = [(name, assets.demo_object_path(name)) for name in ("mug", "lamp", "table")]
    for i in range(n):
        obj = dataset_object(4000, i)
        out.append((f"heldout-{i}-{obj.template}", write_example(obj, tmp / f"heldout_{i}.glb")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=8, help="held-out synthetic objects besides the 3 demo objects")
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from export.evaluate import volume_iou
    from holopart_infer import assets
    from holopart_infer.engines.onnxruntime import cpu_session_options
    from holopart_infer.pipeline import load

    fp32 = load(assets.demo_model_path())
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    # full marching-cubes meshes: decimation would add its own error to the comparison
    opts = dict(depth=args.depth, steps=args.steps, seed=args.seed, decimate=None)
    scores = {v: {"iou": [], "dist": [], "empty_mismatch": [], "extract_s": []} for v in variants}
    fp32_extract_s = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        models = {}
        for v in variants:
            q = quantize(fp32.backend.manifest.graph("vae_query").path, tmp / f"vae_query.{v}.onnx", v)
            models[v] = load(assets.demo_model_path())
            models[v].backend._sessions["vae_query"] = ort.InferenceSession(
                str(q), cpu_session_options(), providers=["CPUExecutionProvider"])
        print(f"gate {GATE}; depth {args.depth}, {args.steps} steps, seed {args.seed}", flush=True)
        for name, path in objects(args.objects, tmp):
            ref = fp32.complete(path, **opts)
            fp32_extract_s.append(ref.timings.get("extract", 0.0))
            for v in variants:
                res = models[v].complete(path, **opts)
                sc = scores[v]
                sc["extract_s"].append(res.timings.get("extract", 0.0))
                o_iou, o_dist = [], []
                for a, b in zip(ref.parts, res.parts):
                    if (len(a.faces) == 0) != (len(b.faces) == 0):
                        sc["empty_mismatch"].append(f"{name}/{a.name}")
                        continue
                    if not len(a.faces):
                        continue
                    o_iou.append(volume_iou((a.vertices, a.faces), (b.vertices, b.faces), 40000,
                                            np.random.default_rng(0)))
                    diag = float(np.linalg.norm(np.ptp(np.asarray(a.vertices, np.float64), axis=0)))
                    o_dist.append(surface_distance((a.vertices, a.faces), (b.vertices, b.faces)) / diag)
                sc["iou"] += o_iou
                sc["dist"] += o_dist
                print(f"{name:<24} {v:<17} parts {len(o_iou):>2}  IoU mean {np.mean(o_iou):.4f} "
                      f"min {np.min(o_iou):.4f}  surface distance / diagonal max {np.max(o_dist):.2e}", flush=True)
    verdicts = {}
    print(f"extract seconds, median per object: fp32 {statistics.median(fp32_extract_s):.2f}")
    for v in variants:
        sc = scores[v]
        iou, dist = np.asarray(sc["iou"]), np.asarray(sc["dist"])
        ok = bool(iou.mean() >= GATE["mean_iou"] and iou.min() >= GATE["min_iou"]
                  and dist.max() <= GATE["max_rel_dist"] and not sc["empty_mismatch"])
        verdicts[v] = ok
        print(f"{v}: parts {len(iou)}: IoU mean {iou.mean():.4f} median {np.median(iou):.4f} min {iou.min():.4f}; "
              f"surface distance / diagonal median {np.median(dist):.2e} max {dist.max():.2e}; "
              f"empty in one run only: {sc['empty_mismatch'] or 'none'}; "
              f"extract s median {statistics.median(sc['extract_s']):.2f}; VERDICT: {'pass' if ok else 'fail'}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
