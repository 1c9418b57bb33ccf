"""Issues 24, 25 and 29: options that silently did nothing, inputs that ended as
internal errors or wrong results, and what a new user trips on. One test per case,
named after it (``test_29_1_*`` is issue 29, item 1). README "Guarantees and exit
codes" points here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from holopart_infer import assets

FAST_OPTS = dict(steps=2, depth=6, num_points=1024, latent_tokens=64)


def cli(*args, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def _parse(*argv):
    from holopart_infer import cli as cli_mod

    argv = [str(a) for a in argv]
    return cli_mod.build_parser(argv).parse_args(argv)


# --------------------------------------------------------------------------- 29.1: off flags whose value is None
def _none_off_flags():
    from holopart_infer.pipeline import option_fields

    return [f for f in option_fields() if f.metadata["off_flag"] and f.metadata["optional"]]


def test_29_1_there_is_an_off_flag_meaning_none():
    assert [f.name for f in _none_off_flags()] == ["decimate"]  # a new one gets the tests below for free


@pytest.mark.parametrize("command", ["run", "batch"])
@pytest.mark.parametrize("field", _none_off_flags(), ids=lambda f: f.metadata["off_flag"])
def test_29_1_off_flag_meaning_none_reaches_the_options(command, field, tmp_path):
    from holopart_infer import cli as cli_mod
    from holopart_infer.pipeline import CompletionOptions

    base = CompletionOptions()
    assert getattr(base, field.name) is not None
    args = _parse(command, "x.glb", "-o", tmp_path / "o", "--model", "m", field.metadata["off_flag"])
    assert getattr(cli_mod._options_from(args, base), field.name) is None
    args = _parse(command, "x.glb", "-o", tmp_path / "o", "--model", "m")  # not given: the base's value stays
    assert getattr(cli_mod._options_from(args, base), field.name) == getattr(base, field.name)


def test_29_1_no_decimate_keeps_the_full_mesh(tmp_path):
    """End to end: with --no-decimate a part has more faces than the decimation target."""
    import trimesh

    out = tmp_path / "o.glb"
    r = cli("run", assets.demo_object_path("table"), "-o", out, "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "--no-decimate", "--decimate", "1000", "-q")
    # the later flag wins in argparse: --decimate 1000 after --no-decimate decimates
    assert r.returncode == 0, r.stderr
    faces = [len(g.faces) for g in trimesh.load(out, force="scene").geometry.values()]
    assert max(faces) <= 1000
    out2 = tmp_path / "o2.glb"
    r = cli("run", assets.demo_object_path("table"), "-o", out2, "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "--decimate", "1000", "--no-decimate", "-q")
    assert r.returncode == 0, r.stderr
    faces = [len(g.faces) for g in trimesh.load(out2, force="scene").geometry.values()]
    assert max(faces) > 1000, faces
