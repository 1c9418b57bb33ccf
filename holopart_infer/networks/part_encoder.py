"""The part encoder (``part_encoder/``, spec section 5).

Token pre-selection (numpy choice + farthest point sampling) happens outside
the network, in :mod:`holopart_infer.model.tokens`; this module takes the selected
tokens and all points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from holopart_infer.networks.blocks import Block, FP32LayerNorm, FrequencyEmbedding


@dataclass(frozen=True)
class PartEncoderConfig:
    position_channels: int
    part_feature_channels: int
    whole_feature_channels: int
    dim: int
    num_attention_heads: int
    num_layers: int
    num_tokens: int
    embed_frequency: int
    embed_include_pi: bool
    part_local: bool = True
    embedding_type: str = "frequency"

    @classmethod
    def from_dict(cls, cfg: dict) -> "PartEncoderConfig":
        c = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if c.embedding_type != "frequency":
            raise ValueError(f"part_encoder embedding_type {c.embedding_type!r} is not supported")
        if not c.part_local:
            raise ValueError("part_encoder part_local=false is not supported (HoloPart uses true)")
        return c


class _PointCrossEncoder(nn.Module):
    """Selected tokens cross-attend to all points, then self-attention blocks."""

    def __init__(self, cfg: PartEncoderConfig, q_in: int, kv_in: int | None):
        super().__init__()
        D, H = cfg.dim, cfg.num_attention_heads
        if kv_in is None:  # local encoder: one projection shared by query and key/value
            self.proj_in = nn.Linear(q_in, D)
        else:
            self.q_proj_in = nn.Linear(q_in, D)
            self.kv_proj_in = nn.Linear(kv_in, D)
        self.shared_proj = kv_in is None
        self.blocks = nn.ModuleList(
            [Block(D, H, self_attention=False, cross_dim=D, norm_cross=True)]
            + [Block(D, H, self_attention=True) for _ in range(cfg.num_layers)]
        )
        self.norm_out = FP32LayerNorm(D)

    def forward(self, q_feat: torch.Tensor, kv_feat: torch.Tensor) -> torch.Tensor:
        if self.shared_proj:
            q, kv = self.proj_in(q_feat), self.proj_in(kv_feat)
        else:
            q, kv = self.q_proj_in(q_feat), self.kv_proj_in(kv_feat)
        h = self.blocks[0](q, kv)
        for block in self.blocks[1:]:
            h = block(h)
        return self.norm_out(h)


class PartEncoder(nn.Module):
    def __init__(self, cfg: PartEncoderConfig):
        super().__init__()
        self.cfg = cfg
        P = cfg.position_channels
        self.embedder = FrequencyEmbedding(cfg.embed_frequency, cfg.embed_include_pi, P)
        e = self.embedder.out_dim
        self.encoder_context = _PointCrossEncoder(cfg, e + cfg.part_feature_channels, e + cfg.whole_feature_channels)
        self.encoder_local = _PointCrossEncoder(cfg, e + cfg.part_feature_channels, None)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        P = self.cfg.position_channels
        return torch.cat([self.embedder(x[..., :P]), x[..., P:]], dim=-1)

    def forward(self, part_tokens: torch.Tensor, whole_points: torch.Tensor,
                local_tokens: torch.Tensor, local_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (whole_cond, part_cond), each (B, num_tokens, dim)."""
        whole_cond = self.encoder_context(self._features(part_tokens), self._features(whole_points))
        part_cond = self.encoder_local(self._features(local_tokens), self._features(local_points))
        return whole_cond, part_cond
