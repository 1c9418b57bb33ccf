"""The original pipeline's way of running the networks, as a backend (for side-by-side ratios).

fp16 eager faithful model in the checkpoint's head layout; classifier-free
guidance as a doubled batch ``[uncond; cond]`` with zero conditions through
full cross-attention (condition keys/values projected every step); the latents
cast back to fp16 after every fp32 Euler update; the decoder's self-attention
stack re-run for every 10000-point chunk, each chunk's logits copied to the
host. Latents stay on the device between steps (as in the original's
diffusers loop).

It derives from :class:`holopart_infer.engines.base.BackendBase` and follows
the backend protocol of ``holopart_infer/engines/base.py``:
``decoder_kv`` returns an opaque state (here only the latents, because the
original keeps no keys/values) and ``decoder_query(points, kv)`` returns
float32 ``(B, Q, 1)`` logits on the host. ``benchmarks/gpu_harness.py`` uses
it for every ``reference`` figure.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from holopart_infer.engines.base import BackendBase
from holopart_infer.engines.pytorch import DeviceTensor, as_tensor, networks_config
from holopart_infer.networks.load import TORCH_DTYPES, HoloPartNetworks

#: points per decoder call in the original pipeline
REFERENCE_CHUNK = 10000


@dataclass(frozen=True)
class ReferenceKV:
    """The reference decoder's state between calls: the latents alone (the
    self-attention stack is recomputed for every chunk)."""

    latents: torch.Tensor


class ReferenceBackend(BackendBase):
    """The backend protocol, run the way the original HoloPart pipeline runs it.

    ``device`` is the device string (protocol), ``torch_device`` the torch device;
    ``dtype`` the torch dtype of ``precision``.
    """

    name = "reference"

    def __init__(self, networks: HoloPartNetworks, device: str | torch.device = "cpu", precision: str = "fp16",
                 chunk: int = REFERENCE_CHUNK):
        self.torch_device = torch.device(device)
        self.device = str(self.torch_device)
        self.precision = precision
        self.dtype = TORCH_DTYPES[precision]
        self.chunk = int(chunk)
        self.dit_net = copy.deepcopy(networks.transformer).to(device=self.torch_device, dtype=self.dtype).eval()
        self.vae = copy.deepcopy(networks.vae).to(device=self.torch_device, dtype=self.dtype).eval()
        self.encoder = copy.deepcopy(networks.part_encoder).to(device=self.torch_device, dtype=self.dtype).eval()
        self.config = networks_config(networks)

    @property
    def num_tokens(self) -> int:
        return int(self.encoder.cfg.num_tokens)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.cfg.latent_channels)

    def _t(self, a: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        return as_tensor(a, self.torch_device, dtype or self.dtype)

    @torch.inference_mode()
    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        w, p = self.encoder(self._t(part_tokens), self._t(whole_points), self._t(local_tokens),
                            self._t(local_points))
        return DeviceTensor(w), DeviceTensor(p)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, t: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """One faithful DiT forward on device tensors (the harness times this)."""
        return self.dit_net(x, t, e1, e2)

    @torch.inference_mode()
    def dit(self, latents, timestep, part_cond, whole_cond):
        x = self._t(latents)
        t = self._t(np.asarray(timestep, dtype=np.float32).reshape(-1), torch.float32).expand(x.shape[0])
        return DeviceTensor(self.dit_net(x, t, self._t(part_cond), self._t(whole_cond)).float())

    @torch.inference_mode()
    def guided_step(self, latents, t, dt, guidance, part_cond, whole_cond):
        x = self._t(latents)
        e1, e2 = self._t(part_cond), self._t(whole_cond)
        B = x.shape[0]
        if guidance > 1.0:
            xx = torch.cat([x, x])
            e1 = torch.cat([torch.zeros_like(e1), e1])
            e2 = torch.cat([torch.zeros_like(e2), e2])
            tt = torch.full((2 * B,), float(t), device=self.torch_device)
            vu, vc = self.dit_net(xx, tt, e1, e2).float().chunk(2)
            v = vu + guidance * (vc - vu)
        else:
            v = self.dit_net(x, torch.full((B,), float(t), device=self.torch_device), e1, e2).float()
        return DeviceTensor((x.float() + dt * v).to(self.dtype))

    def decoder_kv(self, latents) -> ReferenceKV:
        return ReferenceKV(self._t(latents))

    @torch.inference_mode()
    def decoder_query(self, points, kv: ReferenceKV) -> np.ndarray:
        """float32 (B, Q, 1) logits on the host, stack recomputed per ``chunk`` points."""
        if not isinstance(kv, ReferenceKV):
            raise TypeError(f"decoder_query: kv must come from ReferenceBackend.decoder_kv, got {type(kv).__name__}")
        p = self._t(points, torch.float32)
        B, Q = p.shape[0], p.shape[1]
        out = np.empty((B, Q, 1), dtype=np.float32)
        for s in range(0, Q, self.chunk):
            k, v = self.vae.decode_kv(kv.latents)
            out[:, s:s + self.chunk] = self.vae.query(p[:, s:s + self.chunk], k, v).float().cpu().numpy()
        return out
