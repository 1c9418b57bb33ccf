"""Headless preview rendering."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from holopart_infer.errors import InputError
from holopart_infer.postprocess.preview import BACKGROUND, render_preview
from tests.support import box

RED = (220, 30, 30, 255)
BLUE = (30, 60, 220, 255)


def _scene():
    return [box((-1.0, 0, 0), (1.0, 1.0, 1.0)), box((1.0, 0.2, 0.3), (0.8, 1.6, 0.8))]


def test_writes_png_of_requested_size_in_part_colours(tmp_path):
    out = render_preview(_scene(), [RED, BLUE], tmp_path / "sub" / "preview.png", size=(320, 200))
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(out)
    assert img.size == (320, 200) and img.mode == "RGB"
    px = np.asarray(img).reshape(-1, 3).astype(int)
    fg = np.any(np.abs(px - BACKGROUND) > 8, axis=1)
    assert 0.05 < fg.mean() < 0.9  # the camera is fitted to the scene
    # shaded pixels keep their part's hue: red-dominant and blue-dominant pixels both present
    red = (px[:, 0] > 2 * px[:, 2]) & (px[:, 0] > 2 * px[:, 1]) & fg
    blue = (px[:, 2] > 2 * px[:, 0]) & (px[:, 2] > 2 * px[:, 1]) & fg
    assert red.sum() > 500 and blue.sum() > 500
    # the scene is fitted with a margin: border rows/columns are background
    arr = np.asarray(img).astype(int)
    for edge in (arr[0], arr[-1], arr[:, 0], arr[:, -1]):
        assert np.all(np.abs(edge - BACKGROUND) <= 8)
    assert not [p for p in out.parent.iterdir() if p != out]  # no temp files


def test_occlusion_nearest_part_wins(tmp_path):
    # a small red box in front of (towards the camera) a big blue one: red must show at the centre
    from holopart_infer.postprocess.preview import _camera

    _, _, forward = _camera()
    near = box(-3.0 * forward, (0.6, 0.6, 0.6))
    far = box((0, 0, 0), (3.0, 3.0, 3.0))
    out = render_preview([far, near], [BLUE, RED], tmp_path / "p.png", size=(200, 200), supersample=1)
    arr = np.asarray(Image.open(out)).astype(int)
    r, g, b = arr[100, 100]
    assert r > 2 * b


def test_default_colours_and_empty_parts(tmp_path):
    parts = _scene() + [(np.zeros((0, 3)), np.zeros((0, 3), int))]
    out = render_preview(parts, None, tmp_path / "p.png", size=(64, 48))
    assert Image.open(out).size == (64, 48)


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match=r"unsupported extension '\.bmp'.*\.png, \.jpg, \.jpeg"):
        render_preview(_scene(), [RED, BLUE], tmp_path / "p.bmp")
    with pytest.raises(InputError, match="size"):
        render_preview(_scene(), [RED, BLUE], tmp_path / "p.png", size=(0, 10))
    with pytest.raises(InputError, match="colors"):
        render_preview(_scene(), [RED], tmp_path / "p.png")


def test_jpeg_preview_is_a_real_jpeg(tmp_path):
    out = render_preview(_scene(), [RED, BLUE], tmp_path / "p.jpg", size=(64, 48))
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG SOI marker, not PNG bytes
    assert Image.open(out).format == "JPEG"
