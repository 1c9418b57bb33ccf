"""The backend protocol, the shared parts of every backend, and the device-array base.

A backend runs the five graphs of a model (docs/contracts.md): numpy in,
numpy out, except that a device backend may return device-resident arrays
(:class:`DeviceArray`) from ``encode``, ``guided_step`` and ``decoder_kv``;
they go straight back into the next call and ``numpy.asarray`` copies one to
the host. Besides the five calls a backend says what it is (``name``,
``device``, ``precision``, ``path``), what the model is (``config``,
``defaults``, ``num_tokens``, ``latent_channels``) and releases its resources
on :meth:`Backend.close`. :class:`BackendBase` implements the derived parts.
An optional capability is a protocol of its own, checked with ``isinstance``:
:class:`DeviceResidentDecoder` (decoder queries that stay on the device).

Which backends exist and how one is chosen is :mod:`holopart_infer.engines.registry`'s
business, not this module's. Nothing here imports an engine library.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str  # registry name: "onnxruntime", "tensorrt", "torch"
    device: str  # "cpu", "cuda" or "cuda:N"
    precision: str  # "fp32", "fp16" or "bf16": what the graphs compute in
    path: Path | None  # the model dir or checkpoint dir it runs

    @property
    def config(self) -> dict:
        """Component configs: {"transformer", "vae", "part_encoder", "scheduler"}."""

    @property
    def defaults(self) -> dict:
        """The model's recommended CompletionOptions (manifest ``defaults`` /
        model_index ``inference_defaults``); {} when it has none."""

    @property
    def num_tokens(self) -> int:
        """The part encoder's num_tokens (K, condition tokens per part)."""

    @property
    def latent_channels(self) -> int:
        """Channels C of the latents (B, T, C)."""

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

    def close(self) -> None:
        """Release sessions, engines and device memory (idempotent)."""


@runtime_checkable
class DeviceResidentDecoder(Protocol):
    """Optional: a backend whose decoder takes query points already on its device and
    returns logits there (the torch backend), so extraction keeps its grids, points
    and logits on the device (:mod:`holopart_infer.extraction.resident`). The pipeline checks
    ``isinstance(backend, DeviceResidentDecoder)``; other backends simply lack it.
    """

    torch_device: Any  # the torch.device the decoder runs on

    def query_on_device(self, points, kv) -> Any:
        """-> occupancy logits (P, Q, 1) on ``torch_device`` for ``points``, a (P, Q, 3)
        tensor on ``torch_device``; ``kv`` as from :meth:`Backend.decoder_kv`."""


class BackendBase:
    """What every backend derives the same way from ``config``; a no-op ``close``;
    use as a context manager (``with open_backend(...) as b:``)."""

    name: str = ""
    path: Path | None = None

    @property
    def defaults(self) -> dict:
        return {}

    @property
    def num_tokens(self) -> int:
        return int(self.config["part_encoder"]["num_tokens"])  # type: ignore[attr-defined]

    @property
    def latent_channels(self) -> int:
        return int(self.config["transformer"]["in_channels"])  # type: ignore[attr-defined]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DeviceArray:
    """Base of the device-resident arrays backends hand back (ONNX Runtime's
    OrtValue, cuda-python buffers, torch tensors).

    A subclass implements :meth:`numpy` (a host copy) and ``shape``/``dtype``;
    this base makes ``numpy.asarray(x)`` work on all of them, so host code (the
    sampler, golden checks) never needs to know which backend produced an array.
    """

    __slots__ = ()

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"
