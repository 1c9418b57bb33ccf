"""The faithful PyTorch model behind the runtime's backend protocol (numpy in/out).

The reference, not a runtime backend: ``holopart-infer verify --backend
reference`` runs it, the exported graphs and every runtime backend are checked
against it (tests/export_side/, tests/runtime/engines/test_conformance.py).
Build a pipeline on it with ``HoloPart(TorchBackend.from_checkpoint(path))``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from holopart_infer.model.checkpoint import checkpoint_inference_defaults
from holopart_infer.engines.base import BackendBase
from holopart_infer.networks.load import HoloPartNetworks, TORCH_DTYPES, load_networks


class TorchBackend(BackendBase):
    name = "reference"

    def __init__(self, networks: HoloPartNetworks, device: str = "cpu", precision: str = "fp32",
                 path: str | os.PathLike | None = None):
        self.nets = networks
        self.torch_device = torch.device(device)
        self.device = str(device)
        self.dtype = TORCH_DTYPES[precision]
        self.precision = precision
        self.path = None if path is None else Path(path)
        self._defaults = checkpoint_inference_defaults(path) if path is not None else {}
        ck = networks.checkpoint
        self.config = ({c: dict(ck[c].config) for c in ("transformer", "vae", "part_encoder")}
                       if ck is not None else {})
        self.config["scheduler"] = dict(networks.scheduler or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", precision: str = "fp32"):
        return cls(load_networks(path, precision=precision, device=device), device, precision, path)

    @property
    def defaults(self) -> dict:
        return dict(self._defaults)

    @property
    def num_tokens(self) -> int:
        return self.nets.part_encoder.cfg.num_tokens

    def _t(self, a: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), device=self.torch_device).to(dtype or self.dtype)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    @torch.inference_mode()
    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        w, p = self.nets.part_encoder(self._t(part_tokens), self._t(whole_points),
                                      self._t(local_tokens), self._t(local_points))
        return self._np(w), self._np(p)

    @torch.inference_mode()
    def dit(self, latents, timestep, part_cond, whole_cond):
        out = self.nets.transformer(self._t(latents), self._t(timestep, torch.float32),
                                    self._t(part_cond), self._t(whole_cond))
        return self._np(out)

    @torch.inference_mode()
    def guided_step(self, latents, t, dt, guidance, part_cond, whole_cond):
        """One guided Euler step. The unconditional branch skips cross-attention
        (exact for zero conditions, spec section 6); both branches run as one batch
        when the model allows it."""
        x = self._t(latents)
        B = x.shape[0]
        tt = torch.full((B,), t, device=self.torch_device, dtype=torch.float32)
        dit = self.nets.transformer
        v_c = dit(x, tt, self._t(part_cond), self._t(whole_cond)).float()
        if guidance > 1.0:
            v_u = dit(x, tt, unconditional=True).float()
            v = v_u + guidance * (v_c - v_u)
        else:
            v = v_c
        return self._np(x.float() + dt * v)

    @torch.inference_mode()
    def decoder_kv(self, latents):
        k, v = self.nets.vae.decode_kv(self._t(latents))
        return (k, v)

    @torch.inference_mode()
    def decoder_query(self, points, kv):
        return self._np(self.nets.vae.query(self._t(points, torch.float32), *kv))
