"""ONNX -> serialized TensorRT engine with the TensorRT 10 builder (strongly typed
network, one optimization profile, timing cache, detailed layer information)."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Mapping

from holopart_infer.fsafe import atomic_write, file_lock
from holopart_infer.engines.tensorrt.profiles import ShapeRange
from holopart_infer.errors import EngineError, InputError, InputFileNotFound, missing_extra
from holopart_infer.engines.registry import PRECISIONS

log = logging.getLogger("holopart_infer")

#: Default builder optimization level (TensorRT's own default is 3; 0-5).
OPTIMIZATION_LEVEL = 3

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
