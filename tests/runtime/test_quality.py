"""Per-part trust measures, the guard that falls back to the closed patch, and `inspect` (issue 23)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import trimesh

import holopart_infer as hp
from holopart_infer import assets
from holopart_infer.postprocess import quality
from holopart_infer.postprocess.cleanup import edge_manifold
from holopart_infer.cli import main as cli_main
from holopart_infer.io.parts_io import Parts
from holopart_infer.pipeline import HoloPart
from tests.support import SphereBackend

#: a part frame puts the part's samples within this radius of its centre (conditioning.py)
PART_RADIUS = 0.95 * 0.7


class BoxAndBlobBackend(SphereBackend):
    """Decoder field per batch row: row 0 a cube whose corners sit at the part
    frame's sample radius (a closed box's own patch completes to the box), every
    other row a sphere of radius BLOB_R (a blob far around a small patch)."""

    name = "box-and-blob"
    BLOB_R = 1.0

    def decoder_query(self, points, kv):
        h = PART_RADIUS / np.sqrt(3.0)
        box = 20.0 * (h - np.abs(points[:1]).max(axis=-1))
        blob = 20.0 * (self.BLOB_R - np.linalg.norm(points[1:], axis=-1))
        return np.concatenate([box, blob])[..., None].astype(np.float32)


def _box_patch():
    """A closed cube of side 0.4 at the origin, and its patch: every face but the bottom two triangles."""
    box = trimesh.creation.box((0.4, 0.4, 0.4))
    top = box.face_normals[:, 2] > -0.5
    return box, (np.asarray(box.vertices), np.asarray(box.faces[top]))


def _sheet(size: float, at):
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64) * size + np.asarray(at)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    # subdivide so the patch has some samples spread over it
    m = trimesh.Trimesh(v, f, process=False).subdivide().subdivide()
    return np.asarray(m.vertices), np.asarray(m.faces)


def _object() -> Parts:
    """The cube's patch and a small sheet far from it; named so that a scene file
    keeps their order (the backend's rows follow it)."""
    box, patch = _box_patch()
    return Parts.from_meshes([patch, _sheet(0.1, (0.5, 0.0, 0.0))], ["cube", "sheet"])


# ----------------------------------------------------------------------------- measures
def test_box_patch_completed_by_its_box_is_plausible():
    box, (pv, pf) = _box_patch()
    q = quality.measure(box.vertices, box.faces, pv, pf, np.array([[-0.2] * 3, [0.2] * 3]))
    assert q.plausible and not q.reasons
    assert q.coverage_p90 < 1e-6 and q.growth_extent == pytest.approx(1.0)
    assert q.growth_volume == pytest.approx(1.0) and q.object_volume == pytest.approx(1.0)
    assert q.pieces == 1 and q.closed


def test_huge_sphere_around_a_small_patch_is_flagged():
    pv, pf = _sheet(0.1, (0, 0, 0))
    blob = trimesh.creation.icosphere(3, radius=1.0)
    q = quality.measure(blob.vertices, blob.faces, pv, pf, np.array([[0, 0, -0.05], [1.0, 1.0, 0.05]]))
    assert not q.plausible
    names = {r.split()[0] for r in q.reasons}
    assert {"coverage_p90", "growth_extent"} <= names, q.reasons
    assert q.coverage_mean > 3 and q.growth_extent > 10


def test_coverage_is_exact_to_the_surface_not_to_its_samples():
    """A patch 0.05 above a single big triangle: distance 0.05 everywhere, however coarse the triangle."""
    pv, pf = _sheet(0.2, (0.4, 0.4, 0.05))
    tri_v = np.array([[-5, -5, 0], [5, -5, 0], [0, 5, 0]], dtype=np.float64)
    q = quality.measure(tri_v, np.array([[0, 1, 2]]), pv, pf, np.array([[-5, -5, 0], [5, 5, 0.1]]))
    diag = np.linalg.norm(np.ptp(pv, axis=0))
    assert q.coverage_mean * diag == pytest.approx(0.05, rel=1e-6)
    assert q.coverage_p90 * diag == pytest.approx(0.05, rel=1e-6)
    assert q.pieces == 1 and not q.closed


def test_pieces_count_and_empty_part():
    a = trimesh.creation.box((0.1, 0.1, 0.1))
    b = trimesh.creation.box((0.1, 0.1, 0.1))
    b.apply_translation((0.3, 0, 0))
    two = trimesh.util.concatenate([a, b])
    pv, pf = np.asarray(two.vertices), np.asarray(two.faces)
    q = quality.measure(two.vertices, two.faces, pv, pf, np.array([[-0.05] * 3, [0.35, 0.05, 0.05]]))
    assert q.pieces == 2 and q.closed and q.plausible
    empty = quality.measure(np.zeros((0, 3)), np.zeros((0, 3), np.int64), pv, pf, np.array([[0] * 3, [1] * 3]))
    assert not empty.plausible and empty.coverage_p90 == np.inf and empty.pieces == 0


def test_extras_round_trip_and_malformed_extras_are_named():
    pv, pf = _sheet(0.1, (0, 0, 0))
    blob = trimesh.creation.icosphere(2, radius=1.0)
    q = quality.measure(blob.vertices, blob.faces, pv, pf, np.array([[0] * 3, [1] * 3]))
    assert quality.from_extras(q.as_extras()) == q
    bad = {**q.as_extras(), "closed": "yes"}
    with pytest.raises(ValueError, match="'closed'"):
        quality.from_extras(bad)
    missing = {k: v for k, v in q.as_extras().items() if k != "coverage_p90"}
    with pytest.raises(ValueError, match="coverage_p90"):
        quality.from_extras(missing)


# ----------------------------------------------------------------------------- the guard in the pipeline
OPTS = dict(steps=1, depth=6, num_points=2048, decimate=None, min_component=0.0, appearance=False)


@pytest.fixture(scope="module")
def guarded():
    return HoloPart(BoxAndBlobBackend()).complete(_object(), **OPTS)


@pytest.fixture(scope="module")
def unguarded():
    return HoloPart(BoxAndBlobBackend()).complete(_object(), guard=False, **OPTS)


def test_guard_replaces_the_blob_by_its_closed_patch_and_keeps_the_box(guarded):
    box_part, blob_part = guarded.parts
    assert box_part.quality.plausible and not box_part.quality.replaced
    # the box came back as the box (within a grid cell of depth 6 in its frame)
    assert np.abs(np.ptp(box_part.vertices, axis=0) - 0.4).max() < 0.03
    assert box_part.quality.coverage_p90 < 0.05 and box_part.quality.closed
    q = blob_part.quality
    assert q.replaced and q.stand_in == "implausible" and not q.plausible
    assert q.growth_extent > 2 and q.coverage_p90 > 0.1  # the model's output's measures: why it was replaced
    # the stand-in is the patch closed into a thin solid: the sheet and a shell of SHELL_FRACTION of the
    # object's longest side around it, closed
    from holopart_infer.postprocess.thin import SHELL_FRACTION

    pv, _ = _sheet(0.1, (0.5, 0.0, 0.0))
    lo, hi = _object().bounds()
    shell = SHELL_FRACTION * float(np.max(hi - lo))
    ext = np.ptp(blob_part.vertices, axis=0)
    np.testing.assert_allclose(ext[:2], np.ptp(pv, axis=0)[:2] + 2 * shell, atol=3e-3)
    assert ext[2] == pytest.approx(2 * shell, rel=0.1) and edge_manifold(blob_part.faces)
    assert guarded.replaced == ["sheet"]
    assert guarded.stats["guard"] == {"flagged": ["sheet"], "replaced": ["sheet"]}
    assert set(guarded.stats["quality"]) == {"cube", "sheet"}


def test_guard_off_keeps_the_blob_flagged(unguarded):
    blob_part = unguarded.parts[1]
    q = blob_part.quality
    assert not q.plausible and not q.replaced and q.stand_in is None
    assert np.ptp(blob_part.vertices, axis=0).min() > 0.1  # still the model's sphere, not a flat patch
    assert unguarded.replaced == [] and unguarded.stats["guard"]["flagged"] == ["sheet"]


def test_guard_warns_once_naming_the_part_and_its_measures(caplog):
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        HoloPart(BoxAndBlobBackend()).complete(_object(), **OPTS)
    lines = [r.getMessage() for r in caplog.records if "implausible" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "'sheet'" in lines[0] and "coverage_p90" in lines[0] and "'cube'" not in lines[0]
    assert "--keep-implausible" in lines[0]


def test_scores_round_trip_through_save_and_inspect(guarded, unguarded, tmp_path, capsys):
    out = guarded.save(tmp_path / "guarded.glb")
    stored = quality.read_scores(out)
    assert [n for n, _ in stored] == ["cube", "sheet"]
    assert [q for _, q in stored] == [p.quality for p in guarded.parts]
    assert cli_main(["inspect", str(out)]) == 3
    text = capsys.readouterr().out
    assert "replaced" in text and "cube" in text and "sheet" in text
    kept = unguarded.save(tmp_path / "kept.glb")
    assert cli_main(["inspect", str(kept)]) == 0
    assert "implausible" in capsys.readouterr().out
    assert cli_main(["inspect", "--strict", str(kept)]) == 3


def test_inspect_refuses_a_glb_without_scores(tmp_path, capsys):
    assert cli_main(["inspect", str(assets.demo_object_path("mug"))]) == 2
    assert "no per-part scores" in capsys.readouterr().err
    assert cli_main(["inspect", str(tmp_path / "missing.glb")]) == 2


def test_cli_summary_lists_every_part(tmp_path, capsys):
    out = tmp_path / "o.glb"
    code = cli_main(["run", str(assets.demo_object_path("table")), "-o", str(out), "--model",
                     str(assets.demo_model_path()), "--steps", "2", "--depth", "6", "-q"])
    assert code == 0
    text = capsys.readouterr().out
    table = text[text.index("parts (coverage"):].splitlines()
    header = table[1].split()
    assert header[:2] == ["part", "status"]
    names = [n for n, _ in quality.read_scores(out)]
    assert len(names) == 5
    for name in names:
        assert any(line.split()[0] == name for line in table[2:]), (name, table)


@pytest.mark.parametrize("obj", list(assets.DEMO_OBJECTS))
def test_good_parts_of_the_embedded_demos_are_not_flagged(obj):
    """The demo parts are given whole (closed, or nearly: a handle's ends where it meets the body).
    Where a closed part's completion does not reproduce it (volume IoU < 1 -
    THRESHOLDS["closed_mismatch"]) the part comes back as given; nothing is flagged for any
    other measure."""
    from holopart_infer.io.parts_io import load_parts
    from holopart_infer.postprocess.cleanup import edge_manifold

    src = assets.demo_object_path(obj)
    res = hp.load(assets.demo_model_path()).complete(src, **assets.DEMO_PRESET)
    reasons = {p.name: p.quality.reasons for p in res.parts}
    assert all(r.startswith("closed_mismatch") for rs in reasons.values() for r in rs), reasons
    given = load_parts(src)
    for i, part in enumerate(res.parts):
        q = part.quality
        assert q.plausible == (not q.replaced)
        if q.replaced:  # the input part itself: every input triangle, closed
            from scipy.spatial import cKDTree

            def centroids(v, f):
                return np.asarray(v, np.float64)[np.asarray(f)].mean(axis=1)

            gap, _ = cKDTree(centroids(part.vertices, part.faces)).query(centroids(given.vertices[i], given.faces[i]))
            assert gap.max() < 1e-4 and edge_manifold(part.faces)
        else:
            assert q.closed_mismatch <= quality.THRESHOLDS["closed_mismatch"]


def test_batch_ledger_and_service_job_carry_the_scores(guarded, tmp_path):
    import json

    from holopart_infer.scale.batch import BatchItem, run_batch
    from holopart_infer.io.parts_io import write_scene
    from holopart_infer.serve.batcher import DONE, ServeJob

    obj = _object()
    src = write_scene([(p.vertices, p.faces) for p in obj], obj.names, tmp_path / "in" / "obj.glb")
    from holopart_infer.pipeline import CompletionOptions

    summary = run_batch(HoloPart(BoxAndBlobBackend()), [BatchItem("obj", src)], tmp_path / "out",
                        options=CompletionOptions(**OPTS))
    assert summary.failed == 0
    entry = json.loads((tmp_path / "out" / "ledger.jsonl").read_text().splitlines()[-1])
    assert entry["status"] == "ok" and entry["replaced_parts"] == ["sheet"]
    assert entry["quality"]["sheet"]["stand_in"] == "implausible" and entry["quality"]["cube"]["plausible"] is True
    assert quality.from_extras(entry["quality"]["cube"]).plausible

    job = ServeJob(parts=obj, options=None, deadline=0.0, state=DONE, result=guarded)
    public = json.loads(json.dumps(job.public()))  # what a client receives
    assert [(q["name"], q["status"]) for q in public["quality"]] == [("cube", "ok"), ("sheet", "replaced")]
    assert public["quality"][1]["reasons"] and public["quality"][1]["coverage_p90"] > 0.1


def test_stand_in_keeps_every_piece_of_the_patch():
    """Floater removal is for the model's pieces: a small piece of the input patch stays in its stand-in."""
    from holopart_infer.postprocess.cleanup import connected_components

    _, patch = _box_patch()
    big, small = _sheet(0.1, (0.5, 0.0, 0.0)), _sheet(0.03, (0.5, 0.2, 0.0))  # small: 9% of big's area
    two = (np.concatenate([big[0], small[0]]), np.concatenate([big[1], small[1] + len(big[0])]))
    res = HoloPart(BoxAndBlobBackend()).complete(Parts.from_meshes([patch, two], ["cube", "sheets"]), **{
        **OPTS, "min_component": 0.2})
    sheets = res.parts[1]
    assert sheets.quality.replaced
    assert connected_components(sheets.faces, len(sheets.vertices))[0] == 2


# ----------------------------------------------------------------------------- invented surface, closed mismatch
def _bounds_of(*meshes):
    v = np.concatenate([np.asarray(m[0]) for m in meshes])
    return np.stack([v.min(axis=0), v.max(axis=0)])


def test_a_slab_wrapped_around_a_thin_panel_is_flagged_as_invented_surface():
    # a 1 x 1 panel given as one open sheet; completions: a thin plate on it, and a 0.25-thick slab
    # under it (its top face is the panel: it covers the panel, and grows within the growth bounds)
    panel = _sheet(1.0, (0.0, 0.0, 0.0))
    plate = trimesh.creation.box((1.0, 1.0, 0.01))
    plate.apply_translation((0.5, 0.5, 0.0))
    slab = trimesh.creation.box((1.0, 1.0, 0.25))
    slab.apply_translation((0.5, 0.5, -0.125))
    bounds = _bounds_of((slab.vertices,), panel)
    good = quality.measure(plate.vertices, plate.faces, *panel, bounds)
    bad = quality.measure(slab.vertices, slab.faces, *panel, bounds)
    assert good.invented < 0.05 and good.plausible, good.reasons
    # coverage and growth cannot see it; about 57% of its surface lies farther than 5% of the
    # panel's diagonal from the panel (its bottom and most of its sides)
    for name in ("coverage_p90", "growth_extent", "growth_volume", "object_extent"):
        assert getattr(bad, name) <= quality.THRESHOLDS[name], name
    assert bad.invented > 0.52
    assert not bad.plausible and any(r.startswith("invented") for r in bad.reasons)


def test_a_part_given_whole_must_be_completed_as_itself():
    box = trimesh.creation.box((0.4, 0.4, 0.4))
    moved = box.copy()
    moved.apply_translation((0.3, 0.0, 0.0))  # same size, IoU 1/7 with the box
    bounds = _bounds_of((box.vertices,), (moved.vertices,))
    same = quality.measure(box.vertices, box.faces, box.vertices, box.faces, bounds)
    off = quality.measure(moved.vertices, moved.faces, box.vertices, box.faces, bounds)
    assert same.closed_mismatch < 0.1 and same.plausible
    assert off.closed_mismatch == pytest.approx(1 - 1 / 7, abs=0.08)
    assert not off.plausible and any(r.startswith("closed_mismatch") for r in off.reasons)
    # a patch closed but for a slit (one small triangle of a finer box missing) is given whole too
    fine = box.subdivide().subdivide()
    slit = np.delete(np.asarray(fine.faces), int(np.argmin(fine.area_faces)), axis=0)
    assert quality.measure(moved.vertices, moved.faces, fine.vertices, slit, bounds).closed_mismatch == \
        pytest.approx(1 - 1 / 7, abs=0.08)
    # an open patch with a real hole has nothing to compare with, even one that nearly encloses its
    # volume (it may be half of its part): 0, whatever the completion
    _, patch = _box_patch()
    assert quality.measure(moved.vertices, moved.faces, *patch, bounds).closed_mismatch == 0.0


def test_scores_written_before_the_new_measures_read_back_as_not_measured():
    box = trimesh.creation.box((0.4, 0.4, 0.4))
    q = quality.measure(box.vertices, box.faces, box.vertices, box.faces, _bounds_of((box.vertices,)))
    old = {k: v for k, v in q.as_extras().items() if k not in ("invented", "closed_mismatch")}
    back = quality.from_extras(old)
    assert np.isnan(back.invented) and np.isnan(back.closed_mismatch)
    assert quality.from_extras(q.as_extras()) == q
    assert "invented" in quality.format_table([("box", back)])  # the table still prints, "nan" for them


def test_stand_ins_made_two_at_a_time_are_the_ones_made_one_at_a_time(monkeypatch):
    # every row after the first is a blob around a small sheet: three parts replaced at once
    from holopart_infer import pipeline

    _, patch = _box_patch()
    parts = Parts.from_meshes([patch] + [_sheet(0.1 + 0.02 * k, (0.5, 0.2 * k, 0.0)) for k in range(3)],
                              ["cube", "s0", "s1", "s2"])
    monkeypatch.setattr(pipeline, "_THREADS_FROM", 2)  # threads even for these few parts
    together = HoloPart(BoxAndBlobBackend()).complete(parts, **OPTS)
    monkeypatch.setattr(pipeline, "_STAND_IN_THREADS", 1)
    alone = HoloPart(BoxAndBlobBackend()).complete(parts, **OPTS)
    assert together.replaced == alone.replaced == ["s0", "s1", "s2"]
    for a, b in zip(together.parts, alone.parts):
        assert a.name == b.name and a.quality == b.quality
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)
