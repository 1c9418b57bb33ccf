"""The catalogue of bad inputs and hostile cases: one test per case.

Each test checks the exit code or exception type, that the message names the
file/option/tensor and says what to do, that nothing was written, and that
every input is byte-identical afterwards (hashed before and after).
README "Guarantees and exit codes" points here (tests/runtime/test_guarantees.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from holopart_infer import assets, fsafe
from holopart_infer.errors import (BackendUnavailable, CheckpointError, EmptyResult, InputError, Interrupted,
                                   ModelDirError, OutputError, OutputExists)
from tests.support import FAST_FLAGS, FAST_OPTS, cli, write_transformed_scene


def snapshot(*roots) -> dict[str, str]:
    """sha256 of every file under ``roots`` (files or folders), by path; symlinks by target text."""
    out = {}
    for root in map(Path, roots):
        paths = [root] if not root.is_dir() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = fsafe.sha256_file(p)
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test's verified-hash record lives in its own cache dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(assets.demo_model_path(), dst)
    return dst


@pytest.fixture(scope="module")
def mini():
    import holopart_infer as hp

    return hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")


def _folder_of_parts(folder: Path) -> None:
    import trimesh

    folder.mkdir()
    trimesh.creation.box(extents=(1.0, 0.4, 1.0)).export(folder / "body.glb")
    trimesh.creation.cylinder(radius=0.15, height=1.0).apply_translation((0.7, 0.0, 0.0)).export(folder / "leg.glb")


# --------------------------------------------------------------------------- export --overwrite
@pytest.mark.requires_torch
def test_export_overwrite_never_deletes_a_user_folder(tiny_checkpoint, tmp_path):
    user = tmp_path / "notes_folder"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("precious")
    before = snapshot(user, tiny_checkpoint)
    r = cli("export", tiny_checkpoint, user, "--overwrite", "-q")
    assert r.returncode == 2, r.stderr
    assert "replaces only a model directory made by export" in r.stderr and str(user) in r.stderr
    assert snapshot(user, tiny_checkpoint) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes_folder"]  # no temp folder


@pytest.mark.requires_torch
@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_export_overwrite_never_touches_the_checkpoint(tiny_checkpoint, tmp_path, where):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    out = {"same": ckpt, "inside": ckpt / "exported", "around": tmp_path}[where]
    before = snapshot(tmp_path)
    r = cli("export", ckpt, out, "--overwrite", "-q")
    assert r.returncode == 2, r.stderr
    assert "inputs are never modified or replaced" in r.stderr and str(ckpt) in r.stderr
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- every input protected
@pytest.mark.parametrize("how", ["part_file", "inside_folder", "symlinked_folder", "symlink_to_part"])
def test_run_never_writes_over_or_into_an_input(tmp_path, how):
    parts = tmp_path / "parts"
    _folder_of_parts(parts)
    (tmp_path / "link").symlink_to(parts)
    (tmp_path / "body_link.glb").symlink_to(parts / "body.glb")
    out = {"part_file": parts / "body.glb", "inside_folder": parts / "new.glb",
           "symlinked_folder": tmp_path / "link" / "body.glb", "symlink_to_part": tmp_path / "body_link.glb"}[how]
    before = snapshot(tmp_path)
    r = cli("run", parts, "-o", out, "--model", assets.demo_model_path(), "--overwrite", *FAST_FLAGS)
    assert r.returncode == 2, r.stderr
    assert "inputs are never modified or replaced" in r.stderr and "parts" in r.stderr
    assert snapshot(tmp_path) == before


def test_mesh_and_labels_inputs_are_protected(tmp_path):
    import trimesh

    mesh = tmp_path / "m.ply"
    trimesh.creation.box().export(mesh)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.repeat([0, 1], 6))
    before = snapshot(tmp_path)
    for out in (labels, mesh):
        r = cli("run", mesh, "--labels", labels, "-o", out, "--model", assets.demo_model_path(), "--overwrite", *FAST_FLAGS)
        assert r.returncode == 2 and f"{out} is the input" in r.stderr
    # the model dir is an input too
    r = cli("run", mesh, "--labels", labels, "-o", assets.demo_model_path() / "x.glb",
            "--model", assets.demo_model_path(), *FAST_FLAGS)
    assert r.returncode == 2 and "lies inside the input folder" in r.stderr
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- the result remembers its sources
def test_result_refuses_to_overwrite_what_it_was_made_from(mini, tmp_path):
    src = tmp_path / "chair.glb"
    write_transformed_scene(src)
    before = snapshot(tmp_path)
    result = mini.complete(src, **FAST_OPTS)
    assert src in result.inputs
    for call in (lambda: result.save(src), lambda: result.save(src, overwrite=True)):
        with pytest.raises(OutputError, match="chair.glb is the input .*Choose another output path"):
            call()
    with pytest.raises(OutputError, match="is the input"):
        result.preview(tmp_path / "chair.glb", overwrite=True)
    assert snapshot(tmp_path) == before
    result.save(tmp_path / "out.glb")  # another path works
    with pytest.raises(OutputExists, match="out.glb already exists.*--overwrite"):
        result.save(tmp_path / "out.glb")


def test_folder_result_protects_the_folder_and_each_part(mini, tmp_path):
    parts = tmp_path / "parts"
    _folder_of_parts(parts)
    result = mini.complete(parts, **FAST_OPTS)
    before = snapshot(tmp_path)
    for target in (parts / "body.glb", parts / "other.glb"):
        with pytest.raises(OutputError):
            result.save(target, overwrite=True)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- model integrity
def _alter_weights_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # 16 float32 weights overwritten, size unchanged
    path.write_bytes(bytes(data))


def test_altered_graph_at_same_size_is_refused(model_copy):
    import holopart_infer as hp

    hp.load(model_copy, backend="onnxruntime", device="cpu")  # verified once: recorded
    target = model_copy / "onnx" / "dit.onnx"
    size = target.stat().st_size
    _alter_weights_same_size(target)
    assert target.stat().st_size == size
    with pytest.raises(ModelDirError, match=r"dit\.onnx does not match the sha256 in the manifest.*Re-export"):
        hp.load(model_copy, backend="onnxruntime", device="cpu")
    # explicit opt-out
    assert hp.load(model_copy, backend="onnxruntime", device="cpu", verify_integrity=False) is not None
    r = cli("run", assets.demo_object_path("table"), "-o", model_copy.parent / "o.glb", "--model", model_copy, *FAST_FLAGS)
    assert r.returncode == 2 and "dit.onnx" in r.stderr and "sha256" in r.stderr
    assert not (model_copy.parent / "o.glb").exists()


def test_zeroed_hashes_are_refused(model_copy):
    import holopart_infer as hp

    mpath = model_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["graphs"]["vae_query"]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match=r"vae_query.*not a real SHA-256.*verify_integrity=False"):
        hp.load(model_copy, backend="onnxruntime", device="cpu")


def test_verified_hash_record_makes_reloads_cheap_and_notices_changes(model_copy, monkeypatch):
    from holopart_infer.model.manifest import load_manifest

    calls = []
    real = fsafe.sha256_file
    monkeypatch.setattr(fsafe, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    load_manifest(model_copy)
    assert len(calls) == 5  # every graph hashed once
    calls.clear()
    load_manifest(model_copy)
    assert calls == []  # re-load: one stat per file, no hashing
    target = model_copy / "onnx" / "vae_query.onnx"
    st = target.stat()
    _alter_weights_same_size(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    with pytest.raises(ModelDirError, match="vae_query.onnx does not match"):
        load_manifest(model_copy)
    assert calls == ["vae_query.onnx"]


# --------------------------------------------------------------------------- never replace without --overwrite
def test_a_file_created_during_the_run_is_kept_and_named(mini, tmp_path):
    out = tmp_path / "out.glb"

    def intruder(stage, done, total):
        if stage == "postprocess" and not out.exists():
            out.write_bytes(b"someone else's result")

    result = mini.complete(assets.demo_object_path("table"), progress=intruder, **FAST_OPTS)
    with pytest.raises(OutputExists, match="out.glb"):
        result.save(out)
    assert out.read_bytes() == b"someone else's result"
    assert listing(tmp_path) == ["out.glb"]


def test_publish_step_never_replaces_even_when_the_check_passed(tmp_path, monkeypatch):
    """The race itself: the file appears between the check and the final link."""
    out = tmp_path / "x.glb"
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_bytes(b"other writer")
        return real_link(src, dst)

    monkeypatch.setattr(fsafe.os, "link", racing_link)
    with pytest.raises(OutputExists, match="x.glb appeared while the result was being computed"):
        fsafe.atomic_write(out, b"ours", overwrite=False)
    assert out.read_bytes() == b"other writer"
    assert listing(tmp_path) == ["x.glb"]


def test_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "same.glb"
    outcomes = []
    barrier = threading.Barrier(8)

    def writer(i):
        barrier.wait()
        try:
            fsafe.atomic_write(out, f"writer {i}".encode() * 1000, overwrite=False)
            outcomes.append(("ok", i))
        except OutputExists:
            outcomes.append(("exists", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for kind, i in outcomes if kind == "ok"]
    assert len(winners) == 1 and len(outcomes) == 8
    assert out.read_bytes() == f"writer {winners[0]}".encode() * 1000
    assert listing(tmp_path) == ["same.glb"]


def test_model_dir_publish_never_replaces(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(OutputExists, match="model appeared"):
        with fsafe.atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text("{}")
            target.mkdir()  # another process made it meanwhile (empty: rename would replace it)
    assert listing(tmp_path) == ["model"]


# --------------------------------------------------------------------------- output checked before any work
@pytest.mark.parametrize("case", ["extension", "folder", "missing_folder", "preview_extension"])
def test_unusable_output_fails_before_any_work(tmp_path, case):
    bogus_model = tmp_path / "no_model_here"  # loading it would fail: the output must be checked first
    (tmp_path / "outdir").mkdir()
    out = {"extension": tmp_path / "out.obj", "folder": tmp_path / "outdir",
           "missing_folder": tmp_path / "nope" / "o.glb",
           "preview_extension": tmp_path / "o.glb"}[case]
    extra = ["--preview", tmp_path / "p.bmp"] if case == "preview_extension" else []
    r = cli("run", assets.demo_object_path("table"), "-o", out, "--model", bogus_model, *extra, *FAST_FLAGS)
    assert r.returncode == 2, r.stderr
    assert {"extension": "unsupported extension '.obj'; supported: .glb", "folder": "is a folder",
            "missing_folder": "does not exist; create it first",
            "preview_extension": "unsupported extension '.bmp'; supported: .png, .jpg, .jpeg"}[case] in r.stderr
    assert "no_model_here" not in r.stderr
    assert listing(tmp_path) == ["outdir"]


def test_read_only_folder_fails_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    # root writes into a 0555 folder: use a folder not even root can create files in
    target = Path("/proc") if os.geteuid() == 0 else ro
    try:
        r = cli("run", assets.demo_object_path("table"), "-o", target / "o.glb", "--model",
                tmp_path / "no_model_here", *FAST_FLAGS)
    finally:
        os.chmod(ro, 0o755)
    assert r.returncode == 2, r.stderr
    assert f"cannot write in {target}" in r.stderr and "choose a writable folder" in r.stderr
    assert "no_model_here" not in r.stderr  # found before the model was even looked at
    assert listing(ro) == []


# --------------------------------------------------------------------------- interrupts
def _wait_for(pred, timeout=240.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_run_exits_128_plus_signal_and_leaves_nothing(tmp_path, sig, code):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "holopart_infer.cli", "demo", "-o", str(out_dir / "d.glb"),
                             "--steps", "50", "--depth", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        seen = ""
        while "denoise" not in seen:  # the progress bar shows the run is under way
            ch = proc.stderr.read(1)
            if not ch:
                break
            seen += ch
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, seen + err
    assert "nothing was written" in err
    assert listing(out_dir) == []


def test_a_swallowed_interrupt_still_aborts(tmp_path, monkeypatch):
    """A dependency that catches BaseException while being imported must not turn Ctrl-C into success."""
    from holopart_infer import cli as cli_mod
    from holopart_infer import pipeline

    real_load = pipeline.load

    def load_swallowing(*a, **kw):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        except BaseException:  # what the dependency did
            pass
        return real_load(*a, **kw)

    monkeypatch.setattr(pipeline, "load", load_swallowing)
    out = tmp_path / "o.glb"
    code = cli_mod.main(["run", str(assets.demo_object_path("table")), "-o", str(out), "--model",
                         str(assets.demo_model_path()), *FAST_FLAGS])
    fsafe._signal = None  # reset this process's record for the other tests
    assert code == 130
    assert listing(tmp_path) == []


def test_interrupt_before_publish_writes_nothing(tmp_path):
    fsafe.interrupted(signal.SIGTERM)
    try:
        with pytest.raises(Interrupted) as e:
            fsafe.atomic_write(tmp_path / "x.glb", b"data", overwrite=False)
        assert e.value.exit_code == 143
        with pytest.raises(Interrupted):
            with fsafe.atomic_dir(tmp_path / "model") as d:
                (d / "big.onnx").write_bytes(b"x" * 1000)
    finally:
        fsafe._signal = None
    assert listing(tmp_path) == []


@pytest.mark.requires_torch
@pytest.mark.slow
def test_sigterm_during_export_leaves_no_temp_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-m", "holopart_infer.cli", "export", str(tiny_checkpoint), str(out),
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: any(fsafe.TMP_MARK in p.name for p in tmp_path.iterdir()) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- non-finite weights, empty result
@pytest.mark.requires_torch
def test_nan_weights_are_named_at_load(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    wfile = ckpt / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(wfile))
    name = sorted(tensors)[3]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(wfile))
    before = snapshot(tmp_path)
    from holopart_infer.networks.load import load_networks

    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds 1 non-finite"):
        load_networks(ckpt)
    r = cli("export", ckpt, tmp_path / "out", "-q")
    assert r.returncode == 2 and name in r.stderr and "Use another checkpoint" in r.stderr
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--weights", ckpt, *FAST_FLAGS)
    assert r.returncode == 2 and name in r.stderr
    assert snapshot(tmp_path) == before


def test_every_part_empty_is_explained(tmp_path):
    import holopart_infer as hp

    model = hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
    model.backend.decoder_query = lambda pts, kv: np.full(pts.shape[:2] + (1,), -5.0, np.float32)  # nothing inside
    with pytest.raises(EmptyResult, match=r"every one of the \d+ parts came out empty.*points at the model"):
        model.complete(assets.demo_object_path("table"), **FAST_OPTS)


# --------------------------------------------------------------------------- bad option values
@pytest.mark.parametrize("flag, value, expected", [
    ("--seed", "-1", "expected an integer in [0, "), ("--steps", "2.5", "expected an integer >= 1"),
    ("--depth", "4", "expected an integer in [5, 11]"), ("--guidance", "nan", "expected a finite number >= 0"),
    ("--min-component", "2", "expected a finite number in [0.0, 1.0]")])
def test_bad_cli_values_exit_2_naming_the_flag_and_range(tmp_path, flag, value, expected):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            flag, value)
    assert r.returncode == 2 and f"argument {flag}" in r.stderr and expected in r.stderr, r.stderr
    assert listing(tmp_path) == []


@pytest.mark.parametrize("kw, expected", [
    (dict(steps=2.5), "option steps must be an integer >= 1, got 2.5"),
    (dict(steps="2"), "option steps must be an integer >= 1, got '2' (str)"),
    (dict(seed=-1), "option seed must be an integer in [0, "),
    (dict(depth=True), "option depth must be an integer in [5, 11], got True"),
    (dict(decimate=2), "option decimate must be None or an integer >= 4"),
    (dict(colour=1), "unknown option(s): colour; known: steps")])
def test_bad_api_values_raise_input_error(mini, kw, expected):
    with pytest.raises(InputError) as e:
        mini.complete(assets.demo_object_path("table"), **kw)
    assert expected in str(e.value)


@pytest.mark.requires_torch
def test_cuda_without_cuda_is_backend_unavailable(tiny_checkpoint, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import holopart_infer as hp

    with pytest.raises(BackendUnavailable, match="(?s)Device 'cuda' was asked for.*--device cpu"):
        hp.load(tiny_checkpoint, backend="torch", device="cuda")
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--weights", tiny_checkpoint,
            "--device", "cuda", *FAST_FLAGS)
    assert r.returncode == 2 and "device 'cuda'" in r.stderr and "AssertionError" not in r.stderr


# --------------------------------------------------------------------------- malformed configs / manifests
@pytest.mark.requires_torch
def test_wrong_typed_config_field_is_named(tiny_checkpoint, tmp_path):
    from holopart_infer.model.checkpoint import read_config

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg_path = ckpt / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_layers"] = "five"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"transformer/config\.json: field 'num_layers' must be an integer "
                                              r">= 1, got 'five'"):
        read_config(ckpt, "transformer")
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--weights", ckpt, *FAST_FLAGS)
    assert r.returncode == 2 and "num_layers" in r.stderr and str(cfg_path) in r.stderr


def test_manifest_config_disagreeing_with_graphs_names_the_manifest(model_copy):
    import holopart_infer as hp

    mpath = model_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["config"]["transformer"]["in_channels"] = 16
    mpath.write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match=r"manifest\.json: config\.transformer\.in_channels is 16 but graph "
                                            r"'dit' declares 'latents' with size 8"):
        hp.load(model_copy, backend="onnxruntime", device="cpu")


def test_manifest_claiming_another_precision_is_refused(model_copy):
    import holopart_infer as hp

    mpath = model_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["precision"] = "fp16"
    mpath.write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match=r"precision is 'fp16' but the weights of graph .* are mostly fp32"):
        hp.load(model_copy, backend="onnxruntime", device="cpu")


# --------------------------------------------------------------------------- CLI paragraph
def test_cli_verbose_works_after_the_subcommand(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "-v", "--steps", "0")
    assert r.returncode == 2 and "argument --steps" in r.stderr  # parsed: -v was accepted here
    r = cli("run", "-v", "--help")
    assert r.returncode == 0


def test_cli_help_shows_the_depth_range_and_model_defaults():
    r = cli("run", "--help")
    assert "an integer in [5, 11] (default 9)" in " ".join(r.stdout.split())
    r = cli("run", "--model", assets.demo_model_path(), "--help")
    text = " ".join(r.stdout.split())
    assert "latent length (2048 for the published model); an integer >= 1 (default 64)" in text
    assert "manifest" in text
    r = cli("demo", "--help")
    assert "(default 7)" in " ".join(r.stdout.split())  # the demo preset's depth


def test_cli_precision_with_a_model_dir_is_refused(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--backend", "onnxruntime", "--precision", "fp16", *FAST_FLAGS)
    assert r.returncode == 2 and "exported in fp32" in r.stderr and "not in fp16" in r.stderr
    assert listing(tmp_path) == []


def test_cli_jpeg_preview_is_jpeg(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--preview", tmp_path / "p.jpg", *FAST_FLAGS)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_cli_decimation_warning_is_one_summary_line(mini, caplog, monkeypatch):
    from holopart_infer.postprocess import cleanup

    monkeypatch.setattr(cleanup, "edge_manifold", lambda f, _real=cleanup.edge_manifold: len(f) > 50)
    with caplog.at_level("WARNING", logger="holopart_infer"):
        result = mini.complete(assets.demo_object_path("table"), decimate=20, **FAST_OPTS)
    lines = [r.getMessage() for r in caplog.records if "decimation" in r.getMessage()]
    n = len(result.stats["decimation_non_manifold"])
    assert n >= 2 and len(lines) == 1
    assert f"would have left {n} of {len(result.parts)} parts non-manifold" in lines[0] and "kept" in lines[0]


def test_cli_export_quiet_hides_third_party_warnings():
    """-q: the exporter's torchvision notices are not shown (the logger that emits them is silenced)."""
    import logging

    torch = pytest.importorskip("torch")  # noqa: F841
    from holopart_infer.export.onnx_export import _quiet_exporter_logs

    lg = logging.getLogger("torch.onnx._internal.exporter._registration")
    with _quiet_exporter_logs():
        assert not lg.isEnabledFor(logging.WARNING)


def test_gltf_external_buffers_are_inputs_too(mini, tmp_path):
    import trimesh

    glb = tmp_path / "src.glb"
    write_transformed_scene(glb)
    files = trimesh.load_scene(glb).export(file_type="gltf")  # {name: bytes}: the .gltf and its .bin
    folder = tmp_path / "gltf"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    gltf = folder / "model.gltf"
    bins = [folder / n for n in files if n.endswith(".bin")]
    assert gltf.is_file() and bins
    before = snapshot(tmp_path)
    result = mini.complete(gltf, **FAST_OPTS)
    assert set(bins) <= set(result.inputs)
    with pytest.raises(OutputError, match="is the input"):
        result.save(bins[0], overwrite=True)
    assert snapshot(tmp_path) == before
