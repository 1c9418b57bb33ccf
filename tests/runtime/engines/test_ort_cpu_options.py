"""cpu_session_options: the CPU SessionOptions of the ONNX Runtime backend (issue 16 item 1)."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from holopart_infer.assets import demo_model_path  # noqa: E402
from holopart_infer.engines.onnxruntime import OrtBackend, cpu_session_options  # noqa: E402
from holopart_infer.errors import InputError  # noqa: E402
from holopart_infer.model.manifest import load_manifest  # noqa: E402


def _spinning(so) -> str | None:
    try:
        return so.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default
        return None


def test_options_are_applied():
    so = cpu_session_options(1, spinning=False, graph_optimization="basic", memory_arena=False)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not so.enable_cpu_mem_arena and not so.enable_mem_pattern
    so = cpu_session_options(2, spinning=True)
    assert so.intra_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.enable_cpu_mem_arena and so.enable_mem_pattern
    # None: ONNX Runtime's own choice of thread count
    assert cpu_session_options().intra_op_num_threads == ort.SessionOptions().intra_op_num_threads


@pytest.mark.parametrize("kw, what", [(dict(threads=0), "threads"), (dict(threads=1.5), "threads"),
                                      (dict(threads=True), "threads"),
                                      (dict(graph_optimization="max"), "graph_optimization")])
def test_bad_options_name_the_argument(kw, what):
    with pytest.raises(InputError, match=what):
        cpu_session_options(**kw)


def test_cpu_backend_defaults_to_cpu_session_options():
    be = OrtBackend.from_model_dir(demo_model_path())
    want = cpu_session_options()
    so = be.session_options
    assert so is not None and so.inter_op_num_threads == want.inter_op_num_threads == 1
    assert so.intra_op_num_threads == want.intra_op_num_threads
    assert _spinning(so) == _spinning(want)
    # a caller's own options are used as given
    mine = ort.SessionOptions()
    assert OrtBackend.from_model_dir(demo_model_path(), session_options=mine).session_options is mine


@pytest.mark.parametrize("opts", [dict(threads=1, spinning=False), dict(threads=2, spinning=True),
                                  dict(threads=1, graph_optimization="basic", memory_arena=False)])
def test_every_option_set_decodes_the_same_occupancy(opts):
    """The decoder's inside/outside answer does not depend on the session options."""
    man = load_manifest(demo_model_path())
    rng = np.random.default_rng(3)
    lat = rng.standard_normal((2, 64, 8)).astype(np.float32)
    pts = rng.uniform(-1.05, 1.05, (2, 4000, 3)).astype(np.float32)
    plain = ort.SessionOptions()
    plain.intra_op_num_threads = 1
    ref = OrtBackend(man, session_options=plain)
    ours = OrtBackend(man, session_options=cpu_session_options(**opts))
    a = ref.decoder_query(pts, ref.decoder_kv(lat))
    b = ours.decoder_query(pts, ours.decoder_kv(lat))
    assert a.shape == b.shape == (2, 4000, 1)
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
    assert np.mean((a > 0) != (b > 0)) < 1e-3


def test_threads_is_a_registry_option():
    """``threads`` goes through open_backend (the registry table) into every session's options."""
    from holopart_infer import assets
    from holopart_infer.engines import BACKENDS, open_backend

    assert "threads" in BACKENDS["onnxruntime"].options
    with open_backend(assets.demo_model_path(), backend="onnxruntime", device="cpu", threads=1) as be:
        assert be.session_options.intra_op_num_threads == 1 and be.session_options.inter_op_num_threads == 1
    given = ort.SessionOptions()
    with open_backend(assets.demo_model_path(), backend="onnxruntime", device="cpu", session_options=given,
                      threads=2) as be:
        assert be.session_options is given and given.intra_op_num_threads == 2
    with pytest.raises(InputError, match="threads"):
        open_backend(assets.demo_model_path(), backend="onnxruntime", device="cpu", threads=0)
