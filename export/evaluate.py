"""Evaluate part completion on held-out synthetic objects (issue 8).

Metrics per part, computed between a predicted mesh and the complete ground-truth
part (:mod:`holopart_infer.export.synthetic`), all in the object frame (longest side spans
[-1, 1], so the object scale is 2):

* **Chamfer distance**: ``0.5 * (mean_a min_b |a-b| + mean_b min_a |b-a|)`` over
  ``n_surface`` area-weighted surface samples of each mesh (L2 distances, not
  squared; scipy ``cKDTree``).
* **F1** at ``tau = 0.02 * object scale`` (0.04 here): precision = share of
  predicted samples within tau of the ground-truth samples, recall = the
  converse, F1 their harmonic mean.
* **Volume IoU**: ``n_volume`` uniform points in the union of both meshes'
  bounding boxes (padded by 5%). Inside test: crossing parity along vertical
  lines for closed meshes (ground truth, hull, the model's marching-cubes
  output); generalized winding number > 0.5
  (:func:`holopart_infer.export.synthetic.winding_number`) for open ones (``patch``).
* **Success**: IoU > 0.5 (``success_iou``).

Methods compared, all given only what HoloPart gets (the visible patches):

* ``model``: the shipped path. An exported model dir (``holopart-infer export``)
  loaded with :func:`holopart_infer.load` on ONNX Runtime, then
  ``complete(obj.input_parts(), ...)``.
* ``hull`` (the baseline that does not complete by learning): the convex hull
  of the visible patch's vertices. A planar or degenerate patch has no hull;
  the prediction is then the patch itself (zero volume: IoU 0).
* ``patch``: the visible patch as it is, no closing; its inside is the
  winding number > 0.5 of the open patch.

"Occluded" parts are parts with less than ``occluded_below`` (default 0.95) of
their surface area visible. Training objects are ``(data_seed, i)`` with
data_seed 0 by default; evaluation objects are ``(seed, i)`` with ``seed``
1000, so the two sets never share a seed.

CLI::

    python -m holopart_infer.export.evaluate --model MODEL_DIR --objects 20 --out results.json
    python -m holopart_infer.export.evaluate --baselines-only --objects 20
    python -m holopart_infer.export.evaluate --compare a.json b.json   # pooled table + paired differences
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("holopart_infer.evaluate")

EVAL_SEED = 1000
METHODS = ("model", "hull", "patch")
OBJECT_SCALE = 2.0  # longest side of a normalized synthetic object


# ----------------------------------------------------------------------------- metrics


def surface_samples(vertices, faces, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) area-weighted samples; an empty or zero-area mesh gives (0, 3)."""
    from holopart_infer.conditioning import sample_surface
    from holopart_infer.errors import InputError

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros((0, 3))
    try:
        pts, _, _ = sample_surface(v, f, n, rng)
    except InputError:
        return np.zeros((0, 3))
    return pts


def _nn_dist(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(dst).query(src, k=1)
    return d


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance between point sets: mean of the two mean NN distances."""
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    return float(0.5 * (_nn_dist(a, b).mean() + _nn_dist(b, a).mean()))


def f_score(pred: np.ndarray, gt: np.ndarray, tau: float) -> tuple[float, float, float]:
    """(precision, recall, F1) at distance threshold tau."""
    if len(pred) == 0 or len(gt) == 0:
        return 0.0, 0.0, 0.0
    p = float((_nn_dist(pred, gt) <= tau).mean())
    r = float((_nn_dist(gt, pred) <= tau).mean())
    return p, r, (0.0 if p + r == 0 else 2 * p * r / (p + r))


def _column_parity(cols: np.ndarray, z: np.ndarray, vertices, faces) -> np.ndarray:
    """Inside test for a closed mesh by crossing parity along vertical lines.

    ``cols`` (K, 2) line positions (x, y), ``z`` (K, M) query heights; a point is
    inside when the line crosses the surface an odd number of times below it.
    Faces parallel to z are skipped (zero projected area). Returns (K, M) bool.
    """
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep = np.abs(det) > 1e-14
    a, e1, e2, det = a[keep], e1[keep], e2[keep], det[keep]
    lo, hi = np.minimum(a, np.minimum(a + e1, a + e2)), np.maximum(a, np.maximum(a + e1, a + e2))
    out = np.zeros(z.shape, dtype=bool)
    step = max(1, 2_000_000 // max(1, len(a)))
    for s in range(0, len(cols), step):
        c = cols[s:s + step]
        dx, dy = c[:, None, 0] - a[None, :, 0], c[:, None, 1] - a[None, :, 1]  # (k, F)
        u = (dx * e2[None, :, 1] - dy * e2[None, :, 0]) / det
        v = (e1[None, :, 0] * dy - e1[None, :, 1] * dx) / det
        hit = (u >= 0) & (v >= 0) & (u + v <= 1)
        hit &= (c[:, None, 0] >= lo[None, :, 0]) & (c[:, None, 0] <= hi[None, :, 0])
        zh = np.where(hit, a[None, :, 2] + u * e1[None, :, 2] + v * e2[None, :, 2], np.inf)
        zh.sort(axis=1)
        n = np.isfinite(zh).sum(axis=1).max(initial=0)
        zh = zh[:, :n]
        below = (zh[:, None, :] < z[s:s + step, :, None]).sum(axis=2)  # (k, M)
        out[s:s + step] = (below % 2) == 1
    return out


def is_closed(vertices, faces) -> bool:
    """Every edge shared by exactly two faces (after merging duplicate vertices)."""
    import trimesh

    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    return bool(len(f)) and trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), f).is_watertight


def occupancy(cols: np.ndarray, z: np.ndarray, vertices, faces) -> np.ndarray:
    """Inside test of the points ``(cols[k], z[k, m])``, (K, M) bool (all False for no faces).

    Closed meshes: crossing parity along vertical lines (fast, exact up to
    rays through edges, a measure-zero event for random columns). Open meshes
    (the ``patch`` method): generalized winding number > 0.5.
    """
    from .synthetic import winding_number

    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros(z.shape, dtype=bool)
    if is_closed(vertices, f):
        return _column_parity(cols, z, vertices, f)
    K, M = z.shape
    pts = np.concatenate([np.repeat(cols, M, axis=0), z.reshape(-1, 1)], axis=1)
    return (winding_number(pts, vertices, f, chunk_pairs=1_000_000) > 0.5).reshape(K, M)


def volume_iou(pred: tuple, gt: tuple, n: int, rng: np.random.Generator, pad: float = 0.05,
               per_column: int = 8) -> float:
    """Monte-Carlo volume IoU of two meshes ``(vertices, faces)`` in their joint bounding box.

    ``n`` uniform points, drawn as ``n // per_column`` random vertical lines with
    ``per_column`` uniform heights each (still uniform in the box).
    """
    boxes = [np.asarray(m[0], dtype=np.float64) for m in (pred, gt) if len(np.asarray(m[1]).reshape(-1, 3))]
    allv = np.concatenate(boxes)
    lo, hi = allv.min(0), allv.max(0)
    ext = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * ext, hi + pad * ext
    K = max(1, n // per_column)
    cols = rng.uniform(lo[:2], hi[:2], size=(K, 2))
    z = rng.uniform(lo[2], hi[2], size=(K, per_column))
    a, b = occupancy(cols, z, *pred), occupancy(cols, z, *gt)
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


@dataclass
class PartScore:
    object: int
    template: str
    part: str
    primitive: str
    visible_fraction: float
    method: str
    chamfer: float
    f1: float
    precision: float
    recall: float
    iou: float
    pred_faces: int


def score_part(pred: tuple, gt: tuple, rng: np.random.Generator, n_surface: int = 10000,
               n_volume: int = 32000, tau: float = 0.02 * OBJECT_SCALE) -> dict:
    """Chamfer, F1 (precision, recall) and IoU of one predicted mesh against the ground truth."""
    gs = surface_samples(*gt, n_surface, rng)
    ps = surface_samples(*pred, n_surface, rng)
    p, r, f1 = f_score(ps, gs, tau)
    return {"chamfer": chamfer_distance(ps, gs), "f1": f1, "precision": p, "recall": r,
            "iou": volume_iou(pred, gt, n_volume, rng), "pred_faces": int(len(np.asarray(pred[1]).reshape(-1, 3)))}


# ----------------------------------------------------------------------------- baselines


def hull_baseline(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull of the patch; the patch itself when it has no 3-D hull (planar/degenerate)."""
    import trimesh

    try:
        h = trimesh.convex.convex_hull(np.asarray(vertices, dtype=np.float64))
        if h.volume > 1e-12 and len(h.faces):
            return np.asarray(h.vertices), np.asarray(h.faces)
    except Exception:  # qhull raises on planar input
        pass
    return np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)


# ----------------------------------------------------------------------------- runner


def eval_objects(seed: int, n: int, n_views: int):
    from .synthetic import iter_dataset

    return list(iter_dataset(seed, n, n_views=n_views))


def evaluate(objects, model=None, methods=METHODS, complete_kwargs: dict | None = None, seed: int = 0,
             n_surface: int = 10000, n_volume: int = 32000) -> tuple[list[PartScore], dict]:
    """Score every part of every object for each method. ``model``: a loaded :class:`HoloPart`."""
    scores: list[PartScore] = []
    timing = {"model_s": 0.0, "objects": 0}
    for oi, obj in enumerate(objects):
        preds: dict[str, list] = {}
        if "hull" in methods:
            preds["hull"] = [hull_baseline(*p.patch) for p in obj.parts]
        if "patch" in methods:
            preds["patch"] = [p.patch for p in obj.parts]
        if "model" in methods and model is not None:
            t0 = time.perf_counter()
            res = model.complete(obj.input_parts(), **(complete_kwargs or {}))
            timing["model_s"] += time.perf_counter() - t0
            if [r.name for r in res.parts] != obj.names:
                raise RuntimeError(f"object {oi}: output parts {[r.name for r in res.parts]} != {obj.names}")
            preds["model"] = [(r.vertices, r.faces) for r in res.parts]
        timing["objects"] += 1
        for method, meshes in preds.items():
            for pi, (part, pred) in enumerate(zip(obj.parts, meshes)):
                rng = np.random.default_rng([seed, oi, pi])  # same samples of the GT for every method
                m = score_part(pred, (part.mesh.vertices, part.mesh.faces), rng, n_surface, n_volume)
                scores.append(PartScore(oi, obj.template, part.name, part.primitive,
                                        round(part.visible_fraction, 4), method, **m))
        log.info("object %d (%s, %d parts) done", oi, obj.template, len(obj.parts))
    return scores, timing


def summarize(scores: list[PartScore], occluded_below: float = 0.95, success_iou: float = 0.5) -> dict:
    """Per method and subset (all / occluded parts): mean, std, median of each metric and the success rate."""
    out: dict = {}
    for subset in ("occluded", "all"):
        for method in sorted({s.method for s in scores}):
            rows = [s for s in scores if s.method == method
                    and (subset == "all" or s.visible_fraction < occluded_below)]
            if not rows:
                continue
            d = {"n": len(rows)}
            for k in ("chamfer", "iou", "f1"):
                x = np.array([getattr(s, k) for s in rows], dtype=np.float64)
                d[k] = {"mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x))}
            d["success"] = float(np.mean([s.iou > success_iou for s in rows]))
            out.setdefault(subset, {})[method] = d
    return out


def paired_differences(scores: list[PartScore], method: str = "model", base: str = "hull",
                       subset: str = "occluded", occluded_below: float = 0.95) -> dict:
    """Per-part differences ``method - base`` with a normal 95% interval (mean +- 1.96 SE).

    Parts are matched on ``(object, part)`` (and ``seed`` when scores from several
    runs are pooled, see :func:`load_scores`). Returns, per metric, ``mean``,
    ``low``, ``high`` and ``better`` (parts where ``method`` is better: higher
    IoU/F1, lower Chamfer), plus ``n``.
    """
    by: dict = {}
    for s in scores:
        by.setdefault((getattr(s, "seed", None), s.object, s.part), {})[s.method] = s
    pairs = [(v[method], v[base]) for v in by.values() if method in v and base in v
             and (subset == "all" or v[base].visible_fraction < occluded_below)]
    out: dict = {"n": len(pairs)}
    if not pairs:
        return out
    for k in ("iou", "chamfer", "f1"):
        d = np.array([getattr(a, k) - getattr(b, k) for a, b in pairs], dtype=np.float64)
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
        out[k] = {"mean": float(d.mean()), "low": float(d.mean() - 1.96 * se), "high": float(d.mean() + 1.96 * se),
                  "better": int((d < 0).sum() if k == "chamfer" else (d > 0).sum())}
    return out


@dataclass
class _SeededScore(PartScore):
    seed: int = 0


def load_scores(paths) -> list[PartScore]:
    """Scores of one or more ``--out`` json files, tagged with each run's object seed."""
    out: list[PartScore] = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        seed = int(d["args"]["seed"])
        out += [_SeededScore(**row, seed=seed) for row in d["scores"]]
    return out


def comparison_text(scores: list[PartScore], occluded_below: float = 0.95) -> str:
    lines = []
    for subset in ("occluded", "all"):
        for base in ("hull", "patch"):
            d = paired_differences(scores, "model", base, subset, occluded_below)
            if d["n"] == 0 or "iou" not in d:
                continue
            cells = [f"{k} {d[k]['mean']:+.4f} [{d[k]['low']:+.4f}, {d[k]['high']:+.4f}] better on "
                     f"{d[k]['better']}/{d['n']}" for k in ("iou", "chamfer", "f1")]
            lines.append(f"{subset:8s} model - {base:5s} (n={d['n']}): " + "; ".join(cells))
    return "\n".join(lines)


def markdown_table(summary: dict) -> str:
    lines = []
    for subset, by_method in summary.items():
        lines += [f"**{subset} parts**", "",
                  "| method | n | Chamfer ↓ mean ± std (median) | IoU ↑ mean ± std (median) | F1@0.04 ↑ mean ± std "
                  "(median) | success (IoU>0.5) ↑ |", "|---|---|---|---|---|---|"]
        for method, d in by_method.items():
            cells = [f"{d[k]['mean']:.4f} ± {d[k]['std']:.4f} ({d[k]['median']:.4f})" for k in ("chamfer", "iou", "f1")]
            lines.append(f"| {method} | {d['n']} | " + " | ".join(cells) + f" | {d['success']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m holopart_infer.export.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="exported model dir (manifest.json + onnx/)")
    p.add_argument("--baselines-only", action="store_true")
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="held-out object seed (training used data_seed)")
    p.add_argument("--n-views", type=int, default=16, help="visibility cameras (match training)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--depth", type=int, default=7)
    p.add_argument("--num-points", type=int, default=512)
    p.add_argument("--latent-tokens", type=int, default=64)
    p.add_argument("--decimate", type=int, default=3000)
    p.add_argument("--min-component", type=float, default=0.0, help="floater removal (CompletionOptions)")
    p.add_argument("--n-surface", type=int, default=10000)
    p.add_argument("--n-volume", type=int, default=32000)
    p.add_argument("--occluded-below", type=float, default=0.95)
    p.add_argument("--out", help="write per-part scores and the summary as json")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="no evaluation: pool these --out files (parts matched per seed) and print the summary "
                        "and the paired differences model - hull / model - patch")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.compare:
        scores = load_scores(a.compare)
        print(markdown_table(summarize(scores, a.occluded_below)))
        print(comparison_text(scores, a.occluded_below))
        return 0
    model, methods = None, ("hull", "patch")
    kw = dict(steps=a.steps, guidance=a.guidance, seed=0, depth=a.depth, num_points=a.num_points,
              latent_tokens=a.latent_tokens, decimate=a.decimate, min_component=a.min_component)
    if not a.baselines_only:
        if not a.model:
            p.error("--model is required unless --baselines-only")
        import holopart_infer

        model = holopart_infer.load(a.model, backend="onnxruntime", device="cpu")
        methods = METHODS
    t0 = time.time()
    objs = eval_objects(a.seed, a.objects, a.n_views)
    scores, timing = evaluate(objs, model, methods, kw, n_surface=a.n_surface, n_volume=a.n_volume)
    summary = summarize(scores, a.occluded_below)
    print(markdown_table(summary))
    print(f"objects {a.objects} (seed {a.seed}), parts {len(objs and scores) and len({(s.object, s.part) for s in scores})},"
          f" model time {timing['model_s']:.1f}s, total {time.time() - t0:.1f}s")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "complete_kwargs": kw, "timing": timing,
                                           "summary": summary, "scores": [asdict(s) for s in scores]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
