"""Golden check: recompute every output of a golden folder with a backend.

A golden folder holds ``weights/`` (a checkpoint in the published layout) and
``cases.npz`` (inputs and the original implementation's outputs; see
shared/golden/README.md). Each output is compared by relative error:
max |ours - expected| / max |expected|.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from holopart_infer.errors import InputError, InputFileNotFound
from holopart_infer.model.sampler import sample, sigmas, timesteps
from holopart_infer.model.tokens import select_tokens

TOLERANCE = 1e-4

REQUIRED_ARRAYS = (
    "fps.points", "fps.sampled",
    "part_encoder.part", "part_encoder.whole", "part_encoder.part_local",
    "part_encoder.whole_cond", "part_encoder.part_cond",
    "dit.hidden_states", "dit.timestep", "dit.encoder_hidden_states", "dit.encoder_hidden_states_2", "dit.out",
    "scheduler.timesteps_50", "scheduler.sigmas_50",
    "vae_decode.latents", "vae_decode.points", "vae_decode.logits",
    "sample.noise", "sample.steps", "sample.guidance_scale", "sample.latents",
    "sample.grid_points", "sample.grid_logits",
)


@dataclass
class CheckResult:
    name: str
    rel_error: float
    ok: bool


def relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if ours.shape != expected.shape:
        return float("inf")
    scale = np.abs(expected).max() if expected.size else 0.0
    err = np.abs(ours - expected).max() if expected.size else 0.0
    if not np.isfinite(err):
        return float("inf")
    return float(err / scale) if scale > 0 else float(err)


def load_cases(golden_dir: str | Path) -> dict[str, np.ndarray]:
    """Read and validate ``cases.npz`` of a golden folder."""
    golden_dir = Path(golden_dir)
    if not golden_dir.is_dir():
        raise InputFileNotFound(f"golden folder {golden_dir} does not exist")
    path = golden_dir / "cases.npz"
    if not path.is_file():
        raise InputFileNotFound(f"{path}: missing (a golden folder holds weights/ and cases.npz)")
    try:
        with np.load(path) as z:
            cases = {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises several types for a damaged archive
        raise InputError(f"{path}: unreadable npz archive: {e}") from e
    missing = [k for k in REQUIRED_ARRAYS if k not in cases]
    if missing:
        raise InputError(f"{path}: missing array(s): {', '.join(missing)}")
    return cases


def run_checks(backend, cases: dict[str, np.ndarray], scheduler_config: dict,
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Recompute every golden output with ``backend``; return one result per output."""
    results: list[CheckResult] = []

    def check(name: str, ours) -> None:
        r = relative_error(ours, cases[name])
        res = CheckResult(name, r, r <= TOLERANCE)
        results.append(res)
        if on_result:
            on_result(res)

    c = cases
    K = c["fps.sampled"].shape[1]
    check("fps.sampled", select_tokens(c["fps.points"], K, seed=0))

    Kp = c["part_encoder.whole_cond"].shape[1]
    part_tok = select_tokens(c["part_encoder.part"], Kp, seed=0)
    local_tok = select_tokens(c["part_encoder.part_local"], Kp, seed=0)
    whole_cond, part_cond = backend.encode(part_tok, c["part_encoder.whole"], local_tok, c["part_encoder.part_local"])
    check("part_encoder.whole_cond", whole_cond)
    check("part_encoder.part_cond", part_cond)

    check("dit.out", backend.dit(c["dit.hidden_states"], c["dit.timestep"],
                                 c["dit.encoder_hidden_states"], c["dit.encoder_hidden_states_2"]))

    shift = float(scheduler_config.get("shift", 1.0))
    n_train = int(scheduler_config.get("num_train_timesteps", 1000))
    n = c["scheduler.timesteps_50"].shape[0]
    check("scheduler.timesteps_50", timesteps(n, shift, n_train))
    check("scheduler.sigmas_50", sigmas(n, shift))

    kv = backend.decoder_kv(c["vae_decode.latents"])
    check("vae_decode.logits", backend.decoder_query(c["vae_decode.points"], kv))

    latents = sample(backend.guided_step, c["sample.noise"].astype(np.float32), part_cond, whole_cond,
                     steps=int(c["sample.steps"]), guidance=float(c["sample.guidance_scale"]),
                     shift=shift, num_train_timesteps=n_train)
    latents = np.asarray(latents)
    check("sample.latents", latents)
    kv = backend.decoder_kv(latents)
    check("sample.grid_logits", backend.decoder_query(c["sample.grid_points"], kv))
    return results
