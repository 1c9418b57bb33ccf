"""Headless preview images of completed parts (numpy z-buffer rasterizer + Pillow).

No display, OpenGL or GPU is needed: triangles are projected orthographically
from a fixed three-quarter view, shaded with a Lambert key light plus ambient in
each part's colour, and resolved with a z-buffer at twice the output resolution,
then box-filtered down (anti-aliasing).

Upright: the camera's up is the object's up axis (``up=``; the input's
:attr:`~holopart_infer.io.parts_io.Parts.up` / the result's
:attr:`~holopart_infer.pipeline.CompletionResult.up`, +Y as in glTF when not
known), and turntables spin about it. The object is turned from its up axis to
+Y exactly (:func:`holopart_infer.io.frames.up_rotation`) and drawn from a Y-up
camera, so a Z-up object's -Y side faces the viewer as a Y-up object's +Z side does.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from holopart_infer.errors import InputError
from holopart_infer.io.parts_io import mesh_arrays

log = logging.getLogger("holopart_infer")

BACKGROUND = (245, 245, 245)
_AZIMUTH_DEG = 35.0  # camera around the vertical axis, from +Z towards +X
_ELEVATION_DEG = 25.0  # camera above the horizon
_MARGIN = 0.06  # fraction of the image left free on each side
_AMBIENT = 0.3
_KEY = 0.6  # light from the upper left, in front
_FILL = 0.25  # weaker light from the right, so faces turned away from the key are not black
_BUCKETS = (2, 4, 8, 16, 32, 64)  # candidate-pixel grid sizes for small triangles
_FRAGMENTS_PER_CHUNK = 1 << 21
#: image extensions the previews write, and the Pillow format of each
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def render_preview(meshes: Sequence, colors: Sequence | np.ndarray | None, path: str | os.PathLike,
                   size: tuple[int, int] = (800, 600), supersample: int = 2,
                   vertex_colors: Sequence | None = None, *, overwrite: bool = False, protect=(),
                   up: str = "+y") -> Path:
    """Render parts to a PNG or JPEG image from a fixed 3/4 view, the camera fitted to the scene.

    Args:
        meshes: per part a ``(vertices (V,3), faces (F,3))`` pair or a
            ``trimesh.Trimesh``; parts without faces are skipped.
        colors: per part RGB/RGBA 0..255 (or floats 0..1); ``None`` uses
            :func:`holopart_infer.io.parts_io.part_colors`. Alpha is ignored.
        path: output image; the format follows the extension (:data:`IMAGE_FORMATS`:
            ``.png``, ``.jpg``/``.jpeg``). Written atomically; parent folders created.
        size: ``(width, height)`` in pixels.
        supersample: render at this multiple of ``size`` then downsample.
        vertex_colors: per part ``None`` or (V, 3|4) per-vertex colours (the
            input's look); a triangle takes the mean of its vertices' colours.
        overwrite: replace an existing file (otherwise it is an error and kept).
        protect: input paths the output may not be, lie inside or contain.
        up: the axis pointing up in the meshes' coordinates (the image shows it up).

    Returns:
        The output path.

    Raises:
        InputError: bad size, colours, extension or ``up``.
    """
    path = _check_image_output(path, overwrite, protect)
    width, height = _check_size(size, supersample)
    tris, tri_colors = _triangles(meshes, colors, vertex_colors)
    tris = _upright(tris, up)
    img = _image(tris, tri_colors, width, height, supersample, sphere=None, azimuth=_AZIMUTH_DEG, what=str(path))
    return _write_image(img, path, overwrite)


def _upright(tris: np.ndarray, up) -> np.ndarray:
    """Triangles turned exactly from their up axis to +Y, the camera's up."""
    from holopart_infer.io.frames import up_rotation

    return up_rotation(up or "+y", "+y").apply(tris)


def _check_image_output(path, overwrite: bool, protect, suffixes=IMAGE_FORMATS, what: str = "preview") -> Path:
    from holopart_infer import fsafe

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return fsafe.check_output(path, what=what, overwrite=overwrite, inputs=protect, suffixes=suffixes)


def _check_size(size, supersample) -> tuple[int, int]:
    try:
        width, height = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise InputError(f"size must be (width, height), got {size!r}") from e
    if width < 1 or height < 1 or width > 16384 or height > 16384:
        raise InputError(f"size must be between 1 and 16384 pixels per side, got {size!r}")
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 4:
        raise InputError(f"supersample must be an integer 1..4, got {supersample!r}")
    return width, height


def _triangles(meshes, colors, vertex_colors=None, offsets=None) -> tuple[np.ndarray, np.ndarray]:
    """All parts' triangles (T, 3, 3) and their RGB colours (T, 3), parts moved by ``offsets``."""
    from holopart_infer.io.parts_io import _normalize_colors

    meshes = list(meshes)
    rgb = _normalize_colors(colors, len(meshes))[:, :3].astype(np.float64)
    tris, tri_colors = [], []
    for i, mesh in enumerate(meshes):
        v, f = mesh_arrays(mesh)
        if len(f) == 0:
            continue
        if offsets is not None:
            v = v + offsets[i]
        ok = np.isfinite(v[f]).all(axis=(1, 2))
        tris.append(v[f][ok])
        vc = None if vertex_colors is None else vertex_colors[i]
        if vc is not None and len(vc) == len(v):
            tri_colors.append(np.asarray(vc, np.float64)[:, :3][f[ok]].mean(axis=1))
        else:
            tri_colors.append(np.broadcast_to(rgb[i], (int(ok.sum()), 3)))
    if not tris:
        return np.zeros((0, 3, 3)), np.zeros((0, 3))
    return np.concatenate(tris), np.concatenate(tri_colors)


def _image(tris, tri_colors, width, height, supersample, sphere, azimuth, what):
    """A PIL image of triangles; ``sphere`` (centre, radius) fixes the framing."""
    from PIL import Image

    W, H = width * supersample, height * supersample
    if len(tris) == 0:
        log.warning("preview: nothing to render; writing an empty image to %s", what)
        image = np.empty((H, W, 3), dtype=np.uint8)
        image[:] = BACKGROUND
    else:
        image = _render(tris, tri_colors, W, H, azimuth=azimuth, sphere=sphere)
    img = Image.fromarray(image, mode="RGB")
    if supersample > 1:
        img = img.resize((width, height), Image.Resampling.BOX)
    return img


def _write_image(img, path: Path, overwrite: bool) -> Path:
    """Encode in the format of the extension (:data:`IMAGE_FORMATS`) and write atomically."""
    import io

    from holopart_infer import fsafe

    buf = io.BytesIO()
    fmt = IMAGE_FORMATS[path.suffix.lower()]
    img.save(buf, format=fmt, **({"optimize": True} if fmt == "PNG" else {"quality": 92}))
    return fsafe.atomic_write(path, buf.getvalue(), overwrite=overwrite)


def _camera(azimuth: float = _AZIMUTH_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of the view (forward points into the scene)."""
    az, el = np.radians(azimuth), np.radians(_ELEVATION_DEG)
    to_camera = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -to_camera
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up, forward


def _render(tris: np.ndarray, colors: np.ndarray, W: int, H: int, azimuth: float = _AZIMUTH_DEG,
            sphere: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    right, up, forward = _camera(azimuth)
    R = np.stack([right, up, forward])  # world -> camera (x right, y up, z depth)
    cam = tris @ R.T  # (T, 3, 3)

    # shading in camera space: normals turned towards the viewer (parts may be inside out)
    n = np.cross(cam[:, 1] - cam[:, 0], cam[:, 2] - cam[:, 0])
    ln = np.linalg.norm(n, axis=1)
    keep = ln > 0
    cam, colors, n, ln = cam[keep], colors[keep], n[keep], ln[keep]
    n = n / ln[:, None]
    n[n[:, 2] > 0] *= -1.0
    key = np.array([-0.5, 0.7, -1.0])
    fill = np.array([1.0, 0.2, -0.4])
    key, fill = key / np.linalg.norm(key), fill / np.linalg.norm(fill)
    shade = np.minimum(_AMBIENT + _KEY * np.clip(n @ key, 0, 1) + _FILL * np.clip(n @ fill, 0, 1), 1.0)
    tri_rgb = np.clip(colors * shade[:, None], 0, 255).astype(np.uint8)

    # fit the projected bounds into the image
    if sphere is None:
        xy = cam[:, :, :2].reshape(-1, 2)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
    else:  # a fixed frame (side-by-side panels, turntable frames): the bounding sphere's outline
        c = (R @ np.asarray(sphere[0], np.float64))[:2]
        lo, hi = c - sphere[1], c + sphere[1]
    extent = np.maximum(hi - lo, 1e-12)
    scale = min(W * (1 - 2 * _MARGIN) / extent[0], H * (1 - 2 * _MARGIN) / extent[1])
    mid = (lo + hi) / 2
    px = (cam[:, :, 0] - mid[0]) * scale + W / 2
    py = H / 2 - (cam[:, :, 1] - mid[1]) * scale
    pz = cam[:, :, 2]

    zbuf = np.full(W * H, np.inf)
    cbuf = np.empty((W * H, 3), dtype=np.uint8)
    cbuf[:] = BACKGROUND

    # pixel (ix, iy) has its centre at (ix + 0.5, iy + 0.5)
    ix0 = np.clip(np.ceil(px.min(axis=1) - 0.5), 0, W).astype(np.int64)
    ix1 = np.clip(np.floor(px.max(axis=1) - 0.5), -1, W - 1).astype(np.int64)
    iy0 = np.clip(np.ceil(py.min(axis=1) - 0.5), 0, H).astype(np.int64)
    iy1 = np.clip(np.floor(py.max(axis=1) - 0.5), -1, H - 1).astype(np.int64)
    bw, bh = ix1 - ix0 + 1, iy1 - iy0 + 1
    visible = (bw > 0) & (bh > 0)
    span = np.maximum(bw, bh)

    lower = 0
    for k in _BUCKETS:
        sel = np.nonzero(visible & (span > lower) & (span <= k))[0]
        lower = k
        step = max(1, _FRAGMENTS_PER_CHUNK // (k * k))
        for s in range(0, len(sel), step):
            idx = sel[s:s + step]
            dx, dy = np.meshgrid(np.arange(k), np.arange(k))
            gx = ix0[idx, None] + dx.reshape(1, -1)
            gy = iy0[idx, None] + dy.reshape(1, -1)
            valid = (gx <= ix1[idx, None]) & (gy <= iy1[idx, None])
            tri_id = np.broadcast_to(idx[:, None], gx.shape)
            _splat(gx[valid], gy[valid], tri_id[valid], px, py, pz, tri_rgb, zbuf, cbuf, W)
    for t in np.nonzero(visible & (span > lower))[0]:  # large triangles, one at a time
        gy, gx = np.mgrid[iy0[t]:iy1[t] + 1, ix0[t]:ix1[t] + 1]
        _splat(gx.ravel(), gy.ravel(), np.full(gx.size, t), px, py, pz, tri_rgb, zbuf, cbuf, W)
    return cbuf.reshape(H, W, 3)


def _splat(gx, gy, tri, px, py, pz, tri_rgb, zbuf, cbuf, W) -> None:
    """Depth-test candidate pixels (gx, gy) of triangles ``tri`` into the buffers."""
    if len(tri) == 0:
        return
    cx, cy = gx + 0.5, gy + 0.5
    x0, x1, x2 = px[tri, 0], px[tri, 1], px[tri, 2]
    y0, y1, y2 = py[tri, 0], py[tri, 1], py[tri, 2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok = np.abs(area) > 1e-12
    area = np.where(ok, area, 1.0)
    w0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) / area
    w1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) / area
    w2 = 1.0 - w0 - w1
    eps = -1e-9
    inside = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    if not inside.any():
        return
    z = (w0 * pz[tri, 0] + w1 * pz[tri, 1] + w2 * pz[tri, 2])[inside]
    pix = (gy * W + gx)[inside]
    t = tri[inside]
    # nearest fragment per pixel within this batch, then against the buffer
    order = np.lexsort((z, pix))
    pix_s = pix[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix_s[1:] != pix_s[:-1]
    best = order[first]
    p, zb = pix[best], z[best]
    closer = zb < zbuf[p]
    p, zb, tb = p[closer], zb[closer], t[best][closer]
    zbuf[p] = zb
    cbuf[p] = tri_rgb[tb]


# --------------------------------------------------------------------------- input vs completed, turntable


def explode_offsets(parts_vertices: Sequence[np.ndarray], factor: float) -> np.ndarray:
    """Per part a translation moving it away from the object's centre.

    Each part moves along the line from the object's bounding-box centre to the
    part's own bounding-box centre, by ``factor`` times that distance, so parts
    hidden inside others come out (0 = assembled).
    """
    allv = np.concatenate([np.asarray(v, np.float64).reshape(-1, 3) for v in parts_vertices])
    center = (allv.min(axis=0) + allv.max(axis=0)) / 2
    out = np.zeros((len(parts_vertices), 3))
    for i, v in enumerate(parts_vertices):
        v = np.asarray(v, np.float64).reshape(-1, 3)
        if len(v):
            out[i] = ((v.min(axis=0) + v.max(axis=0)) / 2 - center) * float(factor)
    return out


def _bounding_sphere(tris_list: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    pts = np.concatenate([t.reshape(-1, 3) for t in tris_list if len(t)]) if any(len(t) for t in tris_list) \
        else np.zeros((1, 3))
    center = (pts.min(axis=0) + pts.max(axis=0)) / 2
    radius = float(np.linalg.norm(pts - center, axis=1).max()) or 1.0
    return center, radius


def _panels(parts, result, exploded: float):
    """(input triangles, colours), (completed triangles, colours), both exploded the same way."""
    names = [p.name for p in result.parts]
    colors = [p.color for p in result.parts]
    offsets = explode_offsets(parts.vertices, exploded) if exploded else None
    in_vc = [_input_vertex_colors(p) for p in parts]
    inp = _triangles([(p.vertices, p.faces) for p in parts], colors, in_vc, offsets)
    out = _triangles([(p.vertices, p.faces) for p in result.parts], colors,
                     [getattr(p, "vertex_colors", None) for p in result.parts], offsets)
    if list(parts.names) != names:
        raise InputError(f"preview: the result's parts {names[:4]}... are not the input's {parts.names[:4]}...")
    return inp, out


def _input_vertex_colors(part) -> np.ndarray | None:
    """Colours at an input part's vertices from its appearance (None: use the part colour)."""
    app = getattr(part, "appearance", None)
    if app is None or app.is_plain:
        return None
    if app.vertex_colors is not None:
        return app.vertex_colors
    if app.image is not None and app.uv is not None:
        from holopart_infer.io.appearance import _sample_texture

        col = _sample_texture(app.image, app.uv) * (app.base_color.astype(np.float64) / 255.0)
        return np.clip(np.round(col), 0, 255).astype(np.uint8)
    return None


def _scene_for_pictures(parts, result, exploded, size, supersample, up=None):
    """Checked size, both panels' triangles (turned upright) and colours, and the shared framing sphere."""
    if isinstance(exploded, bool) or not isinstance(exploded, (int, float, np.number)) or not np.isfinite(exploded) \
            or exploded < 0:
        raise InputError(f"exploded must be a number >= 0, got {exploded!r}")
    width, height = _check_size(size, supersample)
    up = up or getattr(result, "up", None) or getattr(parts, "up", None) or "+y"
    (ti, ci), (to, co) = _panels(parts, result, exploded)
    inp, out = (_upright(ti, up), ci), (_upright(to, up), co)
    return width, height, inp, out, _bounding_sphere([inp[0], out[0]])


def render_comparison(parts, result, path: str | os.PathLike, size: tuple[int, int] = (640, 480),
                      exploded: float = 0.0, supersample: int = 2, *, overwrite: bool = False, protect=(),
                      up: str | None = None) -> Path:
    """Input parts (left) and completed parts (right) from the same camera, as one image.

    Args:
        parts: the input :class:`~holopart_infer.io.parts_io.Parts`.
        result: the :class:`~holopart_infer.pipeline.CompletionResult` of those parts.
        path: output ``.png`` or ``.jpg`` (atomic; never over ``protect`` nor,
            without ``overwrite``, over an existing file).
        size: ``(width, height)`` of each panel; the image is twice as wide.
        exploded: move parts apart by this factor (0 = assembled; 0.5 is a good
            start) so parts hidden inside others are visible. Both panels use
            the same offsets (from the input parts).
        supersample: anti-aliasing factor 1..4.
        up: the axis pointing up in the parts' coordinates, shown up (default:
            ``result.up``, else ``parts.up``, else +Y).

    Returns:
        The output path.
    """
    from PIL import Image, ImageDraw

    path = _check_image_output(path, overwrite, protect)
    width, height, (ti, ci), (to, co), sphere = _scene_for_pictures(parts, result, exploded, size, supersample, up)
    left = _image(ti, ci, width, height, supersample, sphere, _AZIMUTH_DEG, str(path))
    right = _image(to, co, width, height, supersample, sphere, _AZIMUTH_DEG, str(path))
    img = Image.new("RGB", (2 * width, height), BACKGROUND)
    img.paste(left, (0, 0))
    img.paste(right, (width, 0))
    draw = ImageDraw.Draw(img)
    draw.line([(width, 0), (width, height)], fill=(200, 200, 200), width=1)
    for x, text in ((8, "input parts"), (width + 8, "completed parts")):
        draw.text((x, 6), text + (f" (exploded x{exploded:g})" if exploded else ""), fill=(60, 60, 60))
    return _write_image(img, path, overwrite)


TURNTABLE_FORMATS = (".gif", ".mp4")


def render_turntable(parts, result, path: str | os.PathLike, frames: int = 36, size: tuple[int, int] = (320, 240),
                     exploded: float = 0.0, fps: int = 12, supersample: int = 1, *, overwrite: bool = False,
                     protect=(), up: str | None = None) -> Path:
    """A rotating view (one turn about the object's up axis): input and completed parts side by side.

    Args:
        parts, result, up: as :func:`render_comparison`.
        path: ``.gif`` (Pillow) or ``.mp4`` (needs ``imageio`` with an ffmpeg
            writer: ``pip install imageio imageio-ffmpeg``).
        frames: frames per turn (>= 2).
        size: ``(width, height)`` of each panel.
        exploded: as :func:`render_comparison`.
        fps: frames per second.

    Returns:
        The output path.

    Raises:
        InputError: another extension, bad numbers, or .mp4 without a writer.
    """
    import importlib.util

    from PIL import Image

    path = _check_image_output(path, overwrite, protect, suffixes=TURNTABLE_FORMATS, what="turntable")
    ext = path.suffix.lower()
    if ext == ".mp4" and (importlib.util.find_spec("imageio") is None
                          or importlib.util.find_spec("imageio_ffmpeg") is None):
        raise InputError(f"turntable {path}: writing .mp4 needs imageio and imageio-ffmpeg (pip install imageio "
                         "imageio-ffmpeg); .gif needs nothing extra")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 2 <= frames <= 720:
        raise InputError(f"frames must be an integer 2..720, got {frames!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 60:
        raise InputError(f"fps must be an integer 1..60, got {fps!r}")
    width, height, (ti, ci), (to, co), sphere = _scene_for_pictures(parts, result, exploded, size, supersample, up)
    images = []
    for k in range(frames):
        az = _AZIMUTH_DEG + 360.0 * k / frames
        img = Image.new("RGB", (2 * width, height), BACKGROUND)
        img.paste(_image(ti, ci, width, height, supersample, sphere, az, str(path)), (0, 0))
        img.paste(_image(to, co, width, height, supersample, sphere, az, str(path)), (width, 0))
        images.append(img)
    import io

    from holopart_infer import fsafe

    if ext == ".gif":
        buf = io.BytesIO()
        pal = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255) for im in images]
        pal[0].save(buf, format="GIF", save_all=True, append_images=pal[1:], duration=int(1000 / fps), loop=0)
        data = buf.getvalue()
    else:
        import tempfile

        import imageio.v2 as imageio

        with tempfile.TemporaryDirectory() as tmp:
            tmp_mp4 = Path(tmp) / "turntable.mp4"
            with imageio.get_writer(tmp_mp4, fps=fps) as writer:
                for im in images:
                    writer.append_data(np.asarray(im))
            data = tmp_mp4.read_bytes()
    return fsafe.atomic_write(path, data, overwrite=overwrite)
