"""Which backends exist, what each runs, and how one is chosen: the one table.

:func:`open_backend` is the single entry every caller uses (``holopart_infer.load``,
the CLI's ``run``/``verify``, the benchmarks)::

    backend = open_backend(path, backend="auto", device="auto", precision=None, **options)

It reads what kind of folder ``path`` is (an exported *model dir* with
manifest.json, or a *checkpoint dir* with model_index.json), keeps the backends
that run that kind, and resolves (backend, device, precision):

* ``backend="auto"`` walks the devices (CUDA first when ``device="auto"``) and,
  on each, the backends by ``priority``; it takes the first one available and
  logs what it picked and why the better ones were skipped.
* An explicit backend or device that cannot be honoured raises
  :class:`~holopart_infer.errors.BackendUnavailable` with the install hint (or
  :class:`~holopart_infer.errors.InputError` for a backend that does not run
  this kind of folder). Nothing falls back silently.
* ``precision=None`` takes :attr:`BackendSpec.default_precision` for the device,
  the one place where default precisions are written down.

Backend modules (and their engine libraries: onnxruntime, tensorrt, torch) are
imported only when their backend is opened; availability checks use
``importlib.util.find_spec`` and import nothing heavy, except the torch check
on CUDA, which runs only for a checkpoint dir (torch is then the only candidate).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from holopart_infer.errors import BackendUnavailable, InputError, InputFileNotFound, missing_extra

log = logging.getLogger("holopart_infer")

MODEL_DIR, CHECKPOINT_DIR = "model", "checkpoint"
#: the values of ``device=`` (and ``--device``)
DEVICES = ("auto", "cpu", "cuda")
#: every precision a graph or checkpoint can compute in: the one list (manifest,
#: TensorRT builder, CLI choices import it from here)
PRECISIONS = ("fp32", "fp16", "bf16")

ORT_GPU_HINT = ("ONNX Runtime's CUDA provider needs the GPU build: "
                "pip uninstall onnxruntime; pip install onnxruntime-gpu")
TRT_HINT = "pip install 'holopart-infer[tensorrt]' (needs an NVIDIA GPU and driver)"
TORCH_HINT = "pip install 'holopart-infer[torch]'"


# --------------------------------------------------------------------------- availability checks

def _ort_available(device: str) -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "the Python package 'onnxruntime' is not installed (pip install onnxruntime)"
    if device == "cpu":
        return True, "CPUExecutionProvider"
    import onnxruntime as ort  # light: no session is created

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True, "CUDAExecutionProvider"
    return False, f"CUDAExecutionProvider is not in this onnxruntime build ({ort.get_available_providers()})"


def _trt_available(device: str) -> tuple[bool, str]:
    if device == "cpu":
        return False, "TensorRT runs on CUDA devices only"
    return importlib.import_module("holopart_infer.engines.tensorrt").available(device)


def _torch_available(device: str) -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, f"the Python package 'torch' is not installed ({TORCH_HINT})"
    if device == "cpu":
        return True, "torch on CPU"
    import torch  # only reached for a checkpoint dir on CUDA, where torch is the backend

    if torch.cuda.is_available():
        return True, f"torch on {torch.cuda.get_device_name(0)}"
    return False, "torch.cuda.is_available() is False (CPU-only torch build or no GPU)"


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class BackendSpec:
    """One row of the registration table.

    Attributes:
        name: what users pass as ``backend=``.
        runs: MODEL_DIR or CHECKPOINT_DIR: the kind of folder it opens.
        module: "package.module:function" opened as ``function(path, device=, precision=, **options)``;
            imported only when the backend is opened.
        priority: higher wins for ``backend="auto"`` on the same device.
        devices: devices it can run on, in the order ``device="auto"`` tries them.
        default_precision: device -> precision when the caller gives none; None
            means "the model dir's own precision".
        options: keyword options this backend accepts beyond path/device/precision.
        available: device -> (ok, reason).
        install_hint: what to install when it is not available.
    """

    name: str
    runs: str
    module: str
    priority: int
    devices: tuple[str, ...]
    default_precision: dict[str, str | None]
    options: tuple[str, ...]
    available: Callable[[str], tuple[bool, str]] = field(repr=False, compare=False)
    install_hint: str = ""

    def opener(self) -> Callable:
        module, attr = self.module.split(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("tensorrt", MODEL_DIR, "holopart_infer.engines.tensorrt:open_backend", priority=30,
                devices=("cuda",), default_precision={"cuda": "fp16"},
                options=("engine_cache", "max_batch", "max_query_points", "optimization_level", "workspace",
                         "verify_hashes"),
                available=_trt_available, install_hint=TRT_HINT),
    BackendSpec("onnxruntime", MODEL_DIR, "holopart_infer.engines.onnxruntime:open_backend", priority=20,
                devices=("cuda", "cpu"), default_precision={"cuda": None, "cpu": None},
                options=("providers", "session_options", "threads", "verify_hashes"),
                available=_ort_available, install_hint=ORT_GPU_HINT),
    # the optimized PyTorch path; the faithful model (holopart_infer.export.torch_backend) is
    # the export side's reference for `verify`, not a runtime backend
    BackendSpec("torch", CHECKPOINT_DIR, "holopart_infer.engines.pytorch:open_backend", priority=10,
                devices=("cuda", "cpu"), default_precision={"cuda": "bf16", "cpu": "fp32"},
                options=("graph",), available=_torch_available, install_hint=TORCH_HINT),
)}


def backend_names(kind: str | None = None) -> tuple[str, ...]:
    """``("auto", *registered names)``: the valid values of ``backend=`` (CLI choices);
    with ``kind`` (MODEL_DIR / CHECKPOINT_DIR) only the backends that run that kind of folder."""
    return ("auto", *(n for n, s in BACKENDS.items() if kind is None or s.runs == kind))


def model_kind(path: str | os.PathLike) -> str:
    """MODEL_DIR (manifest.json) or CHECKPOINT_DIR (model_index.json).

    Raises:
        InputFileNotFound: ``path`` does not exist.
        InputError: it is neither.
    """
    path = Path(path)
    if (path / "manifest.json").is_file():
        return MODEL_DIR
    if (path / "model_index.json").is_file():
        return CHECKPOINT_DIR
    if not path.exists():
        raise InputFileNotFound(f"model path {path} does not exist")
    raise InputError(
        f"{path} is neither an exported model dir (manifest.json) nor a checkpoint dir "
        "(model_index.json). Pass the folder made by `holopart-infer export`, or a HoloPart "
        "checkpoint in the published layout.")


def backend_status(device: str, kind: str | None = None) -> dict[str, tuple[bool, str]]:
    """name -> (available on ``device``, reason) for every registered backend (of ``kind``)."""
    return {n: s.available(device) for n, s in BACKENDS.items()
            if (kind is None or s.runs == kind) and device in s.devices}


def _check_args(backend: str, device: str, precision: str | None) -> None:
    if backend not in BACKENDS and backend != "auto":
        raise InputError(f"backend must be one of {', '.join(backend_names())}, got {backend!r}")
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")


def resolve(kind: str, backend: str = "auto", device: str = "auto") -> tuple[BackendSpec, str]:
    """(spec, device) for a folder of ``kind``; see the module docstring for the rules."""
    _check_args(backend, device, None)
    if backend != "auto":
        spec = BACKENDS[backend]
        if spec.runs != kind:
            if spec.runs == MODEL_DIR:
                raise InputError(f"backend {backend!r} runs an exported model dir; this is a checkpoint. Run "
                                 "`holopart-infer export CHECKPOINT MODEL_DIR` first, or use backend='torch'.")
            raise InputError(f"backend {backend!r} runs a checkpoint dir; this is an exported model dir")
        candidates = [spec]
    else:
        candidates = sorted((s for s in BACKENDS.values() if s.runs == kind), key=lambda s: -s.priority)
    devices = [device] if device != "auto" else ["cuda", "cpu"]
    skipped: list[str] = []
    for dev in devices:
        for spec in candidates:
            if dev not in spec.devices:
                skipped.append(f"{spec.name} on {dev}: it runs on {'/'.join(spec.devices)} only")
                continue
            ok, reason = spec.available(dev)
            if ok:
                if backend == "auto" or device == "auto":
                    log.info("holopart_infer: picked backend %s on %s (%s)%s", spec.name, dev, reason,
                             f"; skipped {'; '.join(skipped)}" if skipped else "")
                return spec, dev
            skipped.append(f"{spec.name} on {dev}: {reason}")
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        raise missing_extra("torch", "torch", "running a checkpoint directly")
    hints = sorted({s.install_hint for s in candidates if s.install_hint})
    other = [d for d in DEVICES if d not in ("auto", device)]
    asked = (f" Device {device!r} was asked for explicitly: pass --device {other[0]} (device={other[0]!r}) or "
             "--device auto to run where this machine can." if device != "auto" and other else "")
    raise BackendUnavailable(f"no backend can run this {kind} dir on device {device!r} "
                             f"(backend {backend!r}): {'; '.join(skipped)}.{asked} {' / '.join(hints)}".strip())


def open_backend(path: str | os.PathLike, backend: str = "auto", device: str = "auto",
                 precision: str | None = None, *, verify_integrity: bool = True, **options):
    """Open ``path`` on the backend that (backend, device, precision) resolve to.

    Args:
        path: an exported model dir (manifest.json) or a checkpoint dir (model_index.json).
        backend: "auto" or a name in :data:`BACKENDS` ("tensorrt", "onnxruntime", "torch").
        device: "auto", "cpu" or "cuda".
        precision: "fp32"/"fp16"/"bf16"; None takes the backend's default for the device
            (torch: fp32 on CPU, bf16 on CUDA; TensorRT: fp16; ONNX Runtime: the model dir's,
            which is also the only precision it accepts).
        verify_integrity: a model dir's graph files are checked against the sha256
            in its manifest (cheap on re-loads; every model-dir backend does it);
            False skips that. A checkpoint's weights are always checked for NaN/inf.
        **options: backend options (:attr:`BackendSpec.options`): ``engine_cache``
            (TensorRT), ``graph`` ("eager", "cuda_graph", "compile": torch), ``threads``
            (ONNX Runtime's intra-op threads), ...
            An option the resolved backend does not take is an InputError (also
            when "auto" picked it: an explicit request is never dropped silently).
            Options whose value is None are ignored.

    Returns:
        A backend (:class:`~holopart_infer.engines.base.Backend`): ``name``, ``device``,
        ``precision``, ``path``, ``config``, ``defaults``, ``close()``.

    Raises:
        InputError: a bad argument, or a backend that does not run this kind of folder.
        InputFileNotFound: ``path`` does not exist.
        BackendUnavailable: the requested backend/device cannot run here (with the install hint).
    """
    _check_args(backend, device, precision)
    path = Path(path)
    kind = model_kind(path)
    spec, dev = resolve(kind, backend, device)
    given = {k: v for k, v in options.items() if v is not None}
    if kind == MODEL_DIR:
        given.setdefault("verify_hashes", bool(verify_integrity))
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        raise InputError(f"backend {spec.name!r} on {dev}{' (picked by auto)' if backend == 'auto' else ''} takes "
                         f"the options {', '.join(spec.options) or '(none)'}; got {', '.join(unknown)}. Ask for "
                         "the backend the option belongs to, or leave the option out.")
    prec = precision if precision is not None else spec.default_precision.get(dev)
    be = spec.opener()(path, device=dev, precision=prec, **given)
    log.info("holopart_infer: backend %s on %s (%s) from %s", be.name, be.device, be.precision, path)
    return be
