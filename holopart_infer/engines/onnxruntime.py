"""ONNX Runtime backend: runs an exported model directory (manifest + onnx/*.onnx).

CPU everywhere; CUDA with ``onnxruntime-gpu``, where every graph runs through
I/O binding: inputs already on the device (:class:`DeviceArray`) are bound as
they are, numpy inputs are uploaded once, and outputs stay on the device, so
the sampling loop's latents never leave the GPU between steps (the conditions
are uploaded once per sampling run and cached).

Every feed is checked against the graph's signature
(:func:`holopart_infer.engines.signatures.check_feeds`) before ONNX Runtime sees
it: a wrong shape or dtype raises :class:`~holopart_infer.errors.ShapeError`
naming the graph and the tensor. This module imports onnxruntime and numpy only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from holopart_infer.engines.base import BackendBase, DeviceArray as _DeviceArrayBase
from holopart_infer.engines.registry import ORT_GPU_HINT
from holopart_infer.engines.signatures import check_feeds, model_dims
from holopart_infer.model.sampler import euler_update
from holopart_infer.errors import BackendUnavailable, EngineError, InputError, ModelDirError, ShapeError
from holopart_infer.model.manifest import Manifest, load_manifest

log = logging.getLogger("holopart_infer")

# ONNX Runtime tensor type strings -> numpy dtype names used in the manifest
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bfloat16)": "bfloat16"}


class DeviceArray(_DeviceArrayBase):
    """A tensor owned by ONNX Runtime on a device; ``numpy.asarray(x)`` copies it to the host."""

    __slots__ = ("value",)

    def __init__(self, value: ort.OrtValue):
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_ORT_TYPES.get(self.value.data_type(), "float32"))

    def numpy(self) -> np.ndarray:
        return self.value.numpy()

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={self.value.device_name()})"


_GRAPH_OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def cpu_session_options(threads: int | None = None, *, spinning: bool | None = None,
                        graph_optimization: str = "all", memory_arena: bool = True) -> ort.SessionOptions:
    """The SessionOptions the backend uses on the CPU (benchmarks/bench_decoder_cpu.py measures them).

    Args:
        threads: intra-op threads; None lets ONNX Runtime pick (one per physical core).
            The graphs are sequential chains, so there is one inter-op thread.
        spinning: let idle intra-op threads spin between ops; None: spin only when
            ``threads`` > 1 (ONNX Runtime's default), False frees the cores for
            other processes at a small cost per op.
        graph_optimization: "disable", "basic", "extended" or "all".
        memory_arena: ONNX Runtime's CPU arena and memory pattern planning.

    Raises:
        InputError: a bad ``threads`` or ``graph_optimization``.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads: expected None or an int >= 1, got {threads!r}")
    if graph_optimization not in _GRAPH_OPT_LEVELS:
        raise InputError(f"graph_optimization must be one of {', '.join(_GRAPH_OPT_LEVELS)}, "
                         f"got {graph_optimization!r}")
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads is not None:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = _GRAPH_OPT_LEVELS[graph_optimization]
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.enable_cpu_mem_arena = memory_arena
    so.enable_mem_pattern = memory_arena
    return so


def _parse_device(device: str) -> tuple[str, int]:
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return kind, int(index or 0)


class OrtBackend(BackendBase):
    """The backend protocol (docs/contracts.md) on ONNX Runtime.

    Use :meth:`from_model_dir`. Sessions are created on first use of each graph,
    so a process that only decodes never loads the DiT.
    """

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, device: str = "cpu", providers: Sequence | None = None,
                 session_options: ort.SessionOptions | None = None, threads: int | None = None):
        self.manifest = manifest
        self.device_type, self.device_id = _parse_device(device)
        self.device = device
        if self.device_type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                f"device {device!r} was requested but this onnxruntime ({ort.__version__}) has no "
                f"CUDAExecutionProvider (available: {', '.join(ort.get_available_providers())}). {ORT_GPU_HINT}")
        if providers is None:
            providers = (["CPUExecutionProvider"] if self.device_type == "cpu" else
                         [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"])
        self.providers = list(providers)
        if session_options is None and (self.device_type == "cpu" or threads is not None):
            session_options = cpu_session_options(threads)
        elif threads is not None:
            cpu_session_options(threads)  # the same check of the value
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        self.session_options = session_options
        self._dims = model_dims(manifest.config)  # the config's sizes of the graphs' model axes
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._cond_cache: tuple | None = None  # (part_cond, whole_cond, their device copies)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, device: str = "cpu", providers: Sequence | None = None,
                       session_options: ort.SessionOptions | None = None, verify_hashes: bool = True,
                       threads: int | None = None) -> "OrtBackend":
        """Open an exported model directory.

        Args:
            model_dir: directory written by ``holopart-infer export``.
            device: "cpu", "cuda" or "cuda:N".
            providers: ONNX Runtime providers to use instead of the default for ``device``.
            session_options: ``onnxruntime.SessionOptions`` for every graph; on the
                CPU the default is :func:`cpu_session_options` (use it with ``threads=``
                to size the thread pool).
            threads: intra-op threads of every session (one inter-op thread); None lets
                ONNX Runtime pick. Applied to ``session_options`` when given, else to
                :func:`cpu_session_options` (a registry option: ``open_backend(...,
                threads=2)``; one Ray actor per CPU slot passes its slot's cores).
            verify_hashes: check every graph file against the manifest's sha256
                first (cheap on re-loads: see :func:`holopart_infer.model.manifest.load_manifest`).

        Raises:
            InputFileNotFound / ModelDirError: unusable model directory.
            BackendUnavailable: ``device`` is cuda but onnxruntime has no CUDA provider.
        """
        return cls(load_manifest(model_dir, verify_hashes=verify_hashes), device, providers, session_options, threads)

    # -- what it is ------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.manifest.model_dir

    @property
    def config(self) -> dict:
        return self.manifest.config

    @property
    def defaults(self) -> dict:
        return dict(self.manifest.defaults)

    @property
    def precision(self) -> str:
        return self.manifest.precision

    def close(self) -> None:
        """Drop the sessions and cached device copies (ONNX Runtime frees them)."""
        self._sessions.clear()
        self._cond_cache = None

    # -- sessions ------------------------------------------------------------
    def session(self, graph: str) -> ort.InferenceSession:
        """The (cached) InferenceSession of ``graph``."""
        sess = self._sessions.get(graph)
        if sess is not None:
            return sess
        spec = self.manifest.graph(graph)
        try:
            sess = ort.InferenceSession(str(spec.path), self.session_options, providers=self.providers)
        except Exception as e:  # ORT raises InvalidProtobuf, Fail, ... for a damaged file
            if "NOT_IMPLEMENTED" in str(e):
                raise BackendUnavailable(
                    f"graph '{graph}' ({spec.path}) is a {self.manifest.precision} model and the providers "
                    f"{self.providers} have no {self.manifest.precision} kernel for one of its ops "
                    f"({str(e).strip()[:300]}). Use an fp32 export on CPU, or a GPU provider "
                    f"(onnxruntime-gpu) for fp16/bf16.") from e
            raise ModelDirError(f"{self.manifest.model_dir}: graph '{graph}': ONNX Runtime cannot load "
                                f"{spec.path}: {str(e).strip()[:400]}. The file is corrupt or was written by an "
                                "incompatible exporter; re-export the model.") from e
        names = [i.name for i in sess.get_inputs()]
        if set(names) != set(spec.inputs):
            raise ModelDirError(f"{spec.path}: graph '{graph}' has inputs {names} but the manifest declares "
                                f"{list(spec.inputs)}; re-export the model.")
        for node in (*sess.get_inputs(), *sess.get_outputs()):
            declared = spec.inputs.get(node.name) or spec.outputs.get(node.name)
            if declared is None or len(node.shape) != len(declared.shape):
                continue
            if any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(node.shape, declared.shape)):
                raise ModelDirError(
                    f"{self.manifest.model_dir / 'manifest.json'}: graph '{graph}' declares '{node.name}' with shape "
                    f"{list(declared.shape)} but {spec.path} has {list(node.shape)}; the manifest does not describe "
                    "the graphs. Re-export the model.")
        self._sessions[graph] = sess
        return sess

    # -- feeds ---------------------------------------------------------------
    @staticmethod
    def _as_array(x) -> Any:
        if isinstance(x, DeviceArray):
            return x
        if isinstance(x, np.ndarray):
            return x
        raise InputError(f"expected a numpy array or DeviceArray, got {type(x).__name__}")

    def run(self, graph: str, feeds: dict[str, Any], keep_on_device: bool = False) -> list:
        """Run ``graph`` on checked feeds; outputs in the manifest's order.

        On CUDA, outputs are DeviceArrays when ``keep_on_device`` and numpy otherwise.
        """
        spec = self.manifest.graph(graph)
        feeds = {k: self._as_array(v) for k, v in feeds.items()}
        check_feeds(graph, feeds, self._dims)
        sess = self.session(graph)
        out_names = list(spec.outputs)
        try:
            if self.device_type == "cpu":
                host = {k: (v.numpy() if isinstance(v, DeviceArray) else np.ascontiguousarray(v))
                        for k, v in feeds.items()}
                return sess.run(out_names, host)
            return self._run_cuda(sess, feeds, out_names, keep_on_device)
        except (ShapeError, InputError):
            raise
        except Exception as e:  # ORT's own exception types
            raise EngineError(f"graph '{graph}': ONNX Runtime failed: {str(e).strip()[:600]}") from e

    def _to_device(self, x) -> ort.OrtValue:
        if isinstance(x, DeviceArray):
            return x.value
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), "cuda", self.device_id)

    def _run_cuda(self, sess, feeds: dict, out_names: list[str], keep_on_device: bool) -> list:
        io = sess.io_binding()
        for name, x in feeds.items():
            io.bind_ortvalue_input(name, self._to_device(x))
        for name in out_names:
            io.bind_output(name, "cuda", self.device_id)
        sess.run_with_iobinding(io)
        outs = io.get_outputs()
        if keep_on_device:
            return [DeviceArray(v) for v in outs]
        return [v.numpy() for v in outs]

    def to_device(self, x: np.ndarray) -> Any:
        """Upload ``x`` once (CUDA: a DeviceArray; CPU: ``x`` itself)."""
        if self.device_type == "cpu" or isinstance(x, DeviceArray):
            return x
        return DeviceArray(self._to_device(x))

    def _conds(self, part_cond, whole_cond) -> tuple:
        """Conditions on the device, uploaded once per sampling run (cached by identity)."""
        if self.device_type == "cpu":
            return part_cond, whole_cond
        c = self._cond_cache
        if c is None or c[0] is not part_cond or c[1] is not whole_cond:
            c = (part_cond, whole_cond, self.to_device(part_cond), self.to_device(whole_cond))
            self._cond_cache = c
        return c[2], c[3]

    # -- backend protocol ----------------------------------------------------
    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        """-> (whole_cond, part_cond), each (B, K, D) float32."""
        w, p = self.run("part_encoder", {"part_tokens": part_tokens, "whole_points": whole_points,
                                         "local_tokens": local_tokens, "local_points": local_points})
        return w, p

    def dit(self, latents, timestep, part_cond, whole_cond):
        """-> velocity (B, T, C) float32."""
        (v,) = self.run("dit", {"latents": latents, "timestep": timestep,
                                "part_cond": part_cond, "whole_cond": whole_cond})
        return v

    def guided_step(self, latents, t: float, dt: float, guidance: float, part_cond, whole_cond):
        """One guided Euler step; on CUDA the result stays on the device (a DeviceArray)."""
        scalar = lambda v: np.asarray([v], dtype=np.float32)  # noqa: E731
        if guidance <= 1.0:  # no guidance: the conditional velocity alone (as the reference)
            x = np.asarray(latents)
            v = self.dit(x, np.full((x.shape[0],), t, dtype=np.float32), part_cond, whole_cond)
            return euler_update(x, None, v, dt, guidance)
        pc, wc = self._conds(part_cond, whole_cond)
        (x,) = self.run("guided_step", {"latents": latents, "timestep": scalar(t), "dt": scalar(dt),
                                        "guidance": scalar(guidance), "part_cond": pc, "whole_cond": wc},
                        keep_on_device=True)
        return x

    def decoder_kv(self, latents):
        """-> (keys, values), each (B, H, T, dh); device-resident on CUDA."""
        k, v = self.run("vae_kv", {"latents": latents}, keep_on_device=True)
        return (k, v)

    def decoder_query(self, points, kv):
        """-> occupancy logits (B, Q, 1) float32, positive inside."""
        keys, values = kv
        (logits,) = self.run("vae_query", {"points": points, "keys": keys, "values": values})
        return logits

    def __repr__(self) -> str:
        return (f"OrtBackend(model_dir={str(self.manifest.model_dir)!r}, device={self.device!r}, "
                f"precision={self.precision!r})")


def open_backend(model_dir: str | os.PathLike | Path, device: str = "cpu", precision: str | None = None,
                 **kw) -> OrtBackend:
    """Registry opener (:func:`holopart_infer.engines.open_backend`).

    ONNX Runtime runs the graphs in the precision they were exported in: a
    ``precision`` other than the model dir's raises instead of being ignored.
    """
    be = OrtBackend.from_model_dir(model_dir, device=device, **kw)
    if precision is not None and precision != be.precision:
        raise InputError(f"{be.path}: this model dir was exported in {be.precision}; ONNX Runtime runs it as it "
                         f"is, not in {precision}. Pass precision=None (or {be.precision!r}), re-export with "
                         f"--precision {precision}, or use the tensorrt backend to lower an fp32 export.")
    return be
