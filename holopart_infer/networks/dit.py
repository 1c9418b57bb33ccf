"""The diffusion transformer (``transformer/``, spec section 4)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from holopart_infer.networks.blocks import Block, FP32LayerNorm


@dataclass(frozen=True)
class DiTConfig:
    width: int
    num_attention_heads: int
    in_channels: int
    num_layers: int
    cross_attention_dim: int
    cross_attention_2_dim: int
    use_cross_attention: bool
    use_cross_attention_2: bool

    @classmethod
    def from_dict(cls, cfg: dict) -> "DiTConfig":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})


class TimeProjection(nn.Module):
    """Sinusoidal embedding (sin first) -> linear_1 (D->4D) -> GELU -> linear_2 (4D->D)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"DiT width must be even, got {dim}")
        self.half = dim // 2
        self.linear_1 = nn.Linear(dim, 4 * dim)
        self.linear_2 = nn.Linear(4 * dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        i = torch.arange(self.half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * i / self.half)
        arg = t.float()[:, None] * freqs[None, :]
        emb = torch.cat([arg.sin(), arg.cos()], dim=-1).to(self.linear_1.weight.dtype)
        return self.linear_2(F.gelu(self.linear_1(emb)))


class DiT(nn.Module):
    """Predicts the rectified-flow velocity of latents (B, T, C)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.time_proj = TimeProjection(D)
        self.proj_in = nn.Linear(cfg.in_channels, D)
        half = cfg.num_layers // 2
        self.blocks = nn.ModuleList([
            Block(D, cfg.num_attention_heads, self_attention=True,
                  cross_dim=cfg.cross_attention_dim if cfg.use_cross_attention else None,
                  cross_2_dim=cfg.cross_attention_2_dim if cfg.use_cross_attention_2 else None,
                  qk_norm=True, norm_cross=False, skip=i > half)
            for i in range(cfg.num_layers)
        ])
        self.norm_out = FP32LayerNorm(D)
        self.proj_out = nn.Linear(D, cfg.in_channels)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor,
                enc1: torch.Tensor | None = None, enc2: torch.Tensor | None = None,
                unconditional: bool = False) -> torch.Tensor:
        """Args:
            latents: (B, T, C); timestep: (B,) in 0..1000;
            enc1: part (local) condition (B, K, Dc); enc2: whole (context) condition.
            unconditional: conditions are zeros; skip cross-attention exactly.
        """
        temb = self.time_proj(timestep).to(latents.dtype)
        h = torch.cat([temb[:, None, :], self.proj_in(latents)], dim=1)
        stack: list[torch.Tensor] = []
        half = self.cfg.num_layers // 2
        for i, block in enumerate(self.blocks):
            skip = stack.pop() if block.has_skip else None
            h = block(h, enc1, enc2, skip=skip, cross_bias_only=unconditional)
            if i < half:
                stack.append(h)
        h = self.norm_out(h)[:, 1:]
        return self.proj_out(h)
