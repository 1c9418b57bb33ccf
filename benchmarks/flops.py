"""FLOP and byte floors of the HoloPart networks, computed from their configs.

Every size comes from the config dicts (the ``config.json`` contents, or the
``*Config`` dataclasses of ``holopart_infer.networks``); nothing here hard-codes the
published model. Conventions:

* one multiply-add = 2 FLOP; only matrix products are counted (linears,
  q k^T and p v of attention). Norms, softmax, GELU and the Euler update are
  elementwise and far below 1% of the total at every size we run; they count
  toward the byte floor, not the FLOP floor. This is also what
  ``torch.utils.flop_counter.FlopCounterMode`` counts, which the tests use to
  check these formulas against the real model.
* attention of Lq queries over Lk keys at width D = heads * head_dim costs
  2*Lq*Lk*D for q k^T plus 2*Lq*Lk*D for p v.
* "per sequence" means one latent of ``tokens`` tokens (L = tokens + 1 with the
  time token) and its two condition sequences of ``cond_tokens`` tokens.

This module is pure Python (no torch) so the harness, the docs and the tests
can all use it.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Mapping

__all__ = [
    "linear", "attention_core", "dit_forward", "dit_cross_kv", "dit_params", "guided_step", "sampling_run",
    "decoder_kv", "decoder_query_per_point", "decoder_params", "part_encoder", "part_encoder_params",
    "savings", "floor_seconds",
]


def _cfg(cfg: Any) -> Mapping[str, Any]:
    if is_dataclass(cfg):
        return asdict(cfg)
    return cfg


def linear(n: int, d_in: int, d_out: int) -> int:
    """FLOP of a linear layer applied to n rows (bias adds are not counted)."""
    return 2 * n * d_in * d_out


def attention_core(lq: int, lk: int, width: int) -> int:
    """FLOP of softmax(q k^T) v for lq queries, lk keys, all heads (width = H*dh)."""
    return 4 * lq * lk * width


def _sum(parts: dict[str, int]) -> dict[str, int]:
    parts = {k: int(v) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


# --------------------------------------------------------------------------- DiT
def dit_forward(cfg: Any, tokens: int = 2048, cond_tokens: int | None = None, *,
                unconditional: bool = False, cross_kv: bool = True,
                cond_dims: tuple[int, int] | None = None) -> dict[str, int]:
    """FLOP of one DiT forward for ONE sequence, as a breakdown with a "total".

    Args:
        cfg: transformer config (width, num_layers, in_channels, cross_attention_dim,
            cross_attention_2_dim, use_cross_attention, use_cross_attention_2).
        tokens: latent tokens T (L = T + 1 with the time token).
        cond_tokens: condition tokens K per cross-attention (the part encoder's
            num_tokens); required unless ``unconditional``.
        unconditional: the exact zero-condition shortcut: every cross-attention
            returns its output bias, so no cross-attention FLOP at all.
        cross_kv: count the k/v projections of the conditions (False when they are
            computed once per sampling run and cached).
    """
    c = _cfg(cfg)
    D, layers, C = c["width"], c["num_layers"], c["in_channels"]
    L = tokens + 1
    half = layers // 2
    n_skip = sum(1 for i in range(layers) if i > half)
    crosses = []
    if c.get("use_cross_attention", True):
        crosses.append(c["cross_attention_dim"])
    if c.get("use_cross_attention_2", True):
        crosses.append(c["cross_attention_2_dim"])
    if cond_dims is not None:
        crosses = list(cond_dims)
    parts = {
        "time_mlp": linear(1, D, 4 * D) + linear(1, 4 * D, D),
        "proj_in": linear(tokens, C, D),
        "self_attn_proj": layers * 4 * linear(L, D, D),
        "self_attn_core": layers * attention_core(L, L, D),
        "cross_q_out": 0,
        "cross_kv": 0,
        "cross_core": 0,
        "ff": layers * (linear(L, D, 4 * D) + linear(L, 4 * D, D)),
        "skip": n_skip * linear(L, 2 * D, D),
        "proj_out": linear(tokens, D, C),
    }
    if not unconditional and crosses:
        if cond_tokens is None:
            raise ValueError("cond_tokens is required for the conditional DiT forward")
        K = cond_tokens
        for dc in crosses:
            parts["cross_q_out"] += layers * 2 * linear(L, D, D)
            parts["cross_core"] += layers * attention_core(L, K, D)
            if cross_kv:
                parts["cross_kv"] += layers * 2 * linear(K, dc, D)
    return _sum(parts)


def dit_cross_kv(cfg: Any, cond_tokens: int) -> int:
    """FLOP of all k/v projections of one sequence's two conditions (cacheable per run)."""
    return dit_forward(cfg, 1, cond_tokens)["cross_kv"]


def dit_params(cfg: Any) -> int:
    """Parameter count of the DiT (checked against the module in the tests)."""
    c = _cfg(cfg)
    D, layers, C, H = c["width"], c["num_layers"], c["in_channels"], c["num_attention_heads"]
    dh = D // H
    half = layers // 2
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    norm = 2 * D
    p = lin(D, 4 * D) + lin(4 * D, D) + lin(C, D) + norm + lin(D, C)
    for i in range(layers):
        p += norm + 3 * lin(D, D, False) + lin(D, D) + 2 * dh  # self-attention
        for use, key in (("use_cross_attention", "cross_attention_dim"),
                         ("use_cross_attention_2", "cross_attention_2_dim")):
            if c.get(use, True):
                p += norm + lin(D, D, False) + 2 * lin(c[key], D, False) + lin(D, D) + 2 * dh
        p += norm + lin(D, 4 * D) + lin(4 * D, D)
        if i > half:
            p += lin(2 * D, D) + norm
    return p


def guided_step(cfg: Any, batch: int, tokens: int, cond_tokens: int, *, mode: str = "fast",
                guidance: bool = True) -> int:
    """FLOP of one guided Euler step for ``batch`` sequences.

    mode "fast": conditional branch with cached condition k/v, unconditional
    branch without cross-attention. mode "reference": the original pipeline's
    doubled batch with zero conditions through full cross-attention, condition
    k/v projected every step for both halves.
    """
    if mode == "fast":
        cond = dit_forward(cfg, tokens, cond_tokens, cross_kv=False)["total"]
        unc = dit_forward(cfg, tokens, unconditional=True)["total"] if guidance else 0
        return batch * (cond + unc)
    if mode == "reference":
        full = dit_forward(cfg, tokens, cond_tokens, cross_kv=True)["total"]
        return batch * full * (2 if guidance else 1)
    raise ValueError(f"mode must be 'fast' or 'reference', got {mode!r}")


def sampling_run(cfg: Any, batch: int, tokens: int, cond_tokens: int, steps: int = 50, *,
                 mode: str = "fast") -> int:
    """FLOP of a whole guided sampling run (the fast path projects condition k/v once)."""
    total = steps * guided_step(cfg, batch, tokens, cond_tokens, mode=mode)
    if mode == "fast":
        total += batch * dit_cross_kv(cfg, cond_tokens)
    return total


# --------------------------------------------------------------------------- VAE decoder
def _embed_dim(c: Mapping[str, Any], in_dim: int) -> int:
    return in_dim * (2 * c["embed_frequency"] + 1)


def decoder_kv(cfg: Any, tokens: int = 2048) -> dict[str, int]:
    """FLOP of the decoder's key/value pass for ONE latent (post_quant + stack + query-block k/v)."""
    c = _cfg(cfg)
    W, n, Cl = c["width_decoder"], c["num_layers_decoder"], c["latent_channels"]
    T = tokens
    return _sum({
        "post_quant": linear(T, Cl, W),
        "self_attn_proj": n * 4 * linear(T, W, W),
        "self_attn_core": n * attention_core(T, T, W),
        "ff": n * (linear(T, W, 4 * W) + linear(T, 4 * W, W)),
        "query_kv": 2 * linear(T, W, W),
    })


def decoder_query_per_point(cfg: Any, tokens: int = 2048) -> dict[str, int]:
    """FLOP of the decoder per query point with the keys/values cached."""
    c = _cfg(cfg)
    W, T = c["width_decoder"], tokens
    e = _embed_dim(c, c.get("in_channels", 3))
    return _sum({
        "proj_query": linear(1, e, W),
        "q_out": 2 * linear(1, W, W),
        "cross_core": attention_core(1, T, W),
        "ff": linear(1, W, 4 * W) + linear(1, 4 * W, W),
        "proj_out": linear(1, W, 1),
    })


def decoder_params(cfg: Any) -> int:
    """Parameter count of the VAE decoder (post_quant + decoder.*)."""
    c = _cfg(cfg)
    W, n, Cl = c["width_decoder"], c["num_layers_decoder"], c["latent_channels"]
    e = _embed_dim(c, c.get("in_channels", 3))
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    norm = 2 * W
    blk_ff = norm + lin(W, 4 * W) + lin(4 * W, W)
    p = lin(Cl, W) + lin(e, W) + norm + lin(W, 1)
    p += n * (norm + 3 * lin(W, W, False) + lin(W, W) + blk_ff)
    p += norm + norm + 3 * lin(W, W, False) + lin(W, W) + blk_ff  # query block (+ norm_cross)
    return p


# --------------------------------------------------------------------------- part encoder
def part_encoder(cfg: Any, num_points: int = 20480, num_tokens: int | None = None) -> dict[str, int]:
    """FLOP of the part encoder for ONE part (both the context and the local encoder)."""
    c = _cfg(cfg)
    D, n = c["dim"], c["num_layers"]
    K = num_tokens or c["num_tokens"]
    N = num_points
    e = _embed_dim(c, c["position_channels"])
    q_in = e + c["part_feature_channels"]
    kv_in = e + c["whole_feature_channels"]

    def encoder(q_dim: int, kv_dim: int) -> int:
        f = linear(K, q_dim, D) + linear(N, kv_dim, D)
        f += 2 * linear(N, D, D) + 2 * linear(K, D, D) + attention_core(K, N, D)  # cross block
        f += linear(K, D, 4 * D) + linear(K, 4 * D, D)
        f += n * (4 * linear(K, D, D) + attention_core(K, K, D) + linear(K, D, 4 * D) + linear(K, 4 * D, D))
        return f

    return _sum({"context": encoder(q_in, kv_in), "local": encoder(q_in, q_in)})


def part_encoder_params(cfg: Any) -> int:
    c = _cfg(cfg)
    D, n = c["dim"], c["num_layers"]
    e = _embed_dim(c, c["position_channels"])
    q_in = e + c["part_feature_channels"]
    kv_in = e + c["whole_feature_channels"]
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    norm = 2 * D
    ff = norm + lin(D, 4 * D) + lin(4 * D, D)
    blocks = (norm + norm + 3 * lin(D, D, False) + lin(D, D) + ff) + n * (norm + 3 * lin(D, D, False) + lin(D, D) + ff)
    context = lin(q_in, D) + lin(kv_in, D) + blocks + norm
    local = lin(q_in, D) + blocks + norm
    return context + local


# --------------------------------------------------------------------------- summaries
def savings(transformer_cfg: Any, tokens: int, cond_tokens: int, batch: int = 8, steps: int = 50) -> dict[str, float]:
    """Predicted FLOP savings of the fast path's DiT changes, as fractions.

    ``uncond_no_cross``: share of a reference guided step's FLOP removed by running
    the unconditional branch without cross-attention. ``cached_cross_kv``: share
    removed by projecting the condition k/v once per run instead of every step
    (both branches in the reference). ``fast_vs_reference``: total over a run.
    """
    ref_step = guided_step(transformer_cfg, batch, tokens, cond_tokens, mode="reference")
    cond_full = dit_forward(transformer_cfg, tokens, cond_tokens)
    unc = dit_forward(transformer_cfg, tokens, unconditional=True)["total"]
    # reference: 2B * full; with uncond shortcut only: B*full + B*unc
    uncond_saving = (ref_step - batch * (cond_full["total"] + unc)) / ref_step
    # of what is left, caching removes B*cross_kv per step (the uncond half no longer has any)
    kv_saving = batch * cond_full["cross_kv"] / ref_step
    ref_run = sampling_run(transformer_cfg, batch, tokens, cond_tokens, steps, mode="reference")
    fast_run = sampling_run(transformer_cfg, batch, tokens, cond_tokens, steps, mode="fast")
    return {
        "uncond_no_cross": uncond_saving,
        "cached_cross_kv": kv_saving,
        "fast_vs_reference": 1.0 - fast_run / ref_run,
        "uncond_share_of_uncond_forward": 1.0 - unc / cond_full["total"],
    }


def floor_seconds(flops: float, bytes_moved: float, peak_flops: float | None, bandwidth: float | None) -> tuple[float | None, str]:
    """max(FLOP / peak, bytes / bandwidth) and which term won ("flops" or "bytes")."""
    t_f = flops / peak_flops if peak_flops and flops else 0.0
    t_b = bytes_moved / bandwidth if bandwidth and bytes_moved else 0.0
    if not t_f and not t_b:
        return None, "none"
    return (t_f, "flops") if t_f >= t_b else (t_b, "bytes")


if __name__ == "__main__":  # a quick table for the published config
    import json
    import sys

    if len(sys.argv) > 1:
        from pathlib import Path

        root = Path(sys.argv[1])
        cfgs = {k: json.loads((root / k / "config.json").read_text()) for k in ("transformer", "vae", "part_encoder")}
    else:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from holopart_infer.export.random_checkpoint import PRESETS

        cfgs = PRESETS["full"]
    K = cfgs["part_encoder"]["num_tokens"]
    T = 2048
    print(f"DiT forward / sequence: {dit_forward(cfgs['transformer'], T, K)['total'] / 1e12:.3f} TFLOP")
    print(f"DiT uncond (no cross):  {dit_forward(cfgs['transformer'], T, unconditional=True)['total'] / 1e12:.3f} TFLOP")
    print(f"decoder kv / latent:    {decoder_kv(cfgs['vae'], T)['total'] / 1e9:.1f} GFLOP")
    print(f"decoder / query point:  {decoder_query_per_point(cfgs['vae'], T)['total'] / 1e6:.2f} MFLOP")
    print(f"part encoder / part:    {part_encoder(cfgs['part_encoder'])['total'] / 1e9:.1f} GFLOP")
    print(json.dumps(savings(cfgs["transformer"], T, K), indent=1))
