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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from holopart_infer import constants, memory

from holopart_infer.io import frames

from holopart_infer.model import sampler
from holopart_infer.errors import BackendUnavailable, EmptyResult, EngineError, HoloPartError, InputError, ModelDirError
from holopart_infer.extraction.extract import query_chunk_points
from holopart_infer.model.tokens import select_tokens

if TYPE_CHECKING:  # annotations only: parts_io is imported when a job is read
    from holopart_infer.io.parts_io import Parts
    from holopart_infer.postprocess.quality import PartQuality

log = logging.getLogger("holopart_infer")

#: parts measured, and stand-ins made, at once (threads) by the guard ...
_STAND_IN_THREADS = 2
#: ... when there are at least this many: a few parts gain nothing, and every extra thread can keep
#: its own malloc arena (resident memory a long-running service would carry)
_THREADS_FROM = 8


def _map_parts(fn, items: list) -> list:
    """``[fn(x) for x in items]``, ``_STAND_IN_THREADS`` at a time when there are enough of them."""
    if _STAND_IN_THREADS <= 1 or len(items) < _THREADS_FROM:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=_STAND_IN_THREADS) as pool:
        return list(pool.map(fn, items))

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
    coarse_min_resolution: int = _option(constants.COARSE_MIN_RESOLUTION, "smallest first (fully evaluated) "
                                         "extraction level, cells per axis: the final 2^depth-8 cells are halved "
                                         "while the half is a whole number >= this (extract.levels_for_depth); "
                                         "16 starts depth 7 at 31^3 points instead of 32's 61^3 "
                                         "(benchmarks/coarse_gate.py)", kind=int, lo=2, cli=None)
    chunk_points: int | None = _option(None, "decoder query points per part per call; bounds the attention scratch "
                                       "(points x latent tokens x heads) per call; None: the decoder's device "
                                       "picks (extract.QUERY_CHUNK_POINTS_BY_DEVICE: 8192 on the CPU, 65536 on "
                                       "CUDA, where each call is a synchronized launch; benchmarks/device_check.py "
                                       "measures the best GPU value)", kind=int, lo=1, optional=True, cli=None)
    min_component: float = _option(0.2, "drop connected pieces of a part's mesh whose area is below this fraction "
                                   "of its largest piece (floaters; benchmarks/RESULTS.md, issue 23); 0 keeps "
                                   "everything, as the reference", kind=float, lo=0.0, hi=1.0)
    close_at_bounds: bool = _option(True, f"cap a part that reaches the +-{constants.EXTRACTION_BOUND} extraction "
                                    "box of its frame with the box face, so its mesh is closed", kind=bool,
                                    off_flag="--open-at-bounds",
                                    off_help="leave parts cut by the extraction box open, as the reference")
    thin_parts: bool = _option(True, "retry parts that decode empty (thin or flat parts) on a grid fitted to them, "
                               "then keep their input surface closed and thickened, with a warning naming them",
                               kind=bool, off_flag="--no-thin-parts",
                               off_help="leave parts that decode empty empty, as the reference")
    guard: bool = _option(True, "replace a completed part that does not cover its visible patch, grew beyond a "
                          "plausible bound or invented most of its surface (holopart_infer.postprocess.quality.THRESHOLDS) "
                          "by its visible patch closed into a solid, with a warning naming the part and the measures",
                          kind=bool,
                          off_flag="--keep-implausible",
                          off_help="keep the model's output of implausible parts (they are still flagged in the "
                                   "output's per-part scores)")
    appearance: bool = _option(True, "carry the input's look (vertex colours, material colour, texture) to the "
                               "completed parts as vertex colours", kind=bool, off_flag="--no-appearance",
                               off_help="colour each completed part from a fixed palette")

    @classmethod
    def with_defaults(cls, defaults: dict | None, source: str = "model") -> "CompletionOptions":
        """Options with a model's recommended defaults (``inference_defaults``) applied.

        Raises:
            ModelDirError: an unknown option name or a bad value, naming ``source``.
        """
        try:
            return cls().replace(**dict(defaults or {}))
        except InputError as e:
            raise ModelDirError(f"{source}: inference_defaults: {e}. Re-export the model.") from None

    def replace(self, **overrides) -> "CompletionOptions":
        """A copy with ``overrides`` applied, checked: the one place options are merged.

        Every layer (a model's defaults, a preset, CLI flags, a batch list's
        per-object options, a service request) goes through here, so a bad name
        or value gets the one message, naming the option, what it accepts and
        what it got.

        Raises:
            InputError: an unknown option name (``unknown option(s): ...; known: ...``)
                or a bad value (``option NAME must be RANGE, got VALUE (TYPE)``).
        """
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.__dataclass_fields__)}")
        opts = CompletionOptions(**{**self.__dict__, **overrides})
        opts.validate()
        return opts

    def as_dict(self) -> dict:
        """The options as plain JSON-able values (ledger lines, service jobs)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

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


#: ``--quality`` presets (name -> {"depth", "steps"}); see :data:`holopart_infer.constants.QUALITY_PRESETS`.
QUALITY_PRESETS = constants.QUALITY_PRESETS


def quality_preset(name: str) -> dict:
    """The options of a ``--quality`` preset ("draft", "balanced", "high").

    Raises:
        InputError: an unknown preset name.
    """
    if name not in QUALITY_PRESETS:
        raise InputError(f"quality: expected one of {', '.join(QUALITY_PRESETS)}, got {name!r}")
    return dict(QUALITY_PRESETS[name])


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


def model_defaults(model, *, verify_integrity: bool = True) -> CompletionOptions:
    """A model's recommended options: the library's with the model's own defaults applied.

    The one reader of a model's defaults (manifest ``defaults`` of a model dir,
    model_index ``inference_defaults`` of a checkpoint dir): :meth:`HoloPart.default_options`,
    the batch runner (Ray runs, where the driver loads no graphs) and the CLI's ``--help``.

    Args:
        model: a loaded :class:`HoloPart` (its :attr:`HoloPart.defaults`, which may have
            been changed) or the path of a model dir or checkpoint dir (read without loading
            any graph).
        verify_integrity: for a model dir path: check its files' sha256 (as :func:`load`).

    Raises:
        ModelDirError / CheckpointError: unreadable defaults, or an unknown option or a bad
            value in them (naming the model).
        InputFileNotFound / InputError: the path is no model.
    """
    if isinstance(model, HoloPart):
        return CompletionOptions.with_defaults(model.defaults, str(model.path))
    from holopart_infer.engines.registry import CHECKPOINT_DIR, model_kind

    path = Path(model)
    if model_kind(path) == CHECKPOINT_DIR:
        from holopart_infer.model.checkpoint import checkpoint_inference_defaults

        raw = checkpoint_inference_defaults(path)
    else:
        from holopart_infer.model.manifest import load_manifest

        raw = load_manifest(path, verify_hashes=verify_integrity).defaults
    return CompletionOptions.with_defaults(raw, str(path))


@dataclass
class CompletedPart:
    """One completed part, in the input's coordinates."""

    name: str
    vertices: np.ndarray  # (V, 3) float32, in the input's coordinates
    faces: np.ndarray  # (F, 3) int64
    color: tuple[int, int, int, int]
    vertex_colors: np.ndarray | None = None  # (V, 4) uint8: the input's look (options.appearance)
    #: how much to trust it, measured from the inputs (holopart_infer.postprocess.quality); None for parts made
    #: outside the pipeline
    quality: "PartQuality | None" = None


@dataclass
class CompletionStats(Mapping):
    """What a completion measured besides its timings (:attr:`CompletionResult.stats`).

    Read the attributes; ``stats["batch_sizes"]``, ``stats.get(...)`` and ``dict(stats)``
    still work (a read-only mapping of the same names).
    """

    #: decoder queries per extraction level ("0", "1", ...)
    decoder_queries_per_level: dict = field(default_factory=dict)
    #: decoder points computed in extraction, padding included (its share of shared batches)
    decoder_points_fed: int = 0
    num_parts: int = 0
    backend: str = ""
    #: the size of each DiT / decoder batch its parts were in (several objects may share one)
    batch_sizes: list = field(default_factory=list)
    #: parts whose decimated mesh would not have been closed (the full mesh was kept)
    decimation_non_manifold: list = field(default_factory=list)
    #: ``{"retried": [...], "fallback": [...]}``: thin parts re-extracted / kept as their closed input
    thin_parts: dict = field(default_factory=lambda: {"retried": [], "fallback": []})
    #: per part name: its quality scores (holopart_infer.postprocess.quality)
    quality: dict = field(default_factory=dict)
    #: ``{"flagged": [...], "replaced": [...]}``: the quality guard's verdict
    guard: dict = field(default_factory=lambda: {"flagged": [], "replaced": []})
    #: the process's memory (holopart_infer.memory): peak_rss_mb, input_mb, result_mb, ...
    memory: dict | None = None
    #: the Ray worker that completed it (``host:pid``), None when run here
    worker: str | None = None

    def __getitem__(self, name: str):
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    __eq__ = Mapping.__eq__  # equal to a dict with the same items, too
    __hash__ = None  # type: ignore[assignment]


@dataclass
class CompletionResult:
    """What :meth:`HoloPart.complete` returns.

    Attributes:
        parts: one completed mesh per input part, in the input's coordinates.
        timings: seconds per stage.
        stats: :class:`CompletionStats` (decoder queries per level, batch sizes, memory, ...).
        options: the resolved :class:`CompletionOptions` it ran with (defaults, then overrides).
        inputs: every path the result was made from (the scene, the mesh and its
            labels, the folder and each part file); :meth:`save` and
            :meth:`preview` refuse to write over, inside or around them.
        up: the axis pointing up in the input's (and so the result's)
            coordinates; pictures show the object upright about it.
    """

    parts: list[CompletedPart]
    timings: dict[str, float] = field(default_factory=dict)
    stats: CompletionStats = field(default_factory=CompletionStats)
    inputs: tuple[Path, ...] = ()
    up: str = "+y"
    options: CompletionOptions | None = None

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
        from holopart_infer.io.parts_io import write_scene
        from holopart_infer.postprocess.quality import EXTRAS_KEY

        return write_scene([(p.vertices, p.faces) for p in self.parts], [p.name for p in self.parts], path,
                           colors=[p.color for p in self.parts], protect=[*self.inputs, source],
                           overwrite=overwrite, vertex_colors=[p.vertex_colors for p in self.parts],
                           extras=[None if p.quality is None else {EXTRAS_KEY: p.quality.as_extras()}
                                   for p in self.parts])

    @property
    def replaced(self) -> list[str]:
        """Names of the parts whose model output was replaced by the closed visible patch."""
        return [p.name for p in self.parts if p.quality is not None and p.quality.replaced]

    def preview(self, path: str | os.PathLike, size=(800, 600), *, overwrite: bool = False) -> Path:
        """Render a preview image (``.png`` or ``.jpg``), atomically; same protections as :meth:`save`."""
        from holopart_infer.postprocess.preview import render_preview

        return render_preview([(p.vertices, p.faces) for p in self.parts], [p.color for p in self.parts],
                              path, size=size, overwrite=overwrite, protect=self.inputs,
                              vertex_colors=[p.vertex_colors for p in self.parts], up=self.up)


def model_up_axis(backend) -> str:
    """The up axis a backend's model was trained in: its own ``up_axis`` attribute, else its
    model dir manifest's ``"up_axis"``, else its checkpoint's ``model_index.json``
    ``"up_axis"``, else :data:`holopart_infer.io.frames.MODEL_DEFAULT_UP`.

    Raises:
        ModelDirError / CheckpointError: a stated value that is not one of :data:`holopart_infer.io.frames.UP_AXES`.
    """
    own = getattr(backend, "up_axis", None)
    if isinstance(own, str):
        return frames.check_up(own, f"{type(backend).__name__}.up_axis")
    manifest = getattr(backend, "manifest", None)
    if manifest is not None and hasattr(manifest, "up_axis"):
        return manifest.up_axis
    path = getattr(backend, "path", None)
    if path is not None:
        from holopart_infer.model.checkpoint import checkpoint_up_axis
        from holopart_infer.model.manifest import MANIFEST_NAME, load_manifest

        path = Path(path)
        if (path / MANIFEST_NAME).is_file():
            return load_manifest(path, verify_hashes=False).up_axis
        if (path / "model_index.json").is_file():
            return checkpoint_up_axis(path)
    return frames.MODEL_DEFAULT_UP


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
        #: the up axis of the frame the model was trained in (manifest / model_index
        #: ``up_axis``, "+y" when unstated): inputs are rotated into it and results back
        self.up_axis = model_up_axis(backend)
        #: extraction with the grids, query points and logits on the decoder's
        #: device (:mod:`holopart_infer.extraction.resident`): None (default) = whenever the
        #: backend offers it and extraction runs on CUDA (the torch backend on a
        #: GPU); True / False to force it on (e.g. the torch backend on the CPU) or off
        self.resident_extraction: bool | None = None

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
        from holopart_infer.extraction import native

        dev = str(self.device).strip().lower()
        on_gpu = dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())
        return "cuda" if on_gpu and native.cuda_available() else "cpu"

    @property
    def extracts_on_device(self) -> bool:
        """Whether extraction keeps grids, points and logits on the decoder's device
        (see :attr:`resident_extraction`).

        Raises:
            BackendUnavailable: forced on for a backend that cannot (not the torch backend).
        """
        from holopart_infer.engines.base import DeviceResidentDecoder

        can = isinstance(self.backend, DeviceResidentDecoder)
        if self.resident_extraction is None:
            return can and self.extract_device == "cuda"
        if self.resident_extraction and not can:
            raise BackendUnavailable(
                f"resident_extraction=True: the {self.backend_name} backend cannot keep decoder points and logits "
                "on its device (only the torch backend can); set it to None or False")
        return bool(self.resident_extraction)

    @property
    def chunk_points(self) -> int:
        """Decoder points per part per call when the options leave it to the device."""
        return query_chunk_points(self.device)

    def default_options(self) -> CompletionOptions:
        """:class:`CompletionOptions` with this model's recommended defaults applied
        (e.g. the latent length a small model was trained with); what
        :meth:`complete` uses when no ``options`` are given."""
        return model_defaults(self)

    @property
    def num_tokens(self) -> int:
        return self.backend.num_tokens

    @property
    def latent_channels(self) -> int:
        return self.backend.latent_channels

    def complete(self, parts, *, labels=None, up: str | None = None, options: CompletionOptions | None = None,
                 progress: Progress | None = None, **overrides) -> CompletionResult:
        """Complete every part of an object.

        Args:
            parts: a path (glb/gltf scene, mesh + ``labels``, or a folder of part
                meshes) or a :class:`holopart_infer.io.parts_io.Parts`.
            labels: per-face label file/array when ``parts`` is a single mesh.
            up: the axis pointing up in the input (``"+y"``, ``"+z"``, ...; see
                :func:`holopart_infer.io.parts_io.load_parts`); None: the format's
                default for a path, ``parts.up`` for a ``Parts``.
            options: a :class:`CompletionOptions` (default:
                :meth:`default_options`); keyword overrides (steps=, guidance=,
                seed=, depth=, parts_per_batch=, decimate=, ...) win.
            progress: ``progress(stage, done, total)`` callback.

        Returns:
            :class:`CompletionResult` with one mesh per input part, in the input's
            coordinates, and per-stage timings. Same seed and backend: same result.
        """
        opts = self._options(options, overrides)
        report = progress or _no_progress
        obj = self._prepare(parts, labels, opts, up=up)
        P = obj.num_parts
        batches = [[(obj, i) for i in range(s, min(P, s + opts.parts_per_batch))]
                   for s in range(0, P, opts.parts_per_batch)]
        for b, batch in enumerate(batches):
            self._run_batch(batch, report, step_base=b * opts.steps, step_total=len(batches) * opts.steps)
        return self._finish(obj, report)

    def complete_many(self, jobs: Iterable[CompletionJob], *, parts_per_batch: int | None = None,
                      progress: Progress | None = None, **overrides
                      ) -> Iterator[tuple[CompletionJob, CompletionResult | HoloPartError]]:
        """Complete many objects, packing parts of several objects into each batch.

        Parts of different objects share a DiT / decoder batch when the options
        that shape a batch agree (steps, guidance, latent tokens, depth, band,
        chunk_points, closing; see :data:`BATCH_KEY_FIELDS`). Each object keeps its
        own seed: its noise, surface samples and tokens depend only on its parts
        and its seed, so a result equals :meth:`complete` on that object (up to
        the backend's batch-size numerics, which are tested to be negligible).

        Jobs are read from ``jobs`` lazily: at most about one batch of parts per
        option group is held besides the objects being completed. A batch runs
        when a group has ``parts_per_batch`` parts waiting, and the partial
        batches run when ``jobs`` is exhausted: for dynamic batching with a
        maximum wait (a service), gather the jobs that arrive within the wait
        and call this on that list.

        Args:
            jobs: :class:`CompletionJob` items (any iterable, e.g. a generator).
            parts_per_batch: parts per DiT / decoder batch for every job
                (default: each job's ``options.parts_per_batch``; jobs with
                different values then form different groups).
            progress: ``progress(stage, done, total)`` for the batch stages.
            overrides: option overrides for every job, as :meth:`complete`'s
                (steps=, seed=, depth=, ...): applied on top of each job's
                ``options`` (or the model's defaults). An unknown name or a bad
                value raises :class:`InputError` before any job is read.

        Yields:
            ``(job, CompletionResult)`` when all of a job's parts are done, or
            ``(job, HoloPartError)`` for a job that could not be read, had bad
            options or whose batch failed; other jobs go on. Results come in
            completion order, which need not be the input order (use ``job.key``).
        """
        if parts_per_batch is not None and (isinstance(parts_per_batch, bool) or int(parts_per_batch) < 1):
            raise InputError(f"parts_per_batch must be an integer >= 1 or None, got {parts_per_batch!r}")
        if parts_per_batch is not None:
            overrides["parts_per_batch"] = int(parts_per_batch)
        if overrides:
            self.default_options().replace(**overrides)  # a bad override fails the call, not every job
        report = progress or _no_progress
        # group key -> FIFO of (object, part index) waiting for a batch
        waiting: dict[tuple, list[tuple[_Prepared, int]]] = {}
        failed: set[int] = set()  # id() of objects whose batch failed

        def batch_size(key):
            return key[-1]

        def run(key, n):
            queue = waiting[key]
            batch, waiting[key] = queue[:n], queue[n:]
            if not waiting[key]:
                del waiting[key]
            batch = [(o, i) for o, i in batch if id(o) not in failed]
            if not batch:
                return
            objs = list({id(o): o for o, _ in batch}.values())
            try:
                self._run_batch(batch, report)
            except Exception as e:
                # one failed batch must not fail the run, nor an object that merely shared it:
                # with several objects in it, each object's parts are retried on their own
                log.warning("a batch of %d parts from %d object(s) failed: %s", len(batch), len(objs), e)
                for o in objs:
                    try:
                        if len(objs) == 1:
                            raise e
                        self._run_batch([(ob, i) for ob, i in batch if ob is o], report)
                    except Exception as e_own:
                        failed.add(id(o))
                        o.error = _as_error(e_own, f"completing {len([1 for ob, _ in batch if ob is o])} "
                                                   f"part(s) of {_describe(o.job) if o.job else 'the object'}")
            for o in objs:
                if o.reported:
                    continue
                if o.error is not None:
                    o.reported = True
                    yield o.job, o.error
                elif o.pending == 0:
                    o.reported = True
                    try:
                        yield o.job, self._finish(o, report)
                    except Exception as e:
                        yield o.job, _as_error(e, f"postprocessing {_describe(o.job)}")

        def oldest_full(n_of):
            for key, queue in waiting.items():
                if len(queue) >= n_of(key):
                    return key
            return None

        for job in jobs:
            if not isinstance(job, CompletionJob):
                raise InputError(f"complete_many: jobs must be CompletionJob items, got {type(job).__name__}")
            try:
                opts = self._options(job.options, overrides)
                obj = self._prepare(job.parts, job.labels, opts, job=job, up=job.up)
            except Exception as e:
                yield job, _as_error(e, f"reading {_describe(job)}")
                continue
            key = _batch_key(opts)
            waiting.setdefault(key, []).extend((obj, i) for i in range(obj.num_parts))
            while (key := oldest_full(batch_size)) is not None:
                yield from run(key, batch_size(key))
        while waiting:  # the rest: partial batches, oldest group first
            key = next(iter(waiting))
            yield from run(key, batch_size(key))

    # ------------------------------------------------------------------ stages
    def _options(self, options: CompletionOptions | None, overrides: dict) -> CompletionOptions:
        opts = options or self.default_options()
        if not isinstance(opts, CompletionOptions):
            raise InputError(f"options must be a CompletionOptions, got {type(opts).__name__}")
        return opts.replace(**overrides)  # checked there, with or without overrides

    def _prepare(self, parts, labels, opts: CompletionOptions, job: "CompletionJob | None" = None,
                 up: str | None = None) -> "_Prepared":
        """Stage 1, per object: read the parts, condition them, draw the object's noise."""
        import dataclasses

        from holopart_infer.model import conditioning

        from holopart_infer.io import parts_io

        timings: dict[str, float] = {}
        mem = memory.Tracker()
        source_paths = [p for p in (parts, labels) if isinstance(p, (str, os.PathLike))]
        with _timed(timings, "load_parts"):
            if not isinstance(parts, parts_io.Parts):
                parts = parts_io.load_parts(parts, labels=labels, up=up)
            elif up is not None:  # the caller's Parts is left as it is
                parts = dataclasses.replace(parts, up=frames.check_up(up))
        mem.mark("load_parts")
        inputs = tuple(dict.fromkeys(Path(p) for p in (*source_paths, *parts.input_paths)))
        P = len(parts.names)
        with _timed(timings, "conditioning"):
            cond = conditioning.build_conditions(parts, num_points=opts.num_points, seed=opts.seed,
                                                 normalize=opts.normalize, model_up=self.up_axis)
            K = self.num_tokens
            part_tok = select_tokens(cond.part, K, seed=opts.seed)
            local_tok = select_tokens(cond.part_local, K, seed=opts.seed)
            cond.part = None  # the tokens are drawn: only part_local (encoder, thin retry) is used from here on
        mem.mark("conditioning")
        # all noise drawn at once, from the object's seed: results depend neither
        # on parts_per_batch nor on which other objects share a batch
        noise = np.random.default_rng(opts.seed).standard_normal(
            (P, opts.latent_tokens, self.latent_channels), dtype=np.float32)
        return _Prepared(job=job, parts=parts, opts=opts, cond=cond, part_tok=part_tok, local_tok=local_tok,
                         noise=noise, timings=timings, results=[None] * P, pending=P, inputs=inputs, memory=mem)

    def _run_batch(self, batch: list[tuple["_Prepared", int]], report: Progress, *, step_base: int = 0,
                   step_total: int | None = None) -> None:
        """Stage 2, per batch of parts (possibly of several objects whose batch
        options agree): encode, denoise, decoder key/values, extraction. Stores
        each part's mesh (normalized frame) in its object; shares the batch's
        stage times among the objects by their number of parts in it."""
        opts = batch[0][0].opts
        timings: dict[str, float] = {}
        whole, whole_cond, part_cond, latents = self._encode_and_denoise(
            batch, report, timings, step_base=step_base, step_total=step_total)
        with _timed(timings, "decoder_kv"):
            kv = self.backend.decoder_kv(latents)

        chunk = opts.chunk_points or self.chunk_points
        decode = self._decoder_feed(kv, chunk)

        out, stats = self._extract_batch(batch, report, timings, kv, decode, chunk)
        if opts.thin_parts:  # thin/flat parts that decoded empty: a grid fitted to each (holopart_infer.postprocess.thin)
            out = self._retry_thin_parts(batch, timings, out, decode)
        del kv, latents, whole, whole_cond, part_cond  # the batch's model state: not needed any more
        objs = list({id(o): o for o, _ in batch}.values())
        for o in objs:
            o.memory.mark("extract")
        self._store_batch(batch, report, timings, out, stats, objs)

    def _encode_and_denoise(self, batch: list[tuple["_Prepared", int]], report: Progress,
                            timings: dict[str, float], *, step_base: int, step_total: int | None):
        """The batch's part encoder and denoising: (whole, whole_cond, part_cond, latents)."""
        opts = batch[0][0].opts

        def rows(get):
            return np.stack([get(o)[i] for o, i in batch])

        sched = self.config.get("scheduler", {})
        shift = float(sched.get("shift", 1.0))
        n_train = int(sched.get("num_train_timesteps", 1000))
        total_steps = step_total or opts.steps
        with _timed(timings, "part_encoder"):
            whole = np.stack([o.cond.whole_of(i) for o, i in batch])
            whole_cond, part_cond = self.backend.encode(rows(lambda o: o.part_tok), whole,
                                                        rows(lambda o: o.local_tok), rows(lambda o: o.cond.part_local))
        with _timed(timings, "denoise"):
            latents = sampler.sample(self.backend.guided_step, rows(lambda o: o.noise), part_cond, whole_cond,
                                     steps=opts.steps, guidance=opts.guidance, shift=shift,
                                     num_train_timesteps=n_train,
                                     callback=lambda i, n: report("denoise", step_base + i, total_steps))
        return whole, whole_cond, part_cond, latents

    def _extract_batch(self, batch: list[tuple["_Prepared", int]], report: Progress,
                       timings: dict[str, float], kv, decode, chunk: int):
        """The batch's meshes from its key/values (on the device when the backend
        extracts there, else through ``decode``): (meshes, extraction stats)."""
        from holopart_infer.extraction import extract

        opts = batch[0][0].opts
        with _timed(timings, "extract"):
            level_opts = dict(depth=opts.depth, band=opts.band, chunk_points=chunk,
                              min_resolution=opts.coarse_min_resolution,
                              close=bool(opts.close_at_bounds),
                              progress=lambda lvl, nl, d, t: report(f"extract {lvl + 1}/{nl}", d, t))
            if self.extracts_on_device:
                from holopart_infer.extraction import resident  # imports torch: the torch backend is loaded

                take = _kv_row_taker(kv)
                out, stats = resident.extract_meshes_resident(
                    lambda pts, parts=None: self.backend.query_on_device(pts, kv if parts is None else take(parts)),
                    len(batch), device=self.backend.torch_device, row_points=max(1, chunk // 8), **level_opts)
            else:
                out, stats = extract.extract_meshes(decode, len(batch), device=self.extract_device, **level_opts)
                stats.fed_points = decode.fed_points
        return out, stats

    def _retry_thin_parts(self, batch: list[tuple["_Prepared", int]], timings: dict[str, float], out, decode):
        """Thin/flat parts that decoded empty, extracted again on a grid fitted to
        each (holopart_infer.postprocess.thin); records the retried names in their
        objects. Returns the batch's meshes."""
        from holopart_infer.extraction import extract
        from holopart_infer.postprocess import thin

        opts = batch[0][0].opts
        with _timed(timings, "thin_parts"):
            out, retried = thin.retry_empty(
                out, [o.cond.part_local[i, :, :3] for o, i in batch], decode,
                lambda d, n: extract.extract_meshes(d, n, depth=opts.depth, band=opts.band,
                                                    min_resolution=opts.coarse_min_resolution,
                                                    device=self.extract_device,
                                                    chunk_points=opts.chunk_points or self.chunk_points,
                                                    close=bool(opts.close_at_bounds)),
                opts.depth, [o.parts.names[i] for o, i in batch])
        for j in retried:
            o, i = batch[j]
            o.thin_retried.append(o.parts.names[i])
        return out

    def _store_batch(self, batch: list[tuple["_Prepared", int]], report: Progress, timings: dict[str, float],
                     out: list, stats, objs: list) -> None:
        """Postprocesses the batch's meshes and stores each part's result, empty or
        pinched mark, queries, fed points and share of the stage times in its object."""
        # postprocess here, not when the object is done: only the final (decimated) meshes
        # outlive the batch, so memory does not grow with the number of parts
        done: list = [None] * len(batch)
        with _timed(timings, "postprocess"):
            for j, ((o, i), mesh) in enumerate(zip(batch, out)):
                if len(mesh[1]):
                    done[j] = self._postprocess_part(o, i, mesh[0], mesh[1])
                out[j] = None  # type: ignore[call-overload]  # the full marching-cubes mesh
        del out
        per_part = getattr(stats, "queries_per_part", None) or [[] for _ in batch]
        for (o, i), part_done, queries in zip(batch, done, per_part):
            if part_done is None:
                o.empty.append(i)
            else:
                o.results[i], pinched = part_done
                if pinched:
                    o.pinched.append(i)
            o.pending -= 1
            for level, q in enumerate(queries):
                o.level_queries[str(level)] = o.level_queries.get(str(level), 0) + int(q)
            share = 1.0 / len(batch)
            o.points_fed += getattr(stats, "fed_points", 0) * share
            for stage, sec in timings.items():
                o.timings[stage] = o.timings.get(stage, 0.0) + sec * share
        for o in objs:
            o.batch_sizes.append(len(batch))
            o.memory.mark("postprocess")
        for o, _ in batch:
            o.postprocessed += 1
            report("postprocess", o.postprocessed, o.num_parts)

    def _stand_in(self, obj: "_Prepared", i: int, bounds) -> tuple[CompletedPart, bool]:
        """Part i's visible patch closed into a solid (:func:`holopart_infer.postprocess.thin.closed_patch`:
        as it is when closed, else its winding-number solid, with a shell of ``SHELL_FRACTION`` of the
        object's longest side unless it nearly encloses its volume; ``bounds``: the object's,
        ``obj.parts.bounds()``), post-processed like
        a completion; returns what :meth:`_postprocess_part` does."""
        from holopart_infer.postprocess import thin

        part = obj.parts[i]
        (pv, pf), kind = thin.closed_patch(part.vertices, part.faces, object_bounds=bounds)
        log.info("part %r: stand-in = its visible patch, %s", part.name,
                 {"closed": "already closed", "capped": "its holes capped", "solid": "closed by its winding number",
                  "shell": "closed by its winding number and a shell", "sheet": "a sheet, thickened"}[kind])
        return self._postprocess_part(obj, i, obj.cond.to_part_frame(i, pv), pf, stand_in=True)

    def _postprocess_part(self, obj: "_Prepared", i: int, vertices, faces, *,
                          stand_in: bool = False) -> tuple[CompletedPart, bool]:
        """Part i's mesh (its normalized frame) -> the input frame, floaters removed, decimated.

        Decimation never opens a closed mesh: where the collapse would pinch a
        closed marching-cubes mesh into a non-manifold one, the full mesh is kept.

        A ``stand_in`` (the input patch, closed) keeps all its pieces: they are the input's.

        Returns the part and whether decimation was undone for that reason."""
        from holopart_infer.io import parts_io
        from holopart_infer.postprocess.cleanup import edge_manifold, remove_floaters
        from holopart_infer.postprocess.decimate import decimate as decimate_mesh

        opts = obj.opts
        # clean-up and decimation in the part's normalized frame (about [-1.05, 1.05]): their
        # tolerances (decimation merges vertices closer than 1e-8) then mean the same at any input unit
        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        if opts.min_component > 0 and not stand_in:
            v, f = remove_floaters(v, f, opts.min_component)
        pinched = False
        if opts.decimate is not None and len(f) > opts.decimate:
            vd, fd = decimate_mesh(v, f, opts.decimate)
            # the full mesh is only checked in the rare case the decimated one is not closed
            pinched = not edge_manifold(fd) and edge_manifold(f)
            if not pinched:
                v, f = vd, fd
        v = obj.cond.to_input_frame(i, v)
        color = tuple(parts_io.part_colors(i + 1)[i])
        return CompletedPart(obj.parts.names[i], np.asarray(v, np.float32), np.asarray(f, np.int64), color), pinched

    def _finish(self, obj: "_Prepared", report: Progress) -> CompletionResult:
        """Stage 3, per object: stand-ins for parts still empty, appearance, the result.

        Each part was already taken back to the input frame, cleaned and decimated
        when its batch finished (:meth:`_run_batch`)."""
        from holopart_infer.io import appearance

        opts, parts, cond = obj.opts, obj.parts, obj.cond
        P = obj.num_parts
        if P and len(obj.empty) == P:
            # before any stand-in: a result made only of thickened input patches would hide this
            raise EmptyResult(
                f"every one of the {P} parts came out empty: the model's decoder found no surface anywhere in the "
                f"extraction box{' (nor on grids fitted to each part)' if opts.thin_parts else ''}. The input was "
                f"read correctly ({P} parts with surface), so this points at the model ({self.path}): untrained, "
                "corrupt or non-finite weights, or a model dir that does not match its checkpoint. Check it with "
                "`holopart-infer verify`, or re-export it.")
        thin_fallback = []
        bounds = parts.bounds() if obj.empty else None
        with _timed(obj.timings, "postprocess"):
            for i in sorted(obj.empty):
                if opts.thin_parts:  # still empty: the input surface, closed, stands in
                    obj.results[i], pinched = self._stand_in(obj, i, bounds)
                    if pinched:
                        obj.pinched.append(i)
                    thin_fallback.append(parts.names[i])
                else:
                    obj.results[i], _ = self._postprocess_part(obj, i, np.zeros((0, 3), np.float32),
                                                               np.zeros((0, 3), np.int64))
        if P and not any(len(r.faces) for r in obj.results):
            # the decoder found surface, but clean-up / decimation left nothing: say so here, not as a
            # failure to write the output later
            raise EmptyResult(
                f"every one of the {P} parts has no faces left after clean-up and decimation (min_component="
                f"{opts.min_component}, decimate={opts.decimate}) although the model decoded surface for "
                f"{P - len(obj.empty)} of them. Run again with decimate=None (CLI --no-decimate) and "
                "min_component=0 (CLI --min-component 0), and report the input if that does not help.")
        if thin_fallback:
            log.warning("%d part(s) came back empty from the model even on a grid fitted to them (thin or "
                        "flat parts): kept their input surface, closed and thickened: %s",
                        len(thin_fallback), ", ".join(repr(n) for n in thin_fallback))
        with _timed(obj.timings, "quality"):
            flagged = self._judge_parts(obj, set(parts.names.index(n) for n in thin_fallback))
        results: list[CompletedPart] = list(obj.results)
        pinched = [parts.names[i] for i in sorted(obj.pinched)]
        if pinched:  # one line per run, not per part: a warning on most parts teaches users to ignore warnings
            log.warning("decimation to %d faces would have left %d of %d parts non-manifold at a few edges (%s): "
                        "kept their closed marching-cubes meshes (more faces)",
                        opts.decimate, len(pinched), P, ", ".join(pinched[:5]) + (" ..." if len(pinched) > 5 else ""))
        if opts.appearance:  # the input's look onto the completed parts (holopart_infer.io.appearance)
            with _timed(obj.timings, "appearance"):
                appearance.apply(results, parts, seed=opts.seed)
            obj.memory.mark("appearance")
        mem = obj.memory.report(
            input_mb=memory.arrays_mb([a for p in parts for a in (p.vertices, p.faces)]),
            result_mb=memory.arrays_mb([a for p in results for a in (p.vertices, p.faces, p.vertex_colors)]))
        stats = CompletionStats(
            decoder_queries_per_level=obj.level_queries, decoder_points_fed=int(round(obj.points_fed)),
            num_parts=P, backend=self.backend_name, batch_sizes=list(obj.batch_sizes),
            decimation_non_manifold=pinched, thin_parts={"retried": list(obj.thin_retried), "fallback": thin_fallback},
            quality={p.name: p.quality.as_extras() for p in results if p.quality is not None},
            guard={"flagged": flagged, "replaced": [p.name for p in results
                                                    if p.quality is not None and p.quality.replaced]},
            memory=mem)
        return CompletionResult(results, dict(obj.timings), stats, obj.inputs, up=cond.input_up or self.up_axis,
                                options=opts)

    def _judge_parts(self, obj: "_Prepared", stand_ins: set[int]) -> list[str]:
        """Measure every part against its input patch (holopart_infer.postprocess.quality); with
        ``options.guard``, replace implausible ones by their closed visible patch.

        Args:
            stand_ins: parts already replaced by the patch because the model left them empty.

        Returns:
            the names of the parts found implausible (replaced or, with guard off, kept).
        """
        from dataclasses import replace as dc_replace

        from holopart_infer.postprocess import quality

        opts, parts = obj.opts, obj.parts
        bounds = parts.bounds()
        flagged: list[tuple[str, quality.PartQuality]] = []

        def measure(i: int) -> quality.PartQuality:
            part = obj.results[i]
            return quality.measure(part.vertices, part.faces, parts[i].vertices, parts[i].faces, bounds, seed=opts.seed)

        # the parts are measured, and their stand-ins made, two at a time (_map_parts): each is part
        # Python, part native code, so two keep both cores busy (the same results as one at a time:
        # each part has its own generator)
        measured = _map_parts(measure, list(range(len(obj.results))))
        scores: list[quality.PartQuality] = []
        replace: list[int] = []
        for i, (part, q) in enumerate(zip(obj.results, measured)):
            if i in stand_ins:
                q = dc_replace(q, replaced=True, stand_in="empty")
            elif not len(part.faces):
                pass  # left empty (thin_parts=False): the thin-part path's business, not the guard's
            elif not q.plausible:
                flagged.append((parts.names[i], q))
                if opts.guard:
                    replace.append(i)
                    q = dc_replace(q, replaced=True, stand_in="implausible")
            scores.append(q)
        if replace:
            made = _map_parts(lambda i: self._stand_in(obj, i, bounds), replace)
            for i, (result, pinched) in zip(replace, made):
                obj.results[i] = result
                if pinched and i not in obj.pinched:
                    obj.pinched.append(i)
                elif not pinched and i in obj.pinched:
                    obj.pinched.remove(i)
        for i, q in enumerate(scores):
            obj.results[i].quality = q
        # one warning per object for each kind of verdict, naming every part and its measures: parts
        # given whole that the model did not reproduce, and the others
        given_whole = [all(r.startswith("closed_mismatch") for r in q.reasons) for _, q in flagged]
        whole = [nq for nq, w in zip(flagged, given_whole) if w]
        other = [nq for nq, w in zip(flagged, given_whole) if not w]
        keep = "guard=False / --keep-implausible keeps the model's output"
        if whole:
            bound = quality.THRESHOLDS["closed_mismatch"]
            log.warning("%d of %d parts were given whole (a closed surface, or closed but for slits) and the "
                        "model's version differs from them (volume IoU below %.2f), %s: %s", len(whole), obj.num_parts,
                        1.0 - bound, f"returned as given ({keep})" if opts.guard
                        else "kept as the model made them (guard off)",
                        ", ".join(f"{n!r} (IoU {1.0 - q.closed_mismatch:.2f})" for n, q in whole))
        if other:
            what = (f"replaced by their visible patch, closed ({keep})" if opts.guard
                    else "kept as the model made them (guard off)")
            log.warning("%d of %d parts look implausible, %s: %s", len(other), obj.num_parts, what,
                        "; ".join(f"{n!r}: {', '.join(q.reasons)}" for n, q in other))
        return [n for n, _ in flagged]

    def _decoder_feed(self, kv, chunk_points: int):
        """The batch's decode callback: rows of ``chunk_points // 8`` points (a
        part's last few in one row rounded up to a multiple of 128 points), each
        queried against its own part's key/values (extract.PackedFeed), so finished
        parts cost no row and short parts almost no padding. Key/values the host cannot
        gather by row (device buffers of ONNX Runtime CUDA, TensorRT) keep one row
        per part padded to the longest (extract.PaddedFeed)."""
        from holopart_infer.extraction import extract

        take = _kv_row_taker(kv)

        def query(points, parts):
            return self.backend.decoder_query(points, kv if parts is None else take(parts))

        if take is None:
            return extract.PaddedFeed(query)
        return extract.PackedFeed(query, row_points=max(1, int(chunk_points) // 8))


def _kv_row_taker(kv):
    """``take(parts)``: the key/values of rows ``parts`` (int64 (R,) numpy) gathered
    along the batch axis, for key/values held as numpy arrays or torch tensors
    (gathered on their device); None for anything else. The last gather is
    cached: level 0 asks for the same rows call after call."""
    if not isinstance(kv, (tuple, list)) or not kv:
        return None
    if not all(isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "torch" for a in kv):
        return None
    cache: dict = {}

    def take(parts):
        parts = np.asarray(parts, dtype=np.int64).reshape(-1)
        key = parts.tobytes()
        if cache.get("key") != key:
            cache.clear()  # the old gather goes before the new one is made
            cache.update(key=key, kv=tuple(a[parts] for a in kv))  # numpy and torch index alike
        return cache["kv"]

    return take


#: options that must be equal for parts to share a DiT / decoder batch (the
#: sampler loop and the extraction run once per batch with one value of each)
BATCH_KEY_FIELDS = ("steps", "guidance", "latent_tokens", "depth", "band", "coarse_min_resolution", "chunk_points",
                    "close_at_bounds", "thin_parts", "parts_per_batch")


def _batch_key(opts: CompletionOptions) -> tuple:
    return tuple(getattr(opts, f) for f in BATCH_KEY_FIELDS)  # parts_per_batch last: the batch size


@dataclass
class CompletionJob:
    """One object for :meth:`HoloPart.complete_many`.

    Attributes:
        parts: a path (glb/gltf scene, mesh + ``labels``, folder of part meshes)
            or a :class:`holopart_infer.io.parts_io.Parts`.
        labels: per-face labels (path or array) when ``parts`` is a single mesh.
        options: :class:`CompletionOptions`; None uses the model's defaults.
        key: the caller's id for the job, returned unchanged.
        up: the axis pointing up in the input (as :meth:`HoloPart.complete`'s ``up``).
    """

    parts: "str | os.PathLike | Parts"
    labels: "str | os.PathLike | np.ndarray | None" = None
    options: "CompletionOptions | None" = None
    key: Any = None
    up: str | None = None


@dataclass(eq=False)
class _Prepared:
    """An object between the stages: conditioned, then its parts' meshes as batches finish."""

    job: CompletionJob | None
    parts: Any
    opts: CompletionOptions
    cond: Any
    part_tok: np.ndarray
    local_tok: np.ndarray
    noise: np.ndarray
    timings: dict[str, float]
    results: list  # per part: its CompletedPart once its batch is done (None until then, or when empty)
    pending: int
    memory: Any = None  # holopart_infer.memory.Tracker
    empty: list[int] = field(default_factory=list)  # parts whose batch gave no surface
    pinched: list[int] = field(default_factory=list)  # parts that decimation left non-manifold
    postprocessed: int = 0  # parts done (progress)
    level_queries: dict[str, int] = field(default_factory=dict)
    points_fed: float = 0.0  # decoder points computed in extraction, padding included (its share of batches)
    batch_sizes: list[int] = field(default_factory=list)
    thin_retried: list[str] = field(default_factory=list)  # parts re-extracted on a fitted grid
    inputs: tuple = ()  # the paths the object was read from (the result refuses to overwrite them)
    error: HoloPartError | None = None
    reported: bool = False

    @property
    def num_parts(self) -> int:
        return len(self.results)


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def _describe(job: CompletionJob) -> str:
    src = getattr(job.parts, "source", None) or str(job.parts)
    return f"job {job.key!r} ({src})" if job.key is not None else src


def _as_error(e: Exception, what: str) -> HoloPartError:
    """A job's failure as the library's error (unexpected exceptions wrapped, cause kept)."""
    if isinstance(e, HoloPartError):
        return e
    err = EngineError(f"{what} failed: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err


def load(path: str | os.PathLike, backend: str = "auto", device: str = "auto", precision: str | None = None,
         engine_cache: str | os.PathLike | None = None, graph: str | None = None, *,
         verify_integrity: bool = True, **options) -> HoloPart:
    """Load a model dir or a checkpoint dir.

    Args:
        path: exported model dir (manifest.json) or checkpoint dir (model_index.json).
        backend: "auto" (TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU for a
            model dir; torch for a checkpoint dir), "torch", "onnxruntime" or "tensorrt".
            On a CPU a checkpoint dir's torch backend ran 3.1x slower end to end than
            the ONNX Runtime model dir exported from it (issue 28, item 5): export it
            (``holopart-infer export``) and load the model dir for CPU runs.
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
        **options: further backend options of the registry table
            (:attr:`holopart_infer.engines.BackendSpec.options`), e.g. ``threads`` (ONNX
            Runtime); one the resolved backend does not take raises InputError.

    Returns:
        A :class:`HoloPart`; ``backend_name``/``device``/``precision`` say what was resolved.

    Raises:
        InputError / InputFileNotFound: bad arguments or path.
        BackendUnavailable: the requested backend or device cannot run here (with the install hint).
        ModelDirError / CheckpointError: the folder is unusable.
    """
    from holopart_infer.engines import open_backend

    be = open_backend(path, backend=backend, device=device, precision=precision, engine_cache=engine_cache,
                      graph=None if graph == "eager" else graph, verify_integrity=verify_integrity, **options)
    model = HoloPart(be)
    try:
        model.default_options()  # a bad inference_defaults entry fails here, naming the model
    except Exception:
        be.close()
        raise
    if model.backend_name == "torch" and str(model.device).startswith("cpu"):
        # issue 28 item 5: said where the user chose the checkpoint dir, once per load
        log.warning("the torch backend (a checkpoint dir) on the CPU ran ~3x slower end to end than ONNX "
                    "Runtime on the model dir exported from it (benchmarks/RESULTS.md): for CPU runs export it "
                    "once (holopart-infer export %s MODEL_DIR) and load the model dir (--model MODEL_DIR)",
                    path)
    return model
