"""Checkpoint -> model directory (manifest.json + onnx/*.onnx).

Each graph is declared in :mod:`holopart_infer.export.graphs` (names, dynamic axes, sample
inputs, TensorRT profiles). Export runs on standard-layout copies of the
faithful networks (the checkpoint's odd head split folded into the weights),
with torch's dynamo exporter at opset 18, where scaled dot-product attention
lowers to Mul(sqrt scale) -> MatMul -> Softmax -> MatMul, the pattern ORT's
attention fusion and TensorRT's MHA fusion recognise (docs/onnx.md).

Every graph is validated before the directory appears: ``onnx.checker`` and an
ONNX Runtime run on inputs of other sizes than the trace's, compared with the
original-layout fp32 model. The directory is written to a temporary sibling
and renamed into place (:func:`holopart_infer.fsafe.atomic_dir`), so a failed or
interrupted export never leaves a half-written model; ``overwrite`` replaces only
a model directory that export made, never a folder that is, holds or lies inside
the checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch

from .graphs import GRAPH_NAMES, GraphDef, all_graphs
from holopart_infer.networks.load import TORCH_DTYPES, load_networks
from holopart_infer import __version__
from holopart_infer.errors import EngineError, InputError, InputFileNotFound, OutputError
from holopart_infer import fsafe
from holopart_infer.fsafe import sha256_file
from holopart_infer.model.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, load_manifest, write_manifest
from holopart_infer.verify import relative_error

log = logging.getLogger("holopart_infer")

OPSET = 18
# protobuf caps a single file at 2 GiB; stay clear of it
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# default number of latent tokens, used only for TensorRT's "opt" profile (the
# checkpoint does not record it; the graphs accept any T)
LATENT_TOKENS = 2048
# validation tolerance (relative error vs the fp32 faithful model)
TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1}


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _checkpoint_files(weights_dir: Path) -> dict[str, str]:
    """sha256 of every config and weights file of the checkpoint, by relative path."""
    out = {}
    for p in sorted(weights_dir.rglob("*")):
        if p.is_file() and (p.suffix in (".json", ".safetensors")):
            out[p.relative_to(weights_dir).as_posix()] = sha256_file(p)
    return out


def checkpoint_source(weights_dir: Path) -> dict:
    """The manifest's ``source``: the checkpoint folder's name (no path: a model dir names
    no folder of the machine that built it), ``sha256`` of each of its config and weights
    files by relative path, and ``content_sha256``, one digest of them all (the sha256 of
    the ``sha256`` object as sorted, compact JSON)."""
    files = _checkpoint_files(weights_dir)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
    return {"checkpoint": Path(weights_dir).resolve().name, "content_sha256": digest, "sha256": files}


def _export_graph(g: GraphDef, onnx_dir: Path, big: bool) -> Path:
    """Trace ``g`` and write onnx/<name>.onnx (+ .onnx.data when ``big``)."""
    gen = torch.Generator().manual_seed(0)
    sample = g.make_inputs(g.trace_sizes, gen)
    path = onnx_dir / f"{g.name}.onnx"
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its stages
            program = torch.onnx.export(
                g.module, sample, dynamo=True, opset_version=OPSET,
                input_names=[t.name for t in g.inputs], output_names=[t.name for t in g.outputs],
                dynamic_shapes=g.dynamic_shapes(), optimize=True, verbose=False,
            )
    if program is None:
        raise EngineError(f"graph '{g.name}': the ONNX exporter returned nothing")
    program.save(path, external_data=big)
    return path


def _set_dim_names(path: Path, g: GraphDef, big: bool) -> None:
    """Name the dynamic axes as the manifest does (B, T, K, N, Q) in the ONNX file too."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    decls = {t.name: t for t in (*g.inputs, *g.outputs)}
    for vi in (*model.graph.input, *model.graph.output):
        decl = decls.get(vi.name)
        if decl is None:
            raise EngineError(f"graph '{g.name}': unexpected graph tensor '{vi.name}'")
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(decl.shape):
            raise EngineError(f"graph '{g.name}': '{vi.name}' exported with rank {len(dims)}, "
                              f"declared {decl.shape}")
        for d, want in zip(dims, decl.shape):
            if isinstance(want, str):
                d.dim_param = want
            elif d.HasField("dim_value") and d.dim_value != want:
                raise EngineError(f"graph '{g.name}': '{vi.name}' exported with shape "
                                  f"{[x.dim_value or x.dim_param for x in dims]}, declared {decl.shape}")
    onnx.save(model, str(path))  # external data references are kept as they are


def _validate_graph(g: GraphDef, path: Path, precision: str) -> float:
    """onnx.checker + ORT vs the faithful fp32 model; returns the worst relative error."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))  # path form: works past 2 GB
    gen = torch.Generator().manual_seed(1)
    inputs = g.make_inputs(g.check_sizes, gen)
    with torch.inference_mode():
        expected = [t.float().numpy() for t in g.reference(tuple(t.float() for t in inputs))]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {d.name: t.numpy() for d, t in zip(g.inputs, inputs)})
    except Exception as e:  # ORT raises its own exception types
        if precision != "fp32" and "NOT_IMPLEMENTED" in str(e):
            log.warning("graph %s: ONNX Runtime's CPU provider has no %s kernel for an op of this "
                        "graph; checked with onnx.checker only (%s)", g.name, precision, str(e)[:200])
            return float("nan")
        raise EngineError(f"graph '{g.name}': ONNX Runtime failed on the exported graph: {e}") from e
    worst = 0.0
    for decl, ours, ref in zip(g.outputs, got, expected):
        err = relative_error(ours, ref)
        worst = max(worst, err)
        if not err <= TOLERANCES[precision]:
            raise EngineError(f"graph '{g.name}': output '{decl.name}' differs from the PyTorch model "
                              f"by relative error {err:.3e} (tolerance {TOLERANCES[precision]:g} for "
                              f"{precision}); the export is wrong")
    return worst


def export_model(weights_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp32",
                 overwrite: bool = False, progress: bool = True, *, validate: bool = True,
                 latent_tokens: int | None = None) -> Path:
    """Export a checkpoint to a model directory.

    The checkpoint's ``model_index.json`` ``inference_defaults`` (the options a
    model was trained for, e.g. holopart-mini's latent length) are checked and
    copied into the manifest as ``defaults``; the runtime applies them. Its
    top-level ``"up_axis"`` (the frame the model was trained in, ``"+y"`` when
    absent: HoloPart's convention) becomes the manifest's ``up_axis``.

    Args:
        weights_dir: checkpoint folder in the published layout.
        out_dir: model directory to create (manifest.json + onnx/).
        precision: "fp32", "fp16" or "bf16" weights and activations (norms and
            the guidance/Euler update in fp32; graph inputs/outputs are always
            float32).
        overwrite: replace ``out_dir`` if it is a model directory made by
            export (manifest.json and onnx/ only) or an empty folder; any other
            folder is refused.
        progress: show a progress bar per graph.
        validate: run onnx.checker and compare ONNX Runtime with PyTorch.
        latent_tokens: latent token count for the TensorRT "opt" profile
            (default: the checkpoint's inference default, else 2048).

    Returns:
        The model directory.

    Raises:
        InputError: bad precision.
        OutputExists: ``out_dir`` exists (or appeared meanwhile) and overwrite is False.
        OutputError: ``out_dir`` is, holds or lies inside the checkpoint, or is a
            folder export did not make.
        CheckpointError: unusable checkpoint.
        EngineError: export or validation of a graph failed.
    """
    if precision not in TORCH_DTYPES:
        raise InputError(f"precision must be one of {', '.join(TORCH_DTYPES)}, got {precision!r}")
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    if not weights_dir.is_dir():
        raise InputFileNotFound(f"checkpoint folder {weights_dir} does not exist")
    fsafe.check_output(out_dir, what="model directory", overwrite=overwrite, inputs=[weights_dir], directory=True)
    if out_dir.exists():
        replaceable_model_dir(out_dir)
    with _quiet_exporter_logs():
        return _export(weights_dir, out_dir, precision, overwrite, progress, validate, latent_tokens)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The exporter's optimizer logs every rewrite at INFO; keep the user's log readable."""
    quiet = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.WARNING,
             "torch.export": logging.WARNING,
             # "torchvision is not installed. Skipping torchvision::roi_align" (x3): not ours to report
             "torch.onnx._internal.exporter._registration": logging.ERROR}
    loggers = {logging.getLogger(n): lvl for n, lvl in quiet.items()}
    levels = {lg: lg.level for lg in loggers}
    for lg, lvl in loggers.items():
        lg.setLevel(lvl)
    try:
        yield
    finally:
        for lg, lvl in levels.items():
            lg.setLevel(lvl)


def _export(weights_dir: Path, out_dir: Path, precision: str, overwrite: bool, progress: bool,
            validate: bool, latent_tokens: int) -> Path:
    from holopart_infer.model.checkpoint import checkpoint_inference_defaults, checkpoint_up_axis
    from holopart_infer.pipeline import CompletionOptions

    dtype = TORCH_DTYPES[precision]
    defaults = checkpoint_inference_defaults(weights_dir)
    up_axis = checkpoint_up_axis(weights_dir)  # the frame the model was trained in; "+y" when unstated
    CompletionOptions.with_defaults(defaults, str(weights_dir / "model_index.json"))  # fail before exporting
    if latent_tokens is None:
        latent_tokens = int(defaults.get("latent_tokens", LATENT_TOKENS))
    bar = _Stages(len(GRAPH_NAMES) + 2, progress)
    bar.set_description("load checkpoint")
    nets = load_networks(weights_dir, precision="fp32")  # the faithful reference, original layout
    graphs = all_graphs(nets, dtype, latent_tokens)
    bar.update(1)

    try:
        with fsafe.atomic_dir(out_dir, replace_if=replaceable_model_dir if overwrite else None) as tmp:
            onnx_dir = tmp / "onnx"
            onnx_dir.mkdir()
            entries: dict[str, dict] = {}
            for g in graphs:
                fsafe.check_interrupt()
                bar.set_description(f"export {g.name}")
                t0 = time.perf_counter()
                big = _param_bytes(g.module) > EXTERNAL_DATA_THRESHOLD
                path = _export_graph(g, onnx_dir, big)
                _set_dim_names(path, g, big)
                err = _validate_graph(g, path, precision) if validate else float("nan")
                entry = {
                    "file": path.relative_to(tmp).as_posix(),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                    "inputs": {t.name: t.to_json() for t in g.inputs},
                    "outputs": {t.name: t.to_json() for t in g.outputs},
                    "profiles": g.profiles(),
                    "validation": {"rel_error_vs_torch_fp32": None if err != err else err,
                                   "check_sizes": g.check_sizes},
                }
                data = path.with_name(path.name + ".data")
                if data.exists():
                    entry["external_data"] = {"file": data.relative_to(tmp).as_posix(),
                                              "bytes": data.stat().st_size, "sha256": sha256_file(data)}
                entries[g.name] = entry
                log.info("exported %s in %.1fs (validation rel err %s)", g.name, time.perf_counter() - t0,
                         "n/a" if err != err else f"{err:.2e}")
                bar.update(1)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "precision": precision,
                "io_dtype": "float32",
                "exporter": {"holopart_infer": __version__, "torch": torch.__version__, "opset": OPSET},
                "source": checkpoint_source(weights_dir),
                "config": {
                    "transformer": _asdict(nets.transformer.cfg),
                    "vae": _asdict(nets.vae.cfg),
                    "part_encoder": _asdict(nets.part_encoder.cfg),
                    "scheduler": dict(nets.scheduler),
                },
                "latent_tokens": latent_tokens,
                "up_axis": up_axis,
                "defaults": defaults,
                "graphs": entries,
            }
            bar.set_description("write manifest")
            write_manifest(tmp, manifest)
            load_manifest(tmp, verify_hashes=False, required=GRAPH_NAMES)  # the runtime can read it
            bar.update(1)
    finally:
        bar.close()
    log.info("model directory %s (%s) written: %s", out_dir, precision, ", ".join(GRAPH_NAMES))
    return out_dir


class _Stages:
    """One progress bar over the export's stages (load, each graph, manifest) on stderr; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", leave=True)

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"export: {text}")

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def replaceable_model_dir(path: Path) -> None:
    """Raise unless ``path`` may be replaced by an export: an empty folder, or a
    model directory export made (manifest.json of this format, onnx/ graphs) and
    nothing else, so a user's folder is never deleted by ``--overwrite``."""
    if not path.is_dir():
        raise OutputError(f"model directory {path} exists and is not a folder; choose another path")
    items = sorted(p.name for p in path.iterdir())
    if not items:
        return
    mpath = path / MANIFEST_NAME
    try:
        made_by_export = json.loads(mpath.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        made_by_export = False
    extra = [n for n in items if n not in (MANIFEST_NAME, "onnx")]
    onnx_dir = path / "onnx"
    if onnx_dir.is_dir():
        extra += [f"onnx/{p.name}" for p in onnx_dir.iterdir()
                  if not (p.is_file() and (p.name.endswith(".onnx") or ".onnx.data" in p.name))]
    if not made_by_export or extra:
        why = (f"it holds {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}, which export did not write"
               if made_by_export else f"it is not a model directory made by export (no valid {MANIFEST_NAME})")
        raise OutputError(f"model directory {path} exists and --overwrite (overwrite=True) replaces only a model "
                          f"directory made by export: {why}. Choose another output folder, or move it away first")
