"""Rectified-flow schedule and the guided Euler loop (spec section 6).

The loop is written against a backend's ``guided_step`` so every backend (torch,
ONNX Runtime, TensorRT) shares one definition of the schedule.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from holopart_infer.errors import InputError

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 3.5


def sigmas(steps: int, shift: float = 1.0) -> np.ndarray:
    """sigma_i = 1 - i/n (i < n), shifted s*sig / (1 + (s-1)*sig), then a final 0: (n+1,) float32."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if not shift > 0:
        raise InputError(f"scheduler shift must be > 0, got {shift}")
    s = 1.0 - np.arange(steps, dtype=np.float64) / steps
    s = shift * s / (1.0 + (shift - 1.0) * s)
    return np.append(s, 0.0).astype(np.float32)


def timesteps(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """Model timesteps t_i = num_train_timesteps * sigma_i, (n,) float32."""
    return (sigmas(steps, shift)[:-1].astype(np.float64) * num_train_timesteps).astype(np.float32)


class GuidedStep(Protocol):
    def __call__(self, latents, timestep: float, dt: float, guidance: float, part_cond, whole_cond): ...


def sample(guided_step: GuidedStep, noise, part_cond, whole_cond, *, steps: int = DEFAULT_STEPS,
           guidance: float = DEFAULT_GUIDANCE, shift: float = 1.0, num_train_timesteps: int = 1000,
           callback: Callable[[int, int], None] | None = None):
    """Run the guided Euler loop from ``noise``.

    ``guided_step(x, t, dt, g, part_cond, whole_cond)`` returns
    ``x + dt * (v_u + g * (v_c - v_u))`` (or ``x + dt * v_c`` when g <= 1), where
    dt = sigma_i - sigma_{i+1}. Latents may live on a device: the loop never
    touches them.
    """
    sig = sigmas(steps, shift)
    x = noise
    for i in range(steps):
        x = guided_step(x, float(sig[i]) * num_train_timesteps, float(sig[i] - sig[i + 1]),
                        float(guidance), part_cond, whole_cond)
        if callback is not None:
            callback(i + 1, steps)
    return x


def euler_update(x: np.ndarray, v_uncond: np.ndarray | None, v_cond: np.ndarray, dt: float,
                 guidance: float) -> np.ndarray:
    """Guidance combination and Euler update in fp32, cast back to x's dtype."""
    v = v_cond.astype(np.float32)
    if v_uncond is not None and guidance > 1.0:
        vu = v_uncond.astype(np.float32)
        v = vu + np.float32(guidance) * (v - vu)
    return (x.astype(np.float32) + np.float32(dt) * v).astype(x.dtype)
