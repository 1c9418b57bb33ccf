"""The Python API: load a model, complete the parts of an object.

    import holopart_infer as hp
    model = hp.load("model_dir")                 # backend="auto", device="auto"
    result = model.complete("chair.glb", seed=0)  # or a Parts object
    result.save("chair_completed.glb")
    print(model.backend_name, result.timings)

A *model dir* (manifest.json + ONNX graphs, made by ``holopart-infer export``)
runs on ONNX Runtime or TensorRT without torch. A *checkpoint dir* (the
published layout) runs on the optimized PyTorch path (the ``[torch]`` extra).
Which backend runs what is :mod:`holopart_infer.engines`' business: :func:`load`
asks :func:`holopart_infer.engines.open_backend` and wraps the backend it gets.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from holopart_infer import constants, sampler
from holopart_infer.errors import EmptyResult, InputError, ModelDirError
from holopart_infer.extract import QUERY_CHUNK_POINTS
from holopart_infer.tokens import select_tokens

log = logging.getLogger("holopart_infer")

# progress(stage, done, total)
Progress = Callable[[str, int, int], None]


def _option(default, help: str, *, kind: type, lo=None, hi=None, lo_open: bool = False, optional: bool = False,
            cli: str | None = "", off_flag: str | None = None, off_help: str = ""):
    """A :class:`CompletionOptions` field with what validation and the CLI need.

    Args:
        default: the library default.
        help: one line for docs and ``--help``.
        kind: int, float or bool.
        lo, hi: accepted range (inclusive unless ``lo_open``); None: unbounded.
        optional: None is accepted (and means "off").
        cli: the flag (``""``: ``--`` + the name with dashes; None: API only).
        off_flag: a flag that turns the option off (None for ``optional``, False for bools).
    """
    return field(default=default, metadata=dict(help=help, kind=kind, lo=lo, hi=hi, lo_open=lo_open,
                                                optional=optional, cli=cli, off_flag=off_flag, off_help=off_help))


@dataclass
class CompletionOptions:
    """Knobs of :meth:`HoloPart.complete` (reference-script defaults where they exist).

    Each field's metadata (help, type, accepted range, CLI flag) is the single
    source of :meth:`validate`, the CLI's flags and their ``--help``
    (:func:`option_fields`).
    """

    steps: int = _option(sampler.DEFAULT_STEPS, "Euler steps of the sampler (reference 50)", kind=int, lo=1)
    guidance: float = _option(sampler.DEFAULT_GUIDANCE, "classifier-free guidance scale (reference 3.5; <= 1 "
                              "disables it)", kind=float, lo=0.0)
    seed: int = _option(0, "seeds surface sampling, token selection and the initial noise", kind=int, lo=0,
                        hi=constants.SEED_MAX)
    depth: int = _option(constants.DEFAULT_DEPTH, "octree depth of extraction: the final grid has 2^depth-8 cells "
                         "per axis (reference 9 -> 504)", kind=int, lo=constants.DEPTH_MIN, hi=constants.DEPTH_MAX)
    parts_per_batch: int = _option(8, "parts denoised and decoded together (reference 8)", kind=int, lo=1)
    decimate: int | None = _option(10000, "target face count per part (reference 10000)", kind=int,
                                   lo=constants.MIN_DECIMATE_FACES, optional=True, off_flag="--no-decimate",
                                   off_help="keep the full marching-cubes mesh (decimate=None)")
    num_points: int = _option(constants.DEFAULT_NUM_POINTS, "surface samples per part and for the whole object "
                              "(reference 20480)", kind=int, lo=constants.MIN_NUM_POINTS)
    latent_tokens: int = _option(constants.DEFAULT_LATENT_TOKENS, "latent length (2048 for the published model)",
                                 kind=int, lo=1)
    normalize: bool = _option(True, "map the object into the model's frame first and back after, so objects in any "
                              "unit work (the reference assumes about [-1, 1])", kind=bool,
                              off_flag="--no-normalize",
                              off_help="do not normalize the object into the model frame (input must already be "
                                       "about [-1, 1])")
    band: float = _option(constants.DEFAULT_BAND, "|logit| threshold of the coarse-to-fine band (reference 0.95)",
                          kind=float, lo=0.0, lo_open=True, cli=None)
    chunk_points: int = _option(QUERY_CHUNK_POINTS, "decoder query points per part per call; bounds the attention scratch "
                                "(points x latent tokens x heads) per call", kind=int, lo=1, cli=None)
    min_component: float = _option(0.0, "drop connected pieces of a part's mesh whose area is below this fraction "
                                   "of its largest piece (floaters); 0 keeps everything, as the reference",
                                   kind=float, lo=0.0, hi=1.0)
    close_at_bounds: bool = _option(True, f"cap a part that reaches the +-{constants.EXTRACTION_BOUND} extraction "
                                    "box of its frame with the box face, so its mesh is closed", kind=bool,
                                    off_flag="--open-at-bounds",
                                    off_help="leave parts cut by the extraction box open, as the reference")

    @classmethod
    def with_defaults(cls, defaults: dict | None, source: str = "model") -> "CompletionOptions":
        """Options with a model's recommended defaults (``inference_defaults``) applied.

        Raises:
            ModelDirError: an unknown option name or a bad value, naming ``source``.
        """
        defaults = dict(defaults or {})
        unknown = set(defaults) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelDirError(f"{source}: unknown option(s) in inference_defaults: {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(cls.__dataclass_fields__)}. Re-export the model.")
        opts = cls(**defaults)
        try:
            opts.validate()
        except InputError as e:
            raise ModelDirError(f"{source}: inference_defaults: {e}. Re-export the model.") from None
        return opts

    def replace(self, **overrides) -> "CompletionOptions":
        """A copy with ``overrides`` applied (unknown names raise :class:`InputError`)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.__dataclass_fields__)}")
        return CompletionOptions(**{**self.__dict__, **overrides})

    def validate(self, *, flags: bool = False) -> None:
        """Check every option's type and range.

        Args:
            flags: name options by their CLI flag (``--seed``) in messages.

        Raises:
            InputError: naming the option, the accepted type/range and the value.
        """
        for f in fields(self):
            problem = option_problem(f, getattr(self, f.name))
            if problem:
                name = (f.metadata["cli"] or "--" + f.name.replace("_", "-")) if flags and f.metadata["cli"] is not None \
                    else f.name
                value = getattr(self, f.name)
                raise InputError(f"option {name} must be {problem}, got {value!r} ({type(value).__name__})")


def option_fields() -> list:
    """The :class:`CompletionOptions` fields (dataclass ``Field`` objects, with metadata)."""
    return list(fields(CompletionOptions))


def option_range(f) -> str:
    """The accepted values of an option field, in words ("an integer in [5, 11]")."""
    m = f.metadata
    kind = m["kind"]
    if kind is bool:
        return "True or False"
    noun = "an integer" if kind is int else "a finite number"
    lo, hi = m["lo"], m["hi"]
    if lo is not None and hi is not None:
        text = f"{noun} in [{lo}, {hi}]"
    elif lo is not None:
        text = f"{noun} {'>' if m['lo_open'] else '>='} {lo}"
    elif hi is not None:
        text = f"{noun} <= {hi}"
    else:
        text = noun
    return ("None or " + text) if m["optional"] else text


def option_problem(f, value) -> str | None:
    """None when ``value`` is acceptable for option field ``f``, else the accepted range in words."""
    m = f.metadata
    if value is None and m["optional"]:
        return None
    kind = m["kind"]
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    else:
        ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
              and bool(np.isfinite(value)))
    if ok and kind is not bool:
        lo, hi = m["lo"], m["hi"]
        if lo is not None and (value <= lo if m["lo_open"] else value < lo):
            ok = False
        if hi is not None and value > hi:
            ok = False
    return None if ok else option_range(f)


@dataclass
class CompletedPart:
    """One completed part, in the input's coordinates."""

    name: str
    vertices: np.ndarray  # (V, 3) float32, in the input's coordinates
    faces: np.ndarray  # (F, 3) int64
    color: tuple[int, int, int, int]


@dataclass
class CompletionResult:
    """What :meth:`HoloPart.complete` returns.

    Attributes:
        parts: one completed mesh per input part, in the input's coordinates.
        timings: seconds per stage.
        stats: e.g. decoder queries per level.
        inputs: every path the result was made from (the scene, the mesh and its
            labels, the folder and each part file); :meth:`save` and
            :meth:`preview` refuse to write over, inside or around them.
    """

    parts: list[CompletedPart]
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    inputs: tuple[Path, ...] = ()

    def save(self, path: str | os.PathLike, *, overwrite: bool = False,
             source: str | os.PathLike | None = None) -> Path:
        """Write a glb with one named node per part, atomically.

        Args:
            path: output ``.glb``.
            overwrite: replace an existing file (otherwise an error, and it is kept).
            source: one more path to protect besides :attr:`inputs`.

        Raises:
            OutputError: ``path`` is, lies inside or contains an input, or is unusable.
            OutputExists: ``path`` exists and ``overwrite`` is False.
        """
        from holopart_infer.parts_io import write_scene

        return write_scene([(p.vertices, p.faces) for p in self.parts], [p.name for p in self.parts], path,
                           colors=[p.color for p in self.parts], protect=[*self.inputs, source],
                           overwrite=overwrite)

    def preview(self, path: str | os.PathLike, size=(800, 600), *, overwrite: bool = False) -> Path:
        """Render a preview image (``.png`` or ``.jpg``), atomically; same protections as :meth:`save`."""
        from holopart_infer.preview import render_preview

        return render_preview([(p.vertices, p.faces) for p in self.parts], [p.color for p in self.parts],
                              path, size=size, overwrite=overwrite, protect=self.inputs)


class HoloPart:
    """A loaded model: a backend (:mod:`holopart_infer.engines`) and the pipeline around it.

    Use :func:`load`, or build one from any backend: ``HoloPart(open_backend(path, ...))``.
    Everything about the model (name, device, precision, config, recommended
    options) is read from the backend. ``close()`` (or ``with``) releases it.
    """

    def __init__(self, backend):
        self.backend = backend
        #: the model's recommended options (manifest ``defaults`` / model_index
        #: ``inference_defaults``), read from the backend; assign to change them
        self.defaults = dict(backend.defaults)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def path(self) -> Path | None:
        return self.backend.path

    @property
    def config(self) -> dict:
        return self.backend.config

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "HoloPart":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HoloPart(path={str(self.path)!r}, backend={self.backend_name!r}, "
                f"device={self.device!r}, precision={self.precision!r})")

    @property
    def extract_device(self) -> str:
        """Where band detection and marching cubes run: the GPU when the model
        runs there and cpp_ext was built with CUDA."""
        from holopart_infer import native

        return "cuda" if str(self.device).startswith("cuda") and native.cuda_available() else "cpu"

    def default_options(self) -> CompletionOptions:
        """:class:`CompletionOptions` with this model's recommended defaults applied
        (e.g. the latent length a small model was trained with); what
        :meth:`complete` uses when no ``options`` are given."""
        return CompletionOptions.with_defaults(self.defaults, str(self.path))

    @property
    def num_tokens(self) -> int:
        return self.backend.num_tokens

    @property
    def latent_channels(self) -> int:
        return self.backend.latent_channels

    def complete(self, parts, *, labels=None, options: CompletionOptions | None = None,
                 progress: Progress | None = None, **overrides) -> CompletionResult:
        """Complete every part of an object.

        Args:
            parts: a path (glb/gltf scene, mesh + ``labels``, or a folder of part
                meshes) or a :class:`holopart_infer.parts_io.Parts`.
            labels: per-face label file/array when ``parts`` is a single mesh.
            options: a :class:`CompletionOptions` (default:
                :meth:`default_options`); keyword overrides (steps=, guidance=,
                seed=, depth=, parts_per_batch=, decimate=, ...) win.
            progress: ``progress(stage, done, total)`` callback.

        Returns:
            :class:`CompletionResult` with one mesh per input part, in the input's
            coordinates, and per-stage timings. Same seed and backend: same result.
        """
        from holopart_infer import conditioning, extract, parts_io
        from holopart_infer.cleanup import edge_manifold, remove_floaters
        from holopart_infer.decimate import decimate as decimate_mesh

        if options is not None and not isinstance(options, CompletionOptions):
            raise InputError(f"options must be a CompletionOptions, got {type(options).__name__}; "
                             "pass keyword overrides (steps=..., seed=...) for single values")
        opts = options or self.default_options()
        if overrides:
            opts = opts.replace(**overrides)
        opts.validate()
        report = progress or (lambda stage, done, total: None)
        timings: dict[str, float] = {}

        @contextlib.contextmanager
        def timed(stage):
            t0 = time.perf_counter()
            try:
                yield
            finally:
                timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0

        source_paths = [p for p in (parts, labels) if isinstance(p, (str, os.PathLike))]
        with timed("load_parts"):
            if not isinstance(parts, parts_io.Parts):
                parts = parts_io.load_parts(parts, labels=labels)
        inputs = tuple(dict.fromkeys(Path(p) for p in (*source_paths, *parts.input_paths)))
        P = len(parts.names)
        with timed("conditioning"):
            cond = conditioning.build_conditions(parts, num_points=opts.num_points, seed=opts.seed,
                                                 normalize=opts.normalize)
            K = self.num_tokens
            part_tok = select_tokens(cond.part, K, seed=opts.seed)
            local_tok = select_tokens(cond.part_local, K, seed=opts.seed)
        # all noise drawn at once: results do not depend on parts_per_batch
        noise = np.random.default_rng(opts.seed).standard_normal(
            (P, opts.latent_tokens, self.latent_channels), dtype=np.float32)
        sched = self.config.get("scheduler", {})
        shift = float(sched.get("shift", 1.0))
        n_train = int(sched.get("num_train_timesteps", 1000))

        meshes: list[tuple[np.ndarray, np.ndarray]] = []
        level_queries: dict[str, int] = {}
        batches = [list(range(s, min(P, s + opts.parts_per_batch))) for s in range(0, P, opts.parts_per_batch)]
        done_steps = 0
        for batch in batches:
            with timed("part_encoder"):
                whole_cond, part_cond = self.backend.encode(part_tok[batch], cond.whole[batch],
                                                            local_tok[batch], cond.part_local[batch])

            def step_cb(i, n, _base=done_steps):
                report("denoise", _base + i, n * len(batches))

            with timed("denoise"):
                latents = sampler.sample(self.backend.guided_step, noise[batch], part_cond, whole_cond,
                                         steps=opts.steps, guidance=opts.guidance, shift=shift,
                                         num_train_timesteps=n_train, callback=step_cb)
            done_steps += opts.steps
            with timed("decoder_kv"):
                kv = self.backend.decoder_kv(latents)

            def decode(points_per_part: list[np.ndarray], _kv=kv) -> list[np.ndarray]:
                return self._decode_padded(points_per_part, _kv)

            with timed("extract"):
                out, stats = extract.extract_meshes(
                    decode, len(batch), depth=opts.depth, band=opts.band, device=self.extract_device,
                    chunk_points=opts.chunk_points, close=bool(opts.close_at_bounds),
                    progress=lambda lvl, nl, d, t: report(f"extract {lvl + 1}/{nl}", d, t))
            for key, val in _level_counts(stats).items():
                level_queries[key] = level_queries.get(key, 0) + val
            meshes.extend(out)

        results: list[CompletedPart] = []
        pinched: list[str] = []  # parts that decimation left non-manifold
        palette = parts_io.part_colors(P)
        with timed("postprocess"):
            for i, (v, f) in enumerate(meshes):
                v = cond.to_input_frame(i, np.asarray(v, dtype=np.float64))
                f = np.asarray(f, dtype=np.int64)
                if opts.min_component > 0:
                    v, f = remove_floaters(v, f, opts.min_component)
                if opts.decimate is not None and len(f) > opts.decimate:
                    f_full = f
                    v, f = decimate_mesh(v, f, opts.decimate)
                    # the full mesh is only checked in the rare case the decimated one is not closed
                    if not edge_manifold(f) and edge_manifold(f_full):
                        pinched.append(parts.names[i])
                results.append(CompletedPart(parts.names[i], np.asarray(v, np.float32), np.asarray(f, np.int64),
                                        tuple(palette[i])))
                report("postprocess", i + 1, P)
        if pinched:  # one line per run, not per part: a warning on most parts teaches users to ignore warnings
            log.warning("decimation to %d faces left %d of %d parts non-manifold at a few edges (%s); "
                        "decimate=None (CLI --no-decimate) keeps the closed marching-cubes meshes",
                        opts.decimate, len(pinched), P, ", ".join(pinched[:5]) + (" ..." if len(pinched) > 5 else ""))
        if P and all(len(r.faces) == 0 for r in results):
            raise EmptyResult(
                f"every one of the {P} parts came out empty: the model's decoder found no surface anywhere in the "
                f"extraction box. The input was read correctly ({P} parts with surface), so this points at the "
                f"model ({self.path}): untrained, corrupt or non-finite weights, or a model dir that does not match "
                "its checkpoint. Check it with `holopart-infer verify`, or re-export it.")
        return CompletionResult(results, timings, {"decoder_queries_per_level": level_queries,
                                                   "num_parts": P, "backend": self.backend_name,
                                                   "decimation_non_manifold": pinched}, inputs)

    def _decode_padded(self, points_per_part: list[np.ndarray], kv) -> list[np.ndarray]:
        """Query the decoder for each part's points, all parts of the batch in one call.

        Parts have different point counts: pad to the longest (padding rows are
        discarded). Extraction already bounds each part's points per call
        (``chunk_points``), so no further chunking happens here.
        """
        counts = [len(p) for p in points_per_part]
        if not any(counts):
            return [np.empty(0, np.float32) for _ in counts]
        pts = np.zeros((len(counts), max(counts, default=0), 3), dtype=np.float32)
        for b, p in enumerate(points_per_part):
            pts[b, : len(p)] = p
        logits = np.asarray(self.backend.decoder_query(pts, kv)).reshape(pts.shape[:2])
        return [logits[b, :n] for b, n in enumerate(counts)]


def _level_counts(stats) -> dict[str, int]:
    counts = getattr(stats, "queries_per_level", None)
    if counts is None and isinstance(stats, dict):
        counts = stats.get("queries_per_level", {})
    if isinstance(counts, dict):
        return {str(k): int(v) for k, v in counts.items()}
    return {str(i): int(v) for i, v in enumerate(counts or [])}


def load(path: str | os.PathLike, backend: str = "auto", device: str = "auto", precision: str | None = None,
         engine_cache: str | os.PathLike | None = None, graph: str | None = None, *,
         verify_integrity: bool = True) -> HoloPart:
    """Load a model dir or a checkpoint dir.

    Args:
        path: exported model dir (manifest.json) or checkpoint dir (model_index.json).
        backend: "auto" (TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU for a
            model dir; torch for a checkpoint dir), "torch", "onnxruntime" or "tensorrt".
        device: "auto", "cpu" or "cuda".
        precision: None for the backend's default (torch: fp32 on CPU, bf16 on CUDA;
            TensorRT: fp16; ONNX Runtime: the model dir's, the only one it runs), or
            "fp32"/"fp16"/"bf16". The defaults live in one table,
            :data:`holopart_infer.engines.BACKENDS`.
        engine_cache: TensorRT engine cache folder (default ~/.cache/holopart_infer/engines).
        graph: torch backend on CUDA only: "cuda_graph" replays each guided step as a
            captured CUDA graph, "compile" uses ``torch.compile(mode="reduce-overhead")``;
            None/"eager" runs eagerly. Asking for it on the CPU or another backend raises.
        verify_integrity: check a model dir's graph and weight files against the
            sha256 in its manifest (each file is hashed once, then remembered by
            path, size and mtime in the user cache dir, so re-loads cost a stat);
            a checkpoint's weights are always checked for NaN/inf. False skips the
            hash check (CLI ``--no-verify``).

    Returns:
        A :class:`HoloPart`; ``backend_name``/``device``/``precision`` say what was resolved.

    Raises:
        InputError / InputFileNotFound: bad arguments or path.
        BackendUnavailable: the requested backend or device cannot run here (with the install hint).
        ModelDirError / CheckpointError: the folder is unusable.
    """
    from holopart_infer.engines import open_backend

    be = open_backend(path, backend=backend, device=device, precision=precision, engine_cache=engine_cache,
                      graph=None if graph == "eager" else graph,
                      **({} if (Path(path) / "model_index.json").is_file() else {"verify_hashes": verify_integrity}))
    model = HoloPart(be)
    try:
        model.default_options()  # a bad inference_defaults entry fails here, naming the model
    except Exception:
        be.close()
        raise
    return model
