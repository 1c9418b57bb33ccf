"""The ``torch`` backend: the optimized PyTorch inference path over a checkpoint dir.

A runtime backend (registered in :mod:`holopart_infer.engines.registry`):
torch is imported when this module is, and this module is imported only when
the torch backend is opened. It reads the checkpoint directly with the
torch-free :mod:`holopart_infer.model.checkpoint` reader and builds the networks of
:mod:`holopart_infer.networks`; it never imports the export side.

Same function as the faithful model (``holopart_infer.export.torch_backend``;
fp32 agrees within float rounding, tests/runtime/engines/test_pytorch.py),
organised for speed:

1. **Standard-layout attention** on a private copy of each network
   (:meth:`Attention.to_standard_layout`), with the self-attention q/k/v
   projections fused into one GEMM, and ``F.scaled_dot_product_attention``
   (flash / cuDNN / memory-efficient kernels on GPU).
2. **Low-precision weights, fp32 norms**: linear weights in bf16 or fp16 (the
   default per device is the registry's, ``BackendSpec.default_precision``); LayerNorm/RMSNorm parameters stay fp32 and compute in fp32;
   latents and the Euler update stay fp32 on the device.
3. **Exact unconditional branch**: with zero conditions every cross-attention
   returns its ``to_out.0.bias`` (spec section 6), so the unconditional half of
   the batch skips cross-attention entirely.
4. **Condition keys/values cached per sampling run**: the cross-attention k/v of
   the conditions do not depend on the latents or the timestep; they are
   projected once (for every block) when a new pair of conditions is seen and
   reused for all steps.
5. **One batch**: all parts, conditional and unconditional rows, go through the
   shared layers (self-attention, FF, projections) as one batch; only the
   conditional rows enter the cross-attentions (in place, no copies).
6. **Optional CUDA graphs** for one guided step (``graph="cuda_graph"``, or
   ``graph="compile"`` for ``torch.compile(mode="reduce-overhead")``), CUDA only:
   asking for them on the CPU raises InputError (``holopart_infer.load(...,
   graph="cuda_graph")`` selects them).

Tensors stay on the device across steps: :meth:`FastTorchBackend.guided_step`,
``encode`` and ``decoder_kv`` return :class:`DeviceTensor` (``numpy.asarray``
copies one to the host), and every entry point accepts numpy arrays, torch
tensors or DeviceTensors.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from holopart_infer.model.checkpoint import checkpoint_inference_defaults
from holopart_infer.engines.base import BackendBase, DeviceArray
from holopart_infer.engines.signatures import check_feeds, model_dims
from holopart_infer.errors import InputError, ShapeError
from holopart_infer.constants import QUERY_CHUNK_POINTS
from holopart_infer.networks.load import HoloPartNetworks, TORCH_DTYPES, load_networks
from holopart_infer.networks.blocks import Attention, Block, FP32LayerNorm, RMSNorm
from holopart_infer.networks.dit import DiT
from holopart_infer.networks.part_encoder import PartEncoder
from holopart_infer.networks.vae import VAEDecoder

log = logging.getLogger("holopart_infer")

GRAPH_MODES = ("eager", "cuda_graph", "compile")

__all__ = ["DeviceTensor", "FastDiT", "FastDecoder", "FastTorchBackend", "prepare_module", "GRAPH_MODES",
           "open_backend"]


class DeviceTensor(DeviceArray):
    """A torch tensor that stays on its device between backend calls.

    ``numpy.asarray(dt)`` copies it to the host as float32; ``.tensor`` is the
    torch tensor itself.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)  # what numpy() returns

    def numpy(self) -> np.ndarray:
        return self.tensor.detach().float().cpu().numpy()

    def __getitem__(self, idx) -> "DeviceTensor":
        return DeviceTensor(self.tensor[idx])

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.tensor.dtype}, device={self.tensor.device})"


def as_tensor(a: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """numpy / torch / DeviceTensor -> a tensor on ``device`` in ``dtype`` (no copy when it already is)."""
    if isinstance(a, DeviceTensor):
        a = a.tensor
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(a), device=device).to(dtype)


@torch.no_grad()
def prepare_module(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A private copy: standard-layout attention, linear weights in ``dtype``, norms in fp32."""
    m = copy.deepcopy(module)
    for sub in m.modules():
        if isinstance(sub, Attention):
            sub.float()  # permute in fp32: exact whatever the storage dtype
            sub.to_standard_layout()
    m.to(device=device, dtype=torch.float32)
    for sub in m.modules():
        if isinstance(sub, nn.Linear):
            sub.to(dtype)
        elif isinstance(sub, (FP32LayerNorm, RMSNorm)):
            sub.float()
    return m.eval().requires_grad_(False)


def _rms(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return (xf * norm.weight).to(x.dtype)


@dataclass
class ConditionCache:
    """Cross-attention keys/values of one pair of conditions, for every DiT block.

    ``kv[i]`` = (k1, v1, k2, v2) of block i, each (B, H, K, dh) contiguous
    (None where the block has no such cross-attention).
    """

    batch: int
    kv: list[tuple[torch.Tensor | None, ...]]
    source: tuple[Any, Any] = field(repr=False, default=(None, None))  # keeps identity keys alive


@dataclass
class _Graph:
    graph: Any
    x: torch.Tensor
    t: torch.Tensor
    dt: torch.Tensor
    g: torch.Tensor
    out: torch.Tensor
    kv: list[tuple[torch.Tensor | None, ...]]
    fed: ConditionCache | None = None


class FastDiT:
    """The optimized DiT: guided steps with the exact uncond shortcut and cached condition k/v."""

    def __init__(self, transformer: DiT, device: str | torch.device, precision: str, graph: str = "eager"):
        if graph not in GRAPH_MODES:
            raise InputError(f"graph must be one of {', '.join(GRAPH_MODES)}, got {graph!r}")
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[precision]
        self.precision = precision
        self.cfg = transformer.cfg
        self.net = prepare_module(transformer, self.device, self.dtype)
        self.half = self.cfg.num_layers // 2
        # fused q/k/v weight of each self-attention; the per-projection weights become views of it
        self.qkv: list[torch.Tensor] = []
        with torch.no_grad():
            for blk in self.net.blocks:
                a = blk.attn1
                w = torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight], 0).contiguous()
                D = a.to_q.weight.shape[0]
                a.to_q.weight.data, a.to_k.weight.data, a.to_v.weight.data = w[:D], w[D:2 * D], w[2 * D:]
                self.qkv.append(w)
        if graph != "eager" and self.device.type != "cuda":
            raise InputError(f"graph={graph!r} (CUDA graphs / torch.compile reduce-overhead) needs a CUDA "
                             f"device, got {self.device}; use graph='eager' on the CPU")
        self.graph_mode = graph
        self._cache: ConditionCache | None = None
        self._graphs: dict[tuple, _Graph] = {}
        self._compiled = None

    # -- conditions --------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, part_cond: Any, whole_cond: Any) -> ConditionCache:
        """Project the conditions' cross-attention keys/values for every block (once per run)."""
        if isinstance(part_cond, ConditionCache):
            return part_cond
        c = self._cache
        if c is not None and c.source[0] is part_cond and c.source[1] is whole_cond:
            return c
        e1 = as_tensor(part_cond, self.device, self.dtype)
        e2 = as_tensor(whole_cond, self.device, self.dtype)
        kv = []
        for blk in self.net.blocks:
            entry: list[torch.Tensor | None] = []
            for has, name, enc in ((blk.has_cross, "attn2", e1), (blk.has_cross_2, "attn2_2", e2)):
                if has:
                    k, v = getattr(blk, name).project_kv(enc)
                    entry += [k.contiguous(), v.contiguous()]
                else:
                    entry += [None, None]
            kv.append(tuple(entry))
        self._cache = ConditionCache(e1.shape[0], kv, (part_cond, whole_cond))
        return self._cache

    def clear_cache(self) -> None:
        """Forget the cached condition k/v and captured graphs (frees device memory)."""
        self._cache = None
        self._graphs.clear()

    # -- the network ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, kv: list | None, n_cond: int) -> torch.Tensor:
        """Velocity for x (B, T, C) in the compute dtype; t (1,) or (B,) fp32.

        Rows [0, n_cond) are conditional (cross-attention against ``kv``, whose
        batch is n_cond); rows [n_cond, B) are unconditional (exact bias shortcut).
        """
        net = self.net
        B, T, _ = x.shape
        temb = net.time_proj(t.float()).to(self.dtype)
        temb = temb.expand(B, -1) if temb.shape[0] == 1 else temb
        h = torch.cat([temb[:, None, :], F.linear(x, net.proj_in.weight, net.proj_in.bias)], dim=1)
        stack: list[torch.Tensor] = []
        for i, blk in enumerate(net.blocks):
            skip = stack.pop() if blk.has_skip else None
            h = self._block(i, blk, h, skip, kv[i] if kv is not None else None, n_cond)
            if i < self.half:
                stack.append(h)
        h = net.norm_out(h)[:, 1:]
        return F.linear(h, net.proj_out.weight, net.proj_out.bias)

    def _block(self, i: int, blk: Block, h: torch.Tensor, skip, kv, n_cond: int) -> torch.Tensor:
        if blk.has_skip:
            h = blk.skip_norm(F.linear(torch.cat([skip, h], dim=-1), blk.skip_linear.weight, blk.skip_linear.bias))
        B, L, D = h.shape
        a = blk.attn1
        H, dh = a.heads, a.head_dim
        qkv = F.linear(blk.norm1(h), self.qkv[i]).view(B, L, 3, H, dh)
        q, k, v = qkv.unbind(2)
        q, k = _rms(q, a.norm_q), _rms(k, a.norm_k)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           scale=1.0 / math.sqrt(dh))
        # a fresh tensor: safe to update in place below (the skip stack holds older ones)
        h = h + F.linear(o.transpose(1, 2).reshape(B, L, D), a.to_out[0].weight, a.to_out[0].bias)
        for has, name, norm, j in ((blk.has_cross, "attn2", "norm2", 0), (blk.has_cross_2, "attn2_2", "norm2_2", 2)):
            if not has:
                continue
            attn = getattr(blk, name)
            bias = attn.to_out[0].bias
            if n_cond < B:
                h[n_cond:] += bias.to(h.dtype)
            if n_cond > 0:
                hc = h[:n_cond]
                qc = attn.project_q(getattr(blk, norm)(hc))
                oc = F.scaled_dot_product_attention(qc, kv[j], kv[j + 1], scale=1.0 / math.sqrt(dh))
                hc += F.linear(oc.transpose(1, 2).reshape(n_cond, L, D), attn.to_out[0].weight, bias)
        return h + blk.ff(blk.norm3(h))

    # -- guided step ---------------------------------------------------------------
    def _step(self, x: torch.Tensor, t: torch.Tensor, dt, g, kv: list, guided: bool) -> torch.Tensor:
        """x (B, T, C) fp32 -> x + dt * (v_u + g (v_c - v_u)) fp32 (v_c alone when not guided)."""
        B = x.shape[0]
        xin = x.to(self.dtype)
        if guided:
            v = self.forward(torch.cat([xin, xin]), t, kv, B).float()
            vc, vu = v[:B], v[B:]
            v = vu + g * (vc - vu)
        else:
            v = self.forward(xin, t, kv, B).float()
        return x + dt * v

    @torch.inference_mode()
    def guided_step(self, latents: Any, t: float, dt: float, guidance: float, part_cond: Any,
                    whole_cond: Any) -> torch.Tensor:
        """One guided Euler step; returns fp32 latents on the device."""
        x = as_tensor(latents, self.device, torch.float32)
        cache = self.prepare(part_cond, whole_cond)
        if cache.batch != x.shape[0]:
            raise ShapeError(f"guided_step: input 'latents' has batch {x.shape[0]} but the conditions 'part_cond'/'whole_cond' have batch {cache.batch}")
        guided = float(guidance) > 1.0
        if self.graph_mode == "cuda_graph":
            return self._replay(x, t, dt, guidance, cache, guided)
        tt = torch.full((1,), float(t), device=self.device, dtype=torch.float32)
        if self.graph_mode == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(self._step, mode="reduce-overhead", dynamic=False)
            scal = torch.tensor([float(dt), float(guidance)], device=self.device, dtype=torch.float32)
            return self._compiled(x, tt, scal[0], scal[1], cache.kv, guided).clone()
        return self._step(x, tt, float(dt), float(guidance), cache.kv, guided)

    def _replay(self, x, t, dt, g, cache: ConditionCache, guided: bool) -> torch.Tensor:
        key = (tuple(x.shape), guided)
        st = self._graphs.get(key)
        if st is None:
            st = self._capture(x, cache, guided)
            self._graphs[key] = st
        if st.fed is not cache:
            for dst, src in zip(st.kv, cache.kv):
                for d, s in zip(dst, src):
                    if d is not None:
                        d.copy_(s)
            st.fed = cache
        st.x.copy_(x)
        st.t.fill_(float(t))
        st.dt.fill_(float(dt))
        st.g.fill_(float(g))
        st.graph.replay()
        return st.out.clone()

    def _capture(self, x: torch.Tensor, cache: ConditionCache, guided: bool) -> _Graph:
        dev = self.device
        sx = x.clone()
        st_t = torch.zeros(1, device=dev)
        sdt = torch.zeros((), device=dev)
        sg = torch.zeros((), device=dev)
        skv = [tuple(None if a is None else a.clone() for a in entry) for entry in cache.kv]
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up: allocator, cuBLAS handles, kernel selection
                self._step(sx, st_t, sdt, sg, skv, guided)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._step(sx, st_t, sdt, sg, skv, guided)
        return _Graph(graph, sx, st_t, sdt, sg, out, skv, fed=cache)

    @torch.inference_mode()
    def velocity(self, latents: Any, timestep: Any, part_cond: Any, whole_cond: Any) -> torch.Tensor:
        """The plain conditional DiT (the ``dit`` graph), with cached condition k/v."""
        x = as_tensor(latents, self.device, self.dtype)
        t = as_tensor(timestep, self.device, torch.float32).reshape(-1)
        cache = self.prepare(part_cond, whole_cond)
        return self.forward(x, t, cache.kv, x.shape[0])

    @torch.inference_mode()
    def sample(self, noise: Any, part_cond: Any, whole_cond: Any, *, steps: int = 50, guidance: float = 3.5,
               shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
        """The whole guided loop on the device (the shared schedule of holopart_infer.model.sampler)."""
        from holopart_infer.model.sampler import sample

        x = as_tensor(noise, self.device, torch.float32)
        return sample(self.guided_step, x, part_cond, whole_cond, steps=steps, guidance=guidance,
                      shift=shift, num_train_timesteps=num_train_timesteps)


class FastDecoder:
    """VAE decoder: standard-layout attention, kv computed once per latent, large query batches."""

    def __init__(self, vae: VAEDecoder, device: str | torch.device, precision: str,
                 max_rows: int = 32 * QUERY_CHUNK_POINTS):
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[precision]
        self.net = prepare_module(vae, self.device, self.dtype)
        # query rows (parts x points) per pass: bounds the FF intermediate for direct callers; the
        # pipeline already sends at most chunk_points per part, so with <= 32 parts it never splits
        self.max_rows = max_rows

    @torch.inference_mode()
    def kv(self, latents: Any) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.net.decode_kv(as_tensor(latents, self.device, self.dtype))
        return k.contiguous(), v.contiguous()

    @torch.inference_mode()
    def query(self, points: Any, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """points (B, Q, 3) -> logits (B, Q, 1) fp32 on the device."""
        p = as_tensor(points, self.device, torch.float32)
        B, Q, _ = p.shape
        step = max(1, self.max_rows // max(B, 1))
        if Q <= step:
            return self.net.query(p, *kv).float()
        return torch.cat([self.net.query(p[:, s:s + step], *kv).float() for s in range(0, Q, step)], dim=1)


def networks_config(networks) -> dict:
    """The component configs of loaded networks (``{}`` when they came without a checkpoint)."""
    if networks.checkpoint is None:
        return {}
    return {**{c: dict(networks.checkpoint[c].config) for c in ("transformer", "vae", "part_encoder")},
            "scheduler": dict(networks.scheduler)}


class FastTorchBackend(BackendBase):
    """The backend protocol (docs/contracts.md) over the optimized PyTorch path.

    Open it with :func:`holopart_infer.engines.open_backend` (``backend="torch"``)
    or :meth:`from_checkpoint`.
    """

    name = "torch"

    def __init__(self, networks: HoloPartNetworks, device: str, precision: str, graph: str = "eager",
                 path: str | os.PathLike | None = None, defaults: dict | None = None):
        if precision not in TORCH_DTYPES:
            raise InputError(f"precision must be one of {', '.join(TORCH_DTYPES)}, got {precision!r}")
        self.torch_device = torch.device(device)
        self.device = str(device)
        self.precision = precision
        self.graph = graph
        self.path = None if path is None else Path(path)
        self._defaults = dict(defaults or {})
        self.dtype = TORCH_DTYPES[self.precision]
        self.dit_path = FastDiT(networks.transformer, self.torch_device, self.precision, graph=graph)
        self.decoder = FastDecoder(networks.vae, self.torch_device, self.precision)
        self.encoder: PartEncoder = prepare_module(networks.part_encoder, self.torch_device, self.dtype)
        self._config = networks_config(networks)
        # the sizes of the graphs' model axes (signatures.MODEL_AXES); the latent channels come from
        # the networks themselves, which also run without a checkpoint's config
        self._dims = {**model_dims(self._config), "C": self.latent_channels}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str, precision: str,
                        graph: str = "eager") -> "FastTorchBackend":
        """Read a checkpoint dir (published layout) and build the fast path on ``device``."""
        defaults = checkpoint_inference_defaults(path)
        # load in fp32 on the host; each fast module makes its own device copy in its precision
        return cls(load_networks(path, precision="fp32", device="cpu"), device, precision, graph, path, defaults)

    @property
    def num_tokens(self) -> int:
        return self.encoder.cfg.num_tokens

    @property
    def latent_channels(self) -> int:
        return self.dit_path.cfg.in_channels

    @property
    def config(self) -> dict:
        return self._config

    @property
    def defaults(self) -> dict:
        return dict(self._defaults)

    def __repr__(self) -> str:
        return f"FastTorchBackend(path={str(self.path)!r}, device={self.device!r}, precision={self.precision!r})"

    def _check(self, graph: str, **feeds) -> None:
        """Host feeds must match the graph's signature, as every backend's (the inputs this
        backend takes as Python numbers or keeps itself are left out)."""
        check_feeds(graph, feeds, self._dims, partial=True)

    @torch.inference_mode()
    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        check_feeds("part_encoder", {"part_tokens": part_tokens, "whole_points": whole_points,
                                     "local_tokens": local_tokens, "local_points": local_points}, self._dims)
        t = lambda a: as_tensor(a, self.torch_device, self.dtype)  # noqa: E731
        w, p = self.encoder(t(part_tokens), t(whole_points), t(local_tokens), t(local_points))
        return DeviceTensor(w), DeviceTensor(p)

    def dit(self, latents, timestep, part_cond, whole_cond):
        self._check("dit", latents=latents, part_cond=part_cond, whole_cond=whole_cond)
        return DeviceTensor(self.dit_path.velocity(latents, timestep, part_cond, whole_cond).float())

    def guided_step(self, latents, t, dt, guidance, part_cond, whole_cond):
        self._check("guided_step", latents=latents, part_cond=part_cond, whole_cond=whole_cond)
        return DeviceTensor(self.dit_path.guided_step(latents, t, dt, guidance, part_cond, whole_cond))

    def decoder_kv(self, latents):
        self._check("vae_kv", latents=latents)
        return self.decoder.kv(latents)

    def decoder_query(self, points, kv):
        self._check("vae_query", points=points)
        return self.decoder.query(points, kv).cpu().numpy()

    def query_on_device(self, points: torch.Tensor, kv) -> torch.Tensor:
        """Decoder logits with no host copy: float32 (P, Q, 3) points already on
        this backend's device -> float32 (P, Q, 1) logits there (used by
        :mod:`holopart_infer.extraction.resident`)."""
        if not isinstance(points, torch.Tensor) or points.device != self.torch_device or points.ndim != 3 \
                or points.shape[-1] != 3:
            got = (f"{type(points).__name__} {tuple(points.shape)} on {points.device}"
                   if isinstance(points, torch.Tensor) else type(points).__name__)
            raise ShapeError(f"torch backend query_on_device: input 'points' must be a (P, Q, 3) tensor on "
                             f"{self.torch_device}, got {got}; use decoder_query for host arrays")
        return self.decoder.query(points, kv)

    def close(self) -> None:
        """Forget cached condition k/v and captured graphs (device memory goes with them)."""
        self.dit_path.clear_cache()


def open_backend(path: str | os.PathLike, device: str, precision: str, graph: str = "eager") -> FastTorchBackend:
    """Registry opener (:func:`holopart_infer.engines.open_backend`): ``precision`` comes resolved."""
    return FastTorchBackend.from_checkpoint(path, device=device, precision=precision, graph=graph)
