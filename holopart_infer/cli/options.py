"""The arguments several commands share, made from the library's own metadata.

The completion-option flags (``--steps``, ``--no-decimate``, ``--quality``, ...) are
generated from the :class:`~holopart_infer.pipeline.CompletionOptions` fields'
metadata (flag, help, type, range), so ``run``, ``demo``, ``batch`` and ``serve``
accept the same flags with the same checks, and :func:`options_from` turns them into
options through the one merge, :meth:`CompletionOptions.replace`. ``serve --option
NAME=VALUE`` (kept as an alias) is parsed by the same per-field parser.
"""
from __future__ import annotations

import argparse

from holopart_infer.errors import HoloPartError, InputError
from holopart_infer.engines.registry import DEVICES


class _Off:
    """What an off flag (``--no-decimate``) stores when the option's "off" value is None: unlike
    None (the argparse default: flag not given), it says the flag was given."""

    def __repr__(self) -> str:
        return "off"


OFF = _Off()


def flag_of(f) -> str:
    """The CLI flag of an option field (``--min-component``)."""
    return f.metadata["cli"] or "--" + f.name.replace("_", "-")


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def value_parser(f, *, words: bool = False):
    """argparse ``type=`` for an option field: parses and checks the range, so a bad value
    exits 2 naming the flag and the accepted range before any work.

    Args:
        words: also read a bool field's value (true/false, 1/0, yes/no, on/off), as
            ``--option NAME=VALUE`` gives it (bool flags themselves take no value).
    """
    from holopart_infer.pipeline import option_problem, option_range

    kind = f.metadata["kind"]

    def parse(text: str):
        if f.metadata["optional"] and text.strip().lower() in ("none", "off", "null"):
            return OFF  # the option's documented "None" (off): it must reach the pipeline as None
        if kind is bool and words:
            low = text.strip().lower()
            if low not in _TRUE + _FALSE:
                raise argparse.ArgumentTypeError(f"expected {option_range(f)}, got {text!r}")
            return low in _TRUE
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {option_range(f)}, got {text!r}") from None
        problem = option_problem(f, value)
        if problem:
            raise argparse.ArgumentTypeError(f"expected {problem}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_option_assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` (``serve --option``) as (field name, value), through :func:`value_parser`:
    any :class:`CompletionOptions` field, API-only ones (``band``, ``chunk_points``) too."""
    from holopart_infer.pipeline import option_fields

    fields = {f.name: f for f in option_fields()}
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(fields)}, got {text!r}")
    try:
        return name, value_parser(fields[name], words=True)(value.strip())
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{name}: {e}") from None


def help_defaults(model_dir: str | None) -> dict | None:
    """A model's option defaults for ``--help`` only (:func:`holopart_infer.pipeline.model_defaults`,
    hashes not checked); None when there is no usable model there or it sets nothing of its own."""
    from holopart_infer.pipeline import CompletionOptions, model_defaults

    if not model_dir:
        return None
    try:
        known = model_defaults(model_dir, verify_integrity=False).as_dict()
    except (HoloPartError, OSError, ValueError):
        return None
    return known if known != CompletionOptions().as_dict() else None


def add_option_args(p: argparse.ArgumentParser, defaults: dict, default_source: str) -> None:
    """One flag per :class:`CompletionOptions` field (its metadata gives flag, help and range),
    and ``--quality``.

    Args:
        p: the (sub)parser.
        defaults: values to show as defaults (library defaults with the model's applied).
        default_source: says where the shown defaults come from.
    """
    from holopart_infer.pipeline import QUALITY_PRESETS, option_fields, option_range

    g = p.add_argument_group("completion options", f"Defaults shown: {default_source}.")
    presets = "; ".join(f"{k}: depth {v['depth']}, {v['steps']} steps" for k, v in QUALITY_PRESETS.items())
    g.add_argument("--quality", choices=list(QUALITY_PRESETS), default=None,
                   help=f"a named depth/steps pair ({presets}); --depth/--steps given as well win; default: "
                        f"the depth/steps shown below (high is the reference)")
    for f in option_fields():
        m = f.metadata
        if m["cli"] is None:
            continue
        value = defaults.get(f.name, f.default)
        if m["kind"] is not bool:
            shown = "off" if value is None else value
            g.add_argument(flag_of(f), dest=f.name, type=value_parser(f), default=None, metavar=f.name.upper(),
                           help=f"{m['help']}; {option_range(f)} (default {shown})")
        if m["off_flag"]:
            g.add_argument(m["off_flag"], dest=f.name, action="store_const",
                           const=OFF if m["optional"] else False,
                           help=m["off_help"] + (" (default)" if value in (None, False) else ""))


def given_options(args, extra: dict | None = None) -> dict:
    """The option values the command line set: ``extra`` (e.g. ``--option`` pairs) first,
    then the flags (a flag wins); :data:`OFF` read as None."""
    from holopart_infer.pipeline import option_fields

    given = {k: (None if v is OFF else v) for k, v in (extra or {}).items()}
    for f in option_fields():
        value = getattr(args, f.name, None)
        if value is OFF:  # an off flag whose meaning is None (--no-decimate): None must reach the pipeline
            given[f.name] = None
        elif value is not None:
            given[f.name] = value
    return given


def options_from(args, base, extra: dict | None = None):
    """``base`` (the model's defaults, plus the demo preset), then ``--quality``'s preset,
    then the values given (explicit flags win), merged by :meth:`CompletionOptions.replace`."""
    from holopart_infer.pipeline import quality_preset

    quality = getattr(args, "quality", None)
    if quality:
        base = base.replace(**quality_preset(quality))
    return base.replace(**given_options(args, extra))


def settings_line(args, opts, model_defaults: dict, model_label: str) -> str:
    """Says which depth/steps a run uses and where they come from (flag, preset, model, library)."""
    from holopart_infer.pipeline import QUALITY_PRESETS

    quality = getattr(args, "quality", None)
    said = []
    for name in ("depth", "steps"):
        if getattr(args, name, None) is not None:
            said.append(f"--{name}")
        elif quality:
            said.append(f"--quality {quality}")
        elif name in model_defaults:
            said.append(f"{model_label}'s defaults")
        else:
            said.append("library default (reference)")
    named = [k for k, v in QUALITY_PRESETS.items() if v == {"depth": opts.depth, "steps": opts.steps}]
    return (f"settings: depth {opts.depth}, {opts.steps} steps" + (f" (= --quality {named[0]})" if named else "")
            + f"; from {', '.join(dict.fromkeys(said))}; --quality draft|balanced|high or --depth/--steps change it")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """--backend, --device, --overwrite, --no-verify (run, demo, batch)."""
    from holopart_infer.engines import backend_names

    p.add_argument("--backend", choices=list(backend_names()), default="auto",
                   help="inference backend; auto (default) picks TensorRT, then ONNX Runtime CUDA, then ONNX "
                        "Runtime CPU for a model dir, torch for a checkpoint dir, and says which; an explicit "
                        "one that cannot run here is an error with the install hint")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default): CUDA when the backend can use it here, else the CPU; cuda without a "
                        "usable GPU is an error, never a silent fallback")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (inputs are never replaced)")
    p.add_argument("--no-verify", dest="no_verify", action="store_true",
                   help="skip the model dir's sha256 integrity check (done once per file, then remembered)")


def add_up_arg(p: argparse.ArgumentParser) -> None:
    """``--up``: the axis pointing up in the input (holopart_infer.io.frames)."""
    from holopart_infer.io.frames import DEFAULT_UP, UP_AXES

    per = ", ".join(f"{ext} {axis}" for ext, axis in DEFAULT_UP.items())
    p.add_argument("--up", type=_up_value, default=None, metavar="{" + ",".join(UP_AXES) + "}",
                   help=f"the axis pointing up in the input; default per format ({per}); glTF is +y by its "
                        "specification, so another value there overrides it. Results are written in the "
                        "input's own frame. '--up -z' and '--up=-z' both work; any case, and 'z' means '+z'")


def _up_value(text: str) -> str:
    """``--up``'s value as the API reads it (``+Z``, ``z`` -> ``+z``); argparse names the option."""
    from holopart_infer.io.frames import check_up

    try:
        return check_up(text, "the value")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def join_up_values(argv: list[str]) -> list[str]:
    """``--up -z`` as ``--up=-z`` (argparse would take ``-z`` for an option)."""
    out: list[str] = []
    for a in argv:
        if out and out[-1] == "--up" and a.lower() in ("-x", "-y", "-z"):
            out[-1] = f"--up={a}"
        else:
            out.append(a)
    return out


def value_after(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--model DIR`` or ``--model=DIR``), before parsing."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None
