"""TensorRT shape profiles: (min, opt, max) per input, from the manifest and the backend's knobs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from holopart_infer.errors import InputError, ModelDirError
from holopart_infer.constants import QUERY_CHUNK_POINTS

#: Symbolic axes of the model dir's graphs (docs/contracts.md, the manifest).
BATCH_AXIS, QUERY_AXIS = "B", "Q"
#: Batch the engines are tuned for when ``max_batch`` is given: the reference
#: denoises 8 parts at once (spec section 1).
OPT_BATCH = 8

#: Decoder query points per call, (min, opt, max). The exporter's profile goes to
#: 262144, but TensorRT sizes activation memory for the profile maximum and the
#: decoder's feed-forward alone holds batch * points * 4 * width half floats
#: (16 * 262144 * 4096 * 2 B = 34 GB), so the backend caps it at 8 x the
#: pipeline's query chunk (65536) and is tuned for the chunk itself, which is what
#: the pipeline sends; TensorRTBackend.decoder_query splits only calls beyond the
#: engine's maximum. Raise it on large GPUs with ``max_query_points``.
DEFAULT_QUERY_POINTS = (1, QUERY_CHUNK_POINTS, 8 * QUERY_CHUNK_POINTS)

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
