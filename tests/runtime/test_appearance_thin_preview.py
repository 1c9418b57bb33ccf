"""The input's look carried over, thin parts never empty, side-by-side and turntable pictures."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import trimesh
from PIL import Image

from holopart_infer.io import appearance
from holopart_infer.io.appearance import Appearance
from holopart_infer.errors import EmptyResult
from holopart_infer.io.parts_io import Parts, load_parts, write_scene
from holopart_infer.pipeline import HoloPart
from holopart_infer.postprocess.preview import explode_offsets, render_comparison, render_turntable
from holopart_infer.postprocess.thin import decode_local, thickened_patch
from tests.support import FAST as FAST_REAL_MODEL, SphereBackend


class FieldBackend(SphereBackend):
    """A stand-in model whose decoder field is ``field(points)`` in each part's frame."""

    name = "field"

    def __init__(self, field):
        self.field = field

    def decoder_query(self, points, kv):
        return self.field(points)[..., None]


def _model(field) -> HoloPart:
    return HoloPart(FieldBackend(field))


def _sphere_field(points):  # a sphere through the part frame's unit-ball samples (radius 0.95 * 0.7)
    return 20.0 * (0.665 - np.linalg.norm(points, axis=-1))


#: the stand-in models need one step; the thin parts' fields need more points and fewer tokens
FAST = {**FAST_REAL_MODEL, "steps": 1, "num_points": 2048, "latent_tokens": 8}


# --------------------------------------------------------------------------- appearance


def _half_colored_box():
    m = trimesh.creation.box(extents=(1, 1, 1))
    m = m.subdivide().subdivide()
    vc = np.where(m.vertices[:, [0]] > 0, [[230, 20, 20, 255]], [[20, 20, 230, 255]]).astype(np.uint8)
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=vc)
    return m


def test_transfer_vertex_colours_visible_and_hidden():
    m = _half_colored_box()
    app = appearance.from_trimesh(m)
    assert app is not None and app.vertex_colors is not None
    dst = np.array([[0.5, 0.3, 0.1], [-0.5, -0.2, 0.3], [0.4, 0.5, -0.4], [-0.3, 0.5, 0.0], [3.0, 3.0, 3.0]])
    out = appearance.transfer(m.vertices, m.faces, app, dst)
    assert out.shape == (5, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [230, 20, 20, 255])
    np.testing.assert_array_equal(out[1], [20, 20, 230, 255])
    np.testing.assert_array_equal(out[2], [230, 20, 20, 255])
    np.testing.assert_array_equal(out[3], [20, 20, 230, 255])
    # hidden (far from the input surface): the dominant colour, one of the two halves' colours
    assert tuple(out[4]) in {(230, 20, 20, 255), (20, 20, 230, 255)}


def _textured_plate(tmp_path=None):
    """A flat 2x2 plate with UVs; texture: left half green, right half yellow, times a grey factor."""
    v = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], float)
    f = np.array([[0, 2, 1], [0, 3, 2]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    img = np.zeros((8, 8, 4), np.uint8)
    img[:, :4] = [0, 200, 0, 255]
    img[:, 4:] = [250, 250, 0, 255]
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(img, "RGBA"),
                                                   baseColorFactor=[128, 128, 128, 255])
    return trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False)


def test_texture_sampled_at_nearest_visible_point(tmp_path):
    plate = _textured_plate()
    scene = trimesh.Scene()
    scene.add_geometry(plate, node_name="plate", geom_name="plate")
    scene.add_geometry(_half_colored_box().apply_translation([0, 2, 0]), node_name="box", geom_name="box")
    scene.export(str(tmp_path / "tex.glb"))
    parts = load_parts(tmp_path / "tex.glb")  # through the glb: the texture survives the file
    app = parts[parts.names.index("plate")].appearance
    assert app.image is not None and app.uv is not None
    pv, pf = thickened_patch(parts[parts.names.index("plate")].vertices, parts[parts.names.index("plate")].faces)
    out = appearance.transfer(parts[parts.names.index("plate")].vertices, parts[parts.names.index("plate")].faces,
                              app, np.array([[-0.6, 0.0, 0.2], [0.6, 0.01, -0.3], [0.0, 5.0, 0.0]]))
    np.testing.assert_allclose(out[0, :3], [0, 100, 0], atol=3)  # green x 0.5 factor
    np.testing.assert_allclose(out[1, :3], [125, 125, 0], atol=3)  # yellow x 0.5 factor
    assert len(pv) and len(pf)


def test_complete_carries_appearance_and_can_turn_it_off(tmp_path):
    # three sphere-like parts: vertex-coloured, textured (UV sphere), plain material colour
    a = trimesh.creation.icosphere(subdivisions=3)
    vc = np.where(a.vertices[:, [1]] > 0, [[240, 30, 30, 255]], [[30, 30, 240, 255]]).astype(np.uint8)
    a.visual = trimesh.visual.ColorVisuals(a, vertex_colors=vc)
    b = trimesh.creation.uv_sphere(count=[24, 24])
    uv = np.stack([np.arctan2(b.vertices[:, 2], b.vertices[:, 0]) / (2 * np.pi) + 0.5,
                   (b.vertices[:, 1] + 1) / 2], axis=1)
    img = np.zeros((4, 4, 4), np.uint8)
    img[:2] = [250, 200, 0, 255]  # top rows (v near 1: the sphere's top) amber
    img[2:] = [0, 150, 250, 255]
    b.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(img, "RGBA")))
    b.apply_translation([3, 0, 0])
    c = trimesh.creation.icosphere(subdivisions=2)
    c.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
        baseColorFactor=[10, 200, 90, 255]))
    c.apply_translation([0, 3, 0])
    parts = Parts.from_meshes([a, b, c], ["painted", "textured", "plain"])
    model = _model(_sphere_field)
    res = model.complete(parts, **FAST)
    painted, textured, plain = res.parts
    top = painted.vertices[:, 1] > 0.2
    assert (painted.vertex_colors[top, 0] > 200).mean() > 0.95
    assert (painted.vertex_colors[painted.vertices[:, 1] < -0.2, 2] > 200).mean() > 0.95
    t_top = textured.vertices[:, 1] > 0.6
    assert (np.abs(textured.vertex_colors[t_top, :3].astype(int) - [250, 200, 0]).max(axis=1) < 40).mean() > 0.9
    assert plain.vertex_colors is None and plain.color == (10, 200, 90, 255)
    out = res.save(tmp_path / "looks.glb")
    again = load_parts(out)
    got = again[again.names.index("painted")].appearance
    assert got is not None and got.vertex_colors is not None and len(got.vertex_colors) == len(painted.vertices)
    off = model.complete(parts, appearance=False, **FAST)
    assert all(p.vertex_colors is None for p in off.parts)
    assert off.parts[2].color != (10, 200, 90, 255)  # the palette


def test_appearance_subset_follows_labels(tmp_path):
    m = _half_colored_box()
    m2 = _half_colored_box().apply_translation([2, 0, 0])
    both = trimesh.util.concatenate([m, m2])
    both.export(str(tmp_path / "two.ply"))
    labels = np.repeat([0, 1], len(m.faces))
    parts = load_parts(tmp_path / "two.ply", labels=labels)
    for p in parts:
        assert p.appearance is not None and len(p.appearance.vertex_colors) == len(p.vertices)
        red = p.appearance.vertex_colors[:, 0] > 200
        assert (p.vertices[red, 0] > p.vertices[:, 0].mean()).all()


# --------------------------------------------------------------------------- thin and flat parts


def _plates():
    body = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    plate = trimesh.creation.box(extents=(1.4, 0.004, 1.0))
    plate.apply_translation([0, 0.8, 0])
    return Parts.from_meshes([body, plate], ["body", "plate"])


def _slab_or_sphere(points):
    """Thin parts: a slab 0.008 thick, off the object grid's planes; others: a sphere."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    slab = 20.0 * np.minimum(0.004 - np.abs(y - 0.01), np.minimum(0.5 - np.abs(x), 0.5 - np.abs(z)))
    return slab


def test_thin_part_recovered_on_fitted_grid(caplog):
    parts = _plates()
    # the field is a thin slab for every part: the body is not thin, so it stays empty on both grids
    model = _model(_slab_or_sphere)
    # without thin-part handling both parts decode empty: every part empty is the model's fault
    with pytest.raises(EmptyResult, match="every one of the 2 parts came out empty"):
        model.complete(parts, thin_parts=False, appearance=False, **FAST)
    with caplog.at_level(logging.WARNING, logger="holopart_infer"):
        after = model.complete(parts, appearance=False, **FAST)
    assert after.stats["thin_parts"]["retried"] == ["body", "plate"]
    assert after.stats["thin_parts"]["fallback"] == ["body"]
    plate = after.parts[1]
    assert len(plate.faces) > 0
    # the recovered slab is the model's: thin along y, where the plate is, inside its extent
    ext = np.ptp(plate.vertices, axis=0)
    assert ext[1] < 0.05 and ext[0] > 0.3 and ext[2] > 0.3
    assert abs(plate.vertices[:, 1].mean() - 0.8) < 0.05
    # one warning naming the part that needed the stand-in
    warned = [r for r in caplog.records if "thickened" in r.getMessage()]
    assert len(warned) == 1 and "'body'" in warned[0].getMessage() and "'plate'" not in warned[0].getMessage()
    body = trimesh.Trimesh(after.parts[0].vertices, after.parts[0].faces)
    assert body.is_watertight and abs(body.volume - 1.0) < 1e-3  # closed input surface kept


def _empty_for_body(points):
    """Batch row 0 (the body) decodes empty everywhere; row 1 (the plate) is a sphere."""
    out = _sphere_field(points)
    out[0] = -1.0
    return out


def test_model_that_gives_nothing_is_named_not_papered_over():
    # every part empty even on fitted grids: the model is at fault, and a result made only of
    # thickened input patches would be silently wrong; the stand-in is for some thin parts
    parts = _plates()
    with pytest.raises(EmptyResult, match="every one of the 2 parts came out empty.*points at the model"):
        _model(lambda p: -np.ones(p.shape[:-1], np.float32)).complete(parts, appearance=False, **FAST)


def test_thickened_stand_in_hugs_the_input_surface():
    parts = _plates()
    # the body's field is empty everywhere, the plate's is a sphere: only the body falls back
    res = _model(_empty_for_body).complete(parts, appearance=False, **FAST)
    assert res.stats["thin_parts"]["fallback"] == ["body"]
    for p, src in list(zip(res.parts, parts))[:1]:
        m = trimesh.Trimesh(p.vertices, p.faces)
        assert m.is_watertight and m.volume > 0
        # it is the input surface, offset by half of 1% of the part's diagonal
        from scipy.spatial import cKDTree

        diag = np.linalg.norm(np.ptp(src.vertices, axis=0))
        dist, _ = cKDTree(p.vertices).query(src.vertices)
        assert dist.max() <= 0.0051 * diag + 1e-9
        assert np.ptp(p.vertices, axis=0).min() >= np.ptp(src.vertices, axis=0).min()


def test_thickened_patch_of_open_sheet_is_closed():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 2]])
    pv, pf = thickened_patch(v, f, thickness=0.02)
    m = trimesh.Trimesh(pv, pf, process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert abs(m.volume - 2 * 1 * 0.02) < 1e-9


def test_decode_local_maps_box_back():
    # a slab at y=0.01 (part frame); samples spread over a thin plate around it
    samples = np.random.default_rng(0).uniform([-0.5, -0.001, -0.5], [0.5, 0.001, 0.5], (500, 3))
    from holopart_infer.extraction import extract

    out = decode_local(lambda d, n: extract.extract_meshes(d, n, depth=6),
                       lambda pts: [_slab_or_sphere(p) for p in pts], [samples], depth=6)
    v, f = out[0]
    assert len(f) and abs(v[:, 1].mean() - 0.01) < 0.003 and np.ptp(v[:, 1]) < 0.02


# --------------------------------------------------------------------------- pictures


def _result_and_parts():
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(0.4, 0.4, 0.4))  # hidden inside a
    b.apply_translation([0.2, 0.2, 0.2])
    parts = Parts.from_meshes([a, b], ["outer", "inner"])
    res = _model(_sphere_field).complete(parts, **FAST)
    return parts, res


def test_comparison_same_camera_and_exploded(tmp_path):
    parts, res = _result_and_parts()
    out = render_comparison(parts, res, tmp_path / "cmp.png", size=(160, 120))
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (120, 320, 3)
    bg = np.array([245, 245, 245])
    left, right = (np.abs(img[:, :160] - bg).sum(-1) > 30), (np.abs(img[:, 160:] - bg).sum(-1) > 30)
    left[:20], right[:20] = False, False  # the captions
    # same camera, same framing: the completed spheres sit where the input boxes are
    cl, cr = np.argwhere(left).mean(0), np.argwhere(right).mean(0)
    assert np.abs(cl - cr).max() < 6
    # assembled, the inner part is hidden; exploded, both parts' colours show on the left
    inner = np.array(res.parts[1].color[:3])
    shaded_inner = lambda im: (np.abs(im[:, :160, None, :] - inner[None, None, None] * np.linspace(0.3, 1, 8)[:, None]
                                      ).sum(-1).min(-1) < 20).sum()
    assert shaded_inner(img) == 0
    exploded = np.asarray(Image.open(render_comparison(parts, res, tmp_path / "ex.png", size=(160, 120),
                                                       exploded=3.0)).convert("RGB")).astype(int)
    assert shaded_inner(exploded) > 20
    np.testing.assert_allclose(explode_offsets([np.zeros((1, 3)), np.ones((1, 3))], 2.0), [[-1, -1, -1], [1, 1, 1]])


def test_turntable_gif(tmp_path):
    parts, res = _result_and_parts()
    out = render_turntable(parts, res, tmp_path / "turn.gif", frames=6, size=(80, 60))
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == 6 and im.size == (160, 60)
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")).copy())
    assert not np.array_equal(frames[0], frames[1])  # it turns
    from holopart_infer.errors import InputError

    with pytest.raises(InputError, match=r"turn\.avi: unsupported extension '\.avi'; supported: \.gif, \.mp4"):
        render_turntable(parts, res, tmp_path / "turn.avi")
    assert not (tmp_path / "turn.avi").exists()


def test_write_scene_vertex_colours_round_trip(tmp_path):
    m = _half_colored_box()
    vc = np.asarray(m.visual.vertex_colors)
    out = write_scene([(m.vertices, m.faces), (m.vertices + 3, m.faces)], ["a", "b"], tmp_path / "vc.glb",
                      vertex_colors=[vc, None])
    parts = load_parts(out)
    np.testing.assert_array_equal(parts[0].appearance.vertex_colors, vc)
    assert parts[1].appearance.vertex_colors is None
    assert isinstance(parts[1].appearance, Appearance) and parts[1].appearance.is_plain
