"""benchmarks/bench_decoder_cpu.py: the FLOP formula and a one-round smoke run (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_decoder_cpu as bench
from holopart_infer.export.random_checkpoint import PRESETS


@pytest.mark.parametrize("preset, tokens", [("tiny", 64), ("mid", 512), ("full", 2048)])
def test_flops_per_query_follow_the_documented_formula(preset, tokens):
    cfg = PRESETS[preset]["vae"]
    W, E = cfg["width_decoder"], 3 * (2 * cfg["embed_frequency"] + 1)
    fl = bench.query_flops(cfg, tokens)
    assert fl["total"] == 2 * E * W + 20 * W * W + 4 * tokens * W + 2 * W
    assert fl["total"] == sum(v for k, v in fl.items() if k != "total")
    el = bench.query_elementwise(cfg, tokens)
    assert el["softmax_exp"] == cfg["num_attention_heads"] * tokens and el["gelu_erf"] == 4 * W


def test_demo_smoke_run_reports_every_variant(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    out = tmp_path / "r.json"
    rc = bench.main(["--configs", "demo", "--threads", "1", "--rounds", "1", "--parts", "2", "--chunk", "256",
                     "--chunks", "128,256", "--variants", "ort-nospin,ort-basic,fused,int8,int8-7bit-inner", "--json",
                     str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    c = res["results"][0]["configs"]["demo"]
    assert set(c["variants"]) == {"before", "export-now", "now", "backend", "ort-nospin", "ort-basic",
                                  "fused", "int8", "int8-7bit-inner"}
    for name, row in c["variants"].items():
        assert row["qps_median"] > 0 and row["measured_over_floor"] > 0, name
        assert name in text
    # the fp32 variants compute the same function as the shipped graph
    for name in ("export-now", "now", "backend", "ort-nospin", "ort-basic", "fused"):
        assert c["variants"][name]["max_abs_diff"] < 1e-3, name
    assert c["gemm_gflops"]["ort"] > 0 and set(c["chunk_sweep"]) == {"128", "256"}
    assert "measured/floor" in text or "meas/floor" in text
