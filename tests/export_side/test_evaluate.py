"""export/evaluate.py: metrics on shapes with known answers, baselines, the summary."""
from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("scipy")

from holopart_infer.export import evaluate as E  # noqa: E402


def _sphere(r=1.0, center=(0, 0, 0), sub=3):
    m = trimesh.creation.icosphere(subdivisions=sub, radius=r)
    return np.asarray(m.vertices) + np.asarray(center, dtype=np.float64), np.asarray(m.faces)


def _lens_iou(r, d):
    """Exact IoU of two balls of radius r whose centres are d apart (d < 2r)."""
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    return lens / (2 * 4 / 3 * np.pi * r ** 3 - lens)


def _sphere_chamfer(r, d):
    """Exact mean distance from a uniform point on one sphere to another sphere (centres d apart)."""
    u = np.linspace(-1, 1, 200001)  # cos(polar angle): uniform on the sphere
    return float(np.abs(np.sqrt(r * r + d * d - 2 * r * d * u) - r).mean())


def test_identical_sphere_scores_perfect():
    rng = np.random.default_rng(0)
    s = _sphere()
    pts = E.surface_samples(*s, 3000, rng)
    assert E.chamfer_distance(pts, pts) == 0.0
    assert E.f_score(pts, pts, 0.01) == (1.0, 1.0, 1.0)
    assert E.volume_iou(s, s, 3000, rng) == 1.0


def test_shifted_sphere_known_values():
    rng = np.random.default_rng(1)
    r, d = 1.0, 0.5
    a, b = _sphere(r), _sphere(r, (d, 0, 0))
    iou = E.volume_iou(a, b, 24000, rng, per_column=8)
    # exact 0.4737 for balls; the inscribed icosphere gives ~0.466; MC std ~0.01
    assert iou == pytest.approx(_lens_iou(r, d), abs=0.035)
    pa, pb = E.surface_samples(*a, 20000, rng), E.surface_samples(*b, 20000, rng)
    assert E.chamfer_distance(pa, pb) == pytest.approx(_sphere_chamfer(r, d), rel=0.05)


def test_chamfer_and_fscore_of_a_translated_point_set():
    g = np.stack(np.meshgrid(*[np.arange(5.0)] * 3), -1).reshape(-1, 3)  # spacing 1
    moved = g + np.array([0.1, 0, 0])
    assert E.chamfer_distance(g, moved) == pytest.approx(0.1)
    assert E.f_score(moved, g, 0.05) == (0.0, 0.0, 0.0)
    assert E.f_score(moved, g, 0.15) == (1.0, 1.0, 1.0)
    assert E.chamfer_distance(g, np.zeros((0, 3))) == float("inf")


def test_empty_prediction_scores_zero():
    rng = np.random.default_rng(2)
    s = _sphere(sub=2)
    empty = (np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    m = E.score_part(empty, s, rng, n_surface=500, n_volume=500)
    assert m["iou"] == 0.0 and m["f1"] == 0.0 and m["chamfer"] == float("inf") and m["pred_faces"] == 0


def test_hull_baseline_closes_a_patch_and_falls_back_on_planar():
    v, f = _sphere(sub=2)
    keep = v[f].mean(1)[:, 2] > -0.3  # drop the bottom cap: an open patch
    hv, hf = E.hull_baseline(v, f[keep])
    h = trimesh.Trimesh(hv, hf, process=False)
    assert h.is_watertight and h.volume > 3.0
    flat_v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float64)
    flat_f = np.array([[0, 1, 2], [1, 3, 2]])
    pv, pf = E.hull_baseline(flat_v, flat_f)
    np.testing.assert_array_equal(pf, flat_f)


def test_summary_and_table():
    mk = lambda m, vf, iou, cd: E.PartScore(0, "mug", "body", "cylinder", vf, m, cd, 0.5, 0.5, 0.5, iou, 10)
    scores = [mk("hull", 0.5, 0.8, 0.01), mk("hull", 0.99, 0.2, 0.03), mk("model", 0.5, 0.4, 0.02)]
    s = E.summarize(scores, occluded_below=0.95)
    assert s["occluded"]["hull"]["n"] == 1 and s["all"]["hull"]["n"] == 2
    assert s["all"]["hull"]["iou"]["mean"] == pytest.approx(0.5)
    assert s["all"]["hull"]["success"] == 0.5 and s["occluded"]["model"]["success"] == 0.0
    assert "| hull | 2 |" in E.markdown_table(s)


def test_parity_matches_winding_number_on_a_torus():
    from holopart_infer.export.synthetic import winding_number

    m = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25, major_sections=24, minor_sections=12)
    m.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1, 0.3, 0]))
    rng = np.random.default_rng(3)
    cols = rng.uniform(-1, 1, size=(200, 2))
    z = rng.uniform(-1, 1, size=(200, 8))
    par = E.occupancy(cols, z, m.vertices, m.faces)  # closed: parity
    pts = np.concatenate([np.repeat(cols, 8, axis=0), z.reshape(-1, 1)], axis=1)
    wn = (winding_number(pts, m.vertices, m.faces) > 0.5).reshape(200, 8)
    assert E.is_closed(m.vertices, m.faces) and 0.05 < par.mean() < 0.5
    assert (par == wn).mean() == 1.0
    open_f = m.faces[:-10]  # open mesh: winding-number path
    assert not E.is_closed(m.vertices, open_f)
    assert (E.occupancy(cols, z, m.vertices, open_f) == wn).mean() > 0.97


def _score(method, obj, part, vf, iou, cd):
    return E.PartScore(obj, "mug", part, "cylinder", vf, method, cd, iou, 0.5, 0.5, iou, 10)


def test_paired_differences_match_parts_and_subsets():
    rows = []
    for o, (m, h, vf) in enumerate([(0.9, 0.5, 0.5), (0.8, 0.6, 0.6), (0.7, 0.6, 0.99), (0.6, 0.7, 0.8)]):
        rows += [_score("model", o, "a", vf, m, 0.01), _score("hull", o, "a", vf, h, 0.02)]
    d = E.paired_differences(rows, "model", "hull", "occluded")
    assert d["n"] == 3
    diffs = np.array([0.4, 0.2, -0.1])
    se = diffs.std(ddof=1) / np.sqrt(3)
    assert d["iou"]["mean"] == pytest.approx(diffs.mean())
    assert d["iou"]["low"] == pytest.approx(diffs.mean() - 1.96 * se)
    assert d["iou"]["better"] == 2 and d["chamfer"]["better"] == 3  # lower Chamfer is better
    assert E.paired_differences(rows, "model", "hull", "all")["n"] == 4
    assert E.paired_differences(rows, "model", "patch", "all") == {"n": 0}


def test_compare_pools_runs_per_seed(tmp_path, capsys):
    import json
    from dataclasses import asdict

    for seed, (m, h) in ((1, (0.9, 0.5)), (2, (0.7, 0.6))):  # same object/part ids in both runs
        rows = [asdict(_score("model", 0, "a", 0.5, m, 0.01)), asdict(_score("hull", 0, "a", 0.5, h, 0.02)),
                asdict(_score("patch", 0, "a", 0.5, h, 0.02))]
        (tmp_path / f"{seed}.json").write_text(json.dumps({"args": {"seed": seed}, "scores": rows}))
    scores = E.load_scores([tmp_path / "1.json", tmp_path / "2.json"])
    assert E.paired_differences(scores, "model", "hull")["n"] == 2  # not merged across seeds
    assert E.main(["--compare", str(tmp_path / "1.json"), str(tmp_path / "2.json")]) == 0
    out = capsys.readouterr().out
    assert "| model | 2 |" in out and "model - hull  (n=2): iou +0.2500" in out


def test_object_bootstrap_intervals_and_versus(tmp_path):
    import json
    from dataclasses import asdict

    rng = np.random.default_rng(0)
    rows = []
    for o in range(30):
        shift = rng.normal(0.1, 0.05)  # per-object effect: parts of one object move together
        for k in range(3):
            base = rng.uniform(0.3, 0.7)
            for method, iou in (("hull", base), ("model", base + shift)):
                rows.append(E.PartScore(o, "t", f"p{k}", "real", 0.5, method, 0.01, 0.5, 0.5, 0.5, iou, 10))
    d = E.bootstrap_difference(rows, "model", "hull", "occluded", "iou", reps=1000)
    assert d["n"] == 90 and d["objects"] == 30
    assert d["low"] < d["mean"] < d["high"] and 0.0 < d["low"] and d["high"] < 0.2
    m = E.bootstrap_mean(rows, "hull", "all", "iou", reps=1000)
    assert m["low"] < m["mean"] < m["high"]
    # a constant difference has a zero-width interval
    hull = [r for r in rows if r.method == "hull"]
    plus = [E.PartScore(**{**asdict(r), "method": "model", "iou": r.iou + 0.25}) for r in hull]
    c = E.bootstrap_difference(hull + plus, "model", "hull", "all", "iou", reps=200)
    assert c["low"] == pytest.approx(0.25) and c["high"] == pytest.approx(0.25)
    for name, sc in (("a", hull), ("b", plus)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"scores": [{**asdict(r), "method": "model"} for r in sc]}))
    assert "all      B - A iou     +0.2500 [+0.2500, +0.2500]" in E.versus_text(tmp_path / "a.json", tmp_path / "b.json")


def test_truth_parts_scores_an_exact_thin_part_perfect_and_keeps_the_shell_for_sheets():
    # a closed thin panel returned exactly: 1 under the truth (winding number; a shell only
    # for sheets); under the old "shelled" truth the same mesh scored far lower than the `patch`
    # baseline, which got the same shell as the truth
    panel = trimesh.creation.box([1.0, 0.02, 0.5])
    gt = (np.asarray(panel.vertices), np.asarray(panel.faces))
    preds = {"patch": gt, "exact": gt}
    parts = E.score_methods(preds, gt, np.random.default_rng(0), 500, 4000, shell=0.015, truth="parts")
    assert parts["exact"]["iou"] == 1.0 and parts["patch"]["iou"] == 1.0
    shelled = E.score_methods(preds, gt, np.random.default_rng(0), 500, 4000, shell=0.015, truth="shelled")
    assert shelled["patch"]["iou"] == 1.0 and shelled["exact"]["iou"] < 0.9
    # a sheet encloses nothing: its truth is the shell, and a thin solid around it scores well
    sheet = (np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    slab = trimesh.creation.box([1.0, 0.03, 1.0])
    slab.apply_translation([0.5, 0.0, 0.5])
    got = E.score_methods({"slab": (slab.vertices, slab.faces)}, sheet, np.random.default_rng(0), 500, 4000,
                          shell=0.015, truth="parts")
    assert got["slab"]["iou"] > 0.8
    with pytest.raises(ValueError, match="truth must be one of"):
        E.score_methods(preds, gt, np.random.default_rng(0), 100, 100, shell=0.015, truth="closed")


class _CountingModel:
    """Stands in for a loaded model: 'completes' each part as its own patch, but part ``untrusted``
    as its patch blown up 3x about its centre (beyond the guard's growth bound); counts its calls;
    keyed on the manifest of ``path``."""

    def __init__(self, path, untrusted):
        from types import SimpleNamespace

        self.path, self.calls, self._ns, self.untrusted = path, 0, SimpleNamespace, untrusted

    def complete(self, parts, up=None, guard=True, **kw):
        self.calls += 1
        out = []
        for i, (n, v, f) in enumerate(zip(parts.names, parts.vertices, parts.faces)):
            v = np.asarray(v, float)
            if i == self.untrusted:
                v = (v - v.mean(axis=0)) * 3.0 + v.mean(axis=0)
            out.append(self._ns(name=n, vertices=v, faces=np.asarray(f), quality=None))
        return self._ns(parts=out)


def test_evaluate_cache_reads_completions_back_and_keys_them_on_the_model(tmp_path, monkeypatch):
    from holopart_infer.export.synthetic import make_object

    obj = make_object(3, "table", n_views=6)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text('{"name": "a"}')
    bad = next(i for i, p in enumerate(obj.parts) if not E.is_closed(*p.patch))  # an occluded part
    model = _CountingModel(tmp_path / "m", bad)
    cache = tmp_path / "cache"
    first, _ = E.evaluate([obj], model, ("patch", "model", "guarded"), {"steps": 2}, n_surface=300, n_volume=600,
                          cache=cache)
    assert model.calls == 1 and len(list(cache.glob("*.npz"))) == 1
    again, _ = E.evaluate([obj], model, ("patch", "model", "guarded"), {"steps": 2}, n_surface=300, n_volume=600,
                          cache=cache)
    assert model.calls == 1  # read back, not run again
    assert [asdict_row(s) for s in again] == [asdict_row(s) for s in first]
    # the guard's verdicts came back too: the untrusted part is its stand-in (its open patch closed),
    # the others are the model's
    rows = {(s.part, s.method): s for s in again}
    good = obj.names[(bad + 1) % len(obj.names)]
    assert rows[(good, "guarded")].iou == rows[(good, "model")].iou
    assert rows[(obj.names[bad], "guarded")].pred_faces != rows[(obj.names[bad], "model")].pred_faces
    # the cache keeps completions, not verdicts: looser thresholds keep that part, with no new run
    from holopart_infer.postprocess import quality

    for name in quality.THRESHOLDS:
        monkeypatch.setitem(quality.THRESHOLDS, name, float("inf"))
    loose, _ = E.evaluate([obj], model, ("patch", "model", "guarded"), {"steps": 2}, n_surface=300, n_volume=600,
                          cache=cache)
    assert model.calls == 1
    rows = {(s.part, s.method): s for s in loose}
    assert rows[(obj.names[bad], "guarded")].iou == rows[(obj.names[bad], "model")].iou
    # other options, or another model's manifest, are another key
    E.evaluate([obj], model, ("model",), {"steps": 3}, n_surface=300, n_volume=600, cache=cache)
    (tmp_path / "m" / "manifest.json").write_text('{"name": "b"}')
    E.evaluate([obj], model, ("model",), {"steps": 2}, n_surface=300, n_volume=600, cache=cache)
    assert model.calls == 3 and len(list(cache.glob("*.npz"))) == 3


def asdict_row(s):
    from dataclasses import asdict

    return asdict(s)
