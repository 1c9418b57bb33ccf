"""TensorRTBackend: the backend protocol on TensorRT engines built (and cached) from a model dir."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from holopart_infer.engines.base import BackendBase
from holopart_infer.engines.cache import EngineCache, onnx_digest
from holopart_infer.engines.tensorrt.builder import (
    OPTIMIZATION_LEVEL, _make_logger, build_engine, require_tensorrt, tensorrt_available,
)
from holopart_infer.engines.tensorrt.fusion import FusionReport, attention_fused, engine_layer_information
from holopart_infer.engines.tensorrt.keys import engine_key_fields, timing_cache_path
from holopart_infer.engines.tensorrt.profiles import (
    DEFAULT_QUERY_POINTS, ShapeRange, compute_profiles, profile_overrides,
)
from holopart_infer.errors import EngineError, InputError, ModelDirError, ShapeError
from holopart_infer.engines.registry import PRECISIONS
from holopart_infer.engines.signatures import check_feeds, feed_error, model_dims, shape_str

log = logging.getLogger("holopart_infer")

# --------------------------------------------------------------------------- runtime

def _np_dtype(dtype) -> tuple[np.dtype, bool]:
    """numpy storage dtype of a TensorRT DataType, and whether it is bf16 (stored as uint16 bits)."""
    name = getattr(dtype, "name", str(dtype)).split(".")[-1].upper()
    table = {"FLOAT": np.float32, "HALF": np.float16, "BF16": np.uint16, "INT32": np.int32,
             "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
    if name not in table:
        raise EngineError(f"TensorRT tensor type {name} is not supported by holopart-infer")
    return np.dtype(table[name]), name == "BF16"


def _to_engine_dtype(array, dtype: np.dtype, bf16: bool) -> np.ndarray:
    from holopart_infer.model.checkpoint import f32_to_bf16_bits

    a = np.asarray(array)
    if bf16:
        return np.ascontiguousarray(f32_to_bf16_bits(a.astype(np.float32, copy=False)))
    return np.ascontiguousarray(a.astype(dtype, copy=False))


def _from_engine_dtype(array: np.ndarray, bf16: bool) -> np.ndarray:
    from holopart_infer.model.checkpoint import bf16_to_f32

    if bf16:
        return bf16_to_f32(array)
    return array.astype(np.float32, copy=False) if array.dtype == np.float16 else array


class _Engine:
    """One deserialized engine and its execution context (user-managed scratch memory)."""

    def __init__(self, trt, runtime, graph: str, data: bytes, path: Path):
        self.graph = graph
        self.path = path
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize engine {path} for graph {graph!r} "
                              "(built by another TensorRT version or GPU?); delete it to rebuild")
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {graph!r}")
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, tuple[np.dtype, bool]] = {}
        self.ranges: dict[str, ShapeRange] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = _np_dtype(self.engine.get_tensor_dtype(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                lo, mid, hi = self.engine.get_tensor_profile_shape(name, 0)
                self.ranges[name] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
            else:
                self.outputs.append(name)

    @property
    def device_memory_size(self) -> int:
        size = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        return int(size if size is not None else self.engine.device_memory_size)

    def bind_scratch(self, ptr: int, size: int) -> None:
        if hasattr(self.context, "set_device_memory"):  # TensorRT >= 10.1
            self.context.set_device_memory(ptr, size)
        else:
            self.context.device_memory = ptr

    def check_input(self, name: str, shape: tuple[int, ...]) -> None:
        """The engine's profile range: what TensorRT adds to the graph's signature."""
        r = self.ranges[name]
        if not r.contains(shape):
            raise feed_error(self.graph, name, f"shape {shape_str(shape)}",
                             f"a shape this engine accepts: {shape_str(r.min)} .. {shape_str(r.max)} "
                             f"(rank {len(r.min)})",
                             "split the batch, or rebuild with larger profiles (max_batch / max_query_points)")

    def run(self, inputs: Mapping[str, Any], stream) -> dict[str, Any]:
        from holopart_infer.engines.cuda import DeviceTensor

        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise EngineError(f"{self.graph}: missing input(s) {', '.join(missing)}")
        for name in self.inputs:
            t = inputs[name]
            want = self.dtypes[name][0]
            if t.dtype != want:
                raise ShapeError(f"{self.graph}: input {name!r} is {t.dtype} on the device; the engine wants {want}")
            self.check_input(name, t.shape)
            if not self.context.set_input_shape(name, t.shape):
                raise ShapeError(f"{self.graph}: TensorRT rejected shape {t.shape} for input {name!r}")
            self.context.set_tensor_address(name, t.ptr)
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.graph}: output {name!r} shape {shape} is not determined by the inputs")
            out = DeviceTensor(shape, self.dtypes[name][0], stream)
            self.context.set_tensor_address(name, out.ptr)
            outputs[name] = out
        if not self.context.execute_async_v3(stream.handle):
            raise EngineError(f"TensorRT execution of {self.graph!r} failed (see the TensorRT log)")
        return outputs


def _strongly_typed(model_precision: str, precision: str, where) -> bool:
    """Strong typing when the ONNX already has the wanted precision; weak typing
    (builder flag) only to lower an fp32 export; anything else is an error."""
    if precision == model_precision:
        return True
    if model_precision == "fp32":
        return False
    raise ModelDirError(f"{where} was exported in {model_precision}; TensorRT builds {model_precision} "
                        f"from it (or any precision from an fp32 export), not {precision}. Re-export with "
                        f"--precision {precision}, or pass precision={model_precision!r}.")


class TensorRTBackend(BackendBase):
    """The backend protocol on TensorRT engines built (and cached) from a model dir.

    Use :meth:`from_model_dir`. All engines share one CUDA stream and one scratch
    allocation, so one backend must not be called from several threads at once.
    """

    name = "tensorrt"

    def __init__(self, *, engines: Mapping[str, _Engine], stream, scratch, config: dict, precision: str,
                 device: int | str, fusion: Mapping[str, "FusionReport"], graphs: Iterable[str] = (),
                 loader=None, manifest=None):
        self.engines = dict(engines)
        self.graphs = set(graphs) | set(self.engines)  # every graph of the model dir
        self._loader = loader  # graph -> (_Engine, FusionReport), for graphs loaded on first use
        self.stream = stream
        self.scratch = scratch
        self.config = config
        self._dims = model_dims(config)  # the config's sizes of the graphs' model axes
        self.manifest = manifest  # the model dir's Manifest (defaults, graphs); None for hand-made backends
        self.precision = precision
        self.device_index = _device_index(device)
        self.device = "cuda" if self.device_index == 0 else f"cuda:{self.device_index}"
        self.path = manifest.model_dir if manifest is not None else None
        self.fusion = dict(fusion)
        self._cond_cache: dict[str, tuple[np.ndarray, Any]] = {}

    # -- construction ------------------------------------------------------
    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, precision: str,
                       cache_dir: str | os.PathLike | None = None, device: int | str = 0, *,
                       graphs: Iterable[str] | None = None, max_batch: int | None = None,
                       max_query_points: int | None = DEFAULT_QUERY_POINTS[2],
                       optimization_level: int = OPTIMIZATION_LEVEL,
                       workspace: int | None = None, verify_hashes: bool = True) -> "TensorRTBackend":
        """Build (or load from the cache) one engine per graph and get ready to run.

        Args:
            model_dir: exported model dir (manifest.json + onnx/).
            precision: "fp16", "bf16" or "fp32". When it equals the model dir's
                precision the network is strongly typed (the ONNX types rule);
                from an fp32 model dir, fp16/bf16 are built weakly typed with the
                builder's FP16/BF16 flag.
            cache_dir: engine cache folder (default ``~/.cache/holopart_infer/engines``).
            device: CUDA device index or "cuda"/"cuda:N".
            graphs: graphs to build now (default: all but ``dit``, which the
                guided loop does not need; any graph is loaded on first use).
            max_batch: largest batch (parts at once); None keeps the manifest's profile.
            max_query_points: largest decoder query count per call (longer calls are
                split); None keeps the manifest's profile.
            optimization_level: builder optimization level (0-5).
            workspace: builder workspace limit in bytes (None: TensorRT default).
            verify_hashes: check the graph files against the manifest's sha256 first
                (:func:`holopart_infer.model.manifest.load_manifest`).

        Raises:
            BackendUnavailable: tensorrt or cuda-python is missing (with the pip hint).
            ModelDirError / InputFileNotFound: the model dir is unusable.
            EngineError: a build, deserialization or CUDA call failed.
        """
        from holopart_infer.engines import cuda
        from holopart_infer.model.manifest import load_manifest

        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        trt = require_tensorrt()
        cuda.runtime()
        manifest = load_manifest(model_dir, verify_hashes=verify_hashes)
        specs = manifest.raw["graphs"]
        strongly_typed = _strongly_typed(manifest.precision, precision, manifest.model_dir)
        axis_ranges = profile_overrides(max_batch, max_query_points)
        if graphs is None:
            graphs = [g for g in manifest.graphs if not (g == "dit" and "guided_step" in manifest.graphs)]
        graphs = [manifest.graph(g).name for g in graphs]  # ModelDirError for unknown names

        device = _device_index(device)
        cuda.set_device(device)
        info = cuda.device_info(device)
        cache = EngineCache(cache_dir)
        tc_path = timing_cache_path(cache.directory, info.name, info.compute_capability, trt.__version__)
        runtime = trt.Runtime(_make_logger(trt))

        def load(graph: str) -> tuple[_Engine, FusionReport]:
            onnx_path = manifest.graph(graph).path
            profiles = compute_profiles(graph, specs[graph], axis_ranges)
            fields = engine_key_fields(
                graph=graph, onnx_sha256=onnx_digest(onnx_path), precision=precision,
                strongly_typed=strongly_typed, optimization_level=optimization_level, workspace=workspace,
                profiles=profiles, gpu_name=info.name, compute_capability=info.compute_capability,
                tensorrt_version=trt.__version__)
            got = cache.get_or_build(fields, lambda: build_engine(
                onnx_path, stage=graph, precision=precision, profiles=profiles, timing_cache_path=tc_path,
                workspace=workspace, strongly_typed=strongly_typed, optimization_level=optimization_level))
            eng = _Engine(trt, runtime, graph, got.data, got.path)
            _, report = attention_fused(engine_layer_information(eng.engine))
            (log.info if report.fused else log.warning)("TensorRT %s: %s", graph, report.summary())
            return eng, report

        engines, fusion = {}, {}
        for g in graphs:
            engines[g], fusion[g] = load(g)
        be = cls(engines=engines, stream=cuda.Stream(), scratch=cuda.ScratchMemory(), config=manifest.config,
                 precision=precision, device=device, fusion=fusion, graphs=manifest.graphs, loader=load,
                 manifest=manifest)
        be._bind_scratch()
        return be

    def _bind_scratch(self) -> None:
        """Size the one scratch block to the largest context and bind every context to it."""
        need = max((e.device_memory_size for e in self.engines.values()), default=0)
        if need > self.scratch.nbytes:
            self.stream.synchronize()  # the old block may still be in use
        ptr, size = self.scratch.ensure(need)
        for e in self.engines.values():
            e.bind_scratch(ptr, size)

    def _engine(self, graph: str) -> _Engine:
        e = self.engines.get(graph)
        if e is None:
            if self._loader is None or graph not in self.graphs:
                raise EngineError(f"the model dir has no {graph!r} graph (has: {', '.join(sorted(self.graphs))})")
            self.engines[graph], self.fusion[graph] = self._loader(graph)
            self._bind_scratch()
            e = self.engines[graph]
        return e

    @property
    def defaults(self) -> dict:
        return dict(self.manifest.defaults) if self.manifest is not None else {}

    def __repr__(self) -> str:
        return (f"TensorRTBackend(device={self.device!r}, precision={self.precision!r}, "
                f"engines={sorted(self.engines)})")

    # -- tensors -----------------------------------------------------------
    def to_device(self, array, graph: str, name: str):
        """A host array (or a DeviceTensor, passed through) as ``graph``'s input ``name``."""
        from holopart_infer.engines.cuda import DeviceTensor

        if isinstance(array, DeviceTensor):
            return array
        if isinstance(array, np.ndarray) and array.dtype != np.float32:
            raise feed_error(graph, name, f"dtype {array.dtype}", "float32", "convert it with .astype(numpy.float32)")
        dtype, bf16 = self._engine(graph).dtypes[name]
        return DeviceTensor.from_host(_to_engine_dtype(array, dtype, bf16), self.stream)

    def to_host(self, tensor, graph: str, name: str) -> np.ndarray:
        return _from_engine_dtype(tensor.to_host(), self._engine(graph).dtypes[name][1])

    def _run(self, graph: str, **inputs) -> dict[str, Any]:
        eng = self._engine(graph)  # an unknown graph is an EngineError before any feed is looked at
        check_feeds(graph, inputs, self._dims)
        dev = {k: self.to_device(v, graph, k) for k, v in inputs.items()}
        return eng.run(dev, self.stream)

    def _cond(self, array, graph: str, name: str):
        """Conditions are the same arrays on all steps of a loop: upload once per content."""
        from holopart_infer.engines.cuda import DeviceTensor

        if isinstance(array, DeviceTensor):
            return array
        hit = self._cond_cache.get(name)
        # Compare contents, not identity: a caller may refill the same array.
        if hit is not None and hit[0].shape == np.shape(array) and np.array_equal(hit[0], array):
            return hit[1]
        host = np.array(array, copy=True)
        dev = self.to_device(host, graph, name)
        self._cond_cache[name] = (host, dev)
        return dev

    # -- protocol ----------------------------------------------------------
    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        out = self._run("part_encoder", part_tokens=part_tokens, whole_points=whole_points,
                        local_tokens=local_tokens, local_points=local_points)
        return (self.to_host(out["whole_cond"], "part_encoder", "whole_cond"),
                self.to_host(out["part_cond"], "part_encoder", "part_cond"))

    def dit(self, latents, timestep, part_cond, whole_cond):
        ts = np.asarray(timestep, dtype=np.float32).reshape(-1)
        out = self._run("dit", latents=latents, timestep=ts, part_cond=part_cond, whole_cond=whole_cond)
        return self.to_host(out["velocity"], "dit", "velocity")

    def guided_step(self, latents, t, dt, guidance, part_cond, whole_cond):
        """One guided Euler step on the device.

        Returns a :class:`~holopart_infer.engines.cuda.DeviceTensor` (``np.asarray``
        copies it to the host); feeding it back keeps the whole loop on the GPU.
        Conditions given as host arrays are uploaded once and reused while their
        contents stay the same.
        """
        g = "guided_step"
        scalars = {k: np.asarray([v], dtype=np.float32) for k, v in (("timestep", t), ("dt", dt),
                                                                      ("guidance", guidance))}
        eng = self._engine(g)
        check_feeds(g, {"latents": latents, "part_cond": part_cond, "whole_cond": whole_cond, **scalars}, self._dims)
        inputs = {"latents": self.to_device(latents, g, "latents"),
                  "part_cond": self._cond(part_cond, g, "part_cond"),
                  "whole_cond": self._cond(whole_cond, g, "whole_cond"),
                  **{k: self.to_device(v, g, k) for k, v in scalars.items()}}
        return eng.run(inputs, self.stream)["latents_next"]

    def decoder_kv(self, latents):
        """Decoder keys/values for ``latents`` (host or device); kept on the device (opaque)."""
        out = self._run("vae_kv", latents=latents)
        return out["keys"], out["values"]

    def decoder_query(self, points, kv) -> np.ndarray:
        """Occupancy logits (B, Q, 1) float32 at ``points`` (B, Q, 3), positive inside;
        a Q beyond the engine's profile is split into several calls."""
        keys, values = kv
        pts = np.asarray(points, dtype=np.float32)
        eng = self._engine("vae_query")
        check_feeds("vae_query", {"points": pts, "keys": keys, "values": values}, self._dims)
        q_max = eng.ranges["points"].max[1]
        B, Q = pts.shape[:2]
        out = np.empty((B, Q, 1), dtype=np.float32)
        for s in range(0, Q, q_max):
            e = min(Q, s + q_max)
            res = eng.run({"points": self.to_device(pts[:, s:e], "vae_query", "points"),
                           "keys": keys, "values": values}, self.stream)["logits"]
            out[:, s:e] = self.to_host(res, "vae_query", "logits").reshape(B, e - s, 1)
        return out

    def close(self) -> None:
        """Release engines, contexts, the scratch block and the stream."""
        if self.stream is not None:
            self.stream.synchronize()
        self._cond_cache.clear()
        for e in self.engines.values():
            e.context = None
            e.engine = None
        self.engines.clear()
        if self.scratch is not None:
            self.scratch.free()
        if self.stream is not None:
            self.stream.close()
            self.stream = None


# --------------------------------------------------------------------------- registry hooks

def _device_index(device: str | int) -> int:
    if isinstance(device, int):
        return device
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(f"the TensorRT backend runs on 'cuda' or 'cuda:N', got device {device!r}")
    return int(index or 0)


def available(device: str) -> tuple[bool, str]:
    """Registry check: (True, "") when TensorRT can run on ``device`` ("cuda", "cuda:N")."""
    try:
        index = _device_index(device)
    except InputError as e:
        return False, str(e)
    ok, why = tensorrt_available()
    if not ok:
        return False, why
    try:
        from holopart_infer.engines import cuda

        info = cuda.device_info(index)
    except Exception as e:  # no driver, no device: say why instead of failing
        return False, f"no usable CUDA device {index} ({e})"
    return True, f"{info.name} (sm {info.compute_capability})"


def open_backend(model_dir: str | os.PathLike, device: str | int = "cuda", precision: str = "fp16",
                 engine_cache: str | os.PathLike | None = None, **kw) -> TensorRTBackend:
    """Registry opener (:func:`holopart_infer.engines.open_backend`): the resolved device
    and precision, the engine cache folder, and :meth:`TensorRTBackend.from_model_dir`'s knobs."""
    return TensorRTBackend.from_model_dir(model_dir, precision=precision, cache_dir=engine_cache,
                                          device=_device_index(device), **kw)
