"""One frame convention through the embedded model (issue 22 item 1).

holopart-mini states its frame (``"up_axis": "+y"``: v1's +Z weights refolded, see
test_refold_up.py); the embedded demo files are glTF, +Y up, and a Z-up OBJ comes with
``--up +z``. The runtime turns each input from its up axis into the model's and the results back, so the same
object gives the same solids whichever frame it comes in, and the results lie on
the input, in the input's coordinates. Geometry is compared as geometry (volume
IoU by :func:`holopart_infer.export.evaluate.volume_iou`).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("trimesh")
pytest.importorskip("scipy")

import trimesh  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

import holopart_infer as hp  # noqa: E402
from holopart_infer import assets  # noqa: E402
from holopart_infer.export.evaluate import volume_iou  # noqa: E402
from holopart_infer.io.frames import up_rotation  # noqa: E402
from holopart_infer.io.parts_io import load_parts  # noqa: E402


@pytest.fixture(scope="module")
def mini():
    return hp.load(assets.demo_model_path(), backend="onnxruntime", device="cpu")


def _iou(a, b) -> float:
    return volume_iou(a, b, 20000, np.random.default_rng(0))


def _samples(v, f, n: int) -> np.ndarray:
    return trimesh.sample.sample_surface(trimesh.Trimesh(np.asarray(v, np.float64), f, process=False), n, seed=0)[0]


def _write_obj(path, parts, turn):
    """``parts`` as a multi-object OBJ, every coordinate turned by ``turn`` and written exactly (repr)."""
    lines, base = [], 1
    for p in parts:
        lines.append(f"o {p.name}")
        lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in turn.apply(p.vertices).tolist()]
        lines += [f"f {a + base} {b + base} {c + base}" for a, b, c in p.faces.tolist()]
        base += len(p.vertices)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_same_object_y_up_gltf_and_z_up_obj_give_the_same_solids(mini, tmp_path):
    """(a) the Y-up glTF mug and the same mug written Z-up as OBJ (CLI ``--up +z``) complete to
    the same solids; (d) the OBJ's results are written in its own (Z-up) frame, on its parts."""
    glb = assets.demo_object_path("mug")
    y_parts = load_parts(glb)
    y_res = mini.complete(glb, **assets.DEMO_PRESET)
    assert y_res.up == "+y"

    obj = _write_obj(tmp_path / "mug_zup.obj", y_parts, up_rotation("+y", "+z"))
    out = tmp_path / "mug_zup_completed.glb"
    r = subprocess.run([sys.executable, "-m", "holopart_infer.cli", "run", str(obj), "--up", "+z", "-o", str(out),
                        "--model", str(assets.demo_model_path()), "--steps", str(assets.DEMO_PRESET["steps"]),
                        "--depth", str(assets.DEMO_PRESET["depth"]), "--decimate", str(assets.DEMO_PRESET["decimate"]),
                        "--min-component", str(assets.DEMO_PRESET["min_component"]), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    z_res = load_parts(out)  # the glb as written: the input's (Z-up) coordinates
    z_in = load_parts(obj, up="+z")
    assert z_res.names == y_parts.names == z_in.names

    back = up_rotation("+z", "+y")
    for a, b, inp in zip(y_res.parts, z_res, z_in):
        same = _iou((a.vertices, a.faces), (back.apply(b.vertices), b.faces))
        assert same >= 0.98, (a.name, same)
        # (d) the completed part lies on its input part, in the input's frame: the input's surface
        # samples are near the completed surface; read in the other frame they are not
        pts = _samples(inp.vertices, inp.faces, 2000)
        near = cKDTree(_samples(b.vertices, b.faces, 20000)).query(pts)[0].mean()
        far = cKDTree(_samples(back.apply(b.vertices), b.faces, 20000)).query(pts)[0].mean()
        # measured: near 0.005-0.011, far 0.066-0.62 (the body, a cylinder, moves least)
        assert near < 0.03 and far > 3 * near, (b.name, near, far)  # the mug spans 2 units


def test_demo_table_legs_stay_legs(mini):
    """(b) `holopart-infer demo --object table`: each leg's completed solid overlaps the input leg
    (a box open at the top; its convex hull is the leg) with volume IoU >= 0.8 and stands along +y.
    Measured: 0.832-0.838 at the demo's seed 0 (0.795-0.840 over seeds 0-2); 0.15-0.18 (flat panels)
    before the model's frame was honoured."""
    parts = load_parts(assets.demo_object_path("table"))
    res = mini.complete(parts, **assets.DEMO_PRESET)
    legs = [i for i, n in enumerate(parts.names) if n.startswith("leg")]
    assert len(legs) == 4
    for i in legs:
        hull = trimesh.convex.convex_hull(parts[i].vertices)
        got = res.parts[i]
        iou = _iou((got.vertices, got.faces), (hull.vertices, hull.faces))
        assert iou >= 0.8, (parts.names[i], iou)
        assert np.ptp(got.vertices, axis=0).argmax() == 1  # upright in the file's Y-up frame
