"""Before/after previews of held-out real objects (issue 22, item 4).

For each chosen object of the split's ``test`` list: the visible patches (input) and a model's
completion, side by side, one PNG per model (``holopart_infer.postprocess.preview.render_comparison``,
exploded x0.5 so hidden parts show). A model trained z-up (v1) gets the y-up input turned to
z-up and its output turned back, as in :mod:`holopart_infer.export.evaluate`.

The objects are chosen by a rule fixed before any output was seen: the first ``n`` objects of
the ``test`` list with at least 3 parts and at least one part less than 95% visible.

    python -m holopart_infer.export.real_previews --checkpoint CKPT --name v2 --out docs
    python -m holopart_infer.export.real_previews --model MODEL_DIR --name v1_raw --no-guard --steps 20 --depth 7
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path



def chosen_objects(n: int = 3, n_views: int = 16) -> list:
    from .realdata import SPLIT_PATH, entries_by_key, make_real_object

    split = json.loads(SPLIT_PATH.read_text())
    entries = entries_by_key()
    out = []
    for k in split["test"]:
        if split["parts"].get(k, 0) < 3:
            continue
        obj = make_real_object(entries[k], n_views=n_views)
        if obj is not None and len(obj.parts) >= 3 and min(p.visible_fraction for p in obj.parts) < 0.95:
            out.append(obj)
        if len(out) == n:
            break
    return out


def main(argv=None) -> int:
    from holopart_infer.pipeline import HoloPart
    from holopart_infer.postprocess.preview import render_comparison
    from .torch_backend import TorchBackend

    p = argparse.ArgumentParser(prog="python -m holopart_infer.export.real_previews")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="published-layout checkpoint (torch reference backend)")
    src.add_argument("--model", help="exported model dir (ONNX Runtime, as `holopart-infer run` loads it)")
    p.add_argument("--no-guard", action="store_true",
                   help="show what the model made (guard off); default: what `run` returns (guard on)")
    p.add_argument("--name", required=True, help="file name tag, e.g. v1 or v2")
    p.add_argument("--out", default="docs")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--depth", type=int, default=6)
    a = p.parse_args(argv)
    if a.model:
        import holopart_infer

        model = holopart_infer.load(a.model, backend="onnxruntime", device="cpu")
    else:
        model = HoloPart(TorchBackend.from_checkpoint(a.checkpoint))
    for obj in chosen_objects(a.n):  # real objects are +y; the model turns them into its frame and back
        res = model.complete(obj.input_parts(), up="+y", steps=a.steps, depth=a.depth, guidance=3.5, seed=0,
                             latent_tokens=64, num_points=512, decimate=3000, guard=not a.no_guard)
        slug = re.sub(r"[^a-z0-9]+", "_", str(obj.seed).split("#")[-1].lower()).strip("_")
        path = Path(a.out) / f"real_{slug}_{a.name}.png"
        render_comparison(obj.input_parts(), res, path, exploded=0.5, overwrite=True)
        print(path, obj.seed, [(q.name, round(q.visible_fraction, 2)) for q in obj.parts],
              "guard:", res.stats["guard"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
