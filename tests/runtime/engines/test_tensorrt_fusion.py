"""The fused-attention check on TensorRT layer information (engines/tensorrt/fusion.py)."""
from __future__ import annotations

import json

import pytest

from holopart_infer.engines.tensorrt import attention_fused
from holopart_infer.errors import InputError


# Shapes of real TensorRT 10 layer information (ProfilingVerbosity.DETAILED), after
# NVIDIA/TensorRT#4397 (fused) and #3665 (unfused); values shortened.
FUSED = {"Layers": [
    {"Name": "/blocks.0/attn1/to_q/MatMul+/blocks.0/attn1/to_k/MatMul_myl0_16", "LayerType": "gemm",
     "TacticName": "sm90_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize64x64x64",
     "Metadata": "[ONNX Layer: /blocks.0/attn1/to_q/MatMul][ONNX Layer: /blocks.0/attn1/mha/MatMul]"},
    {"Name": "_gemm_mha_v2_myl0_17", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x957a2fe283f77dcf",
     "Metadata": "[ONNX Layer: /blocks.0/attn1/MatMul][ONNX Layer: /blocks.0/attn1/Softmax]"},
    {"Name": "__myl_AddResMul_myl0_18", "LayerType": "kgen", "TacticName": "__myl_AddResMul_0xabc"},
], "Bindings": ["latents", "velocity"]}

UNFUSED = {"Layers": [
    {"Name": "[MATRIX_MULTIPLY]_[scaled_dot_product_attention]_[x11_qkv]_matrix_multiply", "LayerType": "gemm",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64"},
    {"Name": "__myl_MaxSubExpSumDiv_myl0_3", "LayerType": "kgen", "TacticName": "__myl_MaxSubExpSumDiv_0x1",
     "Metadata": "[ONNX Layer: /attn/Softmax]"},
    {"Name": "[MATRIX_MULTIPLY]_[scaled_dot_product_attention]_[x12]_matrix_multiply", "LayerType": "gemm",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64"},
]}


def test_fused_attention_detected():
    ok, rep = attention_fused(json.dumps(FUSED))
    assert ok and rep.fused and rep.detailed
    assert rep.fused_layers == ["_gemm_mha_v2_myl0_17"]
    assert rep.softmax_layers == [] and rep.num_layers == 3
    assert "attention fused: 1 fused attention layer(s)" in rep.summary()


def test_unfused_attention_detected():
    ok, rep = attention_fused(UNFUSED)
    assert not ok and rep.fused_layers == []
    assert rep.softmax_layers == ["__myl_MaxSubExpSumDiv_myl0_3"]
    assert "NOT fused" in rep.summary()


def test_onnx_names_with_mha_do_not_count_as_fused():
    info = {"Layers": [{"Name": "/encoder/mha/attn/key/MatMul", "LayerType": "gemm",
                        "TacticName": "sm80_xmma_gemm_f16f16", "Metadata": "[ONNX Layer: /encoder/mha/q]"}]}
    ok, rep = attention_fused(info)
    assert not ok and rep.fused_layers == [] and rep.softmax_layers == []


def test_fmha_and_iattention_layers_count():
    info = {"Layers": [{"Name": "attn_0", "LayerType": "Attention", "TacticName": ""},
                       {"Name": "x", "LayerType": "kgen", "TacticName": "sm90_fmha_v2_flash_attention_fp16_128"}]}
    ok, rep = attention_fused(info)
    assert ok and rep.fused_layers == ["attn_0", "x"]


def test_mixed_fused_and_unfused_is_not_fused():
    info = {"Layers": FUSED["Layers"] + UNFUSED["Layers"]}
    ok, rep = attention_fused(info)
    assert not ok and len(rep.fused_layers) == 1 and len(rep.softmax_layers) == 1


def test_min_fused():
    assert attention_fused(FUSED, min_fused=1)[0]
    assert not attention_fused(FUSED, min_fused=2)[0]


def test_layer_names_only():
    ok, rep = attention_fused({"Layers": ["_gemm_mha_v2_myl0_1", "/proj_out/MatMul"]})
    assert ok and not rep.detailed and "DETAILED" in rep.reason
    ok, rep = attention_fused({"Layers": ["/attn/MatMul", "/attn/Softmax", "/attn/MatMul_1"]})
    assert not ok and rep.softmax_layers == ["/attn/Softmax"]


def test_no_layer_information():
    ok, rep = attention_fused({"Layers": []})
    assert not ok and "ProfilingVerbosity.DETAILED" in rep.reason


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", json.dumps({"Bindings": []})])
def test_fusion_input_errors(bad):
    with pytest.raises(InputError, match="layer information"):
        attention_fused(bad)
