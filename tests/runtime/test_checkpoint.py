"""Checkpoint reader and loader: layouts, dtypes, and clear errors for bad checkpoints."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from holopart_infer.model.checkpoint import bf16_to_f32, f32_to_bf16_bits, open_checkpoint, read_component
from holopart_infer.errors import CheckpointError, InputFileNotFound

torch = pytest.importorskip("torch", reason="the loader builds torch modules ([torch] extra)")
from holopart_infer.networks.load import load_networks  # noqa: E402
from holopart_infer.export.random_checkpoint import write_random_checkpoint  # noqa: E402

TENSOR = "transformer/diffusion_pytorch_model.safetensors"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _state(nets, comp):
    return {k: v.float() for k, v in nets.modules()[comp].state_dict().items()}


def test_bf16_round_trip_exact_on_representable_values():
    x = np.array([1.0, -2.5, 0.0, 3.140625, 1e-3], dtype=np.float32)
    back = bf16_to_f32(f32_to_bf16_bits(x))
    assert np.abs(back - x).max() <= np.abs(x).max() * 2**-8
    assert back[0] == 1.0 and back[1] == -2.5 and back[3] == 3.140625


@pytest.mark.parametrize("layout", ["sharded", "fp16-variant", "bf16", "fp16"])
def test_layouts_and_dtypes_load_same_weights(tmp_path, tiny_checkpoint, layout):
    kw = {"sharded": dict(shard_size_mb=0.05), "fp16-variant": dict(dtype="fp16", variant="fp16"),
          "bf16": dict(dtype="bf16"), "fp16": dict(dtype="fp16")}[layout]
    other = write_random_checkpoint(tmp_path / layout, "tiny", seed=0, **kw)
    if layout == "sharded":
        assert (other / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    if layout == "fp16-variant":
        assert (other / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    ref, got = load_networks(tiny_checkpoint), load_networks(other)
    tol = {"sharded": 0.0, "fp16-variant": 2e-3, "bf16": 1.6e-2, "fp16": 2e-3}[layout]
    for comp in ("transformer", "vae", "part_encoder"):
        a, b = _state(ref, comp), _state(got, comp)
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)
        assert worst <= tol, (comp, worst)


def test_missing_folder(tmp_path):
    with pytest.raises(InputFileNotFound, match="does not exist"):
        open_checkpoint(tmp_path / "nope")


def test_missing_component_folder(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    shutil.rmtree(ck / "vae")
    with pytest.raises(CheckpointError, match="missing component folder 'vae/'"):
        load_networks(ck)


def test_missing_config(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    (ck / "transformer" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"transformer[/\\]config.json: missing transformer config"):
        load_networks(ck)


def test_config_missing_field(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    cfg_path = ck / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["num_layers"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing field.*num_layers"):
        load_networks(ck)


def test_missing_weights_file(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    (ck / TENSOR).unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_networks(ck)


def _rewrite(ck: Path, mutate) -> None:
    """Rewrite the transformer's weights after mutating its tensor dict."""
    from safetensors.numpy import load_file, save_file

    path = ck / TENSOR
    t = load_file(str(path))
    mutate(t)
    save_file(t, str(path))


def test_missing_parameter_named(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    _rewrite(ck, lambda t: t.pop("blocks.3.skip_linear.weight"))
    with pytest.raises(CheckpointError, match=r"missing parameter\(s\): blocks.3.skip_linear.weight"):
        load_networks(ck)


def test_unexpected_parameter_named(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    _rewrite(ck, lambda t: t.__setitem__("blocks.0.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected parameter\(s\): blocks.0.extra.weight"):
        load_networks(ck)


def test_shape_mismatch_names_expected_and_actual(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    _rewrite(ck, lambda t: t.__setitem__("proj_in.weight", np.zeros((64, 9), np.float32)))
    with pytest.raises(CheckpointError, match=r"proj_in.weight: expected \[64, 8\], checkpoint has \[64, 9\]"):
        load_networks(ck)


def test_truncated_file(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    p = ck / TENSOR
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_networks(ck)


def test_garbage_file(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    (ck / TENSOR).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_component(ck, "transformer")


def test_unsupported_dtype(tmp_path, tiny_checkpoint):
    ck = _copy(tiny_checkpoint, tmp_path / "c")
    _rewrite(ck, lambda t: t.__setitem__("proj_in.weight", t["proj_in.weight"].astype(np.int32)))
    with pytest.raises(CheckpointError, match="proj_in.weight' has dtype I32"):
        load_networks(ck)


def test_no_half_built_model_on_error(tmp_path, tiny_checkpoint, monkeypatch):
    """Validation runs for all components before any weights are read."""
    import holopart_infer.model.checkpoint as ckmod

    ck = _copy(tiny_checkpoint, tmp_path / "c")
    _rewrite(ck, lambda t: t.pop("norm_out.weight"))
    reads = []
    monkeypatch.setattr(ckmod, "load_tensor", lambda *a, **k: reads.append(a) or None)
    with pytest.raises(CheckpointError):
        load_networks(ck)
    assert reads == []
