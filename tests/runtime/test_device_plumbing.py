"""Device strings, the decoder chunk default per device, and why CUDA is (not) usable."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.extraction import native
from holopart_infer.engines.base import BackendBase
from holopart_infer.errors import BackendUnavailable, InputError
from holopart_infer.extraction.extract import QUERY_CHUNK_POINTS, QUERY_CHUNK_POINTS_BY_DEVICE as CHUNK_POINTS_DEFAULT
from holopart_infer.pipeline import CompletionOptions, HoloPart


@pytest.mark.parametrize("dev, want", [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda"), ("CUDA:1", "cuda"),
                                       (" cuda ", "cuda")])
def test_normalize_device(dev, want):
    assert native.normalize_device(dev) == want


@pytest.mark.parametrize("dev", ["tpu", "cuda:", "cuda:x", "gpu0", ""])
def test_normalize_device_rejects(dev):
    with pytest.raises(InputError, match="device"):
        native.normalize_device(dev)


def test_kernels_accept_torch_device_spelling():
    xyz = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    if native.cuda_available():
        np.testing.assert_array_equal(native.farthest_point_sampling(xyz, 8, device="cuda:0"),
                                      native.farthest_point_sampling(xyz, 8))
    else:  # "cuda:0" is understood as CUDA: it fails for the CUDA reason, not as an unknown device
        with pytest.raises(BackendUnavailable, match="device='cuda' requested"):
            native.farthest_point_sampling(xyz, 8, device="cuda:0")


class _DeviceOnly(BackendBase):
    """A backend that only says where it runs (the device properties need nothing more)."""

    name = "device-only"
    precision = "fp32"
    config: dict = {}

    def __init__(self, device: str):
        self.device = device


def _model(device: str) -> HoloPart:
    return HoloPart(_DeviceOnly(device))


@pytest.mark.parametrize("dev", ["cuda", "cuda:0", "cuda:3"])
def test_extract_device_follows_a_cuda_model(dev):
    # "cuda:0" used to extract on the host: only the exact string "cuda" counted
    assert _model(dev).extract_device == ("cuda" if native.cuda_available() else "cpu")
    assert _model(dev).chunk_points == CHUNK_POINTS_DEFAULT["cuda"]


def test_extract_device_and_chunk_on_cpu():
    assert _model("cpu").extract_device == "cpu"
    assert _model("cpu").chunk_points == CHUNK_POINTS_DEFAULT["cpu"]
    assert CHUNK_POINTS_DEFAULT["cuda"] > CHUNK_POINTS_DEFAULT["cpu"] == QUERY_CHUNK_POINTS


def test_chunk_points_option_none_means_device_default():
    CompletionOptions().validate()
    assert CompletionOptions().chunk_points is None
    CompletionOptions(chunk_points=4096).validate()
    with pytest.raises(InputError, match="chunk_points"):
        CompletionOptions(chunk_points=0).validate()


def test_decoder_calls_use_the_device_chunk(monkeypatch):
    """complete() hands extraction the device default unless the options set chunk_points."""
    import holopart_infer as hp
    from holopart_infer import assets
    from holopart_infer.extraction import extract

    seen = []
    orig = extract.extract_meshes

    def spy(*a, **k):
        seen.append(k["chunk_points"])
        return orig(*a, **k)

    monkeypatch.setattr(extract, "extract_meshes", spy)
    model = hp.load(assets.demo_model_path(), device="cpu")
    # one extraction per batch (no guard: its stand-ins run their own extraction, not the decoder)
    fast = dict(steps=1, depth=6, decimate=None, thin_parts=False, guard=False)
    model.complete(assets.demo_object_path(), **fast)
    model.complete(assets.demo_object_path(), chunk_points=1000, **fast)
    assert seen == [CHUNK_POINTS_DEFAULT["cpu"], 1000]


def test_cuda_status_says_why(monkeypatch):
    status = native.cuda_status()
    assert isinstance(status, str) and status
    if not native.built_with_cuda():
        assert "not built" in status or "failed to import" in status


def test_cuda_import_error_is_reported_not_hidden(monkeypatch, caplog):
    """A _cuda module that exists but fails to import: cuda_status() gives the import error, logged as an error."""
    import importlib
    import importlib.util

    def broken_import(name, *a, **k):
        if name == "holopart_infer._cuda":
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return real_import(name, *a, **k)

    real_import = importlib.import_module
    real_find = importlib.util.find_spec
    monkeypatch.setattr(native, "_modules", {k: v for k, v in native._modules.items() if k != "_cuda"})
    monkeypatch.setattr(native, "_import_errors", {})
    monkeypatch.setattr(native.importlib, "import_module", broken_import)
    monkeypatch.setattr(native.importlib.util, "find_spec",
                        lambda n, *a: object() if n == "holopart_infer._cuda" else real_find(n, *a))
    with caplog.at_level("ERROR", logger="holopart_infer"):
        assert not native.cuda_available()
    assert "libcudart.so.13" in native.cuda_status()
    assert any("libcudart" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendUnavailable, match="libcudart"):
        native.kernels("cuda")


def test_expected_cuda_missing_is_an_error(monkeypatch, caplog):
    import importlib

    real_import = importlib.import_module

    def missing(name, *a, **k):
        if name == "holopart_infer._cuda":
            raise ModuleNotFoundError("No module named 'holopart_infer._cuda'")
        return real_import(name, *a, **k)

    monkeypatch.setenv("HOLOPART_EXPECT_CUDA", "1")
    monkeypatch.setattr(native, "_modules", {k: v for k, v in native._modules.items() if k != "_cuda"})
    monkeypatch.setattr(native, "_import_errors", {})
    monkeypatch.setattr(native.importlib, "import_module", missing)
    monkeypatch.setattr(native.importlib.util, "find_spec", lambda n, *a: None)
    with caplog.at_level("ERROR", logger="holopart_infer"):
        assert not native.built_with_cuda()
    assert any("_cuda was not built" in r.getMessage() for r in caplog.records)
    assert "not built" in native.cuda_status()
