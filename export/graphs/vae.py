"""Export contract of the VAE decoder: graphs ``vae_kv`` and ``vae_query``.

``vae_kv`` runs the latent through the self-attention stack once and returns
the query block's keys and values; ``vae_query`` evaluates any number of
points against them, so the expensive stack never runs per chunk of points.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import (BATCH, DEFAULT_BATCH, DEFAULT_QUERIES, QUERIES, TOKENS, GraphDef,
                                  TensorDecl, prepare_for_export, randn, uniform)
from holopart_infer.networks.blocks import FeedForward
from holopart_infer.networks.vae import VAEDecoder


def _fusable_gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU written as ``(x * 0.5) * (1 + erf(x / sqrt(2)))``.

    The same function as ``F.gelu``, but the exporter's own GELU decomposition
    multiplies the 0.5 into the erf branch, a pattern ONNX Runtime's CPU
    optimizer does not recognise; this order it fuses, with the linear's bias,
    into one BiasGelu kernel (issue 16 item 1: about 1.1x decoder queries/s on
    the CPU, benchmarks/bench_decoder_cpu.py). TensorRT fuses either form.
    """
    return (x * 0.5) * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _with_fusable_gelu(ff: FeedForward) -> None:
    """Make ``ff`` (an export copy) compute its GELU through :func:`_fusable_gelu`."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return ff.net[2](_fusable_gelu(ff.net[0].proj(x)))
    ff.forward = forward


class VAEKVGraph(nn.Module):
    def __init__(self, vae: VAEDecoder, dtype: torch.dtype):
        super().__init__()
        self.vae = vae
        self.dtype = dtype

    def forward(self, latents):
        k, v = self.vae.decode_kv(latents.to(self.dtype))
        return k.float(), v.float()


class VAEQueryGraph(nn.Module):
    def __init__(self, vae: VAEDecoder, dtype: torch.dtype):
        super().__init__()
        self.vae = vae
        self.dtype = dtype

    def forward(self, points, keys, values):
        d = self.dtype
        return self.vae.query(points.to(d), keys.to(d), values.to(d)).float()


def graphs(ref: VAEDecoder, dtype: torch.dtype, latent_tokens: int, *,
           fusable_gelu: bool = True) -> list[GraphDef]:
    """The two decoder graphs; ``fusable_gelu=False`` keeps the exporter's own GELU
    (the form before issue 16, for benchmarks/bench_decoder_cpu.py's comparison)."""
    cfg = ref.cfg
    H = cfg.num_attention_heads
    dh = cfg.width_decoder // H
    exp = prepare_for_export(ref, dtype)
    for sub in exp.modules():
        if fusable_gelu and isinstance(sub, FeedForward):
            _with_fusable_gelu(sub)
    ranges = {BATCH: DEFAULT_BATCH, TOKENS: (1, latent_tokens, latent_tokens), QUERIES: DEFAULT_QUERIES}
    kv = [TensorDecl("keys", (BATCH, H, TOKENS, dh)), TensorDecl("values", (BATCH, H, TOKENS, dh))]

    def kv_inputs(s, gen):
        return (randn((s[BATCH], s[TOKENS], cfg.latent_channels), gen),)

    # keys/values for validation come from the faithful model, so vae_query is
    # checked against inputs it will really see
    @torch.inference_mode()
    def query_inputs(s, gen):
        k, v = ref.decode_kv(kv_inputs(s, gen)[0])
        return (uniform((s[BATCH], s[QUERIES], cfg.in_channels), gen, -1.05, 1.05), k, v)

    return [
        GraphDef(
            name="vae_kv", module=VAEKVGraph(exp, dtype),
            inputs=[TensorDecl("latents", (BATCH, TOKENS, cfg.latent_channels))], outputs=kv,
            ranges=ranges, trace_sizes={BATCH: 2, TOKENS: 37}, check_sizes={BATCH: 3, TOKENS: 29},
            make_inputs=kv_inputs,
            reference=lambda x: tuple(torch.inference_mode()(ref.decode_kv)(*x)),
        ),
        GraphDef(
            name="vae_query", module=VAEQueryGraph(exp, dtype),
            inputs=[TensorDecl("points", (BATCH, QUERIES, cfg.in_channels)), *kv],
            outputs=[TensorDecl("logits", (BATCH, QUERIES, 1))],
            ranges=ranges, trace_sizes={BATCH: 2, TOKENS: 37, QUERIES: 41},
            check_sizes={BATCH: 3, TOKENS: 29, QUERIES: 47},
            make_inputs=query_inputs,
            reference=lambda x: (torch.inference_mode()(ref.query)(*x),),
        ),
    ]
