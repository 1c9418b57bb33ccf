"""Export contract of the part encoder: graph ``part_encoder``."""
from __future__ import annotations

import torch
from torch import nn

from .common import (BATCH, COND_TOKENS, DEFAULT_BATCH, DEFAULT_POINTS, POINTS, GraphDef,
                                  TensorDecl, prepare_for_export, randn, uniform)
from holopart_infer.networks.part_encoder import PartEncoder


class PartEncoderGraph(nn.Module):
    """float32 in -> compute dtype -> float32 out."""

    def __init__(self, enc: PartEncoder, dtype: torch.dtype):
        super().__init__()
        self.enc = enc
        self.dtype = dtype

    def forward(self, part_tokens, whole_points, local_tokens, local_points):
        d = self.dtype
        w, p = self.enc(part_tokens.to(d), whole_points.to(d), local_tokens.to(d), local_points.to(d))
        return w.float(), p.float()


def _points(shape, gen, with_mask: bool) -> torch.Tensor:
    xyz = uniform(shape[:-1] + (3,), gen, -1.0, 1.0)
    n = randn(shape[:-1] + (3,), gen)
    n = n / n.norm(dim=-1, keepdim=True)
    parts = [xyz, n]
    if with_mask:
        parts.append((torch.rand(shape[:-1] + (1,), generator=gen) > 0.5).float())
    return torch.cat(parts, -1)


def graphs(ref: PartEncoder, dtype: torch.dtype) -> list[GraphDef]:
    cfg = ref.cfg
    D, K = cfg.dim, cfg.num_tokens
    c_part = cfg.position_channels + cfg.part_feature_channels
    c_whole = cfg.position_channels + cfg.whole_feature_channels

    def make_inputs(s, gen):
        B, Kx, N = s[BATCH], s[COND_TOKENS], s[POINTS]
        return (_points((B, Kx, c_part), gen, False), _points((B, N, c_whole), gen, True),
                _points((B, Kx, c_part), gen, False), _points((B, N, c_part), gen, False))

    return [GraphDef(
        name="part_encoder",
        module=PartEncoderGraph(prepare_for_export(ref, dtype), dtype),
        inputs=[TensorDecl("part_tokens", (BATCH, COND_TOKENS, c_part)),
                TensorDecl("whole_points", (BATCH, POINTS, c_whole)),
                TensorDecl("local_tokens", (BATCH, COND_TOKENS, c_part)),
                TensorDecl("local_points", (BATCH, POINTS, c_part))],
        outputs=[TensorDecl("whole_cond", (BATCH, COND_TOKENS, D)),
                 TensorDecl("part_cond", (BATCH, COND_TOKENS, D))],
        ranges={BATCH: DEFAULT_BATCH, COND_TOKENS: (K, K, K),
                POINTS: (K, max(K, DEFAULT_POINTS[1]), max(K, DEFAULT_POINTS[2]))},
        trace_sizes={BATCH: 2, COND_TOKENS: 11, POINTS: 53},
        check_sizes={BATCH: 3, COND_TOKENS: K, POINTS: max(4 * K, 61)},
        make_inputs=make_inputs,
        reference=lambda x: tuple(ref(*x)),
    )]
