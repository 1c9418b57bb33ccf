"""TensorRT backend: build engines from the exported ONNX, cache them, run them.

Three layers, each usable on its own:

* :func:`build_engine` - ONNX -> serialized engine with the TensorRT 10 builder
  (strongly typed network, one optimization profile, timing cache, detailed
  layer information so :func:`attention_fused` can inspect the result).
* :class:`~holopart_infer.engines.cache.EngineCache` keyed by
  :func:`engine_key_fields` - an engine is rebuilt whenever the ONNX content,
  build settings, shape profiles, GPU or TensorRT version change.
* :class:`TensorRTBackend` - the backend protocol of docs/contracts.md on top of
  TensorRT's name-based execution API and cuda-python device buffers, with one
  scratch allocation shared by all execution contexts; in the guided loop the
  latents never leave the device.

tensorrt and cuda-python are imported only when this backend is used.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from holopart_infer.engines.cache import EngineCache, onnx_digest
from holopart_infer.errors import (
    EngineError, InputError, InputFileNotFound, ModelDirError, ShapeError, missing_extra,
)
from holopart_infer.fsafe import atomic_write, file_lock
from holopart_infer.manifest import PRECISIONS

log = logging.getLogger("holopart_infer")

#: Default builder optimization level (TensorRT's own default is 3; 0-5).
OPTIMIZATION_LEVEL = 3

#: Symbolic axes of the model dir's graphs (docs/contracts.md, the manifest).
BATCH_AXIS, QUERY_AXIS = "B", "Q"
#: Batch the engines are tuned for when ``max_batch`` is given: the reference
#: denoises 8 parts at once (spec section 1).
OPT_BATCH = 8

#: Decoder query points per call, (min, opt, max). The exporter's profile goes to
#: 262144, but TensorRT sizes activation memory for the profile maximum and the
#: decoder's feed-forward alone holds batch * points * 4 * width half floats
#: (16 * 262144 * 4096 * 2 B = 34 GB), so the backend caps it at 65536 by default
#: and :meth:`TensorRTBackend.decoder_query` splits longer requests. Raise it on
#: large GPUs with ``max_query_points``.
DEFAULT_QUERY_POINTS = (1, 32768, 65536)

# --------------------------------------------------------------------------- availability

def tensorrt_available() -> tuple[bool, str]:
    """(True, "") when tensorrt and cuda-python are importable, else (False, why)."""
    for module, what in (("tensorrt", "tensorrt"), ("cuda", "cuda-python")):
        if importlib.util.find_spec(module) is None:
            return False, (f"the Python package '{what}' is not installed "
                           "(pip install 'holopart-infer[tensorrt]')")
    return True, ""


def require_tensorrt():
    """Import and return the ``tensorrt`` module (>= 10).

    Raises:
        BackendUnavailable: tensorrt is not installed, with the pip hint.
        EngineError: an older TensorRT is installed.
    """
    if importlib.util.find_spec("tensorrt") is None:
        raise missing_extra("tensorrt", "tensorrt", "The TensorRT backend")
    trt = importlib.import_module("tensorrt")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineError(f"TensorRT {trt.__version__} is installed; holopart-infer needs TensorRT >= 10 "
                          "(pip install -U 'holopart-infer[tensorrt]')")
    return trt


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max shape of one engine input (one TensorRT optimization profile entry)."""
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        ranks = {len(self.min), len(self.opt), len(self.max)}
        if len(ranks) != 1:
            raise InputError(f"shape range min/opt/max must have one rank, got {self.min}, {self.opt}, {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not 1 <= lo <= mid <= hi:
                raise InputError(f"shape range needs 1 <= min <= opt <= max per axis, got "
                                 f"min={self.min} opt={self.opt} max={self.max}")

    @classmethod
    def fixed(cls, shape: Sequence[int]) -> "ShapeRange":
        s = tuple(int(d) for d in shape)
        return cls(s, s, s)

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Sequence[int]]) -> "ShapeRange":
        return cls(*(tuple(int(d) for d in obj[k]) for k in ("min", "opt", "max")))


def _check_range(name: str, r: Sequence[int]) -> tuple[int, int, int]:
    if len(r) != 3 or not 1 <= int(r[0]) <= int(r[1]) <= int(r[2]):
        raise InputError(f"{name} must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(r)}")
    return int(r[0]), int(r[1]), int(r[2])


def compute_profiles(graph: str, graph_spec: Mapping[str, Any],
                     axis_ranges: Mapping[str, Sequence[int]] | None = None) -> dict[str, ShapeRange]:
    """Shape ranges for every input of one graph of a manifest.

    Start from the manifest's ``graphs.<graph>.profiles`` (``{input: {"min": [...],
    "opt": [...], "max": [...]}}``, written by the exporter); inputs without one
    get their fixed shape. Then every axis whose symbol (``"B"``, ``"Q"``, ...
    from ``inputs.<name>.shape``) is in ``axis_ranges`` takes that (min, opt, max).

    Args:
        graph: graph name (for messages).
        graph_spec: the manifest's ``graphs.<graph>`` entry.
        axis_ranges: ``{axis symbol: (min, opt, max)}`` overrides, e.g. ``{"B": (1, 4, 8)}``.

    Returns:
        ``{input name: ShapeRange}`` for every input.

    Raises:
        ModelDirError: an input has no shape, a dynamic axis has neither a
            manifest profile nor an override, or a manifest profile is malformed.
        InputError: a malformed override.
    """
    overrides = {str(k): _check_range(f"range of axis {k!r}", v) for k, v in (axis_ranges or {}).items()}
    inputs = graph_spec.get("inputs")
    if not isinstance(inputs, Mapping) or not inputs:
        raise ModelDirError(f"manifest graph {graph!r} lists no inputs; re-export the model dir")
    given = graph_spec.get("profiles") or {}
    if not isinstance(given, Mapping):
        raise ModelDirError(f"manifest graph {graph!r}: 'profiles' must map input names to "
                            f"{{min, opt, max}}, got {type(given).__name__}")
    unknown = set(given) - set(inputs)
    if unknown:
        raise ModelDirError(f"manifest graph {graph!r}: profiles for unknown input(s) "
                            f"{', '.join(sorted(unknown))}; inputs are {', '.join(inputs)}")
    out: dict[str, ShapeRange] = {}
    for name, spec in inputs.items():
        shape = spec.get("shape") if isinstance(spec, Mapping) else None
        if not isinstance(shape, (list, tuple)):
            raise ModelDirError(f"manifest graph {graph!r}: input {name!r} has no 'shape' list")
        if name in given:
            try:
                base = ShapeRange.from_json(given[name])
            except (KeyError, TypeError, ValueError, InputError) as e:
                raise ModelDirError(f"manifest graph {graph!r}: profile of input {name!r} must be "
                                    f"{{\"min\": [...], \"opt\": [...], \"max\": [...]}}: {e}") from e
            if len(base.min) != len(shape):
                raise ModelDirError(f"manifest graph {graph!r}: profile of input {name!r} has rank "
                                    f"{len(base.min)}, its shape {list(shape)} rank {len(shape)}")
            lo, mid, hi = list(base.min), list(base.opt), list(base.max)
        else:
            lo, mid, hi = [], [], []
            for dim in shape:
                fixed = isinstance(dim, int) and not isinstance(dim, bool) and dim > 0
                for part in (lo, mid, hi):
                    part.append(dim if fixed else None)
        for axis, dim in enumerate(shape):
            if isinstance(dim, str) and dim in overrides:
                lo[axis], mid[axis], hi[axis] = overrides[dim]
            elif lo[axis] is None:
                raise ModelDirError(
                    f"manifest graph {graph!r}: input {name!r} axis {axis} ({dim!r}) is dynamic but has "
                    f"no range: add graphs.{graph}.profiles.{name} to the manifest (re-export) or pass "
                    f"a range for axis {dim!r}.")
        try:
            out[name] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
        except InputError as e:
            raise ModelDirError(f"manifest graph {graph!r}: input {name!r}: {e}") from e
    return out


def profiles_json(profiles: Mapping[str, ShapeRange]) -> dict[str, dict[str, list[int]]]:
    return {k: profiles[k].to_json() for k in sorted(profiles)}


# --------------------------------------------------------------------------- cache keys

def engine_key_fields(*, graph: str, onnx_sha256: str, precision: str, strongly_typed: bool,
                      optimization_level: int, workspace: int | None, profiles: Mapping[str, ShapeRange],
                      gpu_name: str, compute_capability: str, tensorrt_version: str) -> dict[str, Any]:
    """Everything that makes a built engine invalid when it changes (see docs/tensorrt.md).

    The cache schema version is added by :func:`~holopart_infer.engines.cache.cache_key`.
    """
    return {
        "graph": graph,
        "onnx_sha256": onnx_sha256,
        "precision": precision,
        "builder": {"strongly_typed": bool(strongly_typed), "optimization_level": int(optimization_level),
                    "workspace": None if workspace is None else int(workspace),
                    "profiling_verbosity": "detailed"},
        "profiles": profiles_json(profiles),
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "tensorrt": tensorrt_version,
    }


def timing_cache_path(cache_dir: str | os.PathLike, gpu_name: str, compute_capability: str,
                      tensorrt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version (entries are only valid there)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{gpu_name}-sm{compute_capability}-trt{tensorrt_version}")
    return Path(cache_dir) / f"timing-{tag}.cache"


# --------------------------------------------------------------------------- build

def _call(obj, method: str, default=None):
    """obj.method() if it exists (older TensorRT lacks some parser-error fields)."""
    fn = getattr(obj, method, None)
    try:
        return fn() if callable(fn) else default
    except Exception:  # an optional detail must never hide the real error
        return default


def format_parser_errors(graph: str, onnx_path: str | os.PathLike, parser) -> str:
    """One message naming the graph, the file and each failing ONNX node."""
    n = int(parser.num_errors)
    lines = [f"TensorRT could not parse graph {graph!r} from {onnx_path}: {n} error(s)"]
    for i in range(n):
        err = parser.get_error(i)
        code = _call(err, "code")
        code = getattr(code, "name", code)
        node = _call(err, "node", -1)
        where = "graph"
        if node is not None and int(node) >= 0:
            where = f"node {int(node)}"
            name, op = _call(err, "node_name", ""), _call(err, "node_operator", "")
            if name:
                where += f" {name!r}"
            if op:
                where += f" ({op})"
        lines.append(f"  [{code}] {where}: {_call(err, 'desc', '')}")
    lines.append("Re-export the model dir with this version of holopart-infer (`holopart-infer export`) "
                 "and use TensorRT >= 10; the ONNX Runtime backend runs the same graphs.")
    return "\n".join(lines)


def _make_logger(trt):
    """A trt.ILogger that forwards to logging and keeps error messages for EngineError."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.INFO:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _load_timing_cache(config, path: Path | None):
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("TensorRT timing cache %s is unreadable; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, False)


def _save_timing_cache(config, path: Path) -> None:
    """Merge this build's timing cache into the one on disk, then write it atomically."""
    built = config.get_timing_cache()
    if built is None:
        return
    with file_lock(path.with_name(path.name + ".lock")):
        disk = path.read_bytes() if path.is_file() else b""
        merged = config.create_timing_cache(disk) or config.create_timing_cache(b"")
        if not merged.combine(built, False):
            merged = built  # disk cache from another TensorRT version: replace it
        atomic_write(path, memoryview(merged.serialize()))


def build_engine(onnx_path: str | os.PathLike, *, stage: str, precision: str,
                 profiles: Mapping[str, ShapeRange], timing_cache_path: str | os.PathLike | None = None,
                 workspace: int | None = None, strongly_typed: bool = True,
                 optimization_level: int = OPTIMIZATION_LEVEL) -> bytes:
    """Build a serialized TensorRT engine from an ONNX graph (no torch involved).

    Args:
        onnx_path: the graph (external weights beside it are found by the parser).
        stage: graph name, used in messages and logs.
        precision: "fp16", "bf16" or "fp32". With ``strongly_typed`` (the default)
            the ONNX's own types decide and this is only recorded: export the model
            dir in the precision you want. Without it, "fp16"/"bf16" turn on the
            builder's FP16/BF16 flag over an fp32 graph (weak typing).
        profiles: ``{input: ShapeRange}``; required for every input with a dynamic axis.
        timing_cache_path: timing cache loaded before and merged/saved after the build.
        workspace: workspace memory-pool limit in bytes (None: TensorRT's default, the GPU's memory).
        strongly_typed: build a strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED).
        optimization_level: builder optimization level 0-5 (higher: longer build, maybe faster engine).

    Returns:
        The serialized engine (built with ProfilingVerbosity.DETAILED).

    Raises:
        BackendUnavailable: tensorrt is not installed.
        InputFileNotFound: ``onnx_path`` does not exist.
        InputError: bad precision / optimization level.
        EngineError: parsing or building failed; the message names the graph and
            TensorRT's errors (per ONNX node for parser errors).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not 0 <= int(optimization_level) <= 5:
        raise InputError(f"optimization_level must be 0..5, got {optimization_level}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputFileNotFound(f"ONNX graph {stage!r}: {onnx_path} does not exist")
    trt = require_tensorrt()
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external-data files relative to the graph's folder.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(format_parser_errors(stage, onnx_path, parser))

    config = builder.create_builder_config()
    config.builder_optimization_level = int(optimization_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if not strongly_typed and precision != "fp32":
        # Strongly typed networks reject these flags; weak typing needs them. Weak
        # typing is deprecated since TensorRT 10.12 and the flags are gone in 11.
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            raise EngineError(f"TensorRT {trt.__version__} builds strongly typed networks only, so graph "
                              f"{stage!r} cannot be lowered to {precision} at build time: export the model "
                              f"dir with --precision {precision}.")
        config.set_flag(flag)

    profile = builder.create_optimization_profile()
    network_inputs = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        network_inputs[t.name] = tuple(t.shape)
    unknown = set(profiles) - set(network_inputs)
    if unknown:
        raise EngineError(f"graph {stage!r}: profiles name input(s) {', '.join(sorted(unknown))} that "
                          f"{onnx_path.name} does not have (inputs: {', '.join(network_inputs)})")
    for name, shape in network_inputs.items():
        r = profiles.get(name)
        if r is None:
            if any(d < 0 for d in shape):
                raise EngineError(f"graph {stage!r}: input {name!r} has dynamic shape {shape} but no "
                                  "shape profile was given")
            continue
        if len(r.min) != len(shape) or any(d >= 0 and not lo == hi == d for d, lo, hi in zip(shape, r.min, r.max)):
            raise EngineError(f"graph {stage!r}: profile {r.to_json()} of input {name!r} does not fit its "
                              f"ONNX shape {shape} (-1 = dynamic)")
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)

    tc_path = Path(timing_cache_path) if timing_cache_path is not None else None
    _load_timing_cache(config, tc_path)
    log.info("TensorRT %s: building %s (%s, %s typed, level %d); this can take minutes",
             trt.__version__, stage, precision, "strongly" if strongly_typed else "weakly", optimization_level)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "\n  ".join(logger.errors[-10:]) or "no error message (see the TensorRT log)"
        raise EngineError(f"TensorRT failed to build graph {stage!r} from {onnx_path}:\n  {detail}")
    if tc_path is not None:
        try:
            _save_timing_cache(config, tc_path)
        except OSError as e:  # a timing cache is an optimization, never a reason to fail
            log.warning("could not save TensorRT timing cache %s: %s", tc_path, e)
    return bytes(memoryview(plan))


# --------------------------------------------------------------------------- fusion check

# What fused attention looks like in TensorRT 10 layer information (JSON, DETAILED):
# Myelin emits the fused kernel as its own layer, e.g. Name "_gemm_mha_v2_myl0_17",
# LayerType "kgen", TacticName "_gemm_mha_v2_0x..." (NVIDIA/TensorRT#4397; the
# same kernel name appears in nsys, #4167 and the 10.0 release notes #3777);
# flash-attention style kernels are named "fmha"; TensorRT >= 10.14 also has a
# native IAttention layer. Unfused attention shows up as separate gemm layers
# around a softmax (#3665). See docs/tensorrt.md.
_FUSED_RE = re.compile(r"(gemm_mha|fmha|flash_?att|fused_?att|(?<![a-z])mha(?![a-z]))", re.I)
_SOFTMAX_RE = re.compile(r"softmax", re.I)


@dataclass
class FusionReport:
    """What :func:`attention_fused` found in an engine's layer information."""
    fused: bool
    num_layers: int
    fused_layers: list[str] = field(default_factory=list)
    softmax_layers: list[str] = field(default_factory=list)
    detailed: bool = True
    reason: str = ""

    def summary(self) -> str:
        return (f"attention {'fused' if self.fused else 'NOT fused'}: {len(self.fused_layers)} fused attention "
                f"layer(s), {len(self.softmax_layers)} standalone softmax layer(s) of {self.num_layers}"
                + (f" ({self.reason})" if self.reason else ""))


def _layer_fields(layer) -> tuple[str, str, str, str]:
    """(name, layer type, tactic, metadata) of one entry of the "Layers" list."""
    if isinstance(layer, Mapping):
        return tuple(str(layer.get(k, "") or "") for k in ("Name", "LayerType", "TacticName", "Metadata"))
    return str(layer), "", "", ""


def attention_fused(layer_info: str | Mapping[str, Any], *, min_fused: int = 1) -> tuple[bool, FusionReport]:
    """Decide from engine layer information (IEngineInspector, LayerInformationFormat.JSON)
    whether attention runs as fused kernels.

    A layer counts as fused attention when its tactic, type or (for layer-names-only
    information) name carries a fused-MHA kernel marker (``_gemm_mha_v2``, ``fmha``,
    ``mha``, flash/fused attention). Layer names are matched by their own words only
    in names-only information, and ONNX node paths (``/attn1/...``) never match,
    since they name what was fused, not how. A softmax that survives as its own
    layer means some attention was left unfused.

    Args:
        layer_info: the JSON text or the parsed object (``{"Layers": [...]}``; each
            layer a dict with Name/LayerType/TacticName, or a plain name).
        min_fused: fused attention layers required (e.g. the number of attention
            blocks in the graph, when Myelin keeps them apart).

    Returns:
        (fused, FusionReport). ``fused`` is True when at least ``min_fused`` fused
        attention layers and no standalone softmax were found.

    Raises:
        InputError: the text is not JSON or has no "Layers" list.
    """
    if isinstance(layer_info, (str, bytes)):
        try:
            layer_info = json.loads(layer_info)
        except json.JSONDecodeError as e:
            raise InputError(f"layer information is not JSON ({e}); get it with "
                             "inspector.get_engine_information(LayerInformationFormat.JSON)") from e
    layers = layer_info.get("Layers") if isinstance(layer_info, Mapping) else None
    if not isinstance(layers, list):
        raise InputError("layer information has no 'Layers' list (is it TensorRT engine-inspector JSON?)")
    detailed = any(isinstance(layer, Mapping) for layer in layers)
    report = FusionReport(False, len(layers), detailed=detailed)
    if not layers:
        report.reason = "no layer information: build with ProfilingVerbosity.DETAILED"
        return False, report
    for layer in layers:
        name, ltype, tactic, meta = _layer_fields(layer)
        # ONNX-derived names ("/blocks.0/mha/MatMul", "[MATRIX_MULTIPLY]_[...]") say what
        # was fused, not how; only generated names ("_gemm_mha_v2_myl0_17") name a kernel.
        own_name = name if not name.startswith(("/", "[", "{")) else ""
        if _FUSED_RE.search(" ".join((tactic, ltype, own_name))) or ltype.lower() == "attention":
            report.fused_layers.append(name)
        elif _SOFTMAX_RE.search(" ".join((ltype, name, meta))):
            # a softmax outside a fused attention kernel: Q.K^T is materialized
            report.softmax_layers.append(name)
    if not detailed:
        report.reason = "layer names only; build with ProfilingVerbosity.DETAILED for tactic names"
    report.fused = len(report.fused_layers) >= min_fused and not report.softmax_layers
    return report.fused, report


def engine_layer_information(engine, context=None) -> str:
    """The engine's layer information as JSON text (IEngineInspector)."""
    trt = require_tensorrt()
    inspector = engine.create_engine_inspector()
    if context is not None:
        inspector.execution_context = context
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


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
    from holopart_infer.checkpoint import f32_to_bf16_bits

    a = np.asarray(array)
    if bf16:
        return np.ascontiguousarray(f32_to_bf16_bits(a.astype(np.float32, copy=False)))
    return np.ascontiguousarray(a.astype(dtype, copy=False))


def _from_engine_dtype(array: np.ndarray, bf16: bool) -> np.ndarray:
    from holopart_infer.checkpoint import bf16_to_f32

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
        r = self.ranges[name]
        if not r.contains(shape):
            raise ShapeError(f"{self.graph}: input {name!r} has shape {shape}; this engine accepts "
                             f"{r.min} .. {r.max} (rank {len(r.min)}). Split the batch, or rebuild with "
                             "larger profiles (max_batch / max_query_points).")

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


def profile_overrides(max_batch: int | None, max_query_points: int | None) -> dict[str, tuple[int, int, int]]:
    """Axis ranges for :func:`compute_profiles` from the backend's two knobs."""
    out = {}
    if max_batch is not None:
        if int(max_batch) < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        out[BATCH_AXIS] = (1, min(OPT_BATCH, int(max_batch)), int(max_batch))
    if max_query_points is not None:
        if int(max_query_points) < 1:
            raise InputError(f"max_query_points must be >= 1, got {max_query_points}")
        q = int(max_query_points)
        out[QUERY_AXIS] = (1, min(DEFAULT_QUERY_POINTS[1], q), q)
    return out


class TensorRTBackend:
    """The backend protocol on TensorRT engines built (and cached) from a model dir.

    Use :meth:`from_model_dir`. All engines share one CUDA stream and one scratch
    allocation, so one backend must not be called from several threads at once.
    """

    name = "tensorrt"

    def __init__(self, *, engines: Mapping[str, _Engine], stream, scratch, config: dict, precision: str,
                 device: int, fusion: Mapping[str, "FusionReport"], graphs: Iterable[str] = (),
                 loader=None, manifest=None):
        self.engines = dict(engines)
        self.graphs = set(graphs) | set(self.engines)  # every graph of the model dir
        self._loader = loader  # graph -> (_Engine, FusionReport), for graphs loaded on first use
        self.stream = stream
        self.scratch = scratch
        self.config = config
        self.manifest = manifest  # the model dir's Manifest (defaults, graphs); None for hand-made backends
        self.precision = precision
        self.device = device
        self.fusion = dict(fusion)
        self._cond_cache: dict[str, tuple[np.ndarray, Any]] = {}

    # -- construction ------------------------------------------------------
    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, precision: str = "fp16",
                       cache_dir: str | os.PathLike | None = None, device: int = 0, *,
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
            device: CUDA device index.
            graphs: graphs to build now (default: all but ``dit``, which the
                guided loop does not need; any graph is loaded on first use).
            max_batch: largest batch (parts at once); None keeps the manifest's profile.
            max_query_points: largest decoder query count per call (longer calls are
                split); None keeps the manifest's profile.
            optimization_level: builder optimization level (0-5).
            workspace: builder workspace limit in bytes (None: TensorRT default).
            verify_hashes: check the graphs against the manifest's sha256 first.

        Raises:
            BackendUnavailable: tensorrt or cuda-python is missing (with the pip hint).
            ModelDirError / InputFileNotFound: the model dir is unusable.
            EngineError: a build, deserialization or CUDA call failed.
        """
        from holopart_infer.engines import cuda
        from holopart_infer.manifest import load_manifest

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
    def num_tokens(self) -> int:
        """The part encoder's num_tokens (condition tokens per part)."""
        return int(self.config["part_encoder"]["num_tokens"])

    def __repr__(self) -> str:
        return (f"TensorRTBackend(device={self.device}, precision={self.precision!r}, "
                f"engines={sorted(self.engines)})")

    # -- tensors -----------------------------------------------------------
    def to_device(self, array, graph: str, name: str):
        """A host array (or a DeviceTensor, passed through) as ``graph``'s input ``name``."""
        from holopart_infer.engines.cuda import DeviceTensor

        if isinstance(array, DeviceTensor):
            return array
        dtype, bf16 = self._engine(graph).dtypes[name]
        return DeviceTensor.from_host(_to_engine_dtype(array, dtype, bf16), self.stream)

    def to_host(self, tensor, graph: str, name: str) -> np.ndarray:
        return _from_engine_dtype(tensor.to_host(), self._engine(graph).dtypes[name][1])

    def _run(self, graph: str, **inputs) -> dict[str, Any]:
        eng = self._engine(graph)
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
        eng = self._engine(g)
        scalars = {k: np.asarray([v], dtype=np.float32) for k, v in (("timestep", t), ("dt", dt),
                                                                      ("guidance", guidance))}
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
        if pts.ndim != 3 or pts.shape[2] != 3:
            raise ShapeError(f"decoder_query: points must be (B, Q, 3), got {pts.shape}")
        if pts.shape[0] != keys.shape[0]:
            raise ShapeError(f"decoder_query: points batch {pts.shape[0]} != key/value batch {keys.shape[0]}")
        eng = self._engine("vae_query")
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


def load(model_dir: str | os.PathLike, device: str | int = "cuda", **kw) -> TensorRTBackend:
    """Registry factory: :meth:`TensorRTBackend.from_model_dir` with a device string."""
    return TensorRTBackend.from_model_dir(model_dir, device=_device_index(device), **kw)
