"""Compiled kernels: FPS against a numpy reference, band/refine helpers, build checks."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from holopart_infer.extraction import native
from holopart_infer.errors import BackendUnavailable, InputError


def fps_reference(xyz: np.ndarray, k: int) -> np.ndarray:
    """Plain numpy FPS: start at 0, float32 squared distance, argmax (first max wins)."""
    xyz = np.asarray(xyz, dtype=np.float32)
    mind = np.full(len(xyz), np.inf, dtype=np.float32)
    out = np.zeros(k, dtype=np.int64)
    cur = 0
    for s in range(1, k):
        d = xyz - xyz[cur]
        dist = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
        mind = np.minimum(mind, dist)
        cur = int(np.argmax(mind))
        out[s] = cur
    return out


@pytest.mark.parametrize("n,k,seed", [(1, 1, 0), (10, 10, 1), (500, 64, 2), (4096, 512, 3)])
def test_fps_matches_numpy(n, k, seed):
    xyz = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    got = native.farthest_point_sampling(xyz, k)
    assert got.dtype == np.int64 and got.shape == (k,)
    np.testing.assert_array_equal(got, fps_reference(xyz, k))


def test_fps_ties_go_to_lowest_index():
    # Integer lattice with duplicates: many exactly equal distances.
    g = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = np.concatenate([g, g[::-1], g]).astype(np.float32)
    for k in (1, 2, 7, 64, len(xyz)):
        np.testing.assert_array_equal(native.farthest_point_sampling(xyz, k), fps_reference(xyz, k))
    # All points identical: after index 0 every distance is 0 -> always index 0.
    same = np.ones((5, 3), np.float32)
    np.testing.assert_array_equal(native.farthest_point_sampling(same, 3), [0, 0, 0])


def test_fps_accepts_float64_and_rejects_bad_input():
    xyz = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_array_equal(native.farthest_point_sampling(xyz, 5), fps_reference(xyz, 5))
    with pytest.raises(InputError, match="xyz.*\\(N, 3\\)"):
        native.farthest_point_sampling(np.zeros((5, 2), np.float32), 2)
    with pytest.raises(InputError, match="k: expected 1 <= k <= N = 5, got 6"):
        native.farthest_point_sampling(np.zeros((5, 3), np.float32), 6)
    with pytest.raises(InputError, match="k: expected an int"):
        native.farthest_point_sampling(np.zeros((5, 3), np.float32), 2.0)
    bad = np.zeros((5, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="xyz: expected finite"):
        native.farthest_point_sampling(bad, 2)
    with pytest.raises(InputError, match="xyz.*dtype"):
        native.farthest_point_sampling(np.zeros((5, 3), complex), 2)


def band_reference(values: np.ndarray, band: float) -> np.ndarray:
    v = values
    corners = np.stack([v[a:a + v.shape[0] - 1, b:b + v.shape[1] - 1, c:c + v.shape[2] - 1]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    known = ~np.isnan(corners)
    near = (known & (np.abs(np.where(known, corners, np.inf)) < band)).any(0)
    pos = (known & (corners > 0)).any(0)
    neg = (known & (corners <= 0)).any(0)
    return (near | (pos & neg)).astype(np.uint8)


def test_band_cells_matches_reference():
    rng = np.random.default_rng(0)
    v = rng.normal(scale=3.0, size=(9, 11, 7)).astype(np.float32)
    v[rng.random(v.shape) < 0.2] = np.nan
    np.testing.assert_array_equal(native.band_cells(v, 0.95), band_reference(v, 0.95))


def test_dilate_cells_is_box_dilation():
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(1)
    m = (rng.random((12, 9, 10)) < 0.03).astype(np.uint8)
    for r in (0, 1, 2):
        want = binary_dilation(m, structure=np.ones((2 * r + 1,) * 3), iterations=1) if r else m
        np.testing.assert_array_equal(native.dilate_cells(m, r), want.astype(np.uint8))


def test_refine_points_matches_reference():
    rng = np.random.default_rng(2)
    cells = (rng.random((5, 6, 4)) < 0.15).astype(np.uint8)
    fine = np.zeros((11, 13, 9), bool)
    for i, j, k in zip(*np.nonzero(cells)):
        fine[2 * i:2 * i + 3, 2 * j:2 * j + 3, 2 * k:2 * k + 3] = True
    np.testing.assert_array_equal(native.refine_points(cells), np.flatnonzero(fine))
    coarse = rng.normal(size=(6, 7, 5)).astype(np.float32)
    coarse[rng.random(coarse.shape) < 0.5] = np.nan
    known = np.zeros_like(fine)
    known[::2, ::2, ::2] = ~np.isnan(coarse)
    np.testing.assert_array_equal(native.refine_points(cells, coarse), np.flatnonzero(fine & ~known))


def test_device_argument_errors():
    xyz = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="device: expected one of"):
        native.farthest_point_sampling(xyz, 2, device="tpu")
    if not native.cuda_available():
        with pytest.raises(BackendUnavailable, match="device='cuda'"):
            native.farthest_point_sampling(xyz, 2, device="cuda")


def test_cuda_queries_never_crash():
    assert isinstance(native.built_with_cuda(), bool)
    assert isinstance(native.cuda_available(), bool)
    assert isinstance(native.cuda_status(), str)


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


@pytest.mark.skipif(not _nvcc_present(), reason="no nvcc on this machine: _cuda is not expected")
def test_cuda_module_built_when_nvcc_present():
    assert native.built_with_cuda(), (
        "nvcc is present but holopart_infer._cuda was not built; see the CMake log "
        "(pip install -v --no-build-isolation -e .)"
    )


@pytest.mark.requires_cuda
@pytest.mark.skipif(not native.cuda_available(), reason="needs a CUDA GPU and the _cuda module")
def test_cuda_kernels_match_cpu():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(20000, 3)).astype(np.float32)
    np.testing.assert_array_equal(native.farthest_point_sampling(xyz, 1024, device="cuda"),
                                  native.farthest_point_sampling(xyz, 1024))
    v = rng.normal(scale=3.0, size=(33, 30, 31)).astype(np.float32)
    v[rng.random(v.shape) < 0.1] = np.nan
    cells = native.band_cells(v, 0.95)
    np.testing.assert_array_equal(native.band_cells(v, 0.95, device="cuda"), cells)
    dil = native.dilate_cells(cells, 1)
    np.testing.assert_array_equal(native.dilate_cells(cells, 1, device="cuda"), dil)
    np.testing.assert_array_equal(native.refine_points(dil, v, device="cuda"),
                                  native.refine_points(dil, v))
