"""Every flag does what it says (README "Guarantees and exit codes"): an off flag whose value
is None reaches the options in `run` and `batch`; -q / -v work before and after the
subcommand; an optional option takes None; what the CLI prints (timings, settings, help);
the test command says what it skipped and the README's setup installs what the tests use.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from holopart_infer import assets
from tests.support import cli, parse_args


# --------------------------------------------------------------------------- off flags whose value is None
def _none_off_flags():
    from holopart_infer.pipeline import option_fields

    return [f for f in option_fields() if f.metadata["off_flag"] and f.metadata["optional"]]


def test_there_is_an_off_flag_meaning_none():
    assert [f.name for f in _none_off_flags()] == ["decimate"]  # a new one gets the tests below for free


@pytest.mark.parametrize("command", ["run", "batch"])
@pytest.mark.parametrize("field", _none_off_flags(), ids=lambda f: f.metadata["off_flag"])
def test_off_flag_meaning_none_reaches_the_options(command, field, tmp_path):
    from holopart_infer import cli as cli_mod
    from holopart_infer.pipeline import CompletionOptions

    base = CompletionOptions()
    assert getattr(base, field.name) is not None
    args = parse_args(command, "x.glb", "-o", tmp_path / "o", "--model", "m", field.metadata["off_flag"])
    assert getattr(cli_mod.options.options_from(args, base), field.name) is None
    args = parse_args(command, "x.glb", "-o", tmp_path / "o", "--model", "m")  # not given: the base's value stays
    assert getattr(cli_mod.options.options_from(args, base), field.name) == getattr(base, field.name)


def test_no_decimate_keeps_the_full_mesh(tmp_path):
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

# --------------------------------------------------------------------------- -q / -v before the subcommand
@pytest.mark.parametrize("command", [["run", "x.glb", "-o", "o.glb", "--model", "m"],
                                     ["batch", "x.glb", "-o", "out", "--model", "m"],
                                     ["demo"], ["verify", "golden", "--backend", "onnxruntime"],
                                     ["export", "ckpt", "out"], ["serve"]], ids=lambda c: c[0])
@pytest.mark.parametrize("flag, dest", [("-q", "quiet"), ("-v", "verbose"), ("--quiet", "quiet")])
def test_verbosity_flags_work_before_and_after_the_subcommand(command, flag, dest):
    before = parse_args(flag, *command)
    after = parse_args(*command, flag)
    neither = parse_args(*command)
    assert getattr(before, dest) is True and getattr(after, dest) is True
    assert neither.quiet is False and neither.verbose is False


def test_quiet_before_verify_hides_the_export_bar(monkeypatch, tmp_path):
    """-q verify --backend onnxruntime (no --model) exports the golden weights first: without a bar."""
    from holopart_infer import cli as cli_mod
    from holopart_infer.cli import verify as cli_verify

    seen = {}

    class FakeExport:
        @staticmethod
        def export_model(weights, out, precision, progress=True, **kw):
            seen["progress"] = progress
            raise cli_mod.InputError("stop here")

    monkeypatch.setattr(cli_verify, "torch_side", lambda module, what: FakeExport)
    args = parse_args("-q", "verify", tmp_path, "--backend", "onnxruntime")
    with pytest.raises(cli_mod.InputError, match="stop here"):
        cli_verify._make_verify_backend(args, tmp_path / "weights", tmp_path)
    assert seen["progress"] is False


# --------------------------------------------------------------------------- --decimate None
@pytest.mark.parametrize("text", ["None", "none", "off"])
def test_an_optional_option_accepts_none_as_its_help_says(tmp_path, text):
    from holopart_infer import cli as cli_mod
    from holopart_infer.pipeline import CompletionOptions

    args = parse_args("run", "x.glb", "-o", tmp_path / "o.glb", "--model", "m", "--decimate", text)
    assert cli_mod.options.options_from(args, CompletionOptions()).decimate is None
    r = cli("run", "x.glb", "-o", tmp_path / "o.glb", "--model", "m", "--help")
    assert "None or an integer >= 4" in " ".join(r.stdout.split())


def test_other_words_are_still_refused(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--decimate", "nothing")
    assert r.returncode == 2 and "argument --decimate: expected None or an integer >= 4, got 'nothing'" in r.stderr


# --------------------------------------------------------------------------- what the CLI says
def _summary(stdout: str) -> dict[str, float]:
    rows = {}
    for line in stdout.splitlines():
        words = line.rsplit(None, 2)
        if line.startswith("  ") and len(words) == 3 and words[2] == "s":
            rows[words[0].strip()] = float(words[1])
    return rows


def test_the_timing_summary_adds_up_to_its_total(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--preview", tmp_path / "p.png", "--steps", "2", "--depth", "6", "-q")
    assert r.returncode == 0, r.stderr
    rows = _summary(r.stdout)
    total = rows.pop("total")
    assert {"read input", "preview", "save"} <= set(rows), rows
    assert abs(sum(rows.values()) - total) <= 0.01 * len(rows) + 1e-9, (rows, total)  # rounding of each row only


def test_batch_prints_its_settings_line(tmp_path):
    r = cli("batch", assets.demo_object_path("table"), "-o", tmp_path / "out", "--model", assets.demo_model_path(),
            "--steps", "2", "--depth", "6", "-q")
    assert r.returncode == 0, r.stderr
    assert "settings: depth 6, 2 steps; from --depth, --steps" in r.stdout, r.stdout


def test_backend_and_device_have_help():
    for command in ("run", "demo", "batch"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "auto (default) picks TensorRT" in text and "never a silent fallback" in text, command


def test_exploded_without_a_picture_is_refused(tmp_path):
    r = cli("run", assets.demo_object_path("table"), "-o", tmp_path / "o.glb", "--model", assets.demo_model_path(),
            "--exploded", "0.5", "-q")
    assert r.returncode == 2 and "--exploded 0.5" in r.stderr and "--preview" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_readme_demo_usage_lists_demo_flags():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("holopart-infer demo"))
    for flag in ("-o", "--object", "--preview", "--exploded", "--turntable"):
        assert flag in line, flag


def test_demo_outputs_in_the_repo_root_are_ignored_by_git():
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "demo.glb", "demo.png", "holopart_demo.glb", "holopart_demo.png"],
                       cwd=root, capture_output=True, text=True)
    assert r.stdout.split() == ["demo.glb", "demo.png", "holopart_demo.glb", "holopart_demo.png"], r


# --------------------------------------------------------------------------- the test command says what it skipped
def test_skips_are_summarised_with_how_to_run_them():
    from types import SimpleNamespace

    from tests.support import FULL_INSTALL, skip_summary

    reports = [
        SimpleNamespace(nodeid="tests/runtime/serve/test_app.py", when="collect",
                        longrepr=("tests/runtime/serve/test_app.py", 21, "Skipped: needs the [serve] extra")),
        SimpleNamespace(nodeid="tests/runtime/serve/test_page.py::test_page_renders", when="setup",
                        longrepr=("tests/runtime/serve/test_page.py", 23,
                                  "Skipped: needs Chromium (apt-get install chromium; .ci/run does)")),
    ]
    lines = skip_summary(reports)
    text = "\n".join(lines)
    app_tests = (Path(__file__).parent / "serve" / "test_app.py").read_text().count("\ndef test_")
    assert app_tests > 1
    assert f"tests/runtime/serve/test_app.py (whole module, {app_tests} test functions)" in text
    assert FULL_INSTALL in text and "install Chromium" in text
    assert skip_summary([]) == []


def test_readme_setup_installs_what_the_tests_use():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    setup = next(ln for ln in readme.splitlines() if ln.startswith("python3 -m venv .venv"))
    for extra in ("torch", "test", "serve", "ray", "draco"):
        assert extra in setup.split("-e", 1)[1].split()[0], extra
