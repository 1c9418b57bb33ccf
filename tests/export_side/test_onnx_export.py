"""ONNX export: model directory layout, manifest, graph form, validation, overwrite.

The exported models are shared by the ORT and torch-free tests through
:func:`exported_model` (one export per configuration per test session).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.support import VARIANT_DEFAULTS, checkpoint, exported_model

torch = pytest.importorskip("torch", reason="export needs the [torch] extra")
onnx = pytest.importorskip("onnx", reason="export needs the [torch] extra")

from holopart_infer.model.manifest import FORMAT_VERSION, GRAPH_NAMES, load_manifest  # noqa: E402

def test_model_dir_layout_and_manifest():
    model = exported_model("golden")
    m = load_manifest(model, verify_hashes=True)
    assert m.format_version == FORMAT_VERSION and m.precision == "fp32"
    assert set(m.graphs) == set(GRAPH_NAMES)
    assert sorted(p.name for p in (model / "onnx").iterdir()) == sorted(f"{g}.onnx" for g in GRAPH_NAMES)
    # every component config is in the manifest: the runtime never needs the checkpoint
    ckpt = checkpoint("golden")
    for comp in ("transformer", "vae", "part_encoder"):
        cfg = json.loads((ckpt / comp / "config.json").read_text())
        assert all(m.config[comp][k] == v for k, v in m.config[comp].items() if k in cfg)
    assert m.config["scheduler"]["shift"] == json.loads((ckpt / "scheduler/scheduler_config.json").read_text())["shift"]
    g = m.graph("guided_step")
    assert list(g.inputs) == ["latents", "timestep", "dt", "guidance", "part_cond", "whole_cond"]
    assert g.inputs["latents"].shape == ("B", "T", m.config["transformer"]["in_channels"])
    assert g.inputs["timestep"].shape == (1,)
    assert list(m.graph("vae_kv").outputs) == ["keys", "values"]
    H = m.config["vae"]["num_attention_heads"]
    assert m.graph("vae_kv").outputs["keys"].shape == ("B", H, "T", m.config["vae"]["width_decoder"] // H)
    prof = g.profiles["latents"]
    assert len(prof["min"]) == len(prof["opt"]) == len(prof["max"]) == 3
    assert all(a <= b <= c for a, b, c in zip(prof["min"], prof["opt"], prof["max"]))
    for name, entry in m.raw["graphs"].items():  # validated against torch at export time
        assert entry["validation"]["rel_error_vs_torch_fp32"] < 1e-4, name


def test_manifest_source_names_the_checkpoint_not_its_path():
    """The manifest records the checkpoint's folder name and content hashes, no path of the
    machine that exported it (a shipped model dir must not carry the builder's folders)."""
    import hashlib

    ckpt, model = checkpoint("variant"), exported_model("variant")
    text = (model / "manifest.json").read_text()
    source = json.loads(text)["source"]
    assert source["checkpoint"] == ckpt.resolve().name
    assert str(ckpt.resolve().parent) not in text and str(ckpt.parent) not in text
    assert set(source["sha256"]) >= {"model_index.json", "transformer/diffusion_pytorch_model.safetensors"}
    files = json.dumps(source["sha256"], sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert source["content_sha256"] == hashlib.sha256(files).hexdigest()


def test_graphs_are_valid_onnx_with_named_dynamic_axes():
    model = exported_model("golden")
    for name in GRAPH_NAMES:
        proto = onnx.load(str(model / "onnx" / f"{name}.onnx"))
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version == 18
        for vi in proto.graph.input:
            batch = vi.type.tensor_type.shape.dim[0]
            if name != "guided_step" or vi.name not in ("timestep", "dt", "guidance"):
                assert batch.dim_param == "B", (name, vi.name)


def _attention_chains(proto) -> int:
    """Count MatMul -> Softmax -> MatMul chains (the fusable attention form)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    count = 0
    for n in proto.graph.node:
        if n.op_type == "Softmax" and producers.get(n.input[0]) is not None \
                and producers[n.input[0]].op_type == "MatMul":
            if any(c.op_type == "MatMul" for c in consumers.get(n.output[0], [])):
                count += 1
    return count


def test_attention_is_matmul_softmax_matmul():
    model = exported_model("golden")
    m = load_manifest(model)
    cfg = m.config
    L = cfg["transformer"]["num_layers"]
    n_cross = int(cfg["transformer"]["use_cross_attention"]) + int(cfg["transformer"]["use_cross_attention_2"])
    expected = {"dit": L * (1 + n_cross), "guided_step": L * (1 + n_cross),
                "vae_kv": cfg["vae"]["num_layers_decoder"], "vae_query": 1,
                "part_encoder": 2 * (1 + cfg["part_encoder"]["num_layers"])}
    for name, n in expected.items():
        proto = onnx.load(str(model / "onnx" / f"{name}.onnx"))
        ops = {nd.op_type for nd in proto.graph.node}
        assert "Attention" not in ops  # opset 18: no fused op, the decomposed form
        assert _attention_chains(proto) == n, name


def test_external_data_graph(tmp_path):
    """A graph over the 2 GB limit is written with external data; exercised on a small graph."""
    import onnxruntime as ort

    from holopart_infer.export.graphs import all_graphs
    from holopart_infer.networks.load import load_networks
    from holopart_infer.export.onnx_export import _export_graph, _set_dim_names

    nets = load_networks(checkpoint("golden"))
    g = [g for g in all_graphs(nets, torch.float32, 64) if g.name == "vae_query"][0]
    path = _export_graph(g, tmp_path, big=True)
    _set_dim_names(path, g, True)
    data = path.with_name("vae_query.onnx.data")
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    inputs = g.make_inputs(g.check_sizes, torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {d.name: t.numpy() for d, t in zip(g.inputs, inputs)})[0]
    ref = g.reference(inputs)[0].numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_existing_out_dir_is_not_overwritten(tmp_path):
    from holopart_infer.export.onnx_export import export_model
    from holopart_infer.errors import InputError

    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists.*overwrite=True"):
        export_model(checkpoint("golden"), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dir left behind


def test_bad_precision_rejected(tmp_path):
    from holopart_infer.export.onnx_export import export_model
    from holopart_infer.errors import InputError

    with pytest.raises(InputError, match="precision"):
        export_model(checkpoint("golden"), tmp_path / "m", precision="int8")


def test_overwrite_replaces_atomically(tmp_path):
    """overwrite swaps a finished directory in, but only over a model dir export made."""
    from holopart_infer import fsafe
    from holopart_infer.errors import OutputError
    from holopart_infer.export.onnx_export import replaceable_model_dir

    out = tmp_path / "model"
    shutil.copytree(exported_model("golden"), out)

    def rebuild():
        with fsafe.atomic_dir(out, replace_if=replaceable_model_dir) as tmp:
            shutil.copytree(exported_model("golden"), tmp, dirs_exist_ok=True)

    rebuild()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    load_manifest(out, verify_hashes=True)
    (out / "notes.txt").write_text("mine")  # no longer only what export wrote
    with pytest.raises(OutputError, match="notes.txt, which export did not write"):
        rebuild()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_inference_defaults_travel_to_the_manifest_and_the_runtime(tmp_path):
    import holopart_infer as hp
    from holopart_infer.errors import ModelDirError

    model_dir = exported_model("variant")
    m = load_manifest(model_dir)
    assert m.defaults == VARIANT_DEFAULTS
    assert m.raw["latent_tokens"] == 24  # the TensorRT opt profile follows the model's latent length
    model = hp.load(model_dir, backend="onnxruntime", device="cpu")
    opts = model.default_options()
    assert (opts.latent_tokens, opts.num_points, opts.guidance, opts.steps) == (24, 300, 2.0, 50)
    assert load_manifest(exported_model("golden")).defaults == {}

    # a broken entry fails at load, naming the model dir and the option
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    raw = json.loads((bad / "manifest.json").read_text())
    raw["defaults"] = {"latent_tokenz": 24}
    (bad / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match=r"bad.*latent_tokenz"):
        hp.load(bad, backend="onnxruntime", device="cpu")
    raw["defaults"] = {"steps": 0}
    (bad / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelDirError, match=r"inference_defaults: option steps must be"):
        hp.load(bad, backend="onnxruntime", device="cpu")


def test_export_refuses_bad_inference_defaults(tmp_path):
    from holopart_infer.export.onnx_export import export_model
    from holopart_infer.errors import ModelDirError

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint("variant"), ck)
    index = json.loads((ck / "model_index.json").read_text())
    index["inference_defaults"] = {"depth": 99}
    (ck / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirError, match=r"model_index.json: inference_defaults: option depth"):
        export_model(ck, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_up_axis_travels_to_the_manifest_and_the_runtime(tmp_path):
    """The checkpoint's model_index.json "up_axis" (the frame the model was trained in) becomes the
    manifest's; a checkpoint without one is HoloPart's +y, written out explicitly."""
    import holopart_infer as hp
    from holopart_infer.export.onnx_export import export_model

    assert load_manifest(exported_model("golden")).raw["up_axis"] == "+y"
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint("variant"), ck)
    index = json.loads((ck / "model_index.json").read_text())
    index["up_axis"] = "-x"
    (ck / "model_index.json").write_text(json.dumps(index))
    md = export_model(ck, tmp_path / "m", progress=False, validate=False)
    assert load_manifest(md).up_axis == "-x"
    assert hp.load(md, backend="onnxruntime", device="cpu").up_axis == "-x"
    assert hp.load(ck, backend="torch", device="cpu").up_axis == "-x"  # a checkpoint dir: its model_index
