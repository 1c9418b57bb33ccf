"""holopart_infer.postprocess.cleanup: connected components and floater removal."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.postprocess.cleanup import connected_components, remove_floaters
from holopart_infer.errors import InputError


def _cube(center, half):
    c = np.asarray(center, float)
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * half + c
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def _join(*meshes):
    vs, fs, off = [], [], 0
    for v, f in meshes:
        vs.append(v)
        fs.append(f + off)
        off += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def test_components_are_found():
    v, f = _join(_cube((0, 0, 0), 1.0), _cube((5, 0, 0), 0.1), _cube((-5, 0, 0), 0.8))
    n, label = connected_components(f, len(v))
    assert n == 3
    assert len(set(label[:12])) == len(set(label[12:24])) == len(set(label[24:])) == 1
    assert len({label[0], label[12], label[24]}) == 3


def test_small_pieces_go_similar_pieces_stay():
    big, tiny, similar = _cube((0, 0, 0), 1.0), _cube((5, 0, 0), 0.1), _cube((-5, 0, 0), 0.8)
    v, f = _join(big, tiny, similar)
    rv, rf = remove_floaters(v, f, 0.1)  # tiny: area 1% of big; similar: 64%
    assert len(rf) == 24 and len(rv) == 16
    want_v, want_f = _join(big, similar)
    np.testing.assert_array_equal(rv, want_v)
    np.testing.assert_array_equal(rf, want_f)
    rv, rf = remove_floaters(v, f, 0.9)
    np.testing.assert_array_equal(rv, big[0])
    np.testing.assert_array_equal(rf, big[1])


def test_zero_fraction_and_single_component_are_unchanged():
    v, f = _join(_cube((0, 0, 0), 1.0), _cube((5, 0, 0), 0.1))
    rv, rf = remove_floaters(v, f, 0.0)
    assert rv is v and rf is f
    cv, cf = _cube((0, 0, 0), 1.0)
    rv, rf = remove_floaters(cv, cf, 0.5)
    np.testing.assert_array_equal(rf, cf)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.1", None])
def test_bad_fraction(bad):
    v, f = _cube((0, 0, 0), 1.0)
    with pytest.raises(InputError, match="min_fraction"):
        remove_floaters(v, f, bad)


def _edge_manifold_by_rows(f):
    """The plain definition: every undirected edge used by exactly two faces."""
    f = np.asarray(f, np.int64)
    if len(f) == 0:
        return False
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())


def test_edge_manifold_agrees_with_the_edge_count():
    from holopart_infer.postprocess.cleanup import edge_manifold
    from holopart_infer.extraction.mcubes import marching_cubes

    x = np.linspace(-1, 1, 24)
    g = 0.7 - np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    v, closed = marching_cubes(g.astype(np.float32), 0.0)[:2]
    cube = _cube((0, 0, 0), 1.0)[1]
    rng = np.random.default_rng(0)
    cases = [closed, cube, _join(_cube((0, 0, 0), 1), _cube((3, 0, 0), 1))[1],
             closed[1:],                                  # a hole: boundary edges
             np.concatenate([closed, closed[:1]]),        # one face twice: edges used 3 times
             np.concatenate([cube, cube]),                # every edge used 4 times
             cube[:11], np.zeros((0, 3), np.int64),
             cube + (1 << 31),                            # ids past the 64-bit key's range
             rng.integers(0, 30, size=(200, 3))]
    for f in cases:
        assert edge_manifold(f) == _edge_manifold_by_rows(f)
    assert edge_manifold(closed) and edge_manifold(cube) and not edge_manifold(closed[1:])
