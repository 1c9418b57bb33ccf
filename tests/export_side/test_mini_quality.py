"""holopart-mini, the embedded model, really completes hidden parts (issue 8).

The objects come from seed QUALITY_SEED, which no training (data_seed 0),
validation (1000), test (3000, 4000) or demo (9000) set uses. Only templates with
structurally hidden parts are drawn (mug handles and bodies, lamp poles and
bulbs, dumbbell bars), so every object has occluded parts. The model runs as a
user runs it: the shipped model dir on ONNX Runtime with its own defaults and
the demo's sampling settings. Thresholds come from the held-out evaluation in
benchmarks/RESULTS-mini.md (see the constants below).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("trimesh")
pytest.importorskip("scipy")

import holopart_infer as hp  # noqa: E402
from holopart_infer.export import evaluate as E  # noqa: E402
from holopart_infer.export.synthetic import SYNTHETIC_UP, iter_dataset  # noqa: E402
from holopart_infer import assets  # noqa: E402
from holopart_infer.assets import DEMO_PRESET as DEMO_DEFAULTS  # noqa: E402

QUALITY_SEED = 8000
TEMPLATES = ("mug", "lamp", "dumbbell")
N_OBJECTS = 6

# Thresholds, set from the held-out test sets (seeds 3000 + 4000, benchmarks/RESULTS-mini.md):
# occluded parts of mug/lamp/dumbbell objects there score model 0.876 +- 0.113 (n=52),
# patch 0.657, hull 0.654; all parts of all objects 0.850 (n=233). These six objects
# (two dumbbells, the weakest template) score model 0.766 / patch 0.539 on their 8
# occluded parts and 0.787 on all 18 parts. The bars sit above both baselines and
# leave room for floating-point differences between machines.
MIN_OCCLUDED_IOU = 0.70  # mean IoU of occluded parts
MIN_GAIN_OVER_PATCH = 0.10  # mean IoU gain over the visible patch, occluded parts (test sets: +0.204)
MIN_ALL_IOU = 0.70  # mean IoU over all parts


@pytest.fixture(scope="module")
def scores():
    objs = list(iter_dataset(QUALITY_SEED, N_OBJECTS, templates=TEMPLATES, n_views=16))
    model = hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
    opts = {**model.default_options().__dict__, **DEMO_DEFAULTS, "decimate": 1000}
    s, _ = E.evaluate(objs, model, ("model", "guarded", "patch", "hull"), opts, n_surface=4000, n_volume=4000,
                      objects_up=SYNTHETIC_UP)  # the templates stand along +z; the model turns them to its +y
    return s


def test_guarded_is_the_model_where_the_guard_trusts_it(scores):
    """`guarded` (what `run` returns) is the model's own part wherever the guard trusts it (same
    points, same mesh: the same volume IoU). On these objects, at the demo's settings, the guard
    returns 4 parts given whole (a lamp shade and three dumbbell weights, completed at volume IoU
    0.46-0.81 against themselves) as given, which scores them 1, and replaces one part it cannot
    trust (a dumbbell bar 18% visible whose completion invents most of its surface: the known cost
    of the guard on synthetic objects, benchmarks/RESULTS-mini.md)."""
    by = {(r.object, r.part, r.method): r.iou for r in scores}
    parts = {(o, p) for o, p, m in by if m == "model"}
    changed = [(o, p) for o, p in parts if by[o, p, "guarded"] != by[o, p, "model"]]
    given_whole = [k for k in changed if by[k + ("patch",)] == 1.0]  # a closed patch scores 1
    assert all(by[k + ("guarded",)] == 1.0 for k in given_whole), given_whole
    assert len(changed) - len(given_whole) <= 2, sorted(set(changed) - set(given_whole))
    assert np.mean([by[o, p, "guarded"] for o, p in parts]) >= MIN_ALL_IOU


def _mean(scores, method, occluded=True):
    rows = [s.iou for s in scores if s.method == method and (not occluded or s.visible_fraction < 0.95)]
    assert rows, f"no {'occluded ' if occluded else ''}parts scored for {method}"
    return float(np.mean(rows))


def test_hidden_parts_are_completed(scores):
    assert _mean(scores, "model") >= MIN_OCCLUDED_IOU


def test_completion_beats_the_visible_patch(scores):
    assert _mean(scores, "model") - _mean(scores, "patch") >= MIN_GAIN_OVER_PATCH


def test_all_parts_are_reconstructed(scores):
    assert _mean(scores, "model", occluded=False) >= MIN_ALL_IOU


def test_the_objects_have_hidden_parts(scores):
    occluded = {(s.object, s.part) for s in scores if s.visible_fraction < 0.95}
    assert len(occluded) >= N_OBJECTS  # at least one hidden part per object on average


@pytest.mark.parametrize("name", ["mug", "lamp"])
def test_the_demo_objects_hidden_parts_are_completed(name):
    """What `holopart-infer demo` shows: each half-hidden part (mug handle 0.50 visible,
    lamp pole 0.62, bulb 0.51) comes back much closer to the complete part than its patch.
    Measured when the demo objects were fixed: handle 0.90 (patch 0.51), pole 0.77 (0.64),
    bulb 0.97 (0.53)."""
    from holopart_infer.export.make_demo_model import demo_object

    obj = demo_object(name)
    model = hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
    opts = {**model.default_options().__dict__, **DEMO_DEFAULTS}
    s, _ = E.evaluate([obj], model, ("model", "patch"), opts, n_surface=4000, n_volume=4000, objects_up=SYNTHETIC_UP)
    iou = {(r.part, r.method): r.iou for r in s}
    hidden = [p.name for p in obj.parts if p.visible_fraction < 0.7]
    assert hidden
    for part in hidden:
        assert iou[part, "model"] >= 0.7 and iou[part, "model"] >= iou[part, "patch"] + 0.1, (part, iou)
