"""CPU defaults and --quality presets (issue 16 item 4): where depth/steps come from, visibly."""
from __future__ import annotations


import pytest

import holopart_infer as hp
from holopart_infer import assets, cli
from holopart_infer.errors import InputError
from holopart_infer.pipeline import QUALITY_PRESETS, CompletionOptions, quality_preset


def test_presets_and_their_order():
    assert quality_preset("high") == {"depth": 9, "steps": 50}  # the reference
    depths = [QUALITY_PRESETS[k]["depth"] for k in ("draft", "balanced", "high")]
    steps = [QUALITY_PRESETS[k]["steps"] for k in ("draft", "balanced", "high")]
    assert depths == sorted(depths) and steps == sorted(steps)
    with pytest.raises(InputError, match="quality: expected one of draft, balanced, high"):
        quality_preset("ultra")


def test_embedded_model_defaults_to_balanced_full_models_to_the_reference():
    mini = hp.load(assets.demo_model_path())
    opts = mini.default_options()
    assert {"depth": opts.depth, "steps": opts.steps} == QUALITY_PRESETS["balanced"]
    library = CompletionOptions()  # a published checkpoint / model dir without such defaults
    assert {"depth": library.depth, "steps": library.steps} == QUALITY_PRESETS["high"]


def _args(argv):
    return cli.build_parser(["run", *argv]).parse_args(["run", "in.glb", "-o", "o.glb", "--model", "m", *argv])


def test_cli_quality_then_explicit_flags_win():
    base = CompletionOptions(depth=7, steps=20)
    a = _args(["--quality", "draft"])
    o = cli.options.options_from(a, base)
    assert (o.depth, o.steps) == (6, 10)
    line = cli.options.settings_line(a, o, {"depth": 7, "steps": 20}, "the model")
    assert "depth 6, 10 steps (= --quality draft)" in line and "from --quality draft" in line
    a = _args(["--quality", "high", "--depth", "8"])
    o = cli.options.options_from(a, base)
    assert (o.depth, o.steps) == (8, 50)
    assert "from --depth, --quality high" in cli.options.settings_line(a, o, {}, "the model")
    a = _args([])
    o = cli.options.options_from(a, base)
    assert (o.depth, o.steps) == (7, 20)
    assert "from the model's defaults" in cli.options.settings_line(a, o, {"depth": 7, "steps": 20}, "the model")
    assert "library default (reference)" in cli.options.settings_line(a, CompletionOptions(), {}, "the model")


def test_help_shows_presets_and_the_model_defaults(capsys):
    argv = ["run", "--model", str(assets.demo_model_path()), "--help"]
    with pytest.raises(SystemExit):
        cli.build_parser(argv).parse_args(argv)
    out = " ".join(capsys.readouterr().out.split())
    assert "--quality {draft,balanced,high}" in out
    assert "balanced: depth 7, 20 steps" in out and "(default 7)" in out and "(default 20)" in out


def test_unknown_quality_exits_2(capsys):
    argv = ["run", "x.glb", "-o", "o.glb", "--model", "m", "--quality", "ultra"]
    with pytest.raises(SystemExit) as e:
        cli.build_parser(argv).parse_args(argv)
    assert e.value.code == 2
    assert "invalid choice: 'ultra'" in capsys.readouterr().err
