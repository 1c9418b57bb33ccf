"""Write random-weight checkpoints in the published layout, for any config.

Used by tests (tiny, seeded) and benchmarks (mid and full size). The VAE
encoder (``encoder.*``, ``quant.*``) is not written: inference never reads it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from holopart_infer.networks.load import NETWORKS, build_network, expected_shapes
from holopart_infer.model.checkpoint import WEIGHTS_NAME, f32_to_bf16_bits
from holopart_infer.errors import InputError

PRESETS: dict[str, dict[str, dict]] = {
    # the published HoloPart configuration (spec section 2)
    "full": {
        "transformer": dict(num_attention_heads=16, width=2048, in_channels=64, num_layers=21,
                            cross_attention_dim=512, cross_attention_2_dim=512,
                            use_cross_attention=True, use_cross_attention_2=True),
        "vae": dict(in_channels=3, latent_channels=64, num_attention_heads=8, width_encoder=512,
                    width_decoder=1024, num_layers_encoder=8, num_layers_decoder=16,
                    embedding_type="frequency", embed_frequency=8, embed_include_pi=False),
        "part_encoder": dict(position_channels=3, part_feature_channels=3, whole_feature_channels=4,
                             dim=512, num_attention_heads=8, num_layers=8, num_tokens=512,
                             embedding_type="frequency", embed_frequency=8, embed_include_pi=False,
                             part_local=True),
        "scheduler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
    },
    # a mid-size config for CPU benchmarks
    "mid": {
        "transformer": dict(num_attention_heads=8, width=384, in_channels=64, num_layers=5,
                            cross_attention_dim=256, cross_attention_2_dim=256,
                            use_cross_attention=True, use_cross_attention_2=True),
        "vae": dict(in_channels=3, latent_channels=64, num_attention_heads=8, width_encoder=256,
                    width_decoder=256, num_layers_encoder=1, num_layers_decoder=4,
                    embedding_type="frequency", embed_frequency=8, embed_include_pi=False),
        "part_encoder": dict(position_channels=3, part_feature_channels=3, whole_feature_channels=4,
                             dim=256, num_attention_heads=8, num_layers=2, num_tokens=256,
                             embedding_type="frequency", embed_frequency=8, embed_include_pi=False,
                             part_local=True),
        "scheduler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
    },
    # tiny: fast tests
    "tiny": {
        "transformer": dict(num_attention_heads=4, width=64, in_channels=8, num_layers=5,
                            cross_attention_dim=32, cross_attention_2_dim=32,
                            use_cross_attention=True, use_cross_attention_2=True),
        "vae": dict(in_channels=3, latent_channels=8, num_attention_heads=4, width_encoder=32,
                    width_decoder=64, num_layers_encoder=1, num_layers_decoder=2,
                    embedding_type="frequency", embed_frequency=8, embed_include_pi=False),
        "part_encoder": dict(position_channels=3, part_feature_channels=3, whole_feature_channels=4,
                             dim=32, num_attention_heads=4, num_layers=2, num_tokens=16,
                             embedding_type="frequency", embed_frequency=8, embed_include_pi=False,
                             part_local=True),
        "scheduler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
    },
}

CLASS_NAMES = {"part_encoder": "PartEncoder", "transformer": "TripoSGDiTModel",
               "vae": "TripoSGVAEModel", "scheduler": "RectifiedFlowScheduler"}


def _init(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith(".bias"):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:  # norm weights
        return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = shape[-1]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _save(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    """Write one safetensors file (bf16 stored as raw bits, via our own header)."""
    from safetensors.numpy import save_file

    if dtype == "bf16":
        header, blobs, offset = {}, [], 0
        for k in sorted(tensors):
            b = f32_to_bf16_bits(tensors[k]).tobytes()
            header[k] = {"dtype": "BF16", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + len(b)]}
            blobs.append(b)
            offset += len(b)
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for b in blobs:
                f.write(b)
        return
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    save_file({k: v.astype(np_dtype) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_random_checkpoint(out_dir: str | os.PathLike, config: str | dict = "tiny", *, seed: int = 0,
                            dtype: str = "fp32", shard_size_mb: float | None = None,
                            variant: str | None = None, overwrite: bool = False) -> Path:
    """Write a random-weight checkpoint in the published layout.

    Args:
        out_dir: folder to create.
        config: a preset name ("tiny", "mid", "full") or {component: config dict}.
        seed: weights seed (each component gets its own stream).
        dtype: "fp32", "fp16" or "bf16" tensors.
        shard_size_mb: write sharded files (with the index json) of at most this size.
        variant: write ``diffusion_pytorch_model.<variant>.safetensors`` names.
        overwrite: allow writing into an existing non-empty folder.
    """
    cfgs = PRESETS[config] if isinstance(config, str) else config
    if dtype not in ("fp32", "fp16", "bf16"):
        raise InputError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pass overwrite=True or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "HoloPartPipeline"}
    itemsize = 4 if dtype == "fp32" else 2
    stem = WEIGHTS_NAME + (f".{variant}" if variant else "")
    for ci, comp in enumerate(NETWORKS):
        index[comp] = ["holopart", CLASS_NAMES[comp]]
        cdir = out / comp
        cdir.mkdir(exist_ok=True)
        cfg = {"_class_name": CLASS_NAMES[comp], **cfgs[comp]}
        (cdir / "config.json").write_text(json.dumps(cfg, indent=2))
        shapes = expected_shapes(build_network(comp, cfgs[comp]))
        rng = np.random.default_rng([seed, ci])
        # plan the shards from sizes alone, then generate and write one shard at a
        # time so a full-size checkpoint never sits in memory whole
        limit = float("inf") if shard_size_mb is None else shard_size_mb * 2**20
        plan: list[list[str]] = [[]]
        size = 0
        for name in sorted(shapes):
            nbytes = int(np.prod(shapes[name])) * itemsize
            if plan[-1] and size + nbytes > limit:
                plan.append([])
                size = 0
            plan[-1].append(name)
            size += nbytes
        n = len(plan)
        weight_map = {}
        for i, names in enumerate(plan):
            fname = f"{stem}.safetensors" if shard_size_mb is None else f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"
            _save({k: _init(k, shapes[k], rng) for k in names}, cdir / fname, dtype)
            weight_map.update({k: fname for k in names})
        if shard_size_mb is not None:
            (cdir / f"{stem}.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    sdir = out / "scheduler"
    sdir.mkdir(exist_ok=True)
    (sdir / "scheduler_config.json").write_text(
        json.dumps({"_class_name": CLASS_NAMES["scheduler"], **cfgs["scheduler"]}, indent=2))
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out
