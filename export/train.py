"""Train holopart-mini on synthetic part assemblies (issue 8). See docs/training.md.

Two stages, each resumable (``OUT/<stage>_state.pt`` every ``ckpt_every`` steps:
models, optimizer, step, RNG states, loss history):

* ``vae``: a point-cloud encoder (defined here; saved under ``encoder.*`` and
  ``quant.*``, which inference ignores) maps surface samples of a complete part
  (in its part frame) to a latent (B, T, C) with a KL term; the faithful
  decoder (:class:`holopart_infer.networks.vae.VAEDecoder`) is trained with occupancy BCE.
* ``dit``: the part encoder + DiT, rectified flow on latents of the frozen
  VAE encoder (posterior mean), conditioned as at inference
  (:func:`holopart_infer.model.conditioning.build_conditions` on the visible patches,
  :func:`holopart_infer.model.tokens.select_tokens`), with condition dropout (both
  conditions zeroed) for classifier-free guidance.

Flow convention (must match :func:`holopart_infer.model.sampler.sample`, which steps
``x <- x + (sigma_i - sigma_{i+1}) * v`` from sigma = 1 (noise) down to 0):
``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model's target is
``v = x0 - noise`` (so dx/dsigma = -v); model timestep = 1000 * sigma.

``export`` writes both stages' weights in the published checkpoint layout
(config.json + safetensors per component), loadable by :func:`holopart_infer.networks.load.load_networks`.

CLI::

    python -m holopart_infer.export.train vae    --out runs/mini --preset tiny --steps 300
    python -m holopart_infer.export.train dit    --out runs/mini --preset tiny --steps 300
    python -m holopart_infer.export.train export --out runs/mini --checkpoint runs/mini/checkpoint
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from holopart_infer.networks.blocks import Block, FP32LayerNorm, FrequencyEmbedding
from holopart_infer.networks.dit import DiT, DiTConfig
from holopart_infer.networks.part_encoder import PartEncoder, PartEncoderConfig
from holopart_infer.networks.vae import VAEConfig, VAEDecoder

log = logging.getLogger("holopart_infer.train")

NUM_TRAIN_TIMESTEPS = 1000


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    preset: str = "tiny"            # model config: a PRESETS name, or a path to a json {component: cfg}
    num_latents: int = 64           # T (inference: --latent-tokens T)
    num_points: int = 512           # conditioning samples per part / whole (reference 20480)
    n_surface: int = 512            # VAE encoder input samples per complete part
    n_occ_near: int = 256           # occupancy targets near the surface
    n_occ_uniform: int = 256        # occupancy targets uniform in [-1.05, 1.05]^3
    occ_sigma: float = 0.02
    objects: int = 16               # synthetic objects in the training pool
    data_seed: int = 0
    n_views: int = 16               # visibility cameras per object
    view_choices: tuple[int, ...] | None = None  # if set: object i uses view_choices[i % len] cameras
    templates: tuple[str, ...] | None = None
    workers: int = 1                # processes building the pool (the pool does not depend on it)
    occluded_weight: float = 1.0    # sampling weight of parts with visible_frac < occluded_below
    occluded_below: float = 0.95
    lr_schedule: str = "constant"   # "constant" or "cosine" (from lr at decay_from to lr * lr_final at steps)
    decay_from: int = 0
    lr_final: float = 0.01
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 300
    kl_weight: float = 1e-3
    cond_dropout: float = 0.1
    grad_clip: float = 1.0
    ckpt_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    threads: int = 0                # torch CPU threads (0: torch's default; 1 is best on a shared CPU)
    # issue 22 (v2): frame, augmentation, real objects, warm start
    up_axis: str = "z"              # synthetic objects: "z" (the templates' frame, v1) or "y" (glTF/HoloPart)
    augment: bool = False           # per pool object: rotation about up, mirror, tilt <= 5 deg, scale 0.85-1.15
    real_copies: int = 0            # augmented copies of each real training object (0: synthetic only)
    real_limit: int = 0             # use the first N training objects of the split (0: all)
    real_split: str = ""            # split json (default export/realdata_split.json)
    real_shell: float = 0.015       # model-frame thickness given to open real parts' surfaces (occupancy)
    real_subset: str = "train"      # which list of the split feeds the pool (held-out checks: "test", "val")
    real_fraction: float = 1.0      # train on this share of the pool's real parts (a prefix in job order: the
                                    # first objects with all their copies); the pool itself is unchanged
    init_from: str = ""             # published-layout checkpoint to start from when no state exists
    stop_at: int = 0                # stop (and save) at this step although the schedule runs to ``steps``
    freeze_encoder: bool = False    # vae stage: train the decoder only (the latent space stays init_from's,
                                    # so a dit run can train on it at the same time)

    def data_key(self) -> str:
        keys = ("num_latents", "num_points", "n_surface", "n_occ_near", "n_occ_uniform", "occ_sigma",
                "objects", "data_seed", "n_views", "templates", "preset")
        d = {k: getattr(self, k) for k in keys}
        if self.view_choices:  # keys of pools built before this field existed are unchanged
            d["view_choices"] = list(self.view_choices)
        for k in ("up_axis", "augment", "real_copies", "real_limit", "real_split", "real_shell", "real_subset"):
            if getattr(self, k) != getattr(TrainConfig, k):  # likewise: only non-default values enter
                d[k] = getattr(self, k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def model_configs(preset: str) -> dict[str, dict]:
    from .random_checkpoint import PRESETS

    if preset in PRESETS:
        return json.loads(json.dumps(PRESETS[preset]))
    return json.loads(Path(preset).read_text())


# ----------------------------------------------------------------------------- data


def object_examples(obj, tc: TrainConfig, num_tokens: int, seed: int) -> dict[str, np.ndarray]:
    """Training arrays of every part of one synthetic object, stacked over parts.

    surface (P, n_surface, 6): complete part [xyz, normal] in the part frame of its
    visible patch, the first ``num_latents`` rows an FPS subset (encoder queries);
    occ_points (P, Q, 3) / occ_labels (P, Q) in the same frame;
    part_tokens, whole_points, local_tokens, local_points: the part encoder inputs;
    visible_frac (P,): the visible share of each part's area.
    """
    import trimesh

    from .synthetic import sample_occupancy
    from holopart_infer.model.conditioning import build_conditions, sample_surface
    from holopart_infer.extraction.native import farthest_point_sampling
    from holopart_infer.model.tokens import select_tokens

    cond = build_conditions(obj.input_parts(), tc.num_points, seed=seed)
    out = {"part_tokens": select_tokens(cond.part, num_tokens, seed),
           "local_tokens": select_tokens(cond.part_local, num_tokens, seed),
           "whole_points": cond.whole, "local_points": cond.part_local}
    rng = np.random.default_rng(seed)
    surf, occ_p, occ_l = [], [], []
    for i, p in enumerate(obj.parts):
        v = (cond.to_model_frame(p.mesh.vertices) - cond.centers[i]) / cond.scales[i]
        pts, nrm, _ = sample_surface(v, p.mesh.faces, tc.n_surface, rng)
        first = farthest_point_sampling(np.ascontiguousarray(pts, dtype=np.float32), tc.num_latents)
        rest = np.setdiff1d(np.arange(tc.n_surface), first)
        order = np.concatenate([first, rest])
        surf.append(np.concatenate([pts, nrm], axis=1)[order])
        if p.primitive == "real":  # possibly open: |winding| > 0.5 or within a thin shell of the surface
            from .realdata import occupancy_labels

            dense, _, _ = sample_surface(v, p.mesh.faces, 20000, rng)
            near = dense[:tc.n_occ_near] + tc.occ_sigma * rng.standard_normal((tc.n_occ_near, 3))
            q = np.concatenate([near, rng.uniform(-1.05, 1.05, size=(tc.n_occ_uniform, 3))])
            shell = tc.real_shell / cond.scales[i]  # model frame -> part frame
            occ_p.append(q.astype(np.float32))
            occ_l.append(occupancy_labels(q, v, p.mesh.faces, shell, dense).astype(np.float32))
        else:
            occ = sample_occupancy(trimesh.Trimesh(v, p.mesh.faces, process=False), tc.n_occ_near,
                                   tc.n_occ_uniform, rng, sigma=tc.occ_sigma)
            occ_p.append(occ.points)
            occ_l.append(occ.labels)
    out.update(surface=np.stack(surf), occ_points=np.stack(occ_p), occ_labels=np.stack(occ_l),
               visible_frac=np.array([p.visible_fraction for p in obj.parts]))
    return {k: np.asarray(a, dtype=np.float32) for k, a in out.items()}


def object_views(tc: TrainConfig, i: int) -> int:
    """Visibility cameras of pool object ``i``."""
    return int(tc.view_choices[i % len(tc.view_choices)]) if tc.view_choices else tc.n_views


def _pool_object(args) -> dict[str, np.ndarray] | None:
    from .synthetic import Z_TO_Y_UP, dataset_object, transform_object

    tc, num_tokens, i = args[:3]
    if i >= tc.objects:  # a real object: (tc, num_tokens, i, entry, copy)
        return _real_pool_object(tc, num_tokens, i, *args[3:])
    obj = dataset_object(tc.data_seed, i, tc.templates, n_views=object_views(tc, i))
    M = Z_TO_Y_UP if tc.up_axis == "y" else np.eye(3)
    if tc.augment:
        from .realdata import augmentation

        up = 1 if tc.up_axis == "y" else 2
        M = augmentation(np.random.default_rng([tc.data_seed, i, 7]), up=up) @ M
    if tc.up_axis == "y" or tc.augment:
        transform_object(obj, M)
    return object_examples(obj, tc, num_tokens, seed=tc.data_seed * 100003 + i)


def _real_pool_object(tc: TrainConfig, num_tokens: int, i: int, entry, copy: int) -> dict | None:
    """Copy ``copy`` of a real training object (copy 0 unaugmented when augment is off), or None if
    the object has fewer than two visible parts."""
    from .realdata import augmentation, make_real_object

    if tc.up_axis != "y":
        raise ValueError("real objects are y-up: use up_axis 'y'")
    rng = np.random.default_rng([tc.data_seed, int(hashlib.sha256(entry.key.encode()).hexdigest()[:8], 16), copy])
    M = augmentation(rng, up=1) if tc.augment else None
    obj = make_real_object(entry, n_views=object_views(tc, i), transform=M)
    if obj is None:
        return None
    return object_examples(obj, tc, num_tokens, seed=tc.data_seed * 100003 + i)


def real_jobs(tc: TrainConfig) -> list:
    """(entry, copy) of every real pool object: the split's ``train`` objects x ``real_copies``."""
    if tc.real_copies <= 0:
        return []
    from .realdata import SPLIT_PATH, ensure_installed, entries_by_key

    split = json.loads(Path(tc.real_split or SPLIT_PATH).read_text())
    keys = split[tc.real_subset]
    keys = keys[:tc.real_limit] if tc.real_limit > 0 else keys
    entries = entries_by_key(ensure_installed())
    return [(entries[k], c) for k in keys for c in range(tc.real_copies)]


def build_pool(tc: TrainConfig, num_tokens: int, cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """All parts of ``tc.objects`` synthetic objects, as CPU tensors (cached as npz under cache_dir).

    Object i is ``make_object((data_seed, i))`` with ``object_views(tc, i)`` cameras;
    ``tc.workers`` processes build it (same result for any count).
    """
    path = None if cache_dir is None else Path(cache_dir) / f"pool_{tc.data_key()}.npz"
    if path is not None and path.is_file():
        with np.load(path) as z:
            return {k: torch.from_numpy(z[k]) for k in z.files}
    t0 = time.time()
    jobs = [(tc, num_tokens, i) for i in range(tc.objects)]
    jobs += [(tc, num_tokens, tc.objects + k, e, c) for k, (e, c) in enumerate(real_jobs(tc))]
    examples = []
    done = [0]

    def collect(results):
        for ex in results:
            done[0] += 1
            if ex is not None:
                examples.append(ex)
            if done[0] % 100 == 0:
                log.info("pool: %d/%d objects (%.0fs)", done[0], len(jobs), time.time() - t0)

    if tc.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(tc.workers) as workers:
            collect(workers.imap(_pool_object, jobs, chunksize=4))  # in order
    else:
        collect(map(_pool_object, jobs))
    pool = {k: np.concatenate([ex[k] for ex in examples]) for k in examples[0]}
    n_real = len(jobs) - tc.objects
    # synthetic objects are never dropped, so examples[:objects] are the synthetic ones
    pool["is_real"] = np.concatenate([np.full(len(ex["surface"]), float(j >= tc.objects), dtype=np.float32)
                                      for j, ex in enumerate(examples)])
    log.info("pool: %d objects (%d real jobs), %d parts in %.1fs", len(examples), n_real, len(pool["surface"]),
             time.time() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **pool)
        tmp.replace(path)
    return {k: torch.from_numpy(v) for k, v in pool.items()}


def subset_real(pool: dict, fraction: float) -> dict:
    """The pool with only the first ``fraction`` of its real parts (in build order: objects in split
    order, each with its copies), all synthetic parts kept: the data-size curve's points share one
    pool."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"real_fraction must be in [0, 1], got {fraction!r}")
    if fraction == 1.0 or "is_real" not in pool:
        return pool
    real = pool["is_real"] > 0.5
    keep = ~real
    idx = torch.nonzero(real).flatten()
    keep[idx[:int(round(fraction * len(idx)))]] = True
    log.info("real_fraction %.3g: %d of %d real parts", fraction, int(keep.sum() - (~real).sum()), len(idx))
    return {k: v[keep] for k, v in pool.items()}


def part_weights(pool: dict, tc: TrainConfig) -> torch.Tensor | None:
    """Sampling weights over pool parts (None: uniform), from ``occluded_weight``."""
    if tc.occluded_weight == 1.0:
        return None
    if "visible_frac" not in pool:
        raise ValueError("occluded_weight needs a pool with visible_frac: rebuild the pool (delete pool_*.npz)")
    occluded = pool["visible_frac"] < tc.occluded_below
    return torch.where(occluded, tc.occluded_weight, 1.0).double()


def learning_rate(tc: TrainConfig, step: int) -> float:
    """lr of the step after ``step`` steps: constant, or a cosine from decay_from to steps."""
    if tc.lr_schedule == "constant" or step < tc.decay_from:
        return tc.lr
    if tc.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {tc.lr_schedule!r}")
    span = max(1, tc.steps - tc.decay_from)
    frac = min(1.0, (step - tc.decay_from) / span)
    return tc.lr * (tc.lr_final + (1 - tc.lr_final) * 0.5 * (1 + np.cos(np.pi * frac)))


# ----------------------------------------------------------------------------- VAE encoder


class _EncoderTrunk(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        W, H = cfg["width_encoder"], cfg["num_attention_heads"]
        self.embedder = FrequencyEmbedding(cfg["embed_frequency"], cfg["embed_include_pi"], 3)
        self.proj_in = nn.Linear(self.embedder.out_dim + 3, W)
        self.blocks = nn.ModuleList([Block(W, H, self_attention=False, cross_dim=W, norm_cross=True)]
                                    + [Block(W, H) for _ in range(cfg["num_layers_encoder"])])
        self.norm_out = FP32LayerNorm(W)


class VAEEncoder(nn.Module):
    """Surface points (B, N, 6) -> posterior mean, logvar (B, T, C).

    The first T points are the queries (the data puts an FPS subset first); they
    cross-attend to all N points, then self-attention blocks, then ``quant``
    (W -> 2C). Parameter names: ``encoder.*``, ``quant.*``.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = _EncoderTrunk(cfg)
        self.quant = nn.Linear(cfg["width_encoder"], 2 * cfg["latent_channels"])

    def forward(self, surface: torch.Tensor, num_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.encoder
        x = e.proj_in(torch.cat([e.embedder(surface[..., :3]), surface[..., 3:]], dim=-1))
        h = e.blocks[0](x[:, :num_latents], x)
        for blk in e.blocks[1:]:
            h = blk(h)
        mean, logvar = self.quant(e.norm_out(h)).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)


# ----------------------------------------------------------------------------- losses


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_sigma, v): x_sigma = (1 - sigma) x0 + sigma noise, v = x0 - noise (sampler convention)."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, x0 - noise


def _randn(shape, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device)


def vae_loss(enc: VAEEncoder, dec: VAEDecoder, batch: dict, gen: torch.Generator, num_latents: int,
             kl_weight: float) -> dict[str, torch.Tensor]:
    mean, logvar = enc(batch["surface"], num_latents)
    z = mean + torch.exp(0.5 * logvar) * _randn(mean.shape, gen, mean.device)
    logits = dec(z, batch["occ_points"])[..., 0]
    bce = F.binary_cross_entropy_with_logits(logits, batch["occ_labels"])
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    with torch.no_grad():
        acc = ((logits > 0).float() == batch["occ_labels"]).float().mean()
    return {"loss": bce + kl_weight * kl, "bce": bce, "kl": kl, "acc": acc}


def dit_loss(penc: PartEncoder, dit: DiT, x0: torch.Tensor, batch: dict, gen: torch.Generator,
             cond_dropout: float) -> dict[str, torch.Tensor]:
    B, dev = x0.shape[0], x0.device
    whole_cond, part_cond = penc(batch["part_tokens"], batch["whole_points"], batch["local_tokens"],
                                 batch["local_points"])
    keep = (torch.rand(B, generator=gen) >= cond_dropout).to(dev, whole_cond.dtype)[:, None, None]
    whole_cond, part_cond = whole_cond * keep, part_cond * keep  # dropped: zeros, as the uncond branch
    sigma = torch.sigmoid(torch.randn(B, generator=gen)).to(dev)  # logit-normal
    noise = _randn(x0.shape, gen, dev)
    x_t, target = flow_pair(x0, noise, sigma)
    pred = dit(x_t, sigma * NUM_TRAIN_TIMESTEPS, part_cond, whole_cond)
    return {"loss": F.mse_loss(pred, target), "x0_std": x0.std().detach()}


# ----------------------------------------------------------------------------- models / state


def make_models(stage: str, mcfg: dict, seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    if stage == "vae":
        return {"vae_encoder": VAEEncoder(mcfg["vae"]), "vae_decoder": VAEDecoder(VAEConfig.from_dict(mcfg["vae"]))}
    if stage == "dit":
        return {"part_encoder": PartEncoder(PartEncoderConfig.from_dict(mcfg["part_encoder"])),
                "transformer": DiT(DiTConfig.from_dict(mcfg["transformer"]))}
    raise ValueError(f"stage must be 'vae' or 'dit', got {stage!r}")


def state_path(out: Path, stage: str) -> Path:
    return Path(out) / f"{stage}_state.pt"


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the last checkpoint


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_frozen_vae_encoder(out: Path, device) -> tuple[VAEEncoder, dict]:
    p = state_path(out, "vae")
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: train the VAE first (python -m holopart_infer.export.train vae --out {out})")
    st = _load_state(p)
    enc = VAEEncoder(st["model_config"]["vae"])
    enc.load_state_dict(st["models"]["vae_encoder"])
    return enc.to(device).eval().requires_grad_(False), st


def init_from_checkpoint(models: dict[str, nn.Module], checkpoint_dir: str | Path) -> None:
    """Load a published-layout checkpoint's weights into a stage's models (strict: same config).

    The vae file holds the encoder (``encoder.*``, ``quant.*``) and the decoder; the
    other components map one to one."""
    from safetensors.torch import load_file

    from holopart_infer.model.checkpoint import WEIGHTS_NAME

    ck = Path(checkpoint_dir)
    if "vae_encoder" in models:
        sd = load_file(str(ck / "vae" / f"{WEIGHTS_NAME}.safetensors"))
        enc = {k: v for k, v in sd.items() if k.startswith(("encoder.", "quant."))}
        if not enc:
            raise ValueError(f"{ck}/vae has no encoder weights (encoder.*, quant.*): cannot warm-start the VAE")
        models["vae_encoder"].load_state_dict(enc)
        models["vae_decoder"].load_state_dict({k: v for k, v in sd.items() if k not in enc})
    else:
        for comp in ("part_encoder", "transformer"):
            models[comp].load_state_dict(load_file(str(ck / comp / f"{WEIGHTS_NAME}.safetensors")))


def train(stage: str, tc: TrainConfig, out: str | Path, resume: bool = True, pool=None,
          callback=None) -> list[dict]:
    """Train one stage up to ``tc.steps`` total steps; returns the loss history of this call.

    Resumes from ``OUT/<stage>_state.pt`` when it exists and ``resume``.
    ``pool``: prebuilt data (default: built/cached under OUT).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = torch.device(tc.device)
    mcfg = model_configs(tc.preset)
    models = make_models(stage, mcfg, tc.seed)
    for m in models.values():
        m.to(device).train()
    if stage == "vae" and tc.freeze_encoder:
        models["vae_encoder"].eval().requires_grad_(False)
    params = [p for m in models.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    step, history = 0, []
    sp = state_path(out, stage)
    if resume and sp.is_file():
        st = _load_state(sp)
        for k, m in models.items():
            m.load_state_dict(st["models"][k])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["gen_state"])
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["numpy_rng"])
        random.setstate(st["python_rng"])
        step = st["step"]
        log.info("%s: resumed from %s at step %d", stage, sp, step)
    elif tc.init_from:
        init_from_checkpoint(models, tc.init_from)
        log.info("%s: weights from %s (fresh optimizer, step 0)", stage, tc.init_from)
    enc = None
    if stage == "dit" and not state_path(out, "vae").is_file() and tc.init_from:
        enc = VAEEncoder(mcfg["vae"])  # no VAE run here yet: the latent space of init_from's encoder
        init_from_checkpoint({"vae_encoder": enc, "vae_decoder": VAEDecoder(VAEConfig.from_dict(mcfg["vae"]))},
                             tc.init_from)
        enc = enc.to(device).eval().requires_grad_(False)
        log.info("dit: frozen VAE encoder from %s", tc.init_from)
    elif stage == "dit":
        enc, _ = load_frozen_vae_encoder(out, device)
    if pool is None:
        pool = build_pool(tc, mcfg["part_encoder"]["num_tokens"], cache_dir=out)
    pool = subset_real(pool, tc.real_fraction)
    n = len(pool["surface"])
    weights = part_weights(pool, tc)
    keys = ("surface", "occ_points", "occ_labels") if stage == "vae" else \
        ("surface", "part_tokens", "whole_points", "local_tokens", "local_points")

    def save():
        _save_state(sp, {"stage": stage, "step": step, "models": {k: m.state_dict() for k, m in models.items()},
                         "optimizer": opt.state_dict(), "gen_state": gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                         "python_rng": random.getstate(), "train_config": dataclasses.asdict(tc),
                         "model_config": mcfg})

    logf = open(out / "log.jsonl", "a")
    t0 = time.time()
    try:
        end = min(tc.steps, tc.stop_at) if tc.stop_at > 0 else tc.steps
        while step < end:
            if weights is None:
                idx = torch.randint(n, (tc.batch_size,), generator=gen)
            else:
                idx = torch.multinomial(weights, tc.batch_size, replacement=True, generator=gen)
            for group in opt.param_groups:
                group["lr"] = learning_rate(tc, step)
            batch = {k: pool[k][idx].to(device) for k in keys}
            if stage == "vae":
                losses = vae_loss(models["vae_encoder"], models["vae_decoder"], batch, gen, tc.num_latents,
                                  tc.kl_weight)
            else:
                with torch.no_grad():
                    x0, _ = enc(batch["surface"], tc.num_latents)
                losses = dit_loss(models["part_encoder"], models["transformer"], x0, batch, gen, tc.cond_dropout)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            step += 1
            rec = {"stage": stage, "step": step, **{k: float(v.detach()) for k, v in losses.items()},
                   "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            if callback is not None:
                callback(rec)
            if step % tc.log_every == 0 or step == end:
                rec["elapsed_s"] = round(time.time() - t0, 2)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info("%s step %d: %s", stage, step,
                         " ".join(f"{k}={v:.4f}" for k, v in rec.items() if isinstance(v, float)))
            if step % tc.ckpt_every == 0 or step == end:
                save()
    finally:
        logf.close()
    return history


# ----------------------------------------------------------------------------- VAE check


@torch.no_grad()
def vae_reconstruction(out: str | Path, pool: dict, batch: int = 32) -> dict:
    """Reconstruction of pool parts by the trained VAE (posterior mean, logits > 0).

    Returns the mean occupancy accuracy over all targets and the IoU over the
    uniform targets (mean, std), per part averaged, and the part count.
    """
    enc, st = load_frozen_vae_encoder(Path(out), "cpu")
    mcfg, tcd = st["model_config"], st["train_config"]
    dec = VAEDecoder(VAEConfig.from_dict(mcfg["vae"]))
    dec.load_state_dict(st["models"]["vae_decoder"])
    dec.eval()
    accs, ious = [], []
    n_near = tcd["n_occ_near"]
    for s in range(0, len(pool["surface"]), batch):
        sl = slice(s, s + batch)
        mean, _ = enc(pool["surface"][sl], tcd["num_latents"])
        pred = dec(mean, pool["occ_points"][sl])[..., 0] > 0
        lab = pool["occ_labels"][sl] > 0.5
        accs.append((pred == lab).float().mean(1))
        pu, lu = pred[:, n_near:], lab[:, n_near:]
        inter, union = (pu & lu).sum(1).float(), (pu | lu).sum(1).float()
        ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    a, i = torch.cat(accs), torch.cat(ious)
    return {"step": st["step"], "parts": len(a), "accuracy": float(a.mean()), "iou_mean": float(i.mean()),
            "iou_std": float(i.std())}


@torch.no_grad()
def dit_heldout_loss(out: str | Path, state_files, pool: dict, batch: int = 32, seed: int = 0) -> list[dict]:
    """Flow-matching loss of DiT states on a held-out pool, with the same noise, sigmas and no
    condition dropout for every state (targets: OUT's frozen VAE encoder). One row per state."""
    enc, _ = load_frozen_vae_encoder(Path(out), "cpu")
    rows = []
    for sf in state_files:
        st = _load_state(Path(sf))
        mcfg, tcd = st["model_config"], st["train_config"]
        models = make_models("dit", mcfg, 0)
        for k, m in models.items():
            m.load_state_dict(st["models"][k])
            m.eval()
        gen = torch.Generator().manual_seed(seed)
        tot, n = 0.0, 0
        for s in range(0, len(pool["surface"]), batch):
            sl = slice(s, s + batch)
            b = {k: pool[k][sl] for k in ("surface", "part_tokens", "whole_points", "local_tokens", "local_points")}
            x0, _ = enc(b["surface"], tcd["num_latents"])
            loss = dit_loss(models["part_encoder"], models["transformer"], x0, b, gen, 0.0)["loss"]
            tot += float(loss) * len(x0)
            n += len(x0)
        rows.append({"state": str(sf), "step": st["step"], "parts": n, "loss": tot / max(n, 1)})
    return rows


# ----------------------------------------------------------------------------- export


def export_checkpoint(out: str | Path, checkpoint_dir: str | Path, overwrite: bool = False,
                      inference_defaults: dict | None = None) -> Path:
    """Write the trained weights (OUT/vae_state.pt + OUT/dit_state.pt) in the published layout.

    ``model_index.json`` gets ``inference_defaults``: the latent length and
    conditioning sample count the model was trained with, updated by
    ``inference_defaults`` (e.g. sampling options chosen on a validation set);
    ``holopart-infer export`` carries them into the model dir's manifest.
    """
    from holopart_infer.pipeline import CompletionOptions
    from .random_checkpoint import CLASS_NAMES, _save
    from holopart_infer.model.checkpoint import WEIGHTS_NAME

    out, ck = Path(out), Path(checkpoint_dir)
    states = {}
    for stage in ("vae", "dit"):
        p = state_path(out, stage)
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: train the {stage} stage first")
        states[stage] = _load_state(p)
    CompletionOptions.with_defaults(inference_defaults, "inference_defaults")  # fail before writing
    mcfg = states["dit"]["model_config"]
    if states["vae"]["model_config"]["vae"] != mcfg["vae"]:
        raise ValueError("the vae and dit stages were trained with different vae configs")
    if ck.exists() and any(ck.iterdir()) and not overwrite:
        raise FileExistsError(f"{ck} exists and is not empty; pass overwrite=True")
    ck.mkdir(parents=True, exist_ok=True)
    tensors = {
        "vae": {**states["vae"]["models"]["vae_encoder"], **states["vae"]["models"]["vae_decoder"]},
        "transformer": states["dit"]["models"]["transformer"],
        "part_encoder": states["dit"]["models"]["part_encoder"],
    }
    index = {"_class_name": "HoloPartPipeline"}
    for comp, sd in tensors.items():
        index[comp] = ["holopart", CLASS_NAMES[comp]]
        (ck / comp).mkdir(exist_ok=True)
        (ck / comp / "config.json").write_text(json.dumps({"_class_name": CLASS_NAMES[comp], **mcfg[comp]}, indent=2))
        _save({k: v.detach().cpu().float().numpy() for k, v in sd.items()}, ck / comp / f"{WEIGHTS_NAME}.safetensors",
              "fp32")
    (ck / "scheduler").mkdir(exist_ok=True)
    (ck / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": CLASS_NAMES["scheduler"], **mcfg["scheduler"]}, indent=2))
    tcd = states["dit"]["train_config"]
    index["holopart_mini"] = {"num_latents": tcd["num_latents"], "num_points": tcd["num_points"],
                              "vae_steps": states["vae"]["step"], "dit_steps": states["dit"]["step"]}
    defaults = {"latent_tokens": tcd["num_latents"], "num_points": tcd["num_points"], **(inference_defaults or {})}
    CompletionOptions.with_defaults(defaults, "inference_defaults")  # unknown names / bad values fail here
    index["inference_defaults"] = defaults
    # the frame the model was trained in (issue 22): synthetic objects in up_axis, real ones y-up;
    # `holopart-infer export` copies it into the manifest (absent means "+y")
    index["up_axis"] = "+" + tcd.get("up_axis", "z")
    (ck / "model_index.json").write_text(json.dumps(index, indent=2))
    if tcd.get("real_copies", 0) > 0:  # CC-BY needs attribution of the models trained on
        from .realdata import SPLIT_PATH, entries_by_key, write_attribution

        split = json.loads(Path(tcd.get("real_split") or SPLIT_PATH).read_text())
        keys = split["train"][:tcd["real_limit"]] if tcd.get("real_limit", 0) > 0 else split["train"]
        entries = entries_by_key()
        write_attribution([entries[k] for k in keys if k in entries], ck / "ATTRIBUTION.md")
    return ck


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m holopart_infer.export.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["vae", "dit", "export", "vae-eval", "dit-eval"],
                   help="vae-eval: reconstruction of held-out objects (--data-seed, --objects, --n-views) "
                        "by OUT's VAE")
    p.add_argument("--out", required=True, help="run folder (states, pool cache, log.jsonl)")
    p.add_argument("--checkpoint", help="export: published-layout folder to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--states", nargs="+", help="dit-eval: DiT state files to score on the held-out pool")
    p.add_argument("--inference-defaults", type=json.loads, default=None, metavar="JSON",
                   help='export: recommended options written to model_index.json, e.g. \'{"guidance": 2.0}\'')
    for f in dataclasses.fields(TrainConfig):
        if f.name == "templates":
            p.add_argument("--templates", nargs="+")
            continue
        if f.name == "view_choices":
            p.add_argument("--view-choices", nargs="+", type=int)
            continue
        if isinstance(f.default, bool):
            p.add_argument("--" + f.name.replace("_", "-"), action="store_true")
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.stage == "export":
        print(export_checkpoint(a.out, a.checkpoint or Path(a.out) / "checkpoint", overwrite=a.overwrite,
                                inference_defaults=a.inference_defaults))
        return 0
    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)}
    kw["templates"] = tuple(a.templates) if a.templates else None
    kw["view_choices"] = tuple(a.view_choices) if a.view_choices else None
    if a.stage in ("vae-eval", "dit-eval"):
        if a.threads > 0:
            torch.set_num_threads(a.threads)
        st = _load_state(state_path(Path(a.out), "vae"))
        held = {k: kw[k] for k in ("templates", "objects", "data_seed", "n_views", "view_choices", "up_axis",
                                   "augment", "real_copies", "real_limit", "real_subset", "workers")}
        tc = TrainConfig(**{**st["train_config"], **held})
        pool = build_pool(tc, st["model_config"]["part_encoder"]["num_tokens"], cache_dir=Path(a.out) / "heldout")
        if a.stage == "vae-eval":
            print(json.dumps(vae_reconstruction(a.out, pool)))
        else:
            for row in dit_heldout_loss(a.out, a.states or [state_path(Path(a.out), "dit")], pool):
                print(json.dumps(row))
        return 0
    if a.stage == "dit" and kw["lr"] == TrainConfig.lr:
        kw["lr"] = 5e-4
    train(a.stage, TrainConfig(**kw), a.out, resume=not a.no_resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
