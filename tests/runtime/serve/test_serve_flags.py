"""``serve`` takes the completion-option flags ``run`` and ``batch`` take (made from the option
metadata, issue 27 item 2), ``--option NAME=VALUE`` is an alias read by the same parser, and a
job records the options it ran with (issue 27 item 3)."""
from __future__ import annotations

import time

import pytest

from holopart_infer.cli import build_parser
from holopart_infer.pipeline import CompletionOptions


def _option_flags(command: str) -> set[str]:
    sub = build_parser([command])._subparsers._group_actions[0].choices[command]
    group = next(g for g in sub._action_groups if g.title == "completion options")
    return {s for a in group._group_actions for s in a.option_strings}


def test_serve_has_every_option_flag_of_run_and_batch():
    serve = _option_flags("serve")
    assert _option_flags("run") == serve == _option_flags("batch")
    assert {"--steps", "--depth", "--no-decimate", "--quality", "--parts-per-batch"} <= serve


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    (["--option", "steps=0"], "argument --option: steps: expected an integer >= 1, got '0'"),
    (["--option", "colour=red"], "argument --option: expected NAME=VALUE with NAME one of steps"),
    (["--option", "guard=maybe"], "argument --option: guard: expected True or False, got 'maybe'"),
])
def test_serve_bad_option_values_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(["serve", *argv]).parse_args(["serve", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_accepts_run_s_flags_and_the_option_alias():
    pytest.importorskip("starlette", reason="needs the [serve] extra")
    from holopart_infer import assets
    from holopart_infer.cli.serve import build_service

    argv = ["serve", "--steps", "2", "--no-decimate", "--quality", "draft", "--option", "min_component=0",
            "--option", "guard=false", "--option", "seed=4", "--seed", "9", "--option", "band=0.5"]
    service = build_service(build_parser(argv).parse_args(argv))
    try:
        d = service.defaults
        # the embedded model's defaults, the demo preset, --quality draft, then the values given
        expected = service.model.default_options().replace(**assets.DEMO_PRESET).replace(
            depth=6, steps=2, decimate=None, min_component=0.0, guard=False, seed=9, band=0.5)
        assert d == expected
    finally:
        service.model.close()


def test_a_job_records_its_resolved_options():
    from holopart_infer.serve.batcher import ServeJob

    opts = CompletionOptions().replace(steps=3, decimate=None)
    job = ServeJob(parts=[1, 2], options=opts, deadline=time.monotonic() + 60)
    shown = job.public()["options"]
    assert shown == opts.as_dict() and shown["steps"] == 3 and shown["decimate"] is None
