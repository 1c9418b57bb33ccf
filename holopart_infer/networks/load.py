"""Build the faithful PyTorch networks from a checkpoint folder.

Every tensor is checked against the model's parameters (names and shapes)
before any model is materialized, so a bad checkpoint never yields a
half-built model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from holopart_infer.model.checkpoint import Checkpoint, check_parameters, open_checkpoint
from holopart_infer.errors import CheckpointError
from holopart_infer.networks.dit import DiT, DiTConfig
from holopart_infer.networks.part_encoder import PartEncoder, PartEncoderConfig
from holopart_infer.networks.vae import VAEConfig, VAEDecoder

# component -> (module class, config class, checkpoint prefixes that inference ignores)
NETWORKS = {
    "part_encoder": (PartEncoder, PartEncoderConfig, ()),
    "transformer": (DiT, DiTConfig, ()),
    "vae": (VAEDecoder, VAEConfig, ("encoder.", "quant.")),
}

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class HoloPartNetworks:
    part_encoder: PartEncoder
    transformer: DiT
    vae: VAEDecoder
    scheduler: dict
    checkpoint: Checkpoint

    def modules(self):
        return {"part_encoder": self.part_encoder, "transformer": self.transformer, "vae": self.vae}


def build_network(component: str, config: dict) -> torch.nn.Module:
    """An uninitialised network on the meta device, built from its config."""
    cls, cfg_cls, _ = NETWORKS[component]
    try:
        cfg = cfg_cls.from_dict(config)
        with torch.device("meta"):
            return cls(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{component}/config.json: unusable configuration: {e}") from e


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_networks(path: str | os.PathLike, precision: str = "fp32", device: str = "cpu",
                  variant: str | None = None) -> HoloPartNetworks:
    """Load the three networks of a checkpoint folder, in eval mode.

    Args:
        path: checkpoint folder in the published layout.
        precision: "fp32", "fp16" or "bf16" (norms always compute in fp32).
        device: torch device string.
        variant: weights variant file to prefer (e.g. "fp16").
    """
    if precision not in TORCH_DTYPES:
        raise ValueError(f"precision must be one of {sorted(TORCH_DTYPES)}, got {precision!r}")
    ckpt = open_checkpoint(path, variant=variant)
    metas = {}
    for name in NETWORKS:  # validate everything first: no half-built model
        metas[name] = build_network(name, ckpt[name].config)
        check_parameters(ckpt[name], expected_shapes(metas[name]), NETWORKS[name][2])
    dtype = TORCH_DTYPES[precision]
    built = {}
    for name, meta in metas.items():
        module = meta.to_empty(device=device)
        arrays = ckpt[name].load(expected_shapes(meta), dtype=np.float32)
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        module.load_state_dict(state, strict=True)
        built[name] = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return HoloPartNetworks(built["part_encoder"], built["transformer"], built["vae"], ckpt.scheduler, ckpt)
