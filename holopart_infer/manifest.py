"""The exported model directory: ``manifest.json`` + ``onnx/<graph>.onnx``.

Layout (docs/contracts.md, docs/onnx.md)::

    MODEL_DIR/manifest.json
    MODEL_DIR/onnx/<graph>.onnx        (+ <graph>.onnx.data: external weights)

The manifest carries every component config, so the runtime never needs the
checkpoint, and per graph its file, size, sha256, the inputs/outputs with
symbolic shapes, and TensorRT min/opt/max shape profiles. Standard library
only: the runtime reads it without numpy, torch or onnx.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from holopart_infer.errors import InputFileNotFound, ModelDirError

FORMAT = "holopart-infer-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16")
GRAPH_NAMES = ("part_encoder", "dit", "guided_step", "vae_kv", "vae_query")
CONFIG_COMPONENTS = ("transformer", "vae", "part_encoder", "scheduler")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input/output: dtype name (numpy spelling) and shape (ints or axis names)."""
    name: str
    dtype: str
    shape: tuple

    @classmethod
    def from_json(cls, name: str, d: dict) -> "TensorSpec":
        return cls(name, str(d["dtype"]), tuple(d["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    path: Path  # absolute path of the .onnx file
    sha256: str
    nbytes: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    profiles: dict = field(default_factory=dict)
    external_data: Path | None = None
    external_nbytes: int | None = None


@dataclass(frozen=True)
class Manifest:
    model_dir: Path
    format_version: int
    precision: str
    config: dict
    source: dict
    graphs: dict[str, GraphSpec]
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def defaults(self) -> dict:
        """The model's recommended :class:`holopart_infer.pipeline.CompletionOptions`
        values (``"defaults"`` in the manifest; {} when absent)."""
        d = self.raw.get("defaults", {})
        if not isinstance(d, dict):
            raise ModelDirError(f"{self.model_dir / MANIFEST_NAME}: 'defaults' must be an object, "
                                f"got {type(d).__name__}. Re-export the model.")
        return dict(d)

    def graph(self, name: str) -> GraphSpec:
        try:
            return self.graphs[name]
        except KeyError:
            raise ModelDirError(f"{self.model_dir / MANIFEST_NAME}: no graph named '{name}' "
                                f"(graphs: {', '.join(self.graphs)})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fail(path: Path, msg: str) -> ModelDirError:
    return ModelDirError(f"{path}: {msg}")


def _graph_spec(model_dir: Path, mpath: Path, name: str, g: dict, verify_hashes: bool) -> GraphSpec:
    try:
        file = model_dir / g["file"]
        inputs = {k: TensorSpec.from_json(k, v) for k, v in g["inputs"].items()}
        outputs = {k: TensorSpec.from_json(k, v) for k, v in g["outputs"].items()}
        nbytes, sha = int(g["bytes"]), str(g["sha256"])
        ext = g.get("external_data")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _fail(mpath, f"graph '{name}': malformed entry ({e!r}). Re-export the model "
                           "with `holopart-infer export`.") from e
    what = f"graph '{name}'"

    def check_file(p: Path, expected: int, sha: str | None, kind: str) -> None:
        if not p.is_file():
            raise ModelDirError(f"{model_dir}: {what}: {kind} {p} is missing. The model directory is "
                                "incomplete; re-export it with `holopart-infer export` or copy it again.")
        size = p.stat().st_size
        if size != expected:
            raise ModelDirError(f"{model_dir}: {what}: {kind} {p} is corrupt or truncated "
                                f"({size} bytes, manifest says {expected}). Re-export or copy it again.")
        if verify_hashes and sha is not None and sha256_file(p) != sha:
            raise ModelDirError(f"{model_dir}: {what}: {kind} {p} does not match the sha256 in the "
                                "manifest (corrupt or modified). Re-export or copy it again.")

    check_file(file, nbytes, sha, "graph file")
    ext_path = ext_bytes = None
    if ext:
        try:
            ext_path, ext_bytes = model_dir / ext["file"], int(ext["bytes"])
            ext_sha = ext.get("sha256")
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(mpath, f"graph '{name}': malformed external_data entry ({e!r})") from e
        check_file(ext_path, ext_bytes, ext_sha, "external weights file")
    return GraphSpec(name, file, sha, nbytes, inputs, outputs, dict(g.get("profiles", {})), ext_path, ext_bytes)


def load_manifest(model_dir: str | os.PathLike, verify_hashes: bool = False,
                  required: tuple[str, ...] = GRAPH_NAMES) -> Manifest:
    """Read and validate a model directory's manifest.

    Args:
        model_dir: the exported model directory.
        verify_hashes: also recompute every file's sha256 (slow for full-size
            models; sizes are always checked).
        required: graphs that must be present.

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        InputFileNotFound: ``model_dir`` does not exist.
        ModelDirError: missing or unreadable manifest, another format or
            format_version, missing/corrupt graph files (the message names the
            graph and the file).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputFileNotFound(f"model directory {model_dir} does not exist "
                                "(create one with `holopart-infer export WEIGHTS_DIR OUT_DIR`)")
    mpath = model_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise ModelDirError(f"{mpath}: missing; {model_dir} is not an exported model directory "
                            "(create one with `holopart-infer export WEIGHTS_DIR OUT_DIR`)")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(mpath, f"unreadable manifest ({e}). Re-export the model.") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise _fail(mpath, f"not a holopart-infer manifest (format {got!r}, expected {FORMAT!r})")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(mpath, f"format_version {version!r} is not supported: this holopart-infer reads "
                           f"format_version {FORMAT_VERSION}. Re-export the model with this version "
                           "(`holopart-infer export WEIGHTS_DIR OUT_DIR --overwrite`), or install the "
                           "holopart-infer release that wrote it.")
    precision = raw.get("precision")
    if precision not in PRECISIONS:
        raise _fail(mpath, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    config = raw.get("config")
    if not isinstance(config, dict) or any(not isinstance(config.get(c), dict) for c in CONFIG_COMPONENTS):
        raise _fail(mpath, f"'config' must hold the component configs {', '.join(CONFIG_COMPONENTS)}")
    graphs_raw = raw.get("graphs")
    if not isinstance(graphs_raw, dict):
        raise _fail(mpath, "'graphs' is missing or not an object")
    missing = [g for g in required if g not in graphs_raw]
    if missing:
        raise _fail(mpath, f"graph(s) {', '.join(missing)} missing from the manifest. Re-export the model.")
    graphs = {name: _graph_spec(model_dir, mpath, name, g, verify_hashes) for name, g in graphs_raw.items()}
    return Manifest(model_dir, version, precision, config, dict(raw.get("source", {})), graphs, raw)


def write_manifest(model_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` (atomically) into ``model_dir``; used by the exporter."""
    path = Path(model_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
