"""export/train.py: flow convention, loss decrease, resume, published-layout export."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trimesh")

from holopart_infer.export import train as T  # noqa: E402
from holopart_infer.model.sampler import sample  # noqa: E402

TC = T.TrainConfig(preset="tiny", num_latents=16, num_points=256, n_surface=128, n_occ_near=64,
                   n_occ_uniform=64, objects=1, templates=("mug",), n_views=8, batch_size=2,
                   steps=4, ckpt_every=2, log_every=1, threads=1)


@pytest.fixture(scope="module")
def pool():
    torch.set_num_threads(1)
    return T.build_pool(TC, T.model_configs("tiny")["part_encoder"]["num_tokens"])


def test_pool_shapes(pool):
    P = pool["surface"].shape[0]
    assert P >= 2
    assert pool["surface"].shape == (P, TC.n_surface, 6)
    assert pool["occ_points"].shape == (P, 128, 3) and pool["occ_labels"].shape == (P, 128)
    assert pool["part_tokens"].shape == (P, 16, 6) and pool["local_tokens"].shape == (P, 16, 6)
    assert pool["whole_points"].shape == (P, 256, 7) and pool["local_points"].shape == (P, 256, 6)
    assert 0 < float(pool["occ_labels"].mean()) < 1


@pytest.mark.parametrize("steps", [1, 5])
def test_flow_convention_matches_sampler(steps):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 8, 4, generator=g), torch.randn(2, 8, 4, generator=g)
    x1, v = T.flow_pair(x0, noise, torch.ones(2))
    torch.testing.assert_close(x1, noise)  # sigma = 1 is pure noise
    xs, _ = T.flow_pair(x0, noise, torch.zeros(2))
    torch.testing.assert_close(xs, x0)
    seen_t = []

    def guided_step(x, t, dt, g_, pc, wc):  # the exact velocity of the linear path
        seen_t.append(t)
        return x + dt * v.numpy()

    out = sample(guided_step, noise.numpy(), None, None, steps=steps, guidance=1.0)
    np.testing.assert_allclose(out, x0.numpy(), atol=1e-5)
    assert seen_t[0] == pytest.approx(1000.0)
    # and a mid-path point moved by one Euler step along v lands on the next point
    s0, s1 = torch.full((2,), 0.7), torch.full((2,), 0.3)
    a, va = T.flow_pair(x0, noise, s0)
    b, _ = T.flow_pair(x0, noise, s1)
    torch.testing.assert_close(a + 0.4 * va, b)


def _batch(pool, keys):
    return {k: pool[k][:2] for k in keys}


def test_vae_loss_decreases_on_fixed_batch(pool):
    models = T.make_models("vae", T.model_configs("tiny"), seed=0)
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = _batch(pool, ("surface", "occ_points", "occ_labels"))
    losses = []
    for _ in range(12):
        g = torch.Generator().manual_seed(0)
        loss = T.vae_loss(models["vae_encoder"], models["vae_decoder"], batch, g, TC.num_latents, 1e-3)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_dit_loss_decreases_on_fixed_batch(pool):
    mc = T.model_configs("tiny")
    enc = T.make_models("vae", mc, seed=0)["vae_encoder"].eval()
    models = T.make_models("dit", mc, seed=0)
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    batch = _batch(pool, ("surface", "part_tokens", "whole_points", "local_tokens", "local_points"))
    with torch.no_grad():
        x0, _ = enc(batch["surface"], TC.num_latents)
    losses = []
    for _ in range(12):
        g = torch.Generator().manual_seed(0)
        loss = T.dit_loss(models["part_encoder"], models["transformer"], x0, batch, g, 0.1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("stage", ["vae", "dit"])
def test_resume_reproduces_next_losses(pool, tmp_path, stage):
    if stage == "dit":  # both runs need the same frozen VAE
        T.train("vae", dataclasses.replace(TC, steps=1), tmp_path / "a", pool=pool)
        T.train("vae", dataclasses.replace(TC, steps=1), tmp_path / "b", pool=pool)
    full = T.train(stage, TC, tmp_path / "a", pool=pool)  # 4 steps straight
    first = T.train(stage, dataclasses.replace(TC, steps=2), tmp_path / "b", pool=pool)
    st = torch.load(T.state_path(tmp_path / "b", stage), weights_only=False)
    assert st["step"] == 2 and "optimizer" in st and "gen_state" in st
    rest = T.train(stage, TC, tmp_path / "b", pool=pool)  # resumes at step 2
    assert [r["step"] for r in rest] == [3, 4]
    got = [r["loss"] for r in first + rest]
    want = [r["loss"] for r in full]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_export_loads_with_load_networks(pool, tmp_path):
    from holopart_infer.networks.load import expected_shapes, load_networks
    from safetensors import safe_open

    out = tmp_path / "run"
    T.train("vae", dataclasses.replace(TC, steps=2), out, pool=pool)
    T.train("dit", dataclasses.replace(TC, steps=2), out, pool=pool)
    from holopart_infer.errors import ModelDirError

    with pytest.raises(ModelDirError, match="inference_defaults: unknown option.*guidanse"):
        T.export_checkpoint(out, tmp_path / "ckpt", inference_defaults={"guidanse": 2.0})
    assert not (tmp_path / "ckpt").exists()
    ck = T.export_checkpoint(out, tmp_path / "ckpt", inference_defaults={"guidance": 2.0})
    import json

    assert json.loads((ck / "model_index.json").read_text())["inference_defaults"] == {
        "latent_tokens": TC.num_latents, "num_points": TC.num_points, "guidance": 2.0}
    with safe_open(str(ck / "vae" / "diffusion_pytorch_model.safetensors"), "np") as f:
        names = list(f.keys())
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("quant.") for n in names)
    nets = load_networks(ck)
    st = torch.load(T.state_path(out, "dit"), weights_only=False)
    for k, v in st["models"]["transformer"].items():
        torch.testing.assert_close(nets.transformer.state_dict()[k], v)
    mc = T.model_configs("tiny")
    for comp, mod in nets.modules().items():
        assert expected_shapes(mod) == expected_shapes(T.make_models(
            "vae" if comp == "vae" else "dit", mc, 0)["vae_decoder" if comp == "vae" else comp])
    C = mc["vae"]["latent_channels"]
    x = torch.randn(2, TC.num_latents, C)
    with torch.no_grad():
        wc, pc = nets.part_encoder(pool["part_tokens"][:2], pool["whole_points"][:2], pool["local_tokens"][:2],
                                   pool["local_points"][:2])
        v = nets.transformer(x, torch.full((2,), 500.0), pc, wc)
        logits = nets.vae(x, pool["occ_points"][:2])
    assert v.shape == x.shape and logits.shape == (2, 128, 1)
    assert torch.isfinite(v).all() and torch.isfinite(logits).all()


def test_pool_records_visible_fraction(pool):
    vf = pool["visible_frac"]
    assert vf.shape == (pool["surface"].shape[0],)
    assert float(vf.min()) >= 0.02 and float(vf.max()) <= 1.0  # parts under 2% visible are dropped


def test_object_views_cycle_and_change_the_pool_key():
    assert [T.object_views(TC, i) for i in range(3)] == [8, 8, 8]
    tc = dataclasses.replace(TC, view_choices=(4, 16))
    assert [T.object_views(tc, i) for i in range(4)] == [4, 16, 4, 16]
    assert tc.data_key() != TC.data_key()
    assert dataclasses.replace(TC, workers=2).data_key() == TC.data_key()  # workers do not change the data


def test_pool_workers_give_the_same_pool():
    tc = dataclasses.replace(TC, objects=2, templates=("mug", "dumbbell"))
    one = T.build_pool(tc, 16)
    two = T.build_pool(dataclasses.replace(tc, workers=2), 16)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=0)


def test_occluded_parts_are_drawn_more_often():
    vf = torch.tensor([1.0, 0.5, 0.99, 0.9])
    assert T.part_weights({"visible_frac": vf}, TC) is None  # weight 1: uniform
    w = T.part_weights({"visible_frac": vf}, dataclasses.replace(TC, occluded_weight=4.0))
    assert w.tolist() == [1.0, 4.0, 1.0, 4.0]
    with pytest.raises(ValueError, match="visible_frac"):
        T.part_weights({}, dataclasses.replace(TC, occluded_weight=4.0))


def test_cosine_schedule():
    tc = dataclasses.replace(TC, lr=1e-3, steps=100, lr_schedule="cosine", decay_from=50, lr_final=0.01)
    assert T.learning_rate(tc, 0) == T.learning_rate(tc, 50) == 1e-3
    assert T.learning_rate(tc, 75) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert T.learning_rate(tc, 100) == pytest.approx(1e-5)
    assert T.learning_rate(dataclasses.replace(tc, lr_schedule="constant"), 90) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        T.learning_rate(dataclasses.replace(tc, lr_schedule="step"), 60)


def test_training_uses_the_schedule(pool, tmp_path):
    tc = dataclasses.replace(TC, lr_schedule="cosine", decay_from=2, lr_final=0.1, occluded_weight=2.0)
    hist = T.train("vae", tc, tmp_path / "run", pool=pool)
    assert [r["lr"] for r in hist[:2]] == [tc.lr, tc.lr]
    assert hist[2]["lr"] == pytest.approx(T.learning_rate(tc, 2)) and hist[3]["lr"] < hist[2]["lr"]


def test_vae_reconstruction_scores_the_trained_vae(pool, tmp_path):
    out = tmp_path / "run"
    T.train("vae", dataclasses.replace(TC, steps=2), out, pool=pool)
    r = T.vae_reconstruction(out, pool)
    assert r["step"] == 2 and r["parts"] == len(pool["surface"])
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["iou_mean"] <= 1.0



def test_vae_reconstruction_of_a_perfect_and_an_inverted_decoder(pool, tmp_path, monkeypatch):
    out = tmp_path / "run"
    T.train("vae", dataclasses.replace(TC, steps=1), out, pool=pool)
    p = dict(pool)
    p["occ_points"] = pool["occ_points"].clone()
    p["occ_points"][..., 0] = pool["occ_labels"] * 2 - 1  # the stand-in decoder reads the label from x
    monkeypatch.setattr(T.VAEDecoder, "forward", lambda self, z, q: q[..., :1])
    r = T.vae_reconstruction(out, p)
    assert r["accuracy"] == 1.0 and r["iou_mean"] == 1.0
    monkeypatch.setattr(T.VAEDecoder, "forward", lambda self, z, q: -q[..., :1])
    r = T.vae_reconstruction(out, p)
    assert r["accuracy"] == 0.0 and r["iou_mean"] < 0.5


def test_warm_start_export_frame_and_heldout_loss(pool, tmp_path):
    """v2 (issue 22): init_from loads a published checkpoint into fresh models, the export records
    the training frame, and the held-out DiT loss is deterministic per state."""
    import json

    tc = dataclasses.replace(TC, steps=2, up_axis="y")
    out = tmp_path / "run"
    T.train("vae", tc, out, pool=pool)
    T.train("dit", tc, out, pool=pool)
    ck = T.export_checkpoint(out, tmp_path / "ckpt")
    assert json.loads((ck / "model_index.json").read_text())["up_axis"] == "+y"
    st = {s: torch.load(T.state_path(out, s), weights_only=False) for s in ("vae", "dit")}
    mc = T.model_configs("tiny")
    for stage in ("vae", "dit"):
        models = T.make_models(stage, mc, seed=123)  # different random init
        T.init_from_checkpoint(models, ck)
        for k, m in models.items():
            for name, v in m.state_dict().items():
                torch.testing.assert_close(v, st[stage]["models"][k][name])
    # a warm-started run starts from those weights, with a fresh optimizer at step 0
    import shutil

    (tmp_path / "warm").mkdir()
    shutil.copy(T.state_path(out, "vae"), T.state_path(tmp_path / "warm", "vae"))  # the frozen VAE
    warm = T.train("dit", dataclasses.replace(tc, steps=1, init_from=str(ck)), tmp_path / "warm", pool=pool)
    assert [r["step"] for r in warm] == [1] and np.isfinite(warm[0]["loss"])
    a = T.dit_heldout_loss(out, [T.state_path(out, "dit")], pool)
    b = T.dit_heldout_loss(out, [T.state_path(out, "dit")], pool)
    assert a[0]["loss"] == b[0]["loss"] and a[0]["step"] == 2 and a[0]["parts"] == len(pool["surface"])


def test_frozen_encoder_lets_vae_decoder_and_dit_train_side_by_side(pool, tmp_path):
    """freeze_encoder trains the decoder only; a dit run without a VAE state takes init_from's encoder."""
    out = tmp_path / "run"
    T.train("vae", dataclasses.replace(TC, steps=1), out, pool=pool)
    T.train("dit", dataclasses.replace(TC, steps=1), out, pool=pool)
    ck = T.export_checkpoint(out, tmp_path / "ckpt")
    before = torch.load(T.state_path(out, "vae"), weights_only=False)["models"]
    tc = dataclasses.replace(TC, steps=3, init_from=str(ck), freeze_encoder=True)
    T.train("vae", tc, tmp_path / "ft", pool=pool)
    after = torch.load(T.state_path(tmp_path / "ft", "vae"), weights_only=False)["models"]
    for k, v in before["vae_encoder"].items():
        torch.testing.assert_close(after["vae_encoder"][k], v)
    assert any(not torch.equal(after["vae_decoder"][k], v) for k, v in before["vae_decoder"].items())
    hist = T.train("dit", dataclasses.replace(TC, steps=2, init_from=str(ck)), tmp_path / "d", pool=pool)
    assert [r["step"] for r in hist] == [1, 2]


def test_real_fraction_keeps_every_synthetic_part_and_a_prefix_of_the_real_ones():
    import torch

    is_real = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 1], dtype=torch.float32)  # 4 synthetic, 5 real
    pool = {"is_real": is_real, "surface": torch.arange(9)}
    half = T.subset_real(pool, 0.4)  # 2 of the 5 real parts: the first two in build order
    assert half["surface"].tolist() == [0, 1, 2, 3, 4, 7]
    assert T.subset_real(pool, 0.0)["surface"].tolist() == [0, 1, 2, 7]
    assert T.subset_real(pool, 1.0) is pool
    with pytest.raises(ValueError, match="real_fraction must be in"):
        T.subset_real(pool, 1.5)
    # the pool's key (its cache file) does not depend on the fraction: the curve's points share it
    assert T.TrainConfig(real_fraction=0.25).data_key() == T.TrainConfig().data_key()
