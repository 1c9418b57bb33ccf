"""Headless preview images of completed parts (numpy z-buffer rasterizer + Pillow).

No display, OpenGL or GPU is needed: triangles are projected orthographically
from a fixed three-quarter view (Y up, as in glTF), shaded with a Lambert key
light plus ambient in each part's colour, and resolved with a z-buffer at twice
the output resolution, then box-filtered down (anti-aliasing).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from holopart_infer.errors import InputError
from holopart_infer.parts_io import mesh_arrays

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
#: image extensions the preview writes, and the Pillow format of each
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def render_preview(meshes: Sequence, colors: Sequence | np.ndarray | None, path: str | os.PathLike,
                   size: tuple[int, int] = (800, 600), supersample: int = 2, *, overwrite: bool = False,
                   protect=()) -> Path:
    """Render parts to a PNG or JPEG image from a fixed 3/4 view, the camera fitted to the scene.

    Args:
        meshes: per part a ``(vertices (V,3), faces (F,3))`` pair or a
            ``trimesh.Trimesh``; parts without faces are skipped.
        colors: per part RGB/RGBA 0..255 (or floats 0..1); ``None`` uses
            :func:`holopart_infer.parts_io.part_colors`. Alpha is ignored.
        path: output image; the format follows the extension (:data:`IMAGE_FORMATS`:
            ``.png``, ``.jpg``/``.jpeg``). Written atomically; parent folders created.
        size: ``(width, height)`` in pixels.
        supersample: render at this multiple of ``size`` then downsample.
        overwrite: replace an existing file (otherwise it is an error and kept).
        protect: input paths the output may not be, lie inside or contain.

    Returns:
        The output path.

    Raises:
        InputError: bad size, colours or extension.
    """
    from PIL import Image

    from holopart_infer import fsafe
    from holopart_infer.parts_io import _normalize_colors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsafe.check_output(path, what="preview", overwrite=overwrite, inputs=protect, suffixes=IMAGE_FORMATS)
    try:
        width, height = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise InputError(f"size must be (width, height), got {size!r}") from e
    if width < 1 or height < 1 or width > 16384 or height > 16384:
        raise InputError(f"size must be between 1 and 16384 pixels per side, got {size!r}")
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 4:
        raise InputError(f"supersample must be an integer 1..4, got {supersample!r}")
    meshes = list(meshes)
    rgb = _normalize_colors(colors, len(meshes))[:, :3].astype(np.float64)

    tris, tri_colors = [], []
    for i, mesh in enumerate(meshes):
        v, f = mesh_arrays(mesh)
        if len(f) == 0:
            continue
        t = v[f]
        t = t[np.isfinite(t).all(axis=(1, 2))]
        tris.append(t)
        tri_colors.append(np.broadcast_to(rgb[i], (len(t), 3)))

    W, H = width * supersample, height * supersample
    if not tris or sum(len(t) for t in tris) == 0:
        log.warning("preview: nothing to render; writing an empty image to %s", path)
        image = np.empty((H, W, 3), dtype=np.uint8)
        image[:] = BACKGROUND
    else:
        image = _render(np.concatenate(tris), np.concatenate(tri_colors), W, H)
    img = Image.fromarray(image, mode="RGB")
    if supersample > 1:
        img = img.resize((width, height), Image.Resampling.BOX)
    import io

    buf = io.BytesIO()
    fmt = IMAGE_FORMATS[path.suffix.lower()]
    img.save(buf, format=fmt, **({"optimize": True} if fmt == "PNG" else {"quality": 92}))
    fsafe.atomic_write(path, buf.getvalue(), overwrite=overwrite)
    return path


def _camera() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of the fixed view (forward points into the scene)."""
    az, el = np.radians(_AZIMUTH_DEG), np.radians(_ELEVATION_DEG)
    to_camera = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    forward = -to_camera
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up, forward


def _render(tris: np.ndarray, colors: np.ndarray, W: int, H: int) -> np.ndarray:
    right, up, forward = _camera()
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
    xy = cam[:, :, :2].reshape(-1, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
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
