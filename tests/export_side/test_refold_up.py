"""export/refold_up.py: turning a checkpoint's up axis by rewriting its first layers is exact.

The refolded networks, given an object in the new frame, compute what the original networks
compute for the same object turned into the original frame (float rounding only); and the whole
pipeline, with the runtime's own turn for the original, gives the same solids.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from holopart_infer.errors import InputError  # noqa: E402
from holopart_infer.export.random_checkpoint import write_random_checkpoint  # noqa: E402
from holopart_infer.export.refold_up import refold  # noqa: E402
from holopart_infer.io.frames import up_rotation  # noqa: E402
from holopart_infer.networks.load import load_networks  # noqa: E402


@pytest.fixture(scope="module")
def ckpt_z(tmp_path_factory):
    """A random tiny checkpoint whose model_index says it was trained +Z up."""
    path = write_random_checkpoint(tmp_path_factory.mktemp("ck") / "z", "tiny", seed=3)
    index = json.loads((path / "model_index.json").read_text())
    index["up_axis"] = "+z"
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@pytest.mark.parametrize("new_up", ["+y", "-x", "-z"])
def test_refolded_networks_equal_the_original_on_turned_inputs(ckpt_z, tmp_path, new_up):
    out = tmp_path / "new"
    summary = refold(ckpt_z, out, new_up)
    assert json.loads((out / "model_index.json").read_text())["up_axis"] == new_up
    assert "vae/decoder.proj_query.weight" in summary["layers"]
    old, new = load_networks(ckpt_z), load_networks(out)
    turn = up_rotation(new_up, "+z")  # what the runtime applies to a new_up input for the +z model
    rng = np.random.default_rng(0)

    pts = rng.uniform(-1, 1, (2, 300, 3))
    latents = _t(rng.standard_normal((2, 64, 8)))
    with torch.no_grad():
        a = old.vae(latents, _t(turn.apply(pts)))
        b = new.vae(latents, _t(pts))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())

    def feats(n, extra):
        x = rng.uniform(-1, 1, (2, n, 3))
        nrm = rng.standard_normal((2, n, 3))
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
        rest = rng.integers(0, 2, (2, n, extra - 3)).astype(float)
        return np.concatenate([x, nrm, rest], -1), np.concatenate([turn.apply(x), turn.apply(nrm), rest], -1)

    (pt, pt_t), (wp, wp_t), (lt, lt_t), (lp, lp_t) = feats(16, 3), feats(200, 4), feats(16, 3), feats(200, 3)
    with torch.no_grad():
        ref = old.part_encoder(_t(pt_t), _t(wp_t), _t(lt_t), _t(lp_t))
        got = new.part_encoder(_t(pt), _t(wp), _t(lt), _t(lp))
    for r, g in zip(ref, got):
        assert torch.allclose(r, g, atol=1e-5, rtol=1e-5), float((r - g).abs().max())
    # the DiT sees no coordinates: untouched
    for k, v in old.transformer.state_dict().items():
        assert torch.equal(v, new.transformer.state_dict()[k])


def test_refolded_vae_encoder_equals_the_original_on_turned_surfaces(tmp_path):
    from safetensors.numpy import load_file

    from holopart_infer.export.train import VAEEncoder

    src = pytest.importorskip("holopart_infer.export.make_demo_model").MINI_CHECKPOINT  # has the encoder
    cfg = json.loads((src / "vae" / "config.json").read_text())
    old_up = json.loads((src / "model_index.json").read_text()).get("up_axis", "+y")
    new_up = "+z" if old_up != "+z" else "+y"
    refold(src, tmp_path / "n", new_up)

    def encoder(folder):
        enc = VAEEncoder(cfg)
        sd = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
        enc.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items() if k.startswith(("encoder.", "quant."))})
        return enc.eval()

    turn = up_rotation(new_up, old_up)
    rng = np.random.default_rng(1)
    x, n = rng.uniform(-1, 1, (2, 256, 3)), rng.standard_normal((2, 256, 3))
    with torch.no_grad():
        a = encoder(src)(_t(np.concatenate([turn.apply(x), turn.apply(n)], -1)), 64)
        b = encoder(tmp_path / "n")(_t(np.concatenate([x, n], -1)), 64)
    for r, g in zip(a, b):
        assert torch.allclose(r, g, atol=1e-5, rtol=1e-5)


def test_refolded_model_gives_the_same_solids_through_the_pipeline(ckpt_z, tmp_path):
    pytest.importorskip("trimesh")
    import holopart_infer as hp
    from holopart_infer.export.evaluate import volume_iou
    from holopart_infer.io.parts_io import Parts

    refold(ckpt_z, tmp_path / "y", "+y")
    box = lambda lo, hi: _box(np.array(lo, float), np.array(hi, float))  # noqa: E731
    parts = Parts.from_meshes([box([-0.5, 0, -0.3], [0.5, 0.1, 0.3]), box([-0.1, -0.8, -0.1], [0.1, 0, 0.1])],
                              up="+y")
    opts = dict(steps=2, depth=5, seed=0)
    res_z = hp.load(ckpt_z, backend="torch").complete(parts, **opts)  # turned to +z and back by the runtime
    res_y = hp.load(tmp_path / "y", backend="torch").complete(parts, **opts)
    rng = np.random.default_rng(0)
    for a, b in zip(res_z.parts, res_y.parts):
        assert len(a.faces) > 0 and abs(len(a.faces) - len(b.faces)) <= 0.01 * len(a.faces) + 8
        assert volume_iou((a.vertices, a.faces), (b.vertices, b.faces), 20000, rng) > 0.99


def test_refold_never_overwrites_and_names_a_bad_source(ckpt_z, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="exists"):
        refold(ckpt_z, tmp_path / "taken", "+y")
    with pytest.raises(InputError, match="model_index.json"):
        refold(tmp_path / "taken", tmp_path / "n2", "+y")


def _box(lo, hi):
    import trimesh

    m = trimesh.creation.box(extents=hi - lo)
    m.apply_translation((lo + hi) / 2)
    return m
