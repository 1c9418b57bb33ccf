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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from holopart_infer import sampler
from holopart_infer.errors import InputError, ModelDirError
from holopart_infer.extract import query_chunk_points
from holopart_infer.tokens import select_tokens

log = logging.getLogger("holopart_infer")

# progress(stage, done, total)
Progress = Callable[[str, int, int], None]


@dataclass
class CompletionOptions:
    """Knobs of :meth:`HoloPart.complete` (reference-script defaults where they exist).

    Attributes:
        steps: Euler steps of the sampler (reference 50).
        guidance: classifier-free guidance scale (reference 3.5; <= 1 disables it).
        seed: seeds surface sampling, token selection and the initial noise.
        depth: octree depth of extraction; the final grid has 2**depth - 8 cells
            per axis (reference 9 -> 504).
        parts_per_batch: parts denoised and decoded together (reference 8).
        decimate: target face count per part (reference 10000); None keeps all.
        num_points: surface samples per part and for the whole (reference 20480).
        latent_tokens: latent length (2048 for the published model).
        normalize: map the object into the model's frame first and back after,
            so objects in any unit work (the reference assumes about [-1, 1]).
        band: |logit| threshold of the coarse-to-fine band (reference 0.95).
        chunk_points: decoder query points per part per call; bounds the
            attention scratch (points x latent tokens x heads) per call.
            None (the default) picks by where the decoder runs:
            :data:`holopart_infer.extract.QUERY_CHUNK_POINTS_BY_DEVICE` (8192 on the CPU, 65536 on CUDA, where
            each call is a synchronized launch: 8192 meant ~16,000 calls per
            object at depth 9). ``benchmarks/device_check.py`` measures the
            best GPU value and reports it.
        min_component: drop connected pieces of a part's mesh whose area is
            below this fraction of its largest piece (floaters); 0 keeps
            everything, as the reference does.
        close_at_bounds: a part that reaches the +-1.05 extraction box of its
            frame is capped with the box face, so its mesh is closed; False
            leaves the hole, as the reference does.
    """

    steps: int = sampler.DEFAULT_STEPS
    guidance: float = sampler.DEFAULT_GUIDANCE
    seed: int = 0
    depth: int = 9
    parts_per_batch: int = 8
    decimate: int | None = 10000
    num_points: int = 20480
    latent_tokens: int = 2048
    normalize: bool = True
    band: float = 0.95
    chunk_points: int | None = None
    min_component: float = 0.0
    close_at_bounds: bool = True

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

    def validate(self) -> None:
        checks = [
            ("steps", self.steps >= 1, "an integer >= 1"),
            ("guidance", np.isfinite(self.guidance) and self.guidance >= 0, "a finite number >= 0"),
            ("depth", 6 <= self.depth <= 11, "an integer between 6 and 11"),
            ("parts_per_batch", self.parts_per_batch >= 1, "an integer >= 1"),
            ("decimate", self.decimate is None or self.decimate >= 4, "None or an integer >= 4"),
            ("num_points", self.num_points >= 16, "an integer >= 16"),
            ("latent_tokens", self.latent_tokens >= 1, "an integer >= 1"),
            ("band", self.band > 0, "a number > 0"),
            ("chunk_points", self.chunk_points is None or self.chunk_points >= 1, "None or an integer >= 1"),
            ("min_component", 0.0 <= self.min_component <= 1.0, "a number in [0, 1]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"option {name} must be {expected}, got {getattr(self, name)!r}")


@dataclass
class CompletedPart:
    """One completed part, in the input's coordinates."""

    name: str
    vertices: np.ndarray  # (V, 3) float32, in the input's coordinates
    faces: np.ndarray  # (F, 3) int64
    color: tuple[int, int, int, int]


@dataclass
class CompletionResult:
    parts: list[CompletedPart]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    stats: dict = field(default_factory=dict)  # e.g. decoder queries per level

    def save(self, path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Path:
        """Write a glb with one named node per part (atomically; never over ``source``)."""
        from holopart_infer.parts_io import write_scene

        return write_scene([(p.vertices, p.faces) for p in self.parts], [p.name for p in self.parts], path,
                           colors=[p.color for p in self.parts], protect=[source] if source else None)

    def preview(self, path: str | os.PathLike, size=(800, 600)) -> Path:
        from holopart_infer.preview import render_preview

        return render_preview([(p.vertices, p.faces) for p in self.parts], [p.color for p in self.parts],
                              path, size=size)


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

        dev = str(self.device).strip().lower()
        on_gpu = dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())
        return "cuda" if on_gpu and native.cuda_available() else "cpu"

    @property
    def chunk_points(self) -> int:
        """Decoder points per part per call when the options leave it to the device."""
        return query_chunk_points(self.device)

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

        opts = options or self.default_options()
        if overrides:
            unknown = set(overrides) - set(CompletionOptions.__dataclass_fields__)
            if unknown:
                raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(CompletionOptions.__dataclass_fields__)}")
            opts = CompletionOptions(**{**opts.__dict__, **overrides})
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

        with timed("load_parts"):
            if not isinstance(parts, parts_io.Parts):
                parts = parts_io.load_parts(parts, labels=labels)
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
                    chunk_points=opts.chunk_points or self.chunk_points, close=bool(opts.close_at_bounds),
                    progress=lambda lvl, nl, d, t: report(f"extract {lvl + 1}/{nl}", d, t))
            for key, val in _level_counts(stats).items():
                level_queries[key] = level_queries.get(key, 0) + val
            meshes.extend(out)

        results: list[CompletedPart] = []
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
                        log.warning("part %r: decimation to %d faces left the closed mesh non-manifold at a few "
                                    "edges; pass decimate=None (CLI --no-decimate) for the closed marching-cubes "
                                    "mesh", parts.names[i], opts.decimate)
                results.append(CompletedPart(parts.names[i], np.asarray(v, np.float32), np.asarray(f, np.int64),
                                        tuple(palette[i])))
                report("postprocess", i + 1, P)
        return CompletionResult(results, timings, {"decoder_queries_per_level": level_queries,
                                                   "num_parts": P, "backend": self.backend_name})

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
         engine_cache: str | os.PathLike | None = None, graph: str | None = None) -> HoloPart:
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

    Returns:
        A :class:`HoloPart`; ``backend_name``/``device``/``precision`` say what was resolved.

    Raises:
        InputError / InputFileNotFound: bad arguments or path.
        BackendUnavailable: the requested backend or device cannot run here (with the install hint).
        ModelDirError / CheckpointError: the folder is unusable.
    """
    from holopart_infer.engines import open_backend

    be = open_backend(path, backend=backend, device=device, precision=precision, engine_cache=engine_cache,
                      graph=None if graph == "eager" else graph)
    model = HoloPart(be)
    try:
        model.default_options()  # a bad inference_defaults entry fails here, naming the model
    except Exception:
        be.close()
        raise
    return model
