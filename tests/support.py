"""Helpers shared by the tests (plain functions; pytest fixtures live in conftest.py).

* where things are: :data:`REPO`, :data:`DATA`, the golden folders;
* models made once per session: :func:`checkpoint` / :func:`exported_model`
  (tiny random-weight checkpoints in the published layout, exported to ONNX);
* geometry: small scenes with transforms, and :func:`assert_same_surface`,
  which compares meshes as geometry (surface distance, volume, closedness),
  never by vertex order.

The torch-side helpers import torch / the export side only when called.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import json
import os
import shutil
import tempfile
import types
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


# --------------------------------------------------------------------------- TensorRT without a GPU
# A fake cuda-python runtime backed by host memory (ctypes) and fake TensorRT
# engines that compute with a Python function at the bound addresses: they
# exercise the TensorRT backend's address binding, shared scratch block,
# device-resident loop and chunking. tests/runtime/engines/test_conformance.py
# runs the exported ONNX graphs behind them (ONNX Runtime on the CPU).


class FakeCudart:
    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
    cudaStreamNonBlocking = 1

    def __init__(self):
        self.buffers, self.copies = {}, []

    def cudaMalloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMallocAsync(self, n, stream):
        return self.cudaMalloc(n)

    def cudaFree(self, ptr):
        del self.buffers[ptr]
        return (0,)

    def cudaFreeAsync(self, ptr, stream):
        return self.cudaFree(ptr)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.copies.append((kind, n))
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)


def _view(ptr, shape, dtype=np.float32):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


FAKE_TRT = types.SimpleNamespace(
    TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
    ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="user"))


class FakeContext:
    def __init__(self, eng):
        self.eng, self.shapes, self.addr, self.scratch, self.runs = eng, {}, {}, None, 0

    def set_device_memory(self, ptr, size):
        self.scratch = (ptr, size)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def get_tensor_shape(self, name):
        return self.eng.out_shape[name](self.shapes)

    def execute_async_v3(self, stream):
        assert self.scratch is not None, "scratch memory must be bound before running"
        self.runs += 1
        ins = {n: _view(self.addr[n], self.shapes[n]) for n in self.eng.ranges}
        for name, value in self.eng.compute(ins).items():
            _view(self.addr[name], value.shape)[...] = value
        return True


class FakeEngine:
    def __init__(self, ranges, out_shape, compute, memory):
        self.ranges, self.out_shape, self.compute = ranges, out_shape, compute
        self.device_memory_size_v2 = memory
        self.names = [*ranges, *out_shape]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_mode(self, name):
        return "in" if name in self.ranges else "out"

    def get_tensor_profile_shape(self, name, profile):
        return self.ranges[name]

    def create_execution_context(self, strategy):
        assert strategy == "user"
        self.context = FakeContext(self)
        return self.context


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
