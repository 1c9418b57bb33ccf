"""Where a user picks the torch backend on a CPU (a checkpoint dir), the load says
it is ~3x slower than the exported ONNX Runtime model dir and how to export
(issue 28 item 5); an ONNX Runtime load says nothing of the kind."""
from __future__ import annotations

import logging

import holopart_infer as hp
from holopart_infer import assets


def test_torch_on_cpu_load_says_export(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        model = hp.load(tiny_checkpoint, device="cpu")
    assert model.backend_name == "torch"
    said = [r.getMessage() for r in caplog.records if "ONNX Runtime" in r.getMessage()]
    assert len(said) == 1 and "holopart-infer export" in said[0] and str(tiny_checkpoint) in said[0]


def test_onnxruntime_load_says_nothing_of_it(caplog):
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")
    assert not [r for r in caplog.records if "holopart-infer export" in r.getMessage()]
