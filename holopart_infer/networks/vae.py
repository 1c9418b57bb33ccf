"""The VAE decoder (``vae/``, spec section 7). The encoder is not needed at inference.

The decoder is split the way it is exported: :meth:`VAEDecoder.decode_kv` runs
the latent through ``post_quant`` and the self-attention stack once and returns
the keys/values of the query block; :meth:`VAEDecoder.query` evaluates
occupancy logits at points against those keys/values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from holopart_infer.networks.blocks import Block, FP32LayerNorm, FrequencyEmbedding


@dataclass(frozen=True)
class VAEConfig:
    latent_channels: int
    num_attention_heads: int
    width_decoder: int
    num_layers_decoder: int
    embed_frequency: int
    embed_include_pi: bool
    in_channels: int = 3
    embedding_type: str = "frequency"

    @classmethod
    def from_dict(cls, cfg: dict) -> "VAEConfig":
        kw = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        c = cls(**kw)
        if c.embedding_type != "frequency":
            raise ValueError(f"vae embedding_type {c.embedding_type!r} is not supported (only 'frequency')")
        return c


class _DecoderTrunk(nn.Module):
    """Holds the ``decoder.*`` parameters under their checkpoint names."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        W, H = cfg.width_decoder, cfg.num_attention_heads
        self.embedder = FrequencyEmbedding(cfg.embed_frequency, cfg.embed_include_pi, cfg.in_channels)
        self.proj_query = nn.Linear(self.embedder.out_dim, W)
        self.blocks = nn.ModuleList(
            [Block(W, H, self_attention=True) for _ in range(cfg.num_layers_decoder)]
            + [Block(W, H, self_attention=False, cross_dim=W, norm_cross=True)]
        )
        self.norm_out = FP32LayerNorm(W)
        self.proj_out = nn.Linear(W, 1)


class VAEDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.post_quant = nn.Linear(cfg.latent_channels, cfg.width_decoder)
        self.decoder = _DecoderTrunk(cfg)

    @property
    def query_block(self) -> Block:
        return self.decoder.blocks[-1]

    def decode_kv(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, T, C) -> keys, values (B, H, T, dh) of the query block."""
        h = self.post_quant(latents)
        for block in self.decoder.blocks[:-1]:
            h = block(h)
        return self.query_block.attn2.project_kv(h)

    def query(self, points: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """points (B, Q, 3) -> occupancy logits (B, Q, 1), positive inside."""
        blk = self.query_block
        q = self.decoder.proj_query(self.decoder.embedder(points.to(keys.dtype)))
        q = q + blk.attn2.attend(blk.attn2.project_q(blk.norm2(q)), keys, values)
        q = q + blk.ff(blk.norm3(q))
        return -self.decoder.proj_out(self.decoder.norm_out(q))

    def forward(self, latents: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.query(points, *self.decode_kv(latents))
