"""benchmarks/decoder_int8_gate.py: its surface measure and a small run end to end (no timing assertions)."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from benchmarks import decoder_int8_gate as gate


def _sphere(r):
    m = trimesh.creation.icosphere(subdivisions=4, radius=r)
    return np.asarray(m.vertices), np.asarray(m.faces)


def test_surface_distance_is_zero_for_one_surface_and_grows_with_the_gap():
    a = _sphere(1.0)
    assert gate.surface_distance(a, a) < 2e-3  # two samplings of one surface: sampling noise removed
    # with the noise floor taken off, a gap reads below its size (0.01 -> ~0.004, 0.05 -> ~0.04)
    near, far = gate.surface_distance(a, _sphere(1.01)), gate.surface_distance(a, _sphere(1.05))
    assert 0.002 < near < 0.01 and 0.03 < far < 0.05 and far > 5 * near


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        gate.main(["--variants", "int4"])
    assert "--variants: unknown ['int4']" in capsys.readouterr().err


def test_small_run_scores_every_variant_and_gives_a_verdict(capsys):
    pytest.importorskip("onnx")
    rc = gate.main(["--objects", "1", "--depth", "5", "--steps", "1", "--variants", "int8,int8-7bit-inner"])
    out = capsys.readouterr().out
    assert rc in (0, 1)
    verdicts = [line for line in out.splitlines() if "VERDICT:" in line]
    assert [v.split(":")[0] for v in verdicts] == ["int8", "int8-7bit-inner"]
    assert ("fail" in " ".join(verdicts)) == (rc == 1)
    assert "heldout-0-" in out and "mug" in out
