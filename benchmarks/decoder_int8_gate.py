"""Quality gate for a reduced-precision decoder on the CPU (issue 16 item 1).

The decoder's ``vae_query`` graph quantized to int8 (ONNX Runtime dynamic
quantization: int8 weights, uint8 activations quantized per call, MatMulInteger)
is faster on the CPU (``bench_decoder_cpu.py``), but it moves the logits. Speed
alone does not decide; this gate does, on the extracted surface.

Protocol (fixed before any object was scored):

* objects: held-out synthetic assemblies (``export.synthetic.dataset_object``
  of data seed 4000, one of the embedded model's test seeds; never trained on),
  plus the shipped demo objects, completed by the embedded holopart-mini;
* each object is completed twice with the same seed and settings: once with
  the shipped fp32 ``vae_query``, once with the int8 one swapped in (the
  denoised latents are the same; only the decoder differs);
* per part: volume IoU (40,000 points, ``export.evaluate.volume_iou``) and
  mean symmetric surface distance (20,000 surface samples a side) over the
  part's bounding-box diagonal;
* pass: mean IoU >= 0.99, every part's IoU >= 0.97, every part's mean surface
  distance <= 0.2% of its diagonal (the tolerance the tests use for "the same
  solid", tests/support.py:assert_same_surface), and no part empty in one run
  but not the other. For scale: the ``balanced`` preset against the reference
  settings costs a mean IoU of about 0.976 (RESULTS.md, issue 16 item 4); a
  precision change must cost far less than a preset choice.

    .venv/bin/python benchmarks/decoder_int8_gate.py [--objects 8] [--depth 7] [--steps 20]

Prints one line per object and the verdict; the exit status is 0 on pass, 1 on fail.
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

GATE = {"mean_iou": 0.99, "min_iou": 0.97, "max_rel_dist": 2e-3}


def quantize(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def mean_surface_distance(a, b, n: int, seed: int) -> float:
    """Mean symmetric distance between surface samples of meshes a and b ((vertices, faces))."""
    import trimesh
    from scipy.spatial import cKDTree

    ma, mb = (trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False) for v, f in (a, b))
    pa = trimesh.sample.sample_surface(ma, n, seed=seed)[0]
    pb = trimesh.sample.sample_surface(mb, n, seed=seed + 1)[0]
    return 0.5 * (float(cKDTree(pb).query(pa)[0].mean()) + float(cKDTree(pa).query(pb)[0].mean()))


def objects(n: int, tmp: Path) -> list[tuple[str, Path]]:
    from export.synthetic import dataset_object, write_example
    from holopart_infer import assets

    out = [(name, assets.demo_object_path(name)) for name in ("mug", "lamp", "table")]
    for i in range(n):
        obj = dataset_object(4000, i)
        out.append((f"heldout-{i}-{obj.template}", write_example(obj, tmp / f"heldout_{i}.glb")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=8, help="held-out synthetic objects besides the 3 demo objects")
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import onnxruntime as ort

    from export.evaluate import volume_iou
    from holopart_infer import assets
    from holopart_infer.engines.onnxruntime import cpu_session_options
    from holopart_infer.pipeline import load

    fp32 = load(assets.demo_model_path())
    int8 = load(assets.demo_model_path())
    opts = dict(depth=args.depth, steps=args.steps, seed=args.seed)
    ious, dists, times = [], [], {"fp32": [], "int8": []}
    empty_mismatch = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        q = quantize(fp32.backend.manifest.graph("vae_query").path, tmp / "vae_query.int8.onnx")
        int8.backend._sessions["vae_query"] = ort.InferenceSession(str(q), cpu_session_options(),
                                                                   providers=["CPUExecutionProvider"])
        print(f"gate {GATE}; depth {args.depth}, {args.steps} steps, seed {args.seed}", flush=True)
        for name, path in objects(args.objects, tmp):
            res = {}
            for tag, model in (("fp32", fp32), ("int8", int8)):
                res[tag] = model.complete(path, **opts)
                times[tag].append(res[tag].timings.get("extract", 0.0))
            o_iou, o_dist = [], []
            for a, b in zip(res["fp32"].parts, res["int8"].parts):
                if (len(a.faces) == 0) != (len(b.faces) == 0):
                    empty_mismatch.append(f"{name}/{a.name}")
                    continue
                if not len(a.faces):
                    continue
                iou = volume_iou((a.vertices, a.faces), (b.vertices, b.faces), 40000, np.random.default_rng(0))
                diag = float(np.linalg.norm(np.ptp(np.asarray(a.vertices, np.float64), axis=0)))
                d = mean_surface_distance((a.vertices, a.faces), (b.vertices, b.faces), 20000, 0) / diag
                o_iou.append(iou)
                o_dist.append(d)
            ious += o_iou
            dists += o_dist
            print(f"{name:<24} parts {len(o_iou):>2}  IoU mean {np.mean(o_iou):.4f} min {np.min(o_iou):.4f}  "
                  f"surface distance / diagonal max {np.max(o_dist):.2e}  extract s fp32 {times['fp32'][-1]:.2f} "
                  f"int8 {times['int8'][-1]:.2f}", flush=True)
    ok = (np.mean(ious) >= GATE["mean_iou"] and np.min(ious) >= GATE["min_iou"]
          and np.max(dists) <= GATE["max_rel_dist"] and not empty_mismatch)
    print(f"parts {len(ious)}: IoU mean {np.mean(ious):.4f} median {np.median(ious):.4f} min {np.min(ious):.4f}; "
          f"surface distance / diagonal median {np.median(dists):.2e} max {np.max(dists):.2e}; "
          f"empty in one run only: {empty_mismatch or 'none'}")
    print(f"extract seconds, median per object: fp32 {statistics.median(times['fp32']):.2f}, "
          f"int8 {statistics.median(times['int8']):.2f}")
    print("VERDICT:", "pass" if ok else "fail")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
