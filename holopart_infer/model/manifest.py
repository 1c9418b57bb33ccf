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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from holopart_infer import fsafe
from holopart_infer.engines.registry import PRECISIONS
from holopart_infer.errors import InputError, InputFileNotFound, ModelDirError

FORMAT = "holopart-infer-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
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

    @property
    def up_axis(self) -> str:
        """The up axis of the frame the model was trained in (``"up_axis"`` in the manifest,
        one of :data:`holopart_infer.io.frames.UP_AXES`; ``"+y"``, HoloPart's convention, when absent)."""
        from holopart_infer.io.frames import MODEL_DEFAULT_UP, check_up

        value = self.raw.get("up_axis", MODEL_DEFAULT_UP)
        try:
            return check_up(value, "'up_axis'")
        except InputError as e:
            raise ModelDirError(f"{self.model_dir / MANIFEST_NAME}: {e}. Fix the field or re-export the "
                                "model.") from None

    def graph(self, name: str) -> GraphSpec:
        try:
            return self.graphs[name]
        except KeyError:
            raise ModelDirError(f"{self.model_dir / MANIFEST_NAME}: no graph named '{name}' "
                                f"(graphs: {', '.join(self.graphs)})") from None


def _fail(path: Path, msg: str) -> ModelDirError:
    return ModelDirError(f"{path}: {msg}")


def _inside(mpath: Path, graph: str, key: str, rel) -> str:
    """A path from the manifest: relative, and inside the model dir once ``..`` is applied (a
    manifest is data; it may not make the runtime read files elsewhere)."""
    if not isinstance(rel, str) or not rel:
        raise _fail(mpath, f"graph '{graph}': {key} must be a path inside the model directory, got {rel!r}. "
                           "Re-export the model.")
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep) or rel.startswith("~"):
        raise _fail(mpath, f"graph '{graph}': {key} {rel!r} points outside the model directory "
                           f"{mpath.parent}; every file a manifest names must lie inside it (as export "
                           "writes them: onnx/<graph>.onnx). Re-export the model or copy its files in.")
    return norm


def _check_config_fields(mpath: Path, config: dict) -> None:
    """Every field the networks are built from is present, of its type and in its range."""
    from holopart_infer.model.checkpoint import REQUIRED_CONFIG_FIELDS, config_field_problem

    for comp, keys in REQUIRED_CONFIG_FIELDS.items():
        for key in keys:
            if key not in config[comp]:
                raise _fail(mpath, f"config.{comp}.{key} is missing. Re-export the model.")
            problem = config_field_problem(key, config[comp][key])
            if problem:
                value = config[comp][key]
                raise _fail(mpath, f"config.{comp}.{key} must be {problem}, got {value!r} "
                                   f"({type(value).__name__}). Re-export the model.")


def _graph_spec(model_dir: Path, mpath: Path, name: str, g: dict, verify_hashes: bool,
                record: "fsafe.HashRecord | None") -> GraphSpec:
    try:
        file = model_dir / _inside(mpath, name, "file", g["file"])
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
        if not verify_hashes:
            return
        if not fsafe.is_sha256(sha):
            raise ModelDirError(f"{mpath}: {what}: the sha256 of {kind} {p.name} is {sha!r}, not a real "
                                "SHA-256 (missing, zeroed or a placeholder), so the file cannot be checked. "
                                "Re-export the model with `holopart-infer export`, or load it with "
                                "verify_integrity=False (CLI --no-verify) if you trust it.")
        actual = record.sha256(p) if record is not None else fsafe.sha256_file(p)
        if actual != sha:
            raise ModelDirError(f"{model_dir}: {what}: {kind} {p} does not match the sha256 in the "
                                f"manifest {mpath} (corrupt or modified: sha256 {actual[:16]}..., manifest "
                                f"{sha[:16]}...). Re-export the model or copy it again.")

    check_file(file, nbytes, sha, "graph file")
    ext_path = ext_bytes = None
    if ext:
        try:
            ext_path = model_dir / _inside(mpath, name, "external_data.file", ext["file"])
            ext_bytes = int(ext["bytes"])
            ext_sha = ext.get("sha256", "")
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(mpath, f"graph '{name}': malformed external_data entry ({e!r})") from e
        check_file(ext_path, ext_bytes, ext_sha, "external weights file")
    return GraphSpec(name, file, sha, nbytes, inputs, outputs, dict(g.get("profiles", {})), ext_path, ext_bytes)


def load_manifest(model_dir: str | os.PathLike, verify_hashes: bool = True,
                  required: tuple[str, ...] = GRAPH_NAMES, *, use_record: bool = True) -> Manifest:
    """Read and validate a model directory's manifest.

    Args:
        model_dir: the exported model directory.
        verify_hashes: check every graph and weights file against the manifest's
            sha256 (sizes are always checked). A zeroed or malformed hash is an
            error. Files already verified with the same path, size, mtime and
            ctime are not hashed again (:class:`holopart_infer.fsafe.HashRecord`
            in the user cache dir), so re-loading a full-size model stays cheap.
        required: graphs that must be present.
        use_record: consult and update the verified-hash record (False: hash
            every file now).

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        InputFileNotFound: ``model_dir`` does not exist.
        ModelDirError: missing or unreadable manifest, another format or
            format_version, missing/corrupt/modified graph files (the message
            names the graph and the file), a config that disagrees with the
            graphs, a precision the graphs' weights do not have.
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
    _check_config_fields(mpath, config)
    graphs_raw = raw.get("graphs")
    if not isinstance(graphs_raw, dict):
        raise _fail(mpath, "'graphs' is missing or not an object")
    missing = [g for g in required if g not in graphs_raw]
    if missing:
        raise _fail(mpath, f"graph(s) {', '.join(missing)} missing from the manifest. Re-export the model.")
    record = fsafe.HashRecord.default() if (verify_hashes and use_record) else None
    graphs = {name: _graph_spec(model_dir, mpath, name, g, verify_hashes, record)
              for name, g in graphs_raw.items()}
    if record is not None:
        record.save()
    _check_config_vs_graphs(mpath, config, graphs)
    if verify_hashes:
        for spec in graphs.values():
            _check_precision(mpath, precision, spec)
    return Manifest(model_dir, version, precision, config, dict(raw.get("source", {})), graphs, raw)


# (config component, field, graph, tensor, axis): the graph's declared size must equal the config's
_CONFIG_AXES = (
    ("transformer", "in_channels", "dit", "latents", -1),
    ("transformer", "in_channels", "guided_step", "latents", -1),
    ("transformer", "in_channels", "vae_kv", "latents", -1),
    ("transformer", "cross_attention_dim", "part_encoder", "part_cond", -1),
)


def _check_config_vs_graphs(mpath: Path, config: dict, graphs: dict[str, GraphSpec]) -> None:
    """The manifest's config and its graph declarations must agree (a hand-edited
    manifest otherwise fails deep inside a run, naming neither)."""
    for comp, key, graph, tensor, axis in _CONFIG_AXES:
        spec = graphs.get(graph)
        ts = None if spec is None else (spec.inputs.get(tensor) or spec.outputs.get(tensor))
        value = config.get(comp, {}).get(key)
        if ts is None or value is None or not ts.shape:
            continue
        declared = ts.shape[axis]
        if isinstance(declared, int) and (not isinstance(value, int) or isinstance(value, bool)
                                          or value != declared):
            raise ModelDirError(f"{mpath}: config.{comp}.{key} is {value!r} but graph '{graph}' declares "
                                f"'{tensor}' with size {declared} on that axis; the manifest does not describe "
                                f"the graphs in {mpath.parent}. Re-export the model.")


def _check_precision(mpath: Path, precision: str, spec: GraphSpec) -> None:
    found = onnx_weight_precision(spec.path)
    if found is not None and found != precision:
        raise ModelDirError(f"{mpath}: precision is {precision!r} but the weights of graph '{spec.name}' "
                            f"({spec.path}) are mostly {found}; the manifest does not describe the graphs. "
                            "Re-export the model.")


_ONNX_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


def onnx_weight_precision(path: str | os.PathLike) -> str | None:
    """The floating-point type holding most weight elements of an ONNX file
    ("fp32", "fp16", "bf16"), read from the initializers' headers only (their
    data is skipped); None when it has no floating-point initializers or the
    file cannot be parsed as ONNX."""
    import mmap

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    counts: dict[int, int] = {}
    try:
        for field_no, start, end in _pb_fields(data, 0, len(data)):
            if field_no != 7:  # ModelProto.graph
                continue
            for gf, gs, ge in _pb_fields(data, start, end):
                if gf != 5:  # GraphProto.initializer
                    continue
                dims, dtype = [], 0
                for tf, ts, te in _pb_fields(data, gs, ge, scalars=True):
                    if tf == 1:  # dims: packed (LEN) or one varint per dim
                        dims.extend(_pb_varints(data, ts, te) if te is not None else [ts])
                    elif tf == 2 and te is None:
                        dtype = ts
                n = 1
                for d in dims:
                    n *= d
                counts[dtype] = counts.get(dtype, 0) + n
    except (IndexError, ValueError):
        return None
    finally:
        data.close()
    floats = {t: n for t, n in counts.items() if t in _ONNX_FLOAT_TYPES}
    if not floats:
        return None
    return _ONNX_FLOAT_TYPES[max(floats, key=floats.get)]


def _pb_varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _pb_varints(buf: bytes, i: int, end: int) -> list[int]:
    out = []
    while i < end:
        v, i = _pb_varint(buf, i)
        out.append(v)
    return out


def _pb_fields(buf: bytes, i: int, end: int, scalars: bool = False):
    """Protocol-buffer fields in buf[i:end]: (field number, start, end) for
    length-delimited ones; with ``scalars``, (field number, value, None) for varints."""
    while i < end:
        key, i = _pb_varint(buf, i)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _pb_varint(buf, i)
            if scalars:
                yield field_no, v, None
        elif wire == 2:
            n, i = _pb_varint(buf, i)
            if i + n > end:
                raise ValueError("truncated field")
            yield field_no, i, i + n
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def write_manifest(model_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` (atomically) into ``model_dir``; used by the exporter."""
    path = Path(model_dir) / MANIFEST_NAME
    return fsafe.atomic_write(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8"))
