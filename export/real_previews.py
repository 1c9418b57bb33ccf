"""Before/after previews of held-out real objects (issue 22, item 4).

For each chosen object of the split's ``test`` list: the visible patches (input) and a model's
completion, side by side, one PNG per model (``holopart_infer.postprocess.preview.render_comparison``,
exploded x0.5 so hidden parts show). A model trained z-up (v1) gets the y-up input turned to
z-up and its output turned back, as in :mod:`holopart_infer.export.evaluate`.

The objects are chosen by a rule fixed before any output was seen: the first ``n`` objects of
the ``test`` list with at least 3 parts and at least one part less than 95% visible.

    python -m holopart_infer.export.real_previews --checkpoint CKPT --name v2 [--model-up z] --out docs
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
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True, help="file name tag, e.g. v1 or v2")
    p.add_argument("--out", default="docs")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--depth", type=int, default=6)
    a = p.parse_args(argv)
    model = HoloPart(TorchBackend.from_checkpoint(a.checkpoint))
    for obj in chosen_objects(a.n):  # real objects are +y; the model turns them into its frame and back
        res = model.complete(obj.input_parts(), up="+y", steps=a.steps, depth=a.depth, guidance=3.5, seed=0,
                             latent_tokens=64, num_points=512, decimate=3000)
        slug = re.sub(r"[^a-z0-9]+", "_", str(obj.seed).split("#")[-1].lower()).strip("_")
        path = Path(a.out) / f"real_{slug}_{a.name}.png"
        render_comparison(obj.input_parts(), res, path, exploded=0.5, overwrite=True)
        print(path, obj.seed, [(q.name, round(q.visible_fraction, 2)) for q in obj.parts])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
