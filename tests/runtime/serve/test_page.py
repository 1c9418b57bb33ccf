"""The service's page in a real headless browser (Chromium from the distribution).

The page is opened with ``?demo=mug&autorun=1``: it starts a job on the
embedded mug, follows it (long-polling) and draws the input and the completed
parts side by side with WebGL. The screenshot must show every part's colour in
both views (not a blank canvas).
"""
from __future__ import annotations

import colorsys
import shutil
import subprocess

import numpy as np
import pytest

from holopart_infer import assets
from tests.runtime.serve.serve_util import Server
from tests.support import FAST_SERVE_FLAGS

pytest.importorskip("starlette", reason="needs the [serve] extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run does)")]

WIDTH, HEIGHT = 1280, 800


def part_pixels(img: np.ndarray, rgb) -> int:
    """Pixels whose hue and saturation are those of a part colour (shading only scales brightness)."""
    h0, s0, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb[:3]) / 255.0))
    x = img[..., :3].astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    d = np.maximum(mx - mn, 1e-9)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6.0
    dh = np.abs(hue - h0)
    dh = np.minimum(dh, 1 - dh)
    return int(((dh < 0.03) & (np.abs(sat - s0) < 0.15) & (mx > 0.15)).sum())


def test_page_renders_input_and_completed_parts(tmp_path):
    from PIL import Image

    from holopart_infer.io.parts_io import load_parts, part_colors

    srv = Server(tmp_path, *FAST_SERVE_FLAGS)
    shot = tmp_path / "page.png"
    try:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
               "--enable-unsafe-swiftshader", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
               # virtual time stands still while a fetch is pending (the long poll), so the
               # budget only needs to cover the page's own timers
               "--virtual-time-budget=120000", f"--screenshot={shot}", f"{srv.url}/?demo=mug&autorun=1"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert shot.exists(), run.stderr[-3000:]
        jobs = srv.metrics()
    finally:
        assert srv.stop() == 0, srv.log()
    assert jobs["holopart_jobs_completed_total"] == 1, "the page did not run a job"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (HEIGHT, WIDTH)
    n = len(load_parts(assets.demo_object_path("mug")))
    colors = part_colors(n)
    left, right = img[:, : WIDTH // 2], img[:, WIDTH // 2:]
    for name, half in (("input", left), ("completed", right)):
        counts = [part_pixels(half, c) for c in colors]
        assert all(k > 150 for k in counts), f"{name} view: part colour pixels {counts}"
        assert sum(counts) > 0.03 * half.shape[0] * half.shape[1], f"{name} view nearly empty: {counts}"
    # the two views differ (the completed parts are not the input patches)
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 1.0
