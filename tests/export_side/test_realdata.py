"""export/realdata.py: catalog and OBJ parsing, z-buffer visibility against the ray test, shell
occupancy, augmentation, the object split; plus v2's y-up synthetic objects. Fixtures are built
in code (a fake .sh3f zip); nothing is installed."""
import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("trimesh")
pytest.importorskip("scipy")

import trimesh  # noqa: E402

from holopart_infer.export import realdata as R  # noqa: E402
from holopart_infer.export import synthetic as S  # noqa: E402

# two closed boxes as two OBJ objects; the second uses negative indices and a quad
OBJ = """# test
mtllib x.mtl
o seat
v -1 0 -1
v 1 0 -1
v 1 0 1
v -1 0 1
v -1 0.2 -1
v 1 0.2 -1
v 1 0.2 1
v -1 0.2 1
usemtl wood
f 1 3 2
f 1 4 3
f 5 6 7
usemtl cloth
f 5 7 8
f 1 2 6
f 1 6 5
f 2 3 7
f 2 7 6
f 3 4 8
f 3 8 7
f 4 1 5
f 4 5 8
o leg
v -0.1 -1 -0.1
v 0.1 -1 -0.1
v 0.1 -1 0.1
v -0.1 -1 0.1
v -0.1 0.1 -0.1
v 0.1 0.1 -0.1
v 0.1 0.1 0.1
v -0.1 0.1 0.1
f -8 -6 -7
f -8 -5 -6
f -4 -3 -2 -1
f -8 -7 -3
f -8 -3 -4
f -7 -6 -2
f -7 -2 -3
f -6 -5 -1
f -6 -1 -2
f -5 -8 -4
f -5 -4 -1
"""

PROPS = """# PluginFurnitureCatalog.properties
id=Test
license=Creative Commons Attribution 3.0 license
id#1=Scopia#stool
name#1=Caf\\u00e9 stool
category#1=Kitchen
model#1=/scopia/stool/stool.obj
creator#1=Someone \\
  Else
id#2=Scopia#picture
name#2=Picture
category#2=Office
model#2=/scopia/picture/picture.3ds
"""


def test_parse_obj_objects_negative_indices_and_quads():
    parts = R.parse_obj(OBJ)
    assert [p[0] for p in parts] == ["seat", "leg"]  # usemtl does not split an object
    seat, leg = parts[0], parts[1]
    assert seat[2].shape == (12, 3) and len(seat[1]) == 8
    assert leg[2].shape == (12, 3) and len(leg[1]) == 8  # the quad became two triangles
    for _, v, f in parts:
        m = trimesh.Trimesh(v, f)
        assert m.is_watertight and abs(abs(m.volume) - np.prod(np.ptp(v, axis=0))) < 1e-9


def test_parse_obj_groups_when_no_objects():
    text = OBJ.replace("o seat", "g seat").replace("o leg", "g leg")
    assert [p[0] for p in R.parse_obj(text)] == ["seat", "leg"]


def test_properties_and_catalog(tmp_path):
    props = R.read_properties(PROPS)
    assert props["name#1"] == "Café stool" and props["creator#1"] == "Someone Else"
    arc = tmp_path / "Scopia.sh3f"
    with zipfile.ZipFile(arc, "w") as z:
        z.writestr("PluginFurnitureCatalog.properties", PROPS.encode("latin-1"))
        z.writestr("scopia/stool/stool.obj", OBJ)
        z.writestr("LICENSE.TXT", "CC-BY 3.0")
    entries = R.read_catalog(arc)
    assert len(entries) == 1  # the .3ds model is not read
    e = entries[0]
    assert (e.key, e.category, e.license) == ("Scopia/Scopia#stool", "Kitchen", "CC-BY-3.0")
    parts = R.load_entry(e)
    assert [n for n, _ in parts] == ["seat", "leg"]
    allv = np.concatenate([m.vertices for _, m in parts])
    assert np.allclose(np.ptp(allv, axis=0).max(), 2.0) and np.allclose((allv.max(0) + allv.min(0)) / 2, 0)
    bad = tmp_path / "Unknown.sh3f"
    bad.write_bytes(arc.read_bytes())
    with pytest.raises(ValueError, match="unknown library"):
        R.read_catalog(bad)
    att = R.write_attribution(entries, tmp_path / "ATTRIBUTION.md")
    assert "\"Café stool\" by Someone Else" in att.read_text()


def test_zbuffer_visibility_agrees_with_the_ray_test():
    obj = S.make_object(3, "table", n_views=12)
    meshes = [p.mesh for p in obj.parts]
    ray = S.visible_faces(meshes, 12, convex=[p.convex for p in obj.parts])
    zb = R.zbuffer_visible_faces(meshes, 12)
    for p, a, b in zip(obj.parts, ray, zb):
        area = p.mesh.area_faces
        agree = area[a == b].sum() / area.sum()
        assert agree > 0.95, (p.name, agree)
    # a box fully inside another is never seen; the outer one is
    outer, inner = trimesh.creation.box([1.5, 1.5, 1.5]), trimesh.creation.box([0.5, 0.5, 0.5])
    vo, vi = R.zbuffer_visible_faces([outer, inner], 8)
    assert vo.all() and not vi.any()


def test_shell_occupancy_of_an_open_sheet_and_a_closed_box():
    sheet = trimesh.Trimesh([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], [[0, 1, 2], [0, 2, 3]])
    pts = np.array([[0, 0.005, 0], [0, 0.05, 0], [0.5, -0.01, 0.5], [2, 0, 0]])
    lab = R.occupancy_labels(pts, sheet.vertices, sheet.faces, shell=0.02)
    assert lab.tolist() == [True, False, True, False]
    box = trimesh.creation.box([1, 1, 1])
    box.invert()  # inward normals: |winding| still marks the inside
    lab = R.occupancy_labels(np.array([[0, 0, 0], [0.45, 0, 0], [0.7, 0, 0]]), box.vertices, box.faces, 0.0)
    assert lab.tolist() == [True, True, False]


def test_augmentation_keeps_up_mostly_up_and_mirror_keeps_volume_sign():
    rng = np.random.default_rng(0)
    for _ in range(20):
        M = R.augmentation(rng, up=1)
        up = M @ np.array([0.0, 1.0, 0.0])
        assert np.degrees(np.arccos(up[1] / np.linalg.norm(up))) < 5.0 + 1e-6  # scale and turn keep y on y; only the tilt moves it
        assert 0.85 ** 3 - 1e-9 <= abs(np.linalg.det(M)) <= 1.15 ** 3 + 1e-9
    obj = S.make_object(1, "mug", n_views=6)
    vols = [p.mesh.volume for p in obj.parts]
    S.transform_object(obj, np.diag([-1.0, 1.0, 1.0]), normalize=False)
    assert np.allclose([p.mesh.volume for p in obj.parts], vols) and all(v > 0 for v in vols)


def test_y_up_synthetic_objects_stand_on_y():
    obj = S.to_y_up(S.make_object(2, "table", n_views=6))
    top = next(p for p in obj.parts if p.name == "top")
    legs = [p for p in obj.parts if p.name.startswith("leg")]
    assert top.mesh.vertices[:, 1].mean() > max(l.mesh.vertices[:, 1].mean() for l in legs)
    assert np.ptp(top.mesh.vertices[:, 1]) < np.ptp(top.mesh.vertices[:, 0])  # the board is flat in y


@pytest.mark.parametrize("template", S.EXTRA_TEMPLATES)
def test_extra_templates_are_closed_and_leave_v1_seeds_alone(template):
    obj = S.make_object((7, 0), template, n_views=6)
    assert len(obj.parts) >= 2
    for p in obj.parts:
        assert p.mesh.is_watertight and p.mesh.volume > 0
    assert S.TEMPLATES == ("table", "chair", "lamp", "mug", "shelf", "dumbbell")


def test_split_by_object_and_held_out_categories():
    entries = [R.CatalogEntry("Scopia", "x", i, f"Scopia#m{i}", "m", "Office" if i % 7 == 0 else "Kitchen",
                              "m.obj", "", "CC-BY-3.0") for i in range(300)]
    usable = {e.key: 3 for e in entries if e.index % 11}
    sp = R.make_split(entries, usable)
    groups = [set(sp[k]) for k in ("train", "val", "test", "test_categories")]
    assert sum(len(g) for g in groups) == len(usable) and len(set().union(*groups)) == len(usable)
    assert all(e.category == "Office" for e in entries if e.key in groups[3])
    assert not any(e.category == "Office" for e in entries if e.key in groups[0])
    assert 10 < len(sp["test"]) < 60 and len(sp["skipped"]) == 300 - len(usable)
    # adding objects never moves existing ones
    sp2 = R.make_split(entries + [R.CatalogEntry("Scopia", "x", 999, "Scopia#new", "n", "Kitchen", "n.obj", "",
                                                 "CC-BY-3.0")], {**usable, "Scopia/Scopia#new": 2})
    assert set(sp["train"]) <= set(sp2["train"]) and set(sp["test"]) <= set(sp2["test"])


def test_the_committed_split_holds_out_whole_categories():
    sp = json.loads(R.SPLIT_PATH.read_text())
    assert set(sp["heldout_categories"]) == set(R.HELDOUT_CATEGORIES)
    parts = [set(sp[k]) for k in ("train", "val", "test", "test_categories")]
    assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint
    assert len(sp["train"]) > 100 and len(sp["test"]) > 10 and len(sp["test_categories"]) > 10
