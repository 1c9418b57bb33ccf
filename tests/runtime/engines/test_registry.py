"""The registration table and open_backend(): resolution by kind, device and priority;
explicit requests never fall back; default precisions come from the table."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from holopart_infer import assets
from holopart_infer.engines import registry
from holopart_infer.engines.registry import BACKENDS, CHECKPOINT_DIR, MODEL_DIR, model_kind, open_backend, resolve
from holopart_infer.errors import BackendUnavailable, InputError, InputFileNotFound


@pytest.fixture
def machine(monkeypatch):
    """Pretend availability: machine({"tensorrt": {"cuda"}, ...}) -> only those (backend, device) pairs exist."""
    def set_(avail: dict[str, set[str]]):
        for name, spec in list(BACKENDS.items()):
            ok_devs = avail.get(name, set())
            fn = (lambda devs: lambda d: (d in devs, "fake ok" if d in devs else "not on this fake machine"))(ok_devs)
            monkeypatch.setitem(BACKENDS, name, dataclasses.replace(spec, available=fn))
    return set_


def test_table_is_the_one_list_of_backends():
    from holopart_infer.cli import build_parser

    assert set(BACKENDS) == {"tensorrt", "onnxruntime", "torch"}
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    backend_arg = next(a for a in run._actions if a.dest == "backend")
    assert list(backend_arg.choices) == ["auto", *BACKENDS]


def test_model_kind(tmp_path, tiny_checkpoint):
    assert model_kind(assets.demo_model_path()) == MODEL_DIR
    assert model_kind(tiny_checkpoint) == CHECKPOINT_DIR
    with pytest.raises(InputFileNotFound, match="does not exist"):
        model_kind(tmp_path / "nope")
    with pytest.raises(InputError, match="neither an exported model dir"):
        model_kind(tmp_path)


def test_auto_walks_devices_then_priority(machine, caplog):
    machine({"tensorrt": {"cuda"}, "onnxruntime": {"cuda", "cpu"}, "torch": {"cuda", "cpu"}})
    with caplog.at_level(logging.INFO, logger="holopart_infer"):
        assert [resolve(MODEL_DIR)[0].name, resolve(MODEL_DIR)[1]] == ["tensorrt", "cuda"]
    assert "picked backend tensorrt on cuda" in caplog.text
    assert (resolve(CHECKPOINT_DIR)[0].name, resolve(CHECKPOINT_DIR)[1]) == ("torch", "cuda")
    machine({"onnxruntime": {"cuda", "cpu"}})
    assert (resolve(MODEL_DIR)[0].name, resolve(MODEL_DIR)[1]) == ("onnxruntime", "cuda")
    machine({"onnxruntime": {"cpu"}, "tensorrt": {"cuda"}})
    assert (resolve(MODEL_DIR, device="cpu")[0].name, resolve(MODEL_DIR, device="cpu")[1]) == ("onnxruntime", "cpu")
    with caplog.at_level(logging.INFO, logger="holopart_infer"):
        caplog.clear()
        machine({"onnxruntime": {"cpu"}})
        assert resolve(MODEL_DIR)[0].name == "onnxruntime"
    assert "skipped tensorrt on cuda: not on this fake machine" in caplog.text


def test_explicit_requests_never_fall_back(machine):
    machine({"onnxruntime": {"cpu"}, "torch": {"cpu"}})
    with pytest.raises(BackendUnavailable, match=r"tensorrt on cuda: not on this fake machine.*holopart-infer\[tensorrt\]"):
        resolve(MODEL_DIR, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="onnxruntime on cuda"):
        resolve(MODEL_DIR, backend="onnxruntime", device="cuda")
    with pytest.raises(BackendUnavailable, match="torch on cuda"):
        resolve(CHECKPOINT_DIR, device="cuda")
    assert resolve(MODEL_DIR, backend="onnxruntime")[1] == "cpu"  # device auto: the backend's best device
    with pytest.raises(InputError, match="runs an exported model dir; this is a checkpoint"):
        resolve(CHECKPOINT_DIR, backend="onnxruntime")
    with pytest.raises(InputError, match="runs a checkpoint dir; this is an exported model dir"):
        resolve(MODEL_DIR, backend="torch")
    machine({})
    with pytest.raises(BackendUnavailable, match="no backend can run this model dir"):
        resolve(MODEL_DIR)


def test_bad_arguments():
    for kw, msg in ((dict(backend="tpu"), "backend must be one of auto, tensorrt, onnxruntime, torch"),
                    (dict(device="gpu"), "device must be one of auto, cpu, cuda"),
                    (dict(precision="int8"), "precision must be one of fp32, fp16, bf16")):
        with pytest.raises(InputError, match=msg):
            open_backend(assets.demo_model_path(), **kw)
    with pytest.raises(InputError, match="takes the options providers, session_options, threads, verify_hashes; got engine_cache"):
        open_backend(assets.demo_model_path(), device="cpu", engine_cache="/tmp/x")


def test_default_precision_comes_from_the_table(monkeypatch, tiny_checkpoint):
    seen = {}

    def fake_open(path, device, precision, **kw):
        seen.update(device=device, precision=precision, **kw)
        return type("B", (), {"name": "torch", "device": device, "precision": precision})()

    monkeypatch.setattr(registry.BackendSpec, "opener", lambda self: fake_open)
    monkeypatch.setitem(BACKENDS, "torch", dataclasses.replace(BACKENDS["torch"], available=lambda d: (True, "")))
    open_backend(tiny_checkpoint, device="cuda")
    assert seen["precision"] == "bf16" == BACKENDS["torch"].default_precision["cuda"]
    open_backend(tiny_checkpoint, device="cpu")
    assert seen["precision"] == "fp32" == BACKENDS["torch"].default_precision["cpu"]
    open_backend(tiny_checkpoint, device="cpu", precision="fp16", graph="eager")
    assert seen == {"device": "cpu", "precision": "fp16", "graph": "eager"}


def test_load_wraps_the_backend(tiny_checkpoint):
    import holopart_infer as hp

    with hp.load(assets.demo_model_path(), device="cpu") as model:
        b = model.backend
        assert (model.backend_name, model.device, model.precision, model.path) == (b.name, b.device, b.precision,
                                                                                  b.path)
        assert model.num_tokens == b.num_tokens and model.defaults == b.defaults and model.config is b.config
    model = hp.load(tiny_checkpoint)
    assert (model.backend_name, model.device, model.precision) == ("torch", "cpu", "fp32")
