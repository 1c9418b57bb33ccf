"""The graphs' signatures (docs/contracts.md, "Graphs") and the one feed checker.

:data:`SIGNATURES` lists, per graph of a model, its inputs and outputs: name,
dtype at the graph boundary (always float32) and shape. A shape entry is an
int (a fixed size), a free axis (``"B"`` batch, ``"K"`` condition tokens,
``"N"`` points, ``"T"`` latent tokens, ``"Q"`` query points: any size >= 1, the
same in every input of one call) or a model axis whose size the model's config
fixes (:data:`MODEL_AXES`: ``"C"`` latent channels, ``"Dc"``/``"Dc2"`` the DiT's
two condition widths, ``"D"`` the part encoder's width, ``"H"``/``"dh"`` the
decoder's heads and head width).

:func:`check_feeds` is what every backend calls before it runs a graph
(ONNX Runtime, TensorRT and the torch backend): a missing or unexpected input,
a wrong rank, size or host dtype raises :class:`~holopart_infer.errors.ShapeError`
in one format: the graph, the tensor, what it has, what was expected and what to
do. TensorRT adds only its engines' profile ranges on top (:func:`feed_error`
keeps that message in the same format). numpy only; no engine library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from holopart_infer.errors import ShapeError

#: axes any size may take (consistent within one call)
FREE_AXES = ("B", "K", "N", "T", "Q")


@dataclass(frozen=True)
class TensorSig:
    """One graph input or output: name, shape (ints and axis names), dtype name."""
    name: str
    shape: tuple
    dtype: str = "float32"


@dataclass(frozen=True)
class GraphSig:
    name: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    def input(self, name: str) -> TensorSig:
        return next(t for t in self.inputs if t.name == name)


def _t(name: str, *shape) -> TensorSig:
    return TensorSig(name, tuple(shape))


_CONDS = (_t("part_cond", "B", "K", "Dc"), _t("whole_cond", "B", "K", "Dc2"))
_KV = (_t("keys", "B", "H", "T", "dh"), _t("values", "B", "H", "T", "dh"))

#: graph name -> signature; the order of inputs is the graphs' (and the order they are checked in)
SIGNATURES: dict[str, GraphSig] = {g.name: g for g in (
    GraphSig("part_encoder",
             (_t("part_tokens", "B", "K", 6), _t("whole_points", "B", "N", 7),
              _t("local_tokens", "B", "K", 6), _t("local_points", "B", "N", 6)),
             (_t("whole_cond", "B", "K", "D"), _t("part_cond", "B", "K", "D"))),
    GraphSig("dit", (_t("latents", "B", "T", "C"), _t("timestep", "B"), *_CONDS),
             (_t("velocity", "B", "T", "C"),)),
    GraphSig("guided_step", (_t("latents", "B", "T", "C"), _t("timestep", 1), _t("dt", 1), _t("guidance", 1),
                             *_CONDS),
             (_t("latents_next", "B", "T", "C"),)),
    GraphSig("vae_kv", (_t("latents", "B", "T", "C"),), _KV),
    GraphSig("vae_query", (_t("points", "B", "Q", 3), *_KV), (_t("logits", "B", "Q", 1),)),
)}

#: model axis -> (config component, field); "dh" is the decoder's width over its heads
MODEL_AXES = {"C": ("transformer", "in_channels"), "Dc": ("transformer", "cross_attention_dim"),
              "Dc2": ("transformer", "cross_attention_2_dim"), "D": ("part_encoder", "dim"),
              "H": ("vae", "num_attention_heads"), "dh": ("vae", "width_decoder")}


def model_dims(config: Mapping | None) -> dict[str, int]:
    """The sizes of :data:`MODEL_AXES` in a model's config (``backend.config``); an axis
    whose field is missing stays free (any size, consistent within a call)."""
    out: dict[str, int] = {}
    config = config or {}
    for axis, (comp, key) in MODEL_AXES.items():
        value = (config.get(comp) or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[axis] = value
    if "dh" in out:
        if "H" in out and out["dh"] % out["H"] == 0:
            out["dh"] //= out["H"]
        else:
            del out["dh"]
    return out


def shape_str(shape) -> str:
    """``(2, 10, 8)``, ``(3,)``, ``(B, T, 8)``."""
    shape = tuple(shape)
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def expected_shape(graph: str, name: str, dims: Mapping[str, int] | None = None) -> tuple:
    """The shape of input ``name`` of ``graph`` with the model axes in ``dims`` filled in."""
    dims = dims or {}
    return tuple(dims.get(d, d) if isinstance(d, str) else d for d in SIGNATURES[graph].input(name).shape)


def feed_error(graph: str, name: str, has: str, expected: str, todo: str) -> ShapeError:
    """The one format of a bad feed: graph, tensor, what it has, what was expected, what to do."""
    return ShapeError(f"graph '{graph}': input '{name}' has {has}, expected {expected}; {todo}")


def check_feeds(graph: str, feeds: Mapping[str, Any], dims: Mapping[str, int] | None = None, *,
                partial: bool = False) -> None:
    """Raise :class:`ShapeError` unless ``feeds`` match ``graph``'s inputs.

    Args:
        graph: a name in :data:`SIGNATURES`.
        feeds: input name -> array (numpy, or a backend's device array: anything with
            ``shape``; the dtype of numpy arrays is checked, a device array's storage
            dtype is its backend's own business).
        dims: sizes of the model axes (:func:`model_dims` of the backend's config);
            axes not in it are free.
        partial: check only the inputs given (a backend that takes some inputs as
            Python numbers or keeps them itself); else every input must be there and
            no other.
    """
    sig = SIGNATURES[graph]
    names = [t.name for t in sig.inputs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if extra or (missing and not partial):
        raise ShapeError(f"graph '{graph}': inputs {sorted(feeds)} do not match the graph's {names} (missing "
                         f"{[] if partial else missing}, unexpected {extra}); pass exactly the graph's inputs")
    dims = dims or {}
    seen: dict[str, tuple[int, str]] = {}  # axis -> (size, input that set it)
    for ts in sig.inputs:
        if ts.name not in feeds:
            continue
        x = feeds[ts.name]
        shape = tuple(int(d) for d in x.shape)
        want_shape = expected_shape(graph, ts.name, dims)
        want = f"{shape_str(want_shape)} {ts.dtype}"
        if isinstance(x, np.ndarray) and x.dtype != np.dtype(ts.dtype):
            raise feed_error(graph, ts.name, f"dtype {x.dtype}", f"{ts.dtype} (shape {want})",
                             f"convert it with .astype(numpy.{ts.dtype})")
        if len(shape) != len(want_shape):
            raise feed_error(graph, ts.name, f"shape {shape_str(shape)}",
                             f"{want} (rank {len(want_shape)}, got {len(shape)})", "reshape it")
        for i, (got, exp) in enumerate(zip(shape, want_shape)):
            if isinstance(exp, str):
                if got < 1:
                    raise feed_error(graph, ts.name, f"shape {shape_str(shape)}", f"{want} (axis {i}, {exp}, "
                                     "is empty)", "feed at least one element on every axis")
                first = seen.setdefault(exp, (got, ts.name))
                if first[0] != got:
                    raise feed_error(graph, ts.name, f"shape {shape_str(shape)}",
                                     f"{want} with {exp}={first[0]} as in input '{first[1]}'",
                                     f"give every input of one call the same {exp}")
            elif got != exp:
                raise feed_error(graph, ts.name, f"shape {shape_str(shape)}", f"{want} (axis {i} must be {exp})",
                                 "feed the shape this model was exported with")
