"""Reader for checkpoints in the published (diffusers-style) HoloPart layout.

Needs numpy only, so the torch-free runtime can read configs and tensors too::

    model_index.json
    part_encoder/config.json  part_encoder/diffusion_pytorch_model[.fp16].safetensors[.index.json]
    transformer/...           vae/...            scheduler/scheduler_config.json

Tensors are memory-mapped; fp32, fp16 and bf16 are supported (bf16 is widened to
fp32 on request, since numpy has no bfloat16).
"""
from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from holopart_infer.errors import CheckpointError, InputError, InputFileNotFound

log = logging.getLogger("holopart_infer")

NETWORK_COMPONENTS = ("part_encoder", "transformer", "vae")
WEIGHTS_NAME = "diffusion_pytorch_model"

# safetensors dtype tag -> (numpy dtype to read the raw bytes with, item size)
_SAFETENSORS_DTYPES = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # raw bits; widened by _bf16_to_f32
    "F64": (np.dtype("<f8"), 8),
}
SUPPORTED_DTYPES = ("F32", "F16", "BF16")

# Required fields of each component's config, by component. Values are always
# read from the files; this list only turns a missing field into a clear error.
REQUIRED_CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "transformer": (
        "num_attention_heads", "width", "in_channels", "num_layers",
        "cross_attention_dim", "cross_attention_2_dim",
        "use_cross_attention", "use_cross_attention_2",
    ),
    "vae": (
        "latent_channels", "num_attention_heads", "width_decoder",
        "num_layers_decoder", "embed_frequency", "embed_include_pi",
    ),
    "part_encoder": (
        "position_channels", "part_feature_channels", "whole_feature_channels",
        "dim", "num_attention_heads", "num_layers", "num_tokens",
        "embed_frequency", "embed_include_pi",
    ),
    "scheduler": ("num_train_timesteps", "shift"),
}
# Fields whose type is not a positive integer (everything else listed above is one).
_FIELD_KINDS = {"use_cross_attention": "bool", "use_cross_attention_2": "bool", "embed_include_pi": "bool",
                "shift": "number"}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even), returned as uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors tag: F32, F16, BF16
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in file
    end: int


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header; return (header, byte offset of the data)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: not a safetensors file (only {len(head)} bytes). "
                    "Re-download or re-export the checkpoint."
                )
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors header (header length "
                    f"{n}, file size {size}). Re-download the file."
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights file: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (not valid JSON): {e}. Re-download the file."
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object).")
    return header, 8 + n


def scan_safetensors(path: Path) -> dict[str, TensorInfo]:
    """List the tensors of one safetensors file, validating offsets against its size."""
    header, data_start = _read_header(path)
    size = path.stat().st_size
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt header entry for tensor '{name}': {meta!r}") from err
        if dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(
                f"{path}: tensor '{name}' has dtype {dtype}; supported dtypes are "
                f"{', '.join(SUPPORTED_DTYPES)}. Convert the checkpoint to fp32/fp16/bf16."
            )
        itemsize = _SAFETENSORS_DTYPES[dtype][1]
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if e - b != expected or b < 0:
            raise CheckpointError(
                f"{path}: tensor '{name}' spans {e - b} bytes but shape {list(shape)} of "
                f"{dtype} needs {expected}. The file is corrupt."
            )
        if data_start + e > size:
            raise CheckpointError(
                f"{path}: truncated: tensor '{name}' ends at byte {data_start + e} but the file "
                f"has {size} bytes. Re-download the file."
            )
        out[name] = TensorInfo(name, dtype, shape, path, data_start + b, data_start + e)
    return out


def load_tensor(info: TensorInfo, dtype: np.dtype | str | None = np.float32) -> np.ndarray:
    """Read one tensor. ``dtype=None`` keeps fp32/fp16 as stored (bf16 -> fp32)."""
    raw_dtype, _ = _SAFETENSORS_DTYPES[info.dtype]
    count = int(np.prod(info.shape, dtype=np.int64))
    arr = np.memmap(info.file, dtype=raw_dtype, mode="r", offset=info.start, shape=(count,)) if count else np.zeros(0, raw_dtype)
    arr = np.asarray(arr)
    if info.dtype == "BF16":
        arr = bf16_to_f32(arr)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr.reshape(info.shape)


def weight_files(component_dir: Path, variant: str | None = None) -> list[Path]:
    """Resolve the safetensors file(s) of a component folder.

    Order: the plain file, its sharded index, then the variant (default fp16)
    file and its index. ``variant="fp16"`` prefers the fp16 files.
    """
    names = [f"{WEIGHTS_NAME}.safetensors", f"{WEIGHTS_NAME}.safetensors.index.json"]
    var_names = [f"{WEIGHTS_NAME}.{variant or 'fp16'}.safetensors",
                 f"{WEIGHTS_NAME}.{variant or 'fp16'}.safetensors.index.json"]
    order = var_names + names if variant else names + var_names
    for name in order:
        p = component_dir / name
        if p.is_file():
            if name.endswith(".index.json"):
                return _shards_from_index(p)
            return [p]
    raise CheckpointError(
        f"{component_dir}: no weights found; expected one of {', '.join(order)}. "
        "Is this a HoloPart checkpoint folder in the published layout?"
    )


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: unreadable shard index ({e}).") from e
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{index_path}: shard file(s) missing: {', '.join(missing)}.")
    return [index_path.parent / s for s in shards]


@dataclass
class ComponentWeights:
    """Tensors of one component (lazy: nothing is read until asked)."""

    name: str
    directory: Path
    config: dict
    files: list[Path]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}

    def load(self, names: Iterable[str] | None = None, dtype=np.float32) -> dict[str, np.ndarray]:
        """Read tensors (all by default).

        Raises:
            CheckpointError: a tensor holds NaN or inf (naming the tensor and the file).
        """
        keys = list(self.tensors) if names is None else list(names)
        out = {}
        for k in keys:
            arr = out[k] = load_tensor(self.tensors[k], dtype)
            check_finite(arr, self.tensors[k])
        return out


def check_finite(arr: np.ndarray, info: TensorInfo) -> None:
    """Raise :class:`CheckpointError` if a weight tensor holds NaN or inf."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CheckpointError(
            f"{info.file}: tensor '{info.name}' holds {bad} non-finite value(s) (NaN or inf) out of {arr.size}; "
            "the checkpoint is corrupt or came from a diverged training run. Use another checkpoint.")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}.")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {what}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object.")
    return data


def read_config(root: str | os.PathLike, component: str) -> dict:
    """Read and validate ``component``'s config from a checkpoint folder."""
    root = Path(root)
    fname = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = root / component / fname
    if not (root / component).is_dir():
        raise CheckpointError(
            f"{root}: missing component folder '{component}/' (expected the published "
            f"layout: {', '.join(NETWORK_COMPONENTS)}, scheduler)."
        )
    cfg = read_json(path, f"{component} config")
    missing = [k for k in REQUIRED_CONFIG_FIELDS.get(component, ()) if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}.")
    for key in REQUIRED_CONFIG_FIELDS.get(component, ()):
        problem = _field_problem(_FIELD_KINDS.get(key, "count"), cfg[key])
        if problem:
            raise CheckpointError(f"{path}: field '{key}' must be {problem}, got {cfg[key]!r} "
                                  f"({type(cfg[key]).__name__}). Fix the file or download the checkpoint again.")
    return cfg


#: largest value of a count field (layers, heads, widths, tokens, timesteps): the published model's
#: largest is 2048; a larger value is no real model, and would allocate or loop without end
CONFIG_COUNT_MAX = 2**20


def config_field_problem(key: str, value) -> str | None:
    """What config field ``key``'s ``value`` should have been, or None when it is fine."""
    return _field_problem(_FIELD_KINDS.get(key, "count"), value)


def _field_problem(kind: str, value) -> str | None:
    """What ``value`` should have been, or None when it is fine."""
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0
        return None if ok else "a finite number > 0"
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if ok and value > CONFIG_COUNT_MAX:
        return f"an integer in [1, {CONFIG_COUNT_MAX}] (a larger one is no real model)"
    return None if ok else "an integer >= 1"


def read_component(root: str | os.PathLike, component: str, variant: str | None = None) -> ComponentWeights:
    """Config + tensor index of one network component (no tensor data read yet)."""
    root = Path(root)
    cfg = read_config(root, component)
    files = weight_files(root / component, variant)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in scan_safetensors(f).items():
            if name in tensors:
                raise CheckpointError(f"{f}: tensor '{name}' also appears in {tensors[name].file}.")
            tensors[name] = info
    return ComponentWeights(component, root / component, cfg, files, tensors)


@dataclass
class Checkpoint:
    """A whole checkpoint folder: configs of every component and lazy tensors."""

    root: Path
    model_index: dict
    components: dict[str, ComponentWeights]
    scheduler: dict

    def __getitem__(self, name: str) -> ComponentWeights:
        return self.components[name]


def open_checkpoint(root: str | os.PathLike, variant: str | None = None,
                    components: Iterable[str] = NETWORK_COMPONENTS) -> Checkpoint:
    """Open a checkpoint folder in the published layout.

    Raises:
        InputFileNotFound: the folder does not exist.
        CheckpointError: a file is missing, unreadable, truncated or has an
            unsupported dtype (the message names the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFound(
            f"checkpoint folder {root} does not exist. Pass the folder that holds "
            "model_index.json, part_encoder/, transformer/, vae/ and scheduler/."
        )
    model_index = read_json(root / "model_index.json", "model_index.json (the pipeline index)")
    comps = {c: read_component(root, c, variant) for c in components}
    scheduler = read_config(root, "scheduler")
    return Checkpoint(root, model_index, comps, scheduler)


def check_parameters(component: ComponentWeights, expected: Mapping[str, tuple[int, ...]],
                     ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Compare a component's tensors with the parameters a model expects.

    Raises CheckpointError naming every missing/unexpected parameter and every
    shape mismatch (name, expected, actual).
    """
    have = {k: v for k, v in component.shapes().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected))
    mismatched = [
        f"{k}: expected {list(expected[k])}, checkpoint has {list(have[k])}"
        for k in sorted(set(expected) & set(have)) if tuple(expected[k]) != tuple(have[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing parameter(s): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected parameter(s): {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:20]))
    if problems:
        raise CheckpointError(
            f"{component.directory}: weights do not match {component.name}/config.json: "
            + " | ".join(problems)
            + ". Check that the config and the weights belong to the same checkpoint."
        )


def checkpoint_inference_defaults(path: str | os.PathLike) -> dict:
    """``inference_defaults`` of a checkpoint's model_index.json ({} when absent): the
    model's recommended CompletionOptions, as a model dir's manifest ``defaults``."""
    index = Path(path) / "model_index.json"
    try:
        d = json.loads(index.read_text(encoding="utf-8")).get("inference_defaults", {})
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{index}: cannot read it ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{index}: inference_defaults must be an object, got {type(d).__name__}")
    return d


def checkpoint_up_axis(path: str | os.PathLike) -> str:
    """The top-level ``"up_axis"`` of a checkpoint's model_index.json: the up axis of the frame
    the model was trained in (:data:`holopart_infer.io.frames.UP_AXES`); ``"+y"``, HoloPart's
    convention, when absent."""
    from holopart_infer.io.frames import MODEL_DEFAULT_UP, check_up

    index = Path(path) / "model_index.json"
    try:
        value = json.loads(index.read_text(encoding="utf-8")).get("up_axis", MODEL_DEFAULT_UP)
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{index}: cannot read it ({e})") from None
    try:
        return check_up(value, "up_axis")
    except InputError as e:
        raise CheckpointError(f"{index}: {e}") from None
