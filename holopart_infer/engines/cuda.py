"""Small cuda-python helpers for the TensorRT backend: stream, device buffers, scratch.

cuda-python is imported lazily, only when a GPU backend is used. Every runtime
call returns ``(cudaError_t, *values)``; :func:`check` turns a failure into an
:class:`~holopart_infer.errors.EngineError` that names the call.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from holopart_infer.errors import EngineError, missing_extra
from holopart_infer.engines.base import DeviceArray

log = logging.getLogger("holopart_infer")

_RUNTIME: Any = None


def runtime(extra: str = "tensorrt"):
    """The cuda-python runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` for cuda-python < 12.6).

    Raises:
        BackendUnavailable: cuda-python is not installed (with the pip hint for ``extra``).
    """
    global _RUNTIME
    if _RUNTIME is None:
        if importlib.util.find_spec("cuda") is None:
            raise missing_extra("cuda-python", extra, "Running on the GPU")
        if importlib.util.find_spec("cuda.bindings") is not None:
            _RUNTIME = importlib.import_module("cuda.bindings.runtime")
        else:  # pragma: no cover - older cuda-python layout
            _RUNTIME = importlib.import_module("cuda.cudart")
    return _RUNTIME


def check(result, what: str):
    """Unwrap a cuda-python ``(err, *values)`` result; raise EngineError on failure.

    Returns None, the single value, or a tuple of values.
    """
    rt = runtime()
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        try:
            msg = rt.cudaGetErrorString(err)[1].decode(errors="replace")
        except Exception:  # the error text is a nicety; never mask the real error
            msg = ""
        raise EngineError(f"CUDA call {what} failed: {name} {msg}".rstrip())
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory: int


def device_info(device: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of CUDA device ``device``."""
    rt = runtime()
    prop = check(rt.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(device, str(name).strip(), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


def set_device(device: int) -> None:
    rt = runtime()
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not 0 <= device < count:
        raise EngineError(f"CUDA device {device} does not exist: {count} device(s) visible "
                          "(check CUDA_VISIBLE_DEVICES or pass device=0)")
    check(rt.cudaSetDevice(device), f"cudaSetDevice({device})")


class Stream:
    """One CUDA stream; every copy and every engine launch of a backend goes on it."""

    def __init__(self):
        rt = runtime()
        self._stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        return int(self._stream)

    @property
    def raw(self):
        return self._stream

    def synchronize(self) -> None:
        check(runtime().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            check(runtime().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class DeviceBuffer:
    """``nbytes`` of device memory, freed by :meth:`free` or on collection.

    With a ``stream`` the memory is stream-ordered (cudaMallocAsync/cudaFreeAsync):
    freeing waits for the work already queued on that stream, so a temporary
    input may be dropped right after the launch that reads it. Without one it is
    plain cudaMalloc/cudaFree.
    """

    def __init__(self, nbytes: int, stream: Stream | None = None):
        self.nbytes = int(nbytes)
        self.ptr = 0
        self._stream = stream
        if self.nbytes > 0:
            rt = runtime()
            if stream is not None:
                self.ptr = int(check(rt.cudaMallocAsync(self.nbytes, stream.raw),
                                     f"cudaMallocAsync({self.nbytes} bytes)"))
            else:
                self.ptr = int(check(rt.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            rt = runtime()
            if self._stream is not None and self._stream.raw is not None:
                check(rt.cudaFreeAsync(ptr, self._stream.raw), "cudaFreeAsync")
            else:
                # cudaFree waits for the device; also right after the stream was closed.
                check(rt.cudaFree(ptr), "cudaFree")

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the driver frees it anyway
            pass


class DeviceTensor(DeviceArray):
    """A dense array in device memory: shape, numpy dtype and a :class:`DeviceBuffer`.

    ``np.asarray(t)`` copies it to the host (synchronizing its stream), so code
    written for numpy arrays (the sampler loop, golden checks) accepts it.
    """

    def __init__(self, shape: Sequence[int], dtype, stream: Stream, buffer: DeviceBuffer | None = None):
        self._shape = tuple(int(s) for s in shape)
        self._dtype = np.dtype(dtype)
        self.stream = stream
        need = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if buffer is None:
            buffer = DeviceBuffer(need, stream)
        elif buffer.nbytes < need:
            raise EngineError(f"device buffer of {buffer.nbytes} bytes is too small for {self.shape} {self.dtype}")
        self.buffer = buffer

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def from_host(cls, array: np.ndarray, stream: Stream) -> "DeviceTensor":
        array = np.ascontiguousarray(array)
        t = cls(array.shape, array.dtype, stream)
        t.copy_from(array)
        return t

    def copy_from(self, array: np.ndarray) -> None:
        """Host -> device on the tensor's stream. ``array`` must match shape and dtype."""
        array = np.ascontiguousarray(array)
        if array.shape != self.shape or array.dtype != self.dtype:
            raise EngineError(f"host array {array.shape} {array.dtype} does not match device tensor "
                              f"{self.shape} {self.dtype}")
        if self.nbytes:
            rt = runtime()
            # From pageable memory the copy is staged before the call returns, so
            # `array` may be released afterwards.
            check(rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, self.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream.raw),
                  "cudaMemcpyAsync(host->device)")

    def to_host(self) -> np.ndarray:
        """Device -> host copy; waits for the stream (all earlier work on it included)."""
        out = np.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            rt = runtime()
            check(rt.cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream.raw),
                  "cudaMemcpyAsync(device->host)")
        self.stream.synchronize()
        return out

    def numpy(self) -> np.ndarray:
        return self.to_host()

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"


class ScratchMemory:
    """One device allocation shared by every execution context of a backend.

    TensorRT contexts created with user-managed memory need activation scratch
    only while they run; contexts that run one after another on one stream can
    share a single block sized to the largest requirement.
    """

    ALIGNMENT = 256  # cudaMalloc returns at least 256-byte aligned pointers

    def __init__(self):
        self.buffer: DeviceBuffer | None = None

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes if self.buffer else 0

    def ensure(self, nbytes: int) -> tuple[int, int]:
        """Grow to at least ``nbytes``; return (pointer, size). Growing frees the old block,
        so callers must re-bind contexts (and the stream must be idle)."""
        nbytes = -(-max(int(nbytes), 1) // self.ALIGNMENT) * self.ALIGNMENT
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if self.buffer is not None:
                self.buffer.free()
            log.info("TensorRT scratch memory: %.1f MiB", nbytes / 2**20)
            self.buffer = DeviceBuffer(nbytes)
        return self.buffer.ptr, self.buffer.nbytes

    def free(self) -> None:
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None
