"""TensorRT and cuda-python without TensorRT or a GPU: the fakes and manifest-like specs
the TensorRT backend's tests share (tests/runtime/engines/test_tensorrt_*.py,
test_conformance.py), and the skip of the tests that need the real thing.

Kept apart from tests/support.py, which holds what every test folder uses: these
fakes mirror TensorRT's and cuda-python's APIs at length and only the engine tests need them.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import sys
import types

import numpy as np
import pytest


# --------------------------------------------------------------------------- manifest-like specs
def graph_spec(inputs: dict, profiles: dict | None = None) -> dict:
    spec = {"file": "onnx/g.onnx", "inputs": {k: {"dtype": "float32", "shape": v} for k, v in inputs.items()},
            "outputs": {}}
    if profiles is not None:
        spec["profiles"] = profiles
    return spec


# What the exporter writes for the decoder query graph (export/graphs: B, T, Q axes).
VAE_QUERY = graph_spec(
    {"points": ["B", "Q", 3], "keys": ["B", 8, "T", 64], "values": ["B", 8, "T", 64]},
    {"points": {"min": [1, 1, 3], "opt": [8, 65536, 3], "max": [16, 262144, 3]},
     "keys": {"min": [1, 8, 1, 64], "opt": [8, 8, 2048, 64], "max": [16, 8, 2048, 64]},
     "values": {"min": [1, 8, 1, 64], "opt": [8, 8, 2048, 64], "max": [16, 8, 2048, 64]}})

GUIDED_STEP = graph_spec(
    {"latents": ["B", "T", 64], "timestep": [1], "dt": [1], "guidance": [1],
     "part_cond": ["B", "K", 512], "whole_cond": ["B", "K", 512]},
    {"latents": {"min": [1, 1, 64], "opt": [8, 2048, 64], "max": [16, 2048, 64]},
     "part_cond": {"min": [1, 512, 512], "opt": [8, 512, 512], "max": [16, 512, 512]},
     "whole_cond": {"min": [1, 512, 512], "opt": [8, 512, 512], "max": [16, 512, 512]}})



QUERY_INPUTS = {"points": (-1, -1, 3), "keys": (-1, 8, -1, 64), "values": (-1, 8, -1, 64)}


# --------------------------------------------------------------------------- parser errors
class FakeParserError:
    def __init__(self, desc, node=-1, name="", op="", code="UNSUPPORTED_NODE"):
        self._d, self._n, self._name, self._op = desc, node, name, op
        self._code = types.SimpleNamespace(name=code)

    def desc(self):
        return self._d

    def node(self):
        return self._n

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def code(self):
        return self._code


class FakeParser:
    def __init__(self, errors):
        self.errors = errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]



# --------------------------------------------------------------------------- a missing module
def hide_modules(monkeypatch, *modules):
    """Make ``modules`` unimportable for the test."""
    # importlib.util.find_spec returns None for a module set to None in sys.modules
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


# --------------------------------------------------------------------------- a fake tensorrt module (the builder)
class FakeTimingCache:
    def __init__(self, data: bytes):
        self.entries = set(filter(None, data.decode().split(","))) if data else set()

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return ",".join(sorted(self.entries)).encode()


class FakeConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles = [], {}, []
        self.timing_cache = None
        self.builder_optimization_level = None
        self.profiling_verbosity = None

    def set_flag(self, f):
        self.flags.append(f)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, p):
        self.profiles.append(p)

    def create_timing_cache(self, data):
        if data == b"corrupt":
            return None
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache

    def get_timing_cache(self):
        return self.timing_cache


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, mid, hi):
        self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))


def make_fake_trt(inputs: dict, *, parse_ok=True, plan=b"PLAN-BYTES", version="10.9.0.34"):
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.calls = types.SimpleNamespace()

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i):
            name = list(inputs)[i]
            return types.SimpleNamespace(name=name, shape=inputs[name])

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            trt.calls.builder = self

        def create_network(self, flags):
            trt.calls.network_flags = flags
            return Network()

        def create_builder_config(self):
            trt.calls.config = FakeConfig()
            return trt.calls.config

        def create_optimization_profile(self):
            trt.calls.profile = FakeProfile()
            return trt.calls.profile

        def build_serialized_network(self, network, config):
            config.timing_cache.entries.add("tactic-from-this-build")
            if plan is None:
                self.logger.log(ILogger.Severity.ERROR, "out of device memory while building")
            return plan

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            trt.calls.parsed = path
            return parse_ok

        num_errors = 1

        def get_error(self, i):
            return FakeParserError("No importer registered for op: Foo", 7, "/foo", "Foo")

    trt.ILogger = ILogger
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16")
    return trt


# --------------------------------------------------------------------------- engines on host memory (the runtime)
# A fake cuda-python runtime backed by host memory (ctypes) and fake TensorRT
# engines that compute with a Python function at the bound addresses: they
# exercise the TensorRT backend's address binding, shared scratch block,
# device-resident loop and chunking. tests/runtime/engines/test_conformance.py
# runs the exported ONNX graphs behind them (ONNX Runtime on the CPU).


class FakeCudart:
    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
    cudaStreamNonBlocking = 1

    def __init__(self):
        self.buffers, self.copies = {}, []

    def cudaMalloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMallocAsync(self, n, stream):
        return self.cudaMalloc(n)

    def cudaFree(self, ptr):
        del self.buffers[ptr]
        return (0,)

    def cudaFreeAsync(self, ptr, stream):
        return self.cudaFree(ptr)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.copies.append((kind, n))
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)


def _view(ptr, shape, dtype=np.float32):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


FAKE_TRT = types.SimpleNamespace(
    TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
    ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="user"))


class FakeContext:
    def __init__(self, eng):
        self.eng, self.shapes, self.addr, self.scratch, self.runs = eng, {}, {}, None, 0

    def set_device_memory(self, ptr, size):
        self.scratch = (ptr, size)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def get_tensor_shape(self, name):
        return self.eng.out_shape[name](self.shapes)

    def execute_async_v3(self, stream):
        assert self.scratch is not None, "scratch memory must be bound before running"
        self.runs += 1
        ins = {n: _view(self.addr[n], self.shapes[n]) for n in self.eng.ranges}
        for name, value in self.eng.compute(ins).items():
            _view(self.addr[name], value.shape)[...] = value
        return True


class FakeEngine:
    def __init__(self, ranges, out_shape, compute, memory):
        self.ranges, self.out_shape, self.compute = ranges, out_shape, compute
        self.device_memory_size_v2 = memory
        self.names = [*ranges, *out_shape]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_mode(self, name):
        return "in" if name in self.ranges else "out"

    def get_tensor_profile_shape(self, name, profile):
        return self.ranges[name]

    def create_execution_context(self, strategy):
        assert strategy == "user"
        self.context = FakeContext(self)
        return self.context


#: the fake engines' sizes: batch limit, latent tokens, latent channels, condition tokens and channels
B_MAX, T, C, K, D = 4, 6, 3, 5, 2


def _r(*dims):  # (min, opt, max) with "B" -> 1..B_MAX and ("Q", q) -> 1..q
    lo = tuple(1 if d in ("B", "Q") or isinstance(d, tuple) else d for d in dims)
    hi = tuple(B_MAX if d == "B" else d[1] if isinstance(d, tuple) else d for d in dims)
    return [lo, hi, hi]


def fake_engines(memory=None):
    """graph -> :class:`FakeEngine` of the five graphs, small and computing simple functions
    of their inputs (``memory``: graph -> scratch bytes, to override)."""
    memory = memory or {}
    same = lambda name: (lambda s: s[name])  # noqa: E731
    specs = {
        "part_encoder": FakeEngine(
            {"part_tokens": _r("B", K, 6), "whole_points": _r("B", 9, 7), "local_tokens": _r("B", K, 6),
             "local_points": _r("B", 9, 6)},
            {"whole_cond": same("part_tokens"), "part_cond": same("local_tokens")},
            lambda x: {"whole_cond": 2 * x["part_tokens"], "part_cond": 3 * x["local_tokens"]},
            memory.get("part_encoder", 100)),
        "guided_step": FakeEngine(
            {"latents": _r("B", T, C), "timestep": _r(1), "dt": _r(1), "guidance": _r(1),
             "part_cond": _r("B", K, D), "whole_cond": _r("B", K, D)},
            {"latents_next": same("latents")},
            lambda x: {"latents_next": x["latents"] + x["dt"][0] * (x["guidance"][0] * x["part_cond"].mean()
                                                                     + x["whole_cond"].mean() + x["timestep"][0])},
            memory.get("guided_step", 5000)),
        "vae_kv": FakeEngine(
            {"latents": _r("B", T, C)}, {"keys": lambda s: (s["latents"][0], 1, T, C),
                                         "values": lambda s: (s["latents"][0], 1, T, C)},
            lambda x: {"keys": x["latents"][:, None], "values": -x["latents"][:, None]},
            memory.get("vae_kv", 300)),
        "vae_query": FakeEngine(
            {"points": _r("B", ("Q", 4), 3), "keys": _r("B", 1, T, C), "values": _r("B", 1, T, C)},
            {"logits": lambda s: (*s["points"][:2], 1)},
            lambda x: {"logits": x["points"].sum(-1, keepdims=True) + x["keys"].mean(axis=(1, 2, 3))[:, None, None]},
            memory.get("vae_query", 200)),
        "dit": FakeEngine(
            {"latents": _r("B", T, C), "timestep": _r("B"), "part_cond": _r("B", K, D), "whole_cond": _r("B", K, D)},
            {"velocity": same("latents")},
            lambda x: {"velocity": x["latents"] * x["timestep"][:, None, None]},
            memory.get("dit", 9000)),
    }
    return specs


# --------------------------------------------------------------------------- real TensorRT (GPU)
def _trt_ready() -> str:
    from holopart_infer.engines import tensorrt as trt_backend

    ok, why = trt_backend.tensorrt_available()
    if not ok:
        return why
    try:
        from holopart_infer.engines import cuda

        cuda.device_info(0)
    except Exception as e:  # no driver / no GPU
        return f"no usable CUDA device ({e})"
    return ""


_TRT_SKIP = _trt_ready()
skip_without_trt = pytest.mark.skipif(bool(_TRT_SKIP), reason="TensorRT tests need tensorrt, cuda-python "
                                                              f"and a GPU: {_TRT_SKIP}")
