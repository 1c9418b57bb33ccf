"""Helpers shared by the tests (plain functions; pytest fixtures live in conftest.py).

* where things are: :data:`REPO`, :data:`DATA`, the golden folders;
* models made once per session: :func:`checkpoint` / :func:`exported_model`
  (tiny random-weight checkpoints in the published layout, exported to ONNX);
* geometry: small scenes with transforms, and :func:`assert_same_surface`,
  which compares meshes as geometry (surface distance, volume, closedness),
  never by vertex order;
* the fast option preset (:data:`FAST`, :data:`FAST_OPTS`, their flags) of the
  tests that run a real model;
* batch runs: small objects, the ledger and its agreement with the files, and
  the fault hooks a Ray worker runs (:class:`CrashOnce`, :class:`StallOnce`);
* the command line in a child process (:func:`cli`), its parser (:func:`parse_args`),
  and a child Python with modules blocked (:func:`run_blocked_child`).

The TensorRT / CUDA fakes live in tests/tensorrt_fakes.py.

The torch-side helpers import torch / the export side only when called.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import trimesh

from holopart_infer.engines.base import BackendBase

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------- golden folders
def golden_root() -> Path:
    return Path(os.environ.get("HOLOPART_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


def golden_dirs() -> list[Path]:
    root = golden_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "cases.npz").is_file())


# --------------------------------------------------------------------------- models made once per session
# A configuration unlike the golden one: even num_layers, heads of 16 channels,
# other widths, frequency count, embed_include_pi true, scheduler shift 3.
VARIANT = {
    "transformer": dict(num_attention_heads=3, width=48, in_channels=16, num_layers=4,
                        cross_attention_dim=24, cross_attention_2_dim=24,
                        use_cross_attention=True, use_cross_attention_2=True),
    "vae": dict(in_channels=3, latent_channels=16, num_attention_heads=2, width_encoder=32,
                width_decoder=32, num_layers_encoder=1, num_layers_decoder=1,
                embedding_type="frequency", embed_frequency=6, embed_include_pi=True),
    "part_encoder": dict(position_channels=3, part_feature_channels=3, whole_feature_channels=4,
                         dim=24, num_attention_heads=2, num_layers=1, num_tokens=8,
                         embedding_type="frequency", embed_frequency=6, embed_include_pi=True,
                         part_local=True),
    "scheduler": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
}

VARIANT_DEFAULTS = {"latent_tokens": 24, "num_points": 300, "guidance": 2.0}

_EXPORTS = Path(tempfile.mkdtemp(prefix="holopart-test-onnx-"))
atexit.register(shutil.rmtree, _EXPORTS, True)


def checkpoint(kind: str) -> Path:
    """Weights of ``kind``: "golden" (../shared/golden/A when present, else the tiny preset) or "variant"."""
    from holopart_infer.export.random_checkpoint import PRESETS, write_random_checkpoint

    if kind == "golden" and golden_dirs():
        return golden_dirs()[0] / "weights"
    out = _EXPORTS / f"ckpt-{kind}"
    if not out.exists():
        write_random_checkpoint(out, PRESETS["tiny"] if kind == "golden" else VARIANT, seed=3)
        if kind == "variant":  # a model with recommended options, as holopart-mini has
            index = json.loads((out / "model_index.json").read_text())
            index["inference_defaults"] = VARIANT_DEFAULTS
            (out / "model_index.json").write_text(json.dumps(index))
    return out


@functools.cache
def exported_model(kind: str = "golden") -> Path:
    """An fp32 model directory exported (once per session) from :func:`checkpoint`."""
    from holopart_infer.export.onnx_export import export_model

    return export_model(checkpoint(kind), _EXPORTS / f"model-{kind}", precision="fp32", progress=False)


# --------------------------------------------------------------------------- geometry
def _mesh_samples(v, f, n: int, seed: int) -> np.ndarray:
    m = trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False)
    return trimesh.sample.sample_surface(m, n, seed=seed)[0]


def _sym_mean_nn(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(max(cKDTree(q).query(p)[0].mean(), cKDTree(p).query(q)[0].mean()))


def surface_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                     n: int = 20000) -> float:
    """Symmetric surface distance beyond sampling noise: the symmetric mean
    nearest-sample distance between ``n`` area-uniform samples of each surface,
    minus the same measure between two independent samplings of ``a`` (so two
    equal surfaces give about 0 whatever their vertex order)."""
    pa, pa2 = _mesh_samples(*a, n, 0), _mesh_samples(*a, n, 2)
    pb = _mesh_samples(*b, n, 1)
    return max(0.0, _sym_mean_nn(pa, pb) - _sym_mean_nn(pa, pa2))


def assert_same_surface(a, b, *, rel_dist: float = 2e-3, rel_volume: float = 1e-2, name: str = "") -> None:
    """``a`` and ``b`` ((vertices, faces) or objects with .vertices/.faces) are the same solid:
    both closed or both open, volumes within ``rel_volume``, symmetric surface distance
    within ``rel_dist`` of the bounding-box diagonal. Vertex order is irrelevant."""
    a = (a.vertices, a.faces) if hasattr(a, "vertices") else a
    b = (b.vertices, b.faces) if hasattr(b, "vertices") else b
    assert (len(a[1]) == 0) == (len(b[1]) == 0), f"{name}: one mesh is empty ({len(a[1])} vs {len(b[1])} faces)"
    if not len(a[1]):
        return
    ma, mb = (trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f), process=False) for v, f in (a, b))
    assert ma.is_watertight == mb.is_watertight, f"{name}: watertight {ma.is_watertight} vs {mb.is_watertight}"
    diag = float(np.linalg.norm(np.ptp(np.vstack([ma.vertices, mb.vertices]), axis=0)))
    d = surface_distance(a, b)
    assert d <= rel_dist * diag, f"{name}: surface distance {d:.3g} > {rel_dist} x diagonal {diag:.3g}"
    if ma.is_watertight:
        va, vb = abs(ma.volume), abs(mb.volume)
        assert abs(va - vb) <= rel_volume * max(va, vb), f"{name}: volume {va:.6g} vs {vb:.6g}"


def box(center=(0.0, 0.0, 0.0), size=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) of an axis-aligned box."""
    m = trimesh.creation.box(extents=size)
    return np.asarray(m.vertices) + np.asarray(center, float), np.asarray(m.faces, dtype=np.int64)


def rotation(axis, angle_deg) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(np.radians(angle_deg), axis)


def translation(t) -> np.ndarray:
    return trimesh.transformations.translation_matrix(t)


def scaling(s) -> np.ndarray:
    return np.diag([*np.broadcast_to(np.asarray(s, float), (3,)), 1.0])


def apply(T: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v @ T[:3, :3].T + T[:3, 3]


def write_transformed_scene(path: Path) -> dict[str, np.ndarray]:
    """A glb with translated, rotated, scaled and nested nodes.

    Returns each part's expected world-space vertices, keyed by node name.
    """
    scene = trimesh.Scene()
    expected = {}
    base = scene.graph.base_frame
    root_T = translation([10.0, -2.0, 3.0]) @ rotation([0, 0, 1], 20.0)
    scene.graph.update(frame_from=base, frame_to="root", matrix=root_T)

    specs = [
        ("seat", box(size=(2.0, 0.2, 2.0)), translation([0, 1, 0]) @ scaling([1.5, 1.0, 0.5]), "root"),
        ("back rest", box(size=(2.0, 1.0, 0.2)), translation([0, 2, -1]) @ rotation([1, 0, 0], 15.0), "root"),
        ("leg", box(size=(0.2, 1.0, 0.2)), rotation([0, 1, 0], 45.0) @ scaling(0.5), base),
    ]
    for name, (v, f), T, parent in specs:
        scene.add_geometry(trimesh.Trimesh(v, f, process=False), node_name=name, geom_name=name,
                           parent_node_name=parent, transform=T)
        world = root_T @ T if parent == "root" else T
        expected[name] = apply(world, v)
    scene.export(str(path))
    return expected


# --------------------------------------------------------------------------- the command line
def cli(*args, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m holopart_infer.cli ARGS`` in a child process, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "holopart_infer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def parse_args(*argv):
    """The CLI's parsed arguments for ``argv`` (nothing run)."""
    from holopart_infer import cli as cli_mod

    argv = [str(a) for a in argv]
    return cli_mod.build_parser(argv).parse_args(argv)


# --------------------------------------------------------------------------- a child Python with modules blocked
#: what the runtime never imports (the torch side), and the export side alone
TORCH_SIDE = ("torch", "onnx", "onnxscript", "export", "holopart_infer.export")
EXPORT_SIDE = ("export", "holopart_infer.export")

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc

    BLOCKED = {blocked!r}

    def _blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if _blocked(name):
                raise ModuleNotFoundError(f"{{name}} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, _Block())
""")


def run_blocked_child(body: str, blocked=TORCH_SIDE) -> subprocess.CompletedProcess:
    """Run ``body`` in a child Python where the ``blocked`` modules cannot be imported; it
    prints which of them ended up loaded (read with :func:`loaded_modules`)."""
    code = BLOCKER.format(blocked=tuple(blocked)) + textwrap.dedent(body) + textwrap.dedent("""
        import json
        loaded = sorted(m for m, mod in list(sys.modules.items()) if _blocked(m) and mod is not None)
        print("LOADED=" + json.dumps(loaded))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(REPO))


def loaded_modules(r: subprocess.CompletedProcess) -> list[str]:
    """The blocked modules a :func:`run_blocked_child` child reported loaded."""
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("LOADED=")]
    assert lines, r.stdout + r.stderr
    return json.loads(lines[-1][len("LOADED="):])


# --------------------------------------------------------------------------- the fast option preset
#: options of the tests that run a real model: few steps, a coarse grid, few points and
#: tokens; decimation as the model says (:data:`FAST` turns it off)
FAST_OPTS = dict(steps=2, depth=6, num_points=1024, latent_tokens=64)
#: :data:`FAST_OPTS` without decimation
FAST = {**FAST_OPTS, "decimate": None}


def cli_flags(options: dict) -> list[str]:
    """``options`` as flags of `run` / `batch` (``decimate=None`` is ``--no-decimate``), and ``-q``."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += [f"--no-{flag[2:]}"] if value is None else [flag, str(value)]
    return [*flags, "-q"]


#: :data:`FAST_OPTS` as command-line flags
FAST_FLAGS = cli_flags(FAST_OPTS)
#: :data:`FAST` as command-line flags (``--no-decimate``)
FAST_FLAGS_NO_DECIMATE = cli_flags(FAST)
#: the service's fast preset (`serve --option`): few steps, a coarse grid, no decimation, every piece kept
FAST_SERVE_FLAGS = [a for kv in ("steps=2", "depth=6", "decimate=none", "min_component=0") for a in ("--option", kv)]


def fast_options(model=None, **kw):
    """A :class:`CompletionOptions`: the model's defaults with :data:`FAST` and ``kw`` on top.

    ``model``: a loaded model, or a model dir (its defaults read without loading it);
    default the embedded demo model."""
    from holopart_infer import assets
    from holopart_infer.pipeline import model_defaults

    if hasattr(model, "default_options"):
        base = model.default_options()
    else:
        base = model_defaults(Path(model) if model is not None else assets.demo_model_path())
    return base.replace(**{**FAST, **kw})


# --------------------------------------------------------------------------- batch runs
def two_box_glb(path: Path, shift: float = 0.0) -> Path:
    """A glb of two boxes ("base", "post"), shifted along x."""
    from holopart_infer.io.parts_io import write_scene

    write_scene([box((shift, 0, 0), (1.0, 0.4, 0.6)), box((shift, 0.5, 0), (0.3, 0.6, 0.3))], ["base", "post"], path,
                overwrite=True)  # a fixture may rewrite its own file (the "broken input fixed" step)
    return path


def ledger_lines(out: Path) -> list[dict]:
    """Every entry of a batch output folder's ledger, in order."""
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


def check_ledger_agrees_with_files(out: Path) -> dict[str, dict]:
    """The ledger's last entry per id agrees with the glbs in ``out`` (each ok entry a complete,
    readable file with its parts; no other glb; no temporaries). Returns those entries."""
    from holopart_infer.scale.batch import Ledger
    from holopart_infer.io.parts_io import load_parts

    last = Ledger(out).read()
    for key, entry in last.items():
        if entry["status"] == "ok":
            parts = load_parts(out / entry["output"])  # a complete, readable glb
            assert len(parts) == entry["parts"] - entry["empty_parts"]
    glbs = {p.stem for p in out.glob("*.glb")}
    assert glbs == {k for k, e in last.items() if e["status"] == "ok"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    return last


class FaultOnce:
    """A Ray worker's per-group hook (``RayExecutor(hook=)``) that injects a fault once
    across all processes: the first worker handed ``key`` that removes ``marker`` (a file
    the caller creates) misbehaves (:meth:`fault`); later ones run normally."""

    def __init__(self, key, marker: str | os.PathLike):
        self.key = key
        self.marker = str(marker)

    def __call__(self, keys) -> None:
        if self.key in keys:
            try:
                os.unlink(self.marker)
            except FileNotFoundError:
                return
            self.fault()

    def fault(self) -> None:
        raise NotImplementedError


class CrashOnce(FaultOnce):
    """The worker process exits abruptly (``os._exit``)."""

    def fault(self) -> None:
        os._exit(17)


class StallOnce(FaultOnce):
    """The worker hangs (an object still in flight when the test kills the node)."""

    def __init__(self, key, marker: str | os.PathLike, seconds: float = 600.0):
        super().__init__(key, marker)
        self.seconds = float(seconds)

    def fault(self) -> None:
        import time

        time.sleep(self.seconds)


# --------------------------------------------------------------------------- stand-in models
class SphereBackend(BackendBase):
    """A stand-in model whose decoder field is a sphere of radius R in each part's frame.

    Lets the test check the geometry around the networks exactly: conditioning
    frames, grid index -> world, extraction, mapping back to input coordinates.
    """

    name = "sphere"
    device = "cpu"
    precision = "fp32"
    R = 0.5
    config = {"part_encoder": {"num_tokens": 4}, "transformer": {"in_channels": 8}, "scheduler": {"shift": 1.0}}

    def encode(self, part_tokens, whole_points, local_tokens, local_points):
        B = len(part_tokens)
        return np.zeros((B, 4, 8), np.float32), np.zeros((B, 4, 8), np.float32)

    def guided_step(self, latents, t, dt, guidance, part_cond, whole_cond):
        return latents

    def decoder_kv(self, latents):
        return len(latents)

    def decoder_query(self, points, kv):
        assert points.shape[0] == kv
        return (20.0 * (self.R - np.linalg.norm(points, axis=-1)))[..., None]


# --------------------------------------------------------------------------- what a run did not run
#: the install that makes every extra-dependent test run (README "The two commands")
FULL_INSTALL = ".venv/bin/pip install -e \".[torch,test,serve,ray,draco]\""


def skip_summary(reports) -> list[str]:
    """Lines saying what a test run skipped, grouped by reason, and how to run it.

    ``reports`` are pytest's skipped reports (``terminalreporter.stats["skipped"]``).
    A whole module skipped at collection counts as one report: its line says so
    and how many test functions it holds, so one skip cannot hide many tests.
    """
    import re

    groups: dict[str, list[str]] = {}
    for rep in reports:
        longrepr = getattr(rep, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            path, _, reason = longrepr
        else:
            path, reason = rep.nodeid, str(longrepr)
        reason = str(reason).removeprefix("Skipped: ")
        if getattr(rep, "when", None) == "collect" or "::" not in rep.nodeid:  # a whole module
            module = REPO / rep.nodeid.split("::")[0]
            try:
                n = len(re.findall(r"^(?:async )?def test_", module.read_text(), flags=re.M))
            except OSError:
                n = 0
            what = f"{rep.nodeid.split('::')[0]} (whole module, {n} test functions)"
        else:
            what = rep.nodeid
        groups.setdefault(reason, []).append(what)
    if not groups:
        return []
    lines = []
    for reason, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"{reason}: {len(items)} skipped: " + ", ".join(items[:4])
                     + (f", ... ({len(items) - 4} more)" if len(items) > 4 else ""))
    text = " ".join(groups)
    if re.search(r"\[(serve|ray|draco|torch)\]|extra", text):
        lines.append(f"to run what a missing extra skipped: {FULL_INSTALL}")
    if "Chromium" in text or "chromium" in text:
        lines.append("to run the service page's browser test: install Chromium (apt-get install chromium; "
                     ".ci/run does)")
    return lines
