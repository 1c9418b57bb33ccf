"""FLOP model (benchmarks/flops.py): published figures and a measured count on the real model."""
from __future__ import annotations

import pytest

from benchmarks import flops
from holopart_infer.export.random_checkpoint import PRESETS

FULL = PRESETS["full"]


def test_full_dit_forward_is_about_7_3_tflop_per_sequence():
    K = FULL["part_encoder"]["num_tokens"]
    total = flops.dit_forward(FULL["transformer"], 2048, K)["total"]
    assert total == pytest.approx(7.3e12, rel=0.02)
    # the unconditional shortcut drops every cross-attention FLOP
    unc = flops.dit_forward(FULL["transformer"], 2048, unconditional=True)
    assert unc["cross_q_out"] == unc["cross_kv"] == unc["cross_core"] == 0
    assert unc["total"] < total


def test_full_decoder_is_about_29_mflop_per_query_point():
    per_point = flops.decoder_query_per_point(FULL["vae"], 2048)["total"]
    assert per_point == pytest.approx(29e6, rel=0.03)


def test_savings_are_consistent():
    K = FULL["part_encoder"]["num_tokens"]
    s = flops.savings(FULL["transformer"], 2048, K, batch=8, steps=50)
    assert 0.10 < s["uncond_no_cross"] < 0.16
    assert 0 < s["cached_cross_kv"] < 0.02
    assert s["fast_vs_reference"] == pytest.approx(s["uncond_no_cross"] + s["cached_cross_kv"], abs=2e-3)


def test_param_counts_match_the_modules_and_the_published_sizes():
    torch = pytest.importorskip("torch")
    from holopart_infer.networks.load import build_network

    for preset in ("tiny", "full"):
        cfgs = PRESETS[preset]
        for comp, fn in (("transformer", flops.dit_params), ("vae", flops.decoder_params),
                         ("part_encoder", flops.part_encoder_params)):
            net = build_network(comp, cfgs[comp])
            assert fn(cfgs[comp]) == sum(p.numel() for p in net.parameters()), (preset, comp)
    assert flops.dit_params(FULL["transformer"]) == pytest.approx(1.616e9, rel=0.005)
    assert flops.decoder_params(FULL["vae"]) == pytest.approx(214e6, rel=0.01)
    assert flops.part_encoder_params(FULL["part_encoder"]) == pytest.approx(57e6, rel=0.02)
    del torch


def _measured(fn):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the math backend decomposes attention into matmuls the counter sees on CPU
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("tokens", [32, 48])
def test_formulas_match_flop_counter_on_the_real_model(tokens):
    torch = pytest.importorskip("torch")
    from holopart_infer.networks.dit import DiT, DiTConfig
    from holopart_infer.networks.part_encoder import PartEncoder, PartEncoderConfig
    from holopart_infer.networks.vae import VAEConfig, VAEDecoder

    cfgs = PRESETS["tiny"]
    torch.manual_seed(0)
    B, K, Q, N = 2, 16, 50, 100
    tc, vc, pc = cfgs["transformer"], cfgs["vae"], cfgs["part_encoder"]
    dit = DiT(DiTConfig.from_dict(tc)).eval()
    x = torch.randn(B, tokens, tc["in_channels"])
    t = torch.rand(B) * 1000
    e1 = torch.randn(B, K, tc["cross_attention_dim"])
    e2 = torch.randn(B, K, tc["cross_attention_2_dim"])
    with torch.no_grad():
        got = _measured(lambda: dit(x, t, e1, e2))
        want = B * flops.dit_forward(tc, tokens, K)["total"]
        assert got == pytest.approx(want, rel=0.01)
        got = _measured(lambda: dit(x, t, unconditional=True))
        assert got == pytest.approx(B * flops.dit_forward(tc, tokens, unconditional=True)["total"], rel=0.01)

        vae = VAEDecoder(VAEConfig.from_dict(vc)).eval()
        lat = torch.randn(B, tokens, vc["latent_channels"])
        kv = vae.decode_kv(lat)
        assert _measured(lambda: vae.decode_kv(lat)) == pytest.approx(B * flops.decoder_kv(vc, tokens)["total"], rel=0.01)
        pts = torch.rand(B, Q, 3) * 2 - 1
        assert _measured(lambda: vae.query(pts, *kv)) == pytest.approx(
            B * Q * flops.decoder_query_per_point(vc, tokens)["total"], rel=0.01)

        pe = PartEncoder(PartEncoderConfig.from_dict(pc)).eval()
        Kp = pc["num_tokens"]
        args = (torch.randn(B, Kp, 6), torch.randn(B, N, 7), torch.randn(B, Kp, 6), torch.randn(B, N, 6))
        assert _measured(lambda: pe(*args)) == pytest.approx(B * flops.part_encoder(pc, N)["total"], rel=0.01)
