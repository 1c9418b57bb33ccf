"""Nothing lost or misattributed by `batch`.

Each test is one reported case: a file the user had in OUT_DIR, colliding
ids, a re-run with a different input of the same name, two ids on one input,
two runs on one folder, an unwritable or full folder, temporaries left by a
kill -9, the message after SIGINT.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import holopart_infer as hp
from holopart_infer import assets, fsafe
from holopart_infer.scale.batch import BatchFolderBusy, LocalExecutor, collect_items, run_batch
from holopart_infer.cli import main
from tests.support import FAST_FLAGS_NO_DECIMATE, check_ledger_agrees_with_files, fast_options, ledger_lines, two_box_glb

MODEL = str(assets.demo_model_path())


@pytest.fixture(scope="module")
def model():
    return hp.load(assets.demo_model_path())


def batch(*args) -> int:
    return main(["batch", *map(str, args), "--model", MODEL, *FAST_FLAGS_NO_DECIMATE])


def test_a_file_already_in_out_dir_is_kept(tmp_path, capsys):
    src = two_box_glb(tmp_path / "obj0.glb")
    out = tmp_path / "out"
    out.mkdir()
    (out / "obj0.glb").write_bytes(b"the user's own file")
    assert batch(src, "-o", out) == 3
    err = capsys.readouterr().err
    assert "obj0" in err
    assert (out / "obj0.glb").read_bytes() == b"the user's own file"
    (entry,) = ledger_lines(out)
    assert entry["status"] == "failed" and "is not an output recorded in" in entry["error"]
    assert "--overwrite" in entry["error"]
    # asked for: replaced
    assert batch(src, "-o", out, "--overwrite") == 0
    assert (out / "obj0.glb").read_bytes()[:4] == b"glTF"


def test_colliding_ids_each_object_once(model, tmp_path):
    for d in "abc":
        (tmp_path / d).mkdir()
    a = two_box_glb(tmp_path / "a" / "chair0.glb")
    b = two_box_glb(tmp_path / "b" / "chair0.glb", 1.0)
    id_of_a = {i.input: i.id for i in collect_items([a, b])}[a]
    assert id_of_a.startswith("chair0-")
    c = two_box_glb(tmp_path / "c" / f"{id_of_a}.glb", 2.0)  # a stem equal to a's disambiguated id
    items = collect_items([a, b, c])
    assert sorted(i.input for i in items) == sorted([a, b, c])
    assert len({i.id.casefold() for i in items}) == 3
    out = tmp_path / "out"
    s = run_batch(model, items, out, options=fast_options(model), executor=LocalExecutor(parts_per_batch=4))
    assert (s.ok, s.failed) == (3, 0)
    last = check_ledger_agrees_with_files(out)
    assert sorted(e["input"] for e in last.values()) == sorted(map(str, [a, b, c]))
    assert len(ledger_lines(out)) == 3


def test_rerun_with_another_input_of_the_same_name_is_not_skipped(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = two_box_glb(tmp_path / "a" / "chair.glb")
    b = two_box_glb(tmp_path / "b" / "chair.glb", 3.0)
    out = tmp_path / "out"
    assert batch(a, "-o", out) == 0
    first = (out / "chair.glb").read_bytes()
    assert batch(a, "-o", out) == 0 and "1 already done" in capsys.readouterr().out  # same work: skipped
    assert batch(b, "-o", out) == 3  # another object under the same name: not "already done"
    text = capsys.readouterr()
    assert "already done" not in text.out.replace("0 already done", "")
    entry = ledger_lines(out)[-1]
    assert entry["status"] == "failed" and str(a) in entry["error"] and "different input" in entry["error"]
    assert (out / "chair.glb").read_bytes() == first  # a's result kept
    # other options are other work too
    assert batch(a, "-o", out, "--seed", "5") == 3
    assert (out / "chair.glb").read_bytes() == first
    # the original command still finds its work done; --overwrite recomputes and replaces
    assert batch(a, "-o", out) == 0 and "1 already done" in capsys.readouterr().out
    assert batch(b, "-o", out, "--overwrite") == 0
    last = ledger_lines(out)[-1]
    assert last["status"] == "ok" and last["input"] == str(b)
    assert (out / "chair.glb").read_bytes() != first
    assert batch(b, "-o", out) == 0 and "1 already done" in capsys.readouterr().out


def test_two_ids_on_one_input_with_other_options(model, tmp_path):
    src = two_box_glb(tmp_path / "chair.glb")
    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"input": "chair.glb", "id": "椅子", "options": {"seed": 1}}, ensure_ascii=False) + "\n"
                   + json.dumps({"input": "chair.glb", "id": "桌子", "options": {"seed": 2}}, ensure_ascii=False)
                   + "\n", encoding="utf-8")
    items = collect_items([lst])
    assert [i.id for i in items] == ["椅子", "桌子"]
    out = tmp_path / "out"
    s = run_batch(model, items, out, options=fast_options(model))
    assert (s.ok, s.failed) == (2, 0)
    last = check_ledger_agrees_with_files(out)
    assert set(last) == {"椅子", "桌子"}
    assert {e["output"] for e in last.values()} == {"椅子.glb", "桌子.glb"}
    assert last["椅子"]["key"] != last["桌子"]["key"]
    assert src.is_file()
    # unsafe characters are encoded, not dropped: distinct ids stay distinct files
    lst.write_text("".join(json.dumps({"input": "chair.glb", "id": i}) + "\n" for i in ("a/b", "a_b", ".a")))
    assert sorted(i.id for i in collect_items([lst])) == [".a", "a/b", "a_b"]
    # one id for two different objects is refused, naming both lines
    lst.write_text(json.dumps({"input": "chair.glb", "id": "X", "options": {"seed": 1}}) + "\n"
                   + json.dumps({"input": "chair.glb", "id": "x", "options": {"seed": 2}}) + "\n")
    with pytest.raises(hp.InputError, match=r"list.jsonl:2.*list.jsonl:1|list.jsonl:1.*list.jsonl:2"):
        collect_items([lst])


def test_a_second_batch_on_the_same_folder_is_refused(model, tmp_path, capsys):
    objs = tmp_path / "objs"
    objs.mkdir()
    two_box_glb(objs / "o0.glb")
    two_box_glb(objs / "o1.glb", 1.0)
    out = tmp_path / "out"
    second: list = []

    def start_another(item, entry):
        if not second:
            second.append(batch(objs, "-o", out))
            with pytest.raises(BatchFolderBusy, match="in use by another holopart-infer batch"):
                run_batch(model, collect_items([objs]), out, options=fast_options(model))

    s = run_batch(model, collect_items([objs]), out, options=fast_options(model), on_result=start_another)
    assert second == [2] and "in use by another holopart-infer batch" in capsys.readouterr().err
    assert (s.ok, s.failed) == (2, 0)
    assert len(ledger_lines(out)) == 2  # nothing done twice
    s = run_batch(model, collect_items([objs]), out, options=fast_options(model))  # the lock was released
    assert (s.skipped, s.ok) == (2, 0)


def test_unwritable_out_dir_fails_before_any_work(tmp_path, capsys):
    src = two_box_glb(tmp_path / "o.glb")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    target = Path("/proc/self") if os.geteuid() == 0 else ro  # root writes into 0555 folders
    try:
        assert main(["batch", str(src), "-o", str(target), "--model", str(tmp_path / "no_model_here"),
                     *FAST_FLAGS_NO_DECIMATE]) == 2
    finally:
        os.chmod(ro, 0o755)
    err = capsys.readouterr().err
    assert f"output folder {target}" in err and "choose a writable folder" in err
    assert "no_model_here" not in err  # found before the model was looked at


def test_disk_full_mid_run_keeps_what_finished(tmp_path, capsys, monkeypatch):
    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(3):
        two_box_glb(objs / f"o{i}.glb", float(i))
    out = tmp_path / "out"
    real = fsafe.atomic_write
    calls = []

    def full_after_one(path, data, **kw):  # the second output finds the disk full
        if Path(path).suffix == ".glb" and Path(path).parent.name == ".holopart-batch-staging":
            calls.append(path)
            if len(calls) >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(fsafe, "atomic_write", full_after_one)
    assert batch(objs, "-o", out, "--parts-per-batch", "2") == 4
    text = capsys.readouterr()
    assert "no space left" in text.err and "1 object finished in this run is kept" in text.err
    assert "run the same command again" in text.err and "internal error" not in text.err
    last = check_ledger_agrees_with_files(out)
    ok = [k for k, e in last.items() if e["status"] == "ok"]
    assert len(ok) == 1 and (out / f"{ok[0]}.glb").is_file()
    monkeypatch.setattr(fsafe, "atomic_write", real)
    assert batch(objs, "-o", out) == 0  # space again: the rest is done, the first kept
    assert "1 already done" in capsys.readouterr().out
    check_ledger_agrees_with_files(out)


def test_resume_removes_only_its_own_leftover_temporaries(model, tmp_path):
    objs = tmp_path / "objs"
    objs.mkdir()
    two_box_glb(objs / "o0.glb")
    out = tmp_path / "out"
    run_batch(model, collect_items([objs]), out, options=fast_options(model))
    # what a kill -9 leaves: a temp next to an output the ledger names, the staging folder
    ours = [out / ".o0.glb.tmp-k9x1", out / ".ledger.jsonl.tmp-k9x2"]
    staging = out / ".holopart-batch-staging"
    staging.mkdir()
    (staging / ".o1.glb.tmp-abcd").write_bytes(b"partial")
    theirs = [out / ".mine.glb.tmp-keep", out / ".hidden", out / "notes.txt"]
    for p in ours + theirs:
        p.write_bytes(b"x")
    two_box_glb(objs / "o1.glb", 1.0)
    s = run_batch(model, collect_items([objs]), out, options=fast_options(model))
    assert (s.ok, s.skipped) == (1, 1)
    assert not any(p.exists() for p in ours) and not staging.exists()
    assert all(p.exists() for p in theirs)


def _cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "holopart_infer.cli", "batch", *map(str, args), "--model", MODEL, *FAST_FLAGS_NO_DECIMATE]


def test_kill_9_then_resume_leaves_no_temporaries(tmp_path):
    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(4):
        two_box_glb(objs / f"o{i}.glb", float(i))
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli_cmd(objs, "-o", out, "--parts-per-batch", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    ledger = out / "ledger.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:  # kill it while it writes its outputs
        if (out / ".holopart-batch-staging").exists() or (ledger.exists() and ledger.stat().st_size > 0):
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    r = subprocess.run(_cli_cmd(objs, "-o", out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    last = check_ledger_agrees_with_files(out)  # no hidden file left, every glb recorded
    assert sorted(last) == [f"o{i}" for i in range(4)] and all(e["status"] == "ok" for e in last.values())


def test_sigint_says_what_was_kept(model, tmp_path, capsys, monkeypatch):
    objs = tmp_path / "objs"
    objs.mkdir()
    for i in range(3):
        two_box_glb(objs / f"o{i}.glb", float(i))
    out = tmp_path / "out"
    import holopart_infer.scale.batch as batch_mod

    real = batch_mod._write_one
    n = []

    def interrupt_after_two(*a, **kw):
        entry = real(*a, **kw)
        n.append(entry)
        if len(n) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, as from Ctrl-C
        return entry

    monkeypatch.setattr(batch_mod, "_write_one", interrupt_after_two)
    monkeypatch.setattr(fsafe, "_signal", None)  # the recorded signal is forgotten after this test
    assert batch(objs, "-o", out, "--parts-per-batch", "2") == 130
    err = capsys.readouterr().err
    assert "nothing was written" not in err
    assert "interrupted by SIGINT" in err and f"2 objects finished in this run are kept in {out}" in err
    last = check_ledger_agrees_with_files(out)
    assert len(last) == 2


def test_a_real_full_file_system(tmp_path, capsys):
    """The same on a real 1.25 MiB tmpfs (where this test may mount one: root with CAP_SYS_ADMIN):
    more objects than fit, counted from one output measured first (its size depends on the model)."""
    import math

    flags = ("--parts-per-batch", "2", "--no-decimate", "--keep-implausible")  # full meshes: large outputs
    objs = tmp_path / "objs"
    objs.mkdir()
    probe = tmp_path / "probe"
    assert batch(two_box_glb(objs / "o0.glb"), "-o", probe, *flags) == 0
    one = (probe / "o0.glb").stat().st_size
    capsys.readouterr()
    size = 1280 * 1024  # 1 MiB free passes the pre-flight check; the rest fills up
    n = math.ceil(size / one) + 2
    for i in range(1, n):
        two_box_glb(objs / f"o{i}.glb", float(i))
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(small)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()})")
    try:
        out = small / "out"
        assert batch(objs, "-o", out, *flags) == 4
        err = capsys.readouterr().err
        assert "no space left" in err and "kept in" in err and "internal error" not in err
        last = check_ledger_agrees_with_files(out)
        ok = [k for k, e in last.items() if e["status"] == "ok"]
        assert 1 <= len(ok) < n
        for k in ok:
            assert (out / f"{k}.glb").stat().st_size == last[k]["output_bytes"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_ids_are_kept_encoded_and_unique(tmp_path):
    from holopart_infer.scale.batch import output_stem

    assert [output_stem(i) for i in ("椅子", "my d", "a/b", ".a", "x.", "100%", "c:d")] == [
        "椅子", "my d", "a%2Fb", "%2Ea", "x%2E", "100%25", "c%3Ad"]
    long = output_stem("é" * 300)
    assert len(long.encode()) <= 160 and long != output_stem("é" * 299)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    chair = two_box_glb(tmp_path / "x" / "chair.glb")
    upper = two_box_glb(tmp_path / "y" / "Chair.glb")
    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"input": "x/chair.glb", "id": "chair", "options": {"seed": 3}}) + "\n")
    items = collect_items([lst, chair, upper])
    ids = sorted(i.id for i in items)
    assert ids[0].startswith("Chair-") and ids[1] == "chair" and ids[2].startswith("chair-"), ids
    assert len({i.id.casefold() for i in items}) == 3  # no two outputs collide, even without case


def test_outputs_next_to_the_inputs_never_replace_them(tmp_path, capsys):
    """OUT_DIR = the inputs' folder: `obj.glb` would be both; --overwrite does not make it an output."""
    objs = tmp_path / "objs"
    objs.mkdir()
    src = two_box_glb(objs / "obj.glb")
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert batch(src, "-o", objs, *extra) == 3
        assert "is the input" in capsys.readouterr().err + ledger_lines(objs)[-1]["error"]
        assert src.read_bytes() == before
    assert ledger_lines(objs)[-1]["error_type"] == "OutputError"
