"""Building blocks shared by the three HoloPart networks (spec section 3).

Parameter names match the published checkpoint exactly. Attention keeps the
checkpoint's unusual head split ("original" layout) until
:meth:`Attention.to_standard_layout` permutes the projection rows once, after
which the usual (B, L, H, dh) split computes the same function; the ONNX export
uses the standard layout so engines see the attention pattern they fuse.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FrequencyEmbedding(nn.Module):
    """[x, sin(x_i f_j), cos(x_i f_j)] with f_j = 2^j (times pi if include_pi), i-major."""

    def __init__(self, num_freqs: int, include_pi: bool, in_dim: int = 3):
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi
        self.out_dim = in_dim * (2 * num_freqs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed, not a buffer: no state to restore after meta-device loading,
        # and the exported graph constant-folds it
        freqs = 2.0 ** torch.arange(self.num_freqs, device=x.device, dtype=torch.float32)
        if self.include_pi:
            freqs = freqs * math.pi
        xf = (x[..., :, None] * freqs.to(x.dtype)).flatten(-2)  # (..., in_dim*F), i-major
        return torch.cat([x, xf.sin(), xf.cos()], dim=-1)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activations' dtype (eps 1e-5)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps=eps, elementwise_affine=True, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis (the head dimension), weight only, eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class FeedForward(nn.Module):
    """Linear(D, 4D) -> exact GELU -> Linear(4D, D); keys ff.net.0.proj / ff.net.2."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, dim * mult)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](F.gelu(self.net[0].proj(x)))


class Attention(nn.Module):
    """Multi-head attention with HoloPart's head split (spec section 3).

    Args:
        query_dim: width of the query stream (and of the output).
        heads: number of heads; head dim = query_dim // heads.
        kv_dim: width of the key/value input for cross-attention (None: self).
        qk_norm: RMSNorm on q and k per head (``norm_q``/``norm_k``).
        norm_cross: LayerNorm on the key/value input (``norm_cross``).
    """

    def __init__(self, query_dim: int, heads: int, kv_dim: int | None = None,
                 qk_norm: bool = False, norm_cross: bool = False):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"width {query_dim} is not divisible by num_attention_heads {heads}")
        self.heads = heads
        self.head_dim = query_dim // heads
        self.is_cross = kv_dim is not None
        kv_dim = kv_dim or query_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim, bias=True)])
        self.norm_q = RMSNorm(self.head_dim) if qk_norm else None
        self.norm_k = RMSNorm(self.head_dim) if qk_norm else None
        self.norm_cross = FP32LayerNorm(kv_dim) if (norm_cross and self.is_cross) else None
        self.layout = "original"

    # -- layout ---------------------------------------------------------------
    @torch.no_grad()
    def to_standard_layout(self) -> None:
        """Permute q/k/v projection rows so the usual head split is equivalent.

        Self-attention: head h takes rows [3*dh*h, 3*dh*(h+1)) of cat[Wq;Wk;Wv]
        as (q_h, k_h, v_h). Cross-attention: keys/values take rows
        [2*dh*h, 2*dh*(h+1)) of cat[Wk;Wv] as (k_h, v_h); the query is already
        standard.
        """
        if self.layout == "standard":
            return
        dh, H = self.head_dim, self.heads
        if self.is_cross:
            w = torch.cat([self.to_k.weight, self.to_v.weight], 0).view(H, 2, dh, -1)
            self.to_k.weight.copy_(w[:, 0].reshape(H * dh, -1))
            self.to_v.weight.copy_(w[:, 1].reshape(H * dh, -1))
        else:
            w = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight], 0).view(H, 3, dh, -1)
            self.to_q.weight.copy_(w[:, 0].reshape(H * dh, -1))
            self.to_k.weight.copy_(w[:, 1].reshape(H * dh, -1))
            self.to_v.weight.copy_(w[:, 2].reshape(H * dh, -1))
        self.layout = "standard"

    # -- forward --------------------------------------------------------------
    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, M, dh) of the key/value input (norm_k applied)."""
        B, M, _ = context.shape
        H, dh = self.heads, self.head_dim
        if self.norm_cross is not None:
            context = self.norm_cross(context)
        k, v = self.to_k(context), self.to_v(context)
        if self.layout == "original":
            kv = torch.cat([k, v], -1).view(B, M, H, 2 * dh)
            k, v = kv.split(dh, dim=-1)
        else:
            k, v = k.view(B, M, H, dh), v.view(B, M, H, dh)
        if self.norm_k is not None:
            k = self.norm_k(k)
        return k.transpose(1, 2), v.transpose(1, 2)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.to_q(x).view(B, L, self.heads, self.head_dim)
        if self.norm_q is not None:
            q = self.norm_q(q)
        return q.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, L, dh = q.shape
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(dh))
        return self.to_out[0](o.transpose(1, 2).reshape(B, L, H * dh))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            k, v = self.project_kv(context)
            return self.attend(self.project_q(x), k, v)
        B, L, _ = x.shape
        H, dh = self.heads, self.head_dim
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if self.layout == "original":
            qkv = torch.cat([q, k, v], -1).view(B, L, H, 3 * dh)
            q, k, v = qkv.split(dh, dim=-1)
        else:
            q, k, v = q.view(B, L, H, dh), k.view(B, L, H, dh), v.view(B, L, H, dh)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


class Block(nn.Module):
    """Transformer block: [long skip] [self-attn] [cross-attn] [cross-attn 2] ff (spec 3)."""

    def __init__(self, dim: int, heads: int, *, self_attention: bool = True,
                 cross_dim: int | None = None, cross_2_dim: int | None = None,
                 qk_norm: bool = False, norm_cross: bool = False, skip: bool = False):
        super().__init__()
        if skip:
            self.skip_linear = nn.Linear(2 * dim, dim)
            self.skip_norm = FP32LayerNorm(dim)
        self.has_skip = skip
        if self_attention:
            self.norm1 = FP32LayerNorm(dim)
            self.attn1 = Attention(dim, heads, qk_norm=qk_norm)
        self.has_self = self_attention
        if cross_dim is not None:
            self.norm2 = FP32LayerNorm(dim)
            self.attn2 = Attention(dim, heads, kv_dim=cross_dim, qk_norm=qk_norm, norm_cross=norm_cross)
        self.has_cross = cross_dim is not None
        if cross_2_dim is not None:
            self.norm2_2 = FP32LayerNorm(dim)
            self.attn2_2 = Attention(dim, heads, kv_dim=cross_2_dim, qk_norm=qk_norm, norm_cross=norm_cross)
        self.has_cross_2 = cross_2_dim is not None
        self.norm3 = FP32LayerNorm(dim)
        self.ff = FeedForward(dim)

    def attention_modules(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def forward(self, h: torch.Tensor, enc1: torch.Tensor | None = None,
                enc2: torch.Tensor | None = None, skip: torch.Tensor | None = None,
                cross_bias_only: bool = False) -> torch.Tensor:
        """``cross_bias_only``: the conditions are all zeros (unconditional branch).

        Then k = v = 0 (to_k/to_v have no bias and, without norm_cross, zero in
        gives zero out), attention averages zero values, and each cross-attention
        returns exactly ``to_out.0.bias`` (spec section 6).
        """
        if self.has_skip:
            h = self.skip_norm(self.skip_linear(torch.cat([skip, h], dim=-1)))
        if self.has_self:
            h = h + self.attn1(self.norm1(h))
        if self.has_cross:
            h = h + (self.attn2.to_out[0].bias.to(h.dtype) if cross_bias_only else self.attn2(self.norm2(h), enc1))
        if self.has_cross_2:
            h = h + (self.attn2_2.to_out[0].bias.to(h.dtype) if cross_bias_only else self.attn2_2(self.norm2_2(h), enc2))
        return h + self.ff(self.norm3(h))
