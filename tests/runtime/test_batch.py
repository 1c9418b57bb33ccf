"""`holopart-infer batch` / run_batch: inputs, packing, ledger, resume, failures, exit codes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import trimesh

import holopart_infer as hp
from holopart_infer import assets
from holopart_infer.scale.batch import LocalExecutor, collect_items, run_batch
from holopart_infer.cli import main
from holopart_infer.errors import InputError, InputFileNotFound
from holopart_infer.io.parts_io import load_parts
from tests.support import FAST_FLAGS_NO_DECIMATE, box, check_ledger_agrees_with_files, fast_options, ledger_lines, two_box_glb


@pytest.fixture(scope="module")
def model():
    return hp.load(assets.demo_model_path())


def test_collect_items_layouts(tmp_path):
    objs = tmp_path / "objs"
    objs.mkdir()
    two_box_glb(objs / "a.glb")
    two_box_glb(objs / "b.glb", 1.0)
    part_folder = objs / "c"  # a folder of part meshes inside a folder of objects
    part_folder.mkdir()
    for name, (v, f) in (("seat", box()), ("leg", box((0, -1, 0), (0.2, 1, 0.2)))):
        trimesh.Trimesh(v, f).export(part_folder / f"{name}.obj")
    v, f = box()
    trimesh.Trimesh(v, f, process=False).export(objs / "d.obj")
    np.save(objs / "d.npy", (np.arange(len(f)) % 2).astype(np.int64))
    (objs / "notes.md").write_text("ignored")
    items = collect_items([objs])
    assert [(i.id, i.input.name, i.labels.name if i.labels else None) for i in items] == [
        ("a", "a.glb", None), ("b", "b.glb", None), ("d", "d.obj", "d.npy"), ("c", "c", None)]
    # a folder holding only part meshes is one object
    assert [i.id for i in collect_items([part_folder])] == ["c"]
    # list files: relative paths, comments, per-object options, the same stem twice
    other = tmp_path / "other"
    other.mkdir()
    two_box_glb(other / "a.glb", 2.0)
    (tmp_path / "list.txt").write_text("# objects\nobjs/a.glb\nother/a.glb  # same stem\n\n")
    ids = [i.id for i in collect_items([tmp_path / "list.txt"])]
    assert len(set(ids)) == 2 and all(i.startswith("a-") for i in ids)
    assert ids == [i.id for i in collect_items([tmp_path / "list.txt"])]  # stable across runs
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"input": "objs/d.obj", "labels": "objs/d.npy", "options": {"seed": 4}, "id": "my d"}) + "\n"
        + json.dumps({"input": "objs/a.glb", "colour": "red"}) + "\n")
    d, a = collect_items([tmp_path / "list.jsonl"])
    assert (d.id, d.labels.name, d.options, d.error) == ("my d", "d.npy", {"seed": 4}, None)  # kept as given
    assert "colour" in a.error and "list.jsonl:2" in a.error
    with pytest.raises(InputFileNotFound, match="nope"):
        collect_items([tmp_path / "nope"])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: not valid JSON"):
        collect_items([tmp_path / "bad.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no objects found"):
        collect_items([tmp_path / "empty"])


def test_run_batch_records_failures_and_resumes(model, tmp_path):
    objs = tmp_path / "objs"
    objs.mkdir()
    two_box_glb(objs / "boxes.glb")
    two_box_glb(objs / "mug.glb", 1.0)
    shutil.copy(assets.demo_object_path("mug"), objs / "table.glb")  # 3 parts
    (objs / "broken.glb").write_bytes(b"glTF but not really")
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"input": "objs/boxes.glb", "id": "boxes-seed7", "options": {"seed": 7}}) + "\n"
        + json.dumps({"input": "objs/mug.glb", "id": "mug-bad-option", "options": {"stepz": 3}}) + "\n")
    out = tmp_path / "out"
    items = collect_items([objs, tmp_path / "list.jsonl"])
    seen = []
    s = run_batch(model, items, out, options=fast_options(model), executor=LocalExecutor(parts_per_batch=4),
                  on_result=lambda it, e: seen.append(it.id))
    assert (s.total, s.ok, s.failed, s.skipped) == (6, 4, 2, 0)
    assert sorted(s.failed_ids) == ["broken", "mug-bad-option"]
    assert sorted(seen) == sorted(i.id for i in items)
    last = check_ledger_agrees_with_files(out)
    assert "broken.glb" in last["broken"]["error"] and last["broken"]["error_type"]
    assert "stepz" in last["mug-bad-option"]["error"]
    # each line records the options its object ran with
    assert last["boxes-seed7"]["options"] == fast_options(model, seed=7).replace(parts_per_batch=4).as_dict()
    assert last["table"]["options"]["seed"] == fast_options(model).seed and last["table"]["options"]["steps"] == 2
    ok = last["table"]
    assert ok["parts"] == 3 and ok["seconds"] > 0 and {"denoise", "extract"} <= set(ok["timings"])
    # packing: a batch held parts of several objects; per-object results equal complete()'s
    ref = model.complete(objs / "boxes.glb", options=fast_options(model, seed=7))
    got = load_parts(out / "boxes-seed7.glb")
    for p_ref, p_got in zip(ref.parts, got):
        assert p_ref.name == p_got.name
        assert abs(trimesh.Trimesh(p_ref.vertices, p_ref.faces).volume
                   - trimesh.Trimesh(p_got.vertices, p_got.faces).volume) < 1e-3 * abs(
            trimesh.Trimesh(p_ref.vertices, p_ref.faces).volume)

    # re-run: finished objects are skipped, failed ones retried (and fail again)
    n_lines = len(ledger_lines(out))
    s2 = run_batch(model, collect_items([objs, tmp_path / "list.jsonl"]), out, options=fast_options(model))
    assert (s2.ok, s2.failed, s2.skipped) == (0, 2, 4)
    assert len(ledger_lines(out)) == n_lines + 2
    # an output lost after the ledger said ok is recomputed; the broken input fixed is completed
    (out / "mug.glb").unlink()
    two_box_glb(objs / "broken.glb", 3.0)
    s3 = run_batch(model, collect_items([objs]), out, options=fast_options(model))
    assert (s3.ok, s3.failed, s3.skipped) == (2, 0, 2)
    last = check_ledger_agrees_with_files(out)
    assert last["broken"]["status"] == "ok" and last["mug"]["status"] == "ok"


def test_interrupted_run_resumes_without_partial_outputs(model, tmp_path):
    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(3):
        two_box_glb(objs / f"o{i}.glb", float(i))
    out = tmp_path / "out"

    def stop_after_first(item, entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(model, collect_items([objs]), out, options=fast_options(model),
                  executor=LocalExecutor(parts_per_batch=2), on_result=stop_after_first)
    first = check_ledger_agrees_with_files(out)
    assert len(first) == 1
    # a ledger line cut by a crash is ignored, and the next append starts on its own line
    with open(out / "ledger.jsonl", "a") as fh:
        fh.write('{"id": "o2", "status": "o')
    s = run_batch(model, collect_items([objs]), out, options=fast_options(model))
    assert (s.ok, s.skipped, s.failed) == (2, 1, 0)
    last = check_ledger_agrees_with_files(out)
    assert sorted(last) == ["o0", "o1", "o2"] and all(e["status"] == "ok" for e in last.values())


def test_cli_batch_exit_codes(tmp_path, capsys):
    objs = tmp_path / "objs"
    objs.mkdir()
    two_box_glb(objs / "good.glb")
    (objs / "bad.glb").write_bytes(b"nope")
    out = tmp_path / "out"
    model = str(assets.demo_model_path())
    assert main(["batch", str(objs), "-o", str(out), "--model", model, *FAST_FLAGS_NO_DECIMATE]) == 3
    text = capsys.readouterr()
    assert "2 objects: 1 completed" in text.out and "1 failed" in text.out and "bad" in text.err
    (objs / "bad.glb").unlink()
    assert main(["batch", str(objs), "-o", str(out), "--model", model, *FAST_FLAGS_NO_DECIMATE]) == 0
    assert "1 already done" in capsys.readouterr().out
    assert main(["batch", str(tmp_path / "missing"), "-o", str(out), "--model", model, *FAST_FLAGS_NO_DECIMATE]) == 2
    assert "missing" in capsys.readouterr().err
