"""The backend protocol and the backend registry.

A backend runs the five graphs of a model directory (docs/contracts.md):
numpy in, numpy out, except that a device backend may return device-resident
tensors from :meth:`Backend.guided_step` and :meth:`Backend.decoder_kv` (they
go straight back into the next call; ``numpy.asarray`` copies them to the host).

Backends are registered by name with a factory and an availability check, so
``backend="auto"`` can pick the best one and say why the others were skipped,
and an explicit request that cannot be honoured raises with the install hint.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from holopart_infer.errors import BackendUnavailable, InputError


@runtime_checkable
class Backend(Protocol):
    name: str

    @property
    def num_tokens(self) -> int:
        """The part encoder's num_tokens (K, condition tokens per part)."""

    @property
    def config(self) -> dict:
        """Component configs: {"transformer", "vae", "part_encoder", "scheduler"}."""

    def encode(self, part_tokens, whole_points, local_tokens, local_points) -> tuple[Any, Any]:
        """-> (whole_cond, part_cond), each (B, K, D)."""

    def dit(self, latents, timestep, part_cond, whole_cond) -> Any:
        """-> velocity (B, T, C)."""

    def guided_step(self, latents, t: float, dt: float, guidance: float, part_cond, whole_cond) -> Any:
        """-> latents + dt * (v_u + g (v_c - v_u)) (B, T, C); v_c alone when g <= 1."""

    def decoder_kv(self, latents) -> Any:
        """-> opaque key/value state of the decoder's query block."""

    def decoder_query(self, points, kv) -> Any:
        """-> occupancy logits (B, Q, 1), positive inside."""


@dataclass(frozen=True)
class BackendEntry:
    name: str
    factory: str  # "module:attribute", imported only when the backend is used
    available: Callable[[str], tuple[bool, str]]  # device -> (ok, reason when not ok)
    priority: int  # higher wins for backend="auto"
    install_hint: str

    def load_factory(self) -> Callable[..., Backend]:
        module, attr = self.factory.split(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, BackendEntry] = {}


def register_backend(name: str, factory: str, available: Callable[[str], tuple[bool, str]],
                     priority: int = 0, install_hint: str = "") -> None:
    """Register (or replace) a backend under ``name``."""
    _REGISTRY[name] = BackendEntry(name, factory, available, priority, install_hint)


def registered_backends() -> dict[str, BackendEntry]:
    return dict(_REGISTRY)


def backend_status(device: str) -> dict[str, tuple[bool, str]]:
    """name -> (available on ``device``, reason) for every registered backend."""
    return {name: e.available(device) for name, e in _REGISTRY.items()}


def get_backend(name: str, device: str) -> BackendEntry:
    """The entry of an explicitly requested backend, or BackendUnavailable / InputError."""
    if name not in _REGISTRY:
        raise InputError(f"unknown backend {name!r}; registered backends: {', '.join(sorted(_REGISTRY))}")
    entry = _REGISTRY[name]
    ok, reason = entry.available(device)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} on device {device!r} is not available: {reason}. "
                                 f"{entry.install_hint}".strip())
    return entry


def pick_backend(device: str) -> BackendEntry:
    """The highest-priority available backend for ``device`` (raises if there is none)."""
    status = backend_status(device)
    usable = [e for n, e in _REGISTRY.items() if status[n][0]]
    if not usable:
        reasons = "; ".join(f"{n}: {r}" for n, (_, r) in status.items())
        raise BackendUnavailable(f"no backend can run on device {device!r} ({reasons})")
    return max(usable, key=lambda e: e.priority)


# --------------------------------------------------------------------------- onnxruntime
ORT_GPU_HINT = ("ONNX Runtime's CUDA provider needs the GPU build: "
                "pip uninstall onnxruntime; pip install onnxruntime-gpu")


def _ort_available(device: str) -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "the Python package 'onnxruntime' is not installed (pip install onnxruntime)"
    if device == "cpu":
        return True, "CPUExecutionProvider"
    if device.split(":")[0] == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return True, "CUDAExecutionProvider"
        return False, f"CUDAExecutionProvider is not in this onnxruntime build ({ort.get_available_providers()})"
    return False, f"unknown device {device!r} (use 'cpu' or 'cuda')"


register_backend("onnxruntime", "holopart_infer.engines.onnxruntime:load", _ort_available, priority=10, install_hint=ORT_GPU_HINT)
