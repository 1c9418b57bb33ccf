"""Export contract of the DiT: graphs ``dit`` and ``guided_step``.

``guided_step`` holds classifier-free guidance and the Euler update. Its
conditional and unconditional branches run as one batch of 2B through the
self-attention and feed-forward layers (the bulk of the work); only the
conditional half runs the cross-attentions. With zero conditions and bias-free
to_k/to_v, every unconditional cross-attention equals ``to_out.0.bias`` exactly
(spec section 6), so the unconditional half just adds that bias.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import (BATCH, COND_TOKENS, DEFAULT_BATCH, TOKENS, GraphDef, TensorDecl,
                                  prepare_for_export, randn, uniform)
from holopart_infer.networks.blocks import Block
from holopart_infer.networks.dit import DiT


class DiTGraph(nn.Module):
    def __init__(self, dit: DiT, dtype: torch.dtype):
        super().__init__()
        self.dit = dit
        self.dtype = dtype

    def forward(self, latents, timestep, part_cond, whole_cond):
        d = self.dtype
        return self.dit(latents.to(d), timestep, part_cond.to(d), whole_cond.to(d)).float()


def _guided_block(block: Block, h: torch.Tensor, B, enc1, enc2, skip):
    """Block.forward on the batch [cond (B); uncond (B)]: cross-attention on the first half only."""
    if block.has_skip:
        h = block.skip_norm(block.skip_linear(torch.cat([skip, h], dim=-1)))
    if block.has_self:
        h = h + block.attn1(block.norm1(h))
    for has, norm, attn, enc in ((block.has_cross, "norm2", "attn2", enc1),
                                 (block.has_cross_2, "norm2_2", "attn2_2", enc2)):
        if not has:
            continue
        a, n = getattr(block, attn), getattr(block, norm)
        hc, hu = h[:B], h[B:]
        h = torch.cat([hc + a(n(hc), enc), hu + a.to_out[0].bias.to(h.dtype)], dim=0)
    return h + block.ff(block.norm3(h))


class GuidedStepGraph(nn.Module):
    """x_next = x + dt * (v_u + g * (v_c - v_u)); guidance and update in float32."""

    def __init__(self, dit: DiT, dtype: torch.dtype):
        super().__init__()
        self.dit = dit
        self.dtype = dtype

    def forward(self, latents, timestep, dt, guidance, part_cond, whole_cond):
        d, dit = self.dtype, self.dit
        B = latents.shape[0]
        temb = dit.time_proj(timestep.expand(B)).to(d)
        h = torch.cat([temb[:, None, :], dit.proj_in(latents.to(d))], dim=1)
        h = torch.cat([h, h], dim=0)  # [cond; uncond] share the time token and proj_in
        enc1, enc2 = part_cond.to(d), whole_cond.to(d)
        stack: list[torch.Tensor] = []
        half = dit.cfg.num_layers // 2
        for i, block in enumerate(dit.blocks):
            skip = stack.pop() if block.has_skip else None
            h = _guided_block(block, h, B, enc1, enc2, skip)
            if i < half:
                stack.append(h)
        v = dit.proj_out(dit.norm_out(h)[:, 1:]).float()
        v_c, v_u = v[:B], v[B:]
        return latents + dt * (v_u + guidance * (v_c - v_u))


def graphs(ref: DiT, dtype: torch.dtype, latent_tokens: int, cond_tokens: int) -> list[GraphDef]:
    cfg = ref.cfg
    C = cfg.in_channels
    exp = prepare_for_export(ref, dtype)
    ranges = {BATCH: DEFAULT_BATCH, TOKENS: (1, latent_tokens, latent_tokens),
              COND_TOKENS: (cond_tokens, cond_tokens, cond_tokens)}
    conds = [TensorDecl("part_cond", (BATCH, COND_TOKENS, cfg.cross_attention_dim)),
             TensorDecl("whole_cond", (BATCH, COND_TOKENS, cfg.cross_attention_2_dim))]

    def cond_inputs(s, gen):
        B, K = s[BATCH], s[COND_TOKENS]
        return (randn((B, K, cfg.cross_attention_dim), gen), randn((B, K, cfg.cross_attention_2_dim), gen))

    def dit_inputs(s, gen):
        B, T = s[BATCH], s[TOKENS]
        return (randn((B, T, C), gen), uniform((B,), gen, 0.0, 1000.0), *cond_inputs(s, gen))

    def step_inputs(s, gen):
        B, T = s[BATCH], s[TOKENS]
        return (randn((B, T, C), gen), uniform((1,), gen, 0.0, 1000.0), uniform((1,), gen, 0.0, 0.1),
                torch.tensor([3.5]), *cond_inputs(s, gen))

    @torch.inference_mode()
    def step_reference(x):
        lat, t, dt, g, pc, wc = x
        tt = t.expand(lat.shape[0])
        v_c = ref(lat, tt, pc, wc)
        v_u = ref(lat, tt, unconditional=True)
        return (lat + dt * (v_u + g * (v_c - v_u)),)

    trace = {BATCH: 2, TOKENS: 37, COND_TOKENS: 11}
    check = {BATCH: 3, TOKENS: 29, COND_TOKENS: 13}
    return [
        GraphDef(
            name="dit", module=DiTGraph(exp, dtype),
            inputs=[TensorDecl("latents", (BATCH, TOKENS, C)), TensorDecl("timestep", (BATCH,)), *conds],
            outputs=[TensorDecl("velocity", (BATCH, TOKENS, C))],
            ranges=ranges, trace_sizes=trace, check_sizes=check, make_inputs=dit_inputs,
            reference=lambda x: (torch.inference_mode()(ref)(*x),),
        ),
        GraphDef(
            name="guided_step", module=GuidedStepGraph(exp, dtype),
            inputs=[TensorDecl("latents", (BATCH, TOKENS, C)), TensorDecl("timestep", (1,)),
                    TensorDecl("dt", (1,)), TensorDecl("guidance", (1,)), *conds],
            outputs=[TensorDecl("latents_next", (BATCH, TOKENS, C))],
            ranges=ranges, trace_sizes=trace, check_sizes=check, make_inputs=step_inputs,
            reference=step_reference,
        ),
    ]
