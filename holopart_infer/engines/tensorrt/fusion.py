"""Did TensorRT fuse attention? Inspect an engine's layer information."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from holopart_infer.engines.tensorrt.builder import require_tensorrt
from holopart_infer.errors import InputError

# --------------------------------------------------------------------------- fusion check

# What fused attention looks like in TensorRT 10 layer information (JSON, DETAILED):
# Myelin emits the fused kernel as its own layer, e.g. Name "_gemm_mha_v2_myl0_17",
# LayerType "kgen", TacticName "_gemm_mha_v2_0x..." (NVIDIA/TensorRT#4397; the
# same kernel name appears in nsys, #4167 and the 10.0 release notes #3777);
# flash-attention style kernels are named "fmha"; TensorRT >= 10.14 also has a
# native IAttention layer. Unfused attention shows up as separate gemm layers
# around a softmax (#3665). See docs/tensorrt.md.
_FUSED_RE = re.compile(r"(gemm_mha|fmha|flash_?att|fused_?att|(?<![a-z])mha(?![a-z]))", re.I)
_SOFTMAX_RE = re.compile(r"softmax", re.I)


@dataclass
class FusionReport:
    """What :func:`attention_fused` found in an engine's layer information."""
    fused: bool
    num_layers: int
    fused_layers: list[str] = field(default_factory=list)
    softmax_layers: list[str] = field(default_factory=list)
    detailed: bool = True
    reason: str = ""

    def summary(self) -> str:
        return (f"attention {'fused' if self.fused else 'NOT fused'}: {len(self.fused_layers)} fused attention "
                f"layer(s), {len(self.softmax_layers)} standalone softmax layer(s) of {self.num_layers}"
                + (f" ({self.reason})" if self.reason else ""))


def _layer_fields(layer) -> tuple[str, str, str, str]:
    """(name, layer type, tactic, metadata) of one entry of the "Layers" list."""
    if isinstance(layer, Mapping):
        return tuple(str(layer.get(k, "") or "") for k in ("Name", "LayerType", "TacticName", "Metadata"))
    return str(layer), "", "", ""


def attention_fused(layer_info: str | Mapping[str, Any], *, min_fused: int = 1) -> tuple[bool, FusionReport]:
    """Decide from engine layer information (IEngineInspector, LayerInformationFormat.JSON)
    whether attention runs as fused kernels.

    A layer counts as fused attention when its tactic, type or (for layer-names-only
    information) name carries a fused-MHA kernel marker (``_gemm_mha_v2``, ``fmha``,
    ``mha``, flash/fused attention). Layer names are matched by their own words only
    in names-only information, and ONNX node paths (``/attn1/...``) never match,
    since they name what was fused, not how. A softmax that survives as its own
    layer means some attention was left unfused.

    Args:
        layer_info: the JSON text or the parsed object (``{"Layers": [...]}``; each
            layer a dict with Name/LayerType/TacticName, or a plain name).
        min_fused: fused attention layers required (e.g. the number of attention
            blocks in the graph, when Myelin keeps them apart).

    Returns:
        (fused, FusionReport). ``fused`` is True when at least ``min_fused`` fused
        attention layers and no standalone softmax were found.

    Raises:
        InputError: the text is not JSON or has no "Layers" list.
    """
    if isinstance(layer_info, (str, bytes)):
        try:
            layer_info = json.loads(layer_info)
        except json.JSONDecodeError as e:
            raise InputError(f"layer information is not JSON ({e}); get it with "
                             "inspector.get_engine_information(LayerInformationFormat.JSON)") from e
    layers = layer_info.get("Layers") if isinstance(layer_info, Mapping) else None
    if not isinstance(layers, list):
        raise InputError("layer information has no 'Layers' list (is it TensorRT engine-inspector JSON?)")
    detailed = any(isinstance(layer, Mapping) for layer in layers)
    report = FusionReport(False, len(layers), detailed=detailed)
    if not layers:
        report.reason = "no layer information: build with ProfilingVerbosity.DETAILED"
        return False, report
    for layer in layers:
        name, ltype, tactic, meta = _layer_fields(layer)
        # ONNX-derived names ("/blocks.0/mha/MatMul", "[MATRIX_MULTIPLY]_[...]") say what
        # was fused, not how; only generated names ("_gemm_mha_v2_myl0_17") name a kernel.
        own_name = name if not name.startswith(("/", "[", "{")) else ""
        if _FUSED_RE.search(" ".join((tactic, ltype, own_name))) or ltype.lower() == "attention":
            report.fused_layers.append(name)
        elif _SOFTMAX_RE.search(" ".join((ltype, name, meta))):
            # a softmax outside a fused attention kernel: Q.K^T is materialized
            report.softmax_layers.append(name)
    if not detailed:
        report.reason = "layer names only; build with ProfilingVerbosity.DETAILED for tactic names"
    report.fused = len(report.fused_layers) >= min_fused and not report.softmax_layers
    return report.fused, report


def engine_layer_information(engine, context=None) -> str:
    """The engine's layer information as JSON text (IEngineInspector)."""
    trt = require_tensorrt()
    inspector = engine.create_engine_inspector()
    if context is not None:
        inspector.execution_context = context
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
