"""Shared pieces of the per-network export contracts."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from holopart_infer.networks.blocks import Attention, FrequencyEmbedding

# Symbolic axes used across graphs (the manifest stores these names).
BATCH, TOKENS, COND_TOKENS, POINTS, QUERIES = "B", "T", "K", "N", "Q"

# Default TensorRT profile ranges of the dynamic axes: (min, opt, max).
# The reference batches 8 parts (spec section 1); the guided step runs 2B
# internally. Query chunks: the reference decodes 10000 points at a time; a GPU
# engine is best fed far larger chunks.
DEFAULT_BATCH = (1, 8, 16)
DEFAULT_POINTS = (1, 20480, 65536)
DEFAULT_QUERIES = (1, 65536, 262144)


@dataclass(frozen=True)
class TensorDecl:
    """One graph input or output at the (always float32) graph boundary."""
    name: str
    shape: tuple  # ints for fixed axes, strings for dynamic ones
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class GraphDef:
    """Everything the exporter needs to know about one graph."""
    name: str
    module: nn.Module  # takes the inputs in order, returns the outputs in order
    inputs: list[TensorDecl]
    outputs: list[TensorDecl]
    # symbolic axis -> (min, opt, max); the manifest turns this into per-input shapes
    ranges: dict[str, tuple[int, int, int]]
    # sizes of the symbolic axes used for tracing; all distinct so that the
    # tracer's duck sizing never ties two independent axes together
    trace_sizes: dict[str, int]
    # sizes used to validate the exported graph (differ from the trace sizes,
    # which proves the axes really are dynamic)
    check_sizes: dict[str, int]
    # (sizes, torch generator) -> inputs in order, float32 on the CPU
    make_inputs: Callable[[dict, torch.Generator], tuple] = field(repr=False, default=None)
    # (inputs) -> outputs of the faithful original-layout fp32 model, for validation
    reference: Callable[[tuple], tuple] = field(repr=False, default=None)

    def shape_of(self, decl: TensorDecl, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in decl.shape)

    def profiles(self) -> dict[str, dict[str, list[int]]]:
        """TensorRT optimization profile: per input, min/opt/max shapes."""
        out = {}
        for decl in self.inputs:
            if not any(isinstance(d, str) for d in decl.shape):
                continue
            out[decl.name] = {
                level: [self.ranges[d][i] if isinstance(d, str) else d for d in decl.shape]
                for i, level in enumerate(("min", "opt", "max"))
            }
        return out

    def dynamic_shapes(self) -> tuple:
        """The torch.export dynamic_shapes spec: one dict per input."""
        return tuple(
            {i: torch.export.Dim.DYNAMIC for i, d in enumerate(decl.shape) if isinstance(d, str)}
            for decl in self.inputs
        )


def prepare_for_export(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype`` with every attention in the standard layout.

    The permutation folds the checkpoint's unusual head split into the q/k/v
    weights (spec section 3), so the exported attention is the plain
    (B, H, L, dh) pattern. The caller's module is left untouched.
    """
    m = copy.deepcopy(module).to(dtype).eval().requires_grad_(False)
    for sub in m.modules():
        if isinstance(sub, Attention):
            sub.to_standard_layout()
    if dtype != torch.float32:
        for sub in m.modules():
            if isinstance(sub, FrequencyEmbedding):
                # sin/cos of x * 2^(F-1) need fp32 arguments: fp16 rounding of the
                # argument alone is ~0.1 rad at 2^7, and ONNX opset 18 has no
                # bfloat16 Sin/Cos
                sub.forward = _fp32_forward(sub.forward)
    return m


def _fp32_forward(forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        return forward(x.float()).to(x.dtype)
    return run


def randn(shape, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * scale


def uniform(shape, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float32)
