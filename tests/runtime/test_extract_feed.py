"""extract.PackedFeed: packed decoder rows (each with its part's key/values), no padding rows."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer.errors import InputError
from holopart_infer.extraction.extract import PackedFeed, PaddedFeed, extract_meshes, row_plan, row_segments
from tests.runtime.test_extract import PARTS, sphere_logits


class RowDecoder:
    """A stand-in backend: ``kv`` is one part per batch row (the part's dict), so a
    row queried against the wrong part's key/values answers with the wrong sphere."""

    def __init__(self, parts):
        self.kv = list(parts)
        self.shapes = []

    def query(self, points, parts):
        kv = self.kv if parts is None else [self.kv[p] for p in parts]
        assert points.dtype == np.float32 and points.ndim == 3 and len(kv) == len(points)
        self.shapes.append(points.shape[:2])
        return np.stack([sphere_logits(row, part) for row, part in zip(points, kv)])[..., None]


def test_row_plan_one_row_per_part_and_length_tails_rounded_to_the_granule():
    plan = row_plan([2500, 0, 1024, 7, 1000, 130], 1024, 128)
    assert plan == [(1024, [(0, 0, 1024), (0, 1024, 1024), (2, 0, 1024), (4, 0, 1000)]),
                    (512, [(0, 2048, 452)]), (256, [(5, 0, 130)]), (128, [(3, 0, 7)])]
    assert row_segments(plan[0][1], 1024) == [(0, 0, 0, 2048), (2, 2048, 0, 1024), (4, 3072, 0, 1000)]
    assert row_plan([0, 0], 1024) == [] and row_plan([5], 1) == [(1, [(0, i, 1) for i in range(5)])]
    assert row_plan([8192, 100, 8000], 8192, 128) == [(8192, [(0, 0, 8192)]), (8064, [(2, 0, 8000)]),
                                                      (128, [(1, 0, 100)])]
    assert row_plan([1000, 300], 1024) == [(1024, [(0, 0, 1000)]), (384, [(1, 0, 300)])]  # granule 128
    # a part's rows and its tail in one group stay one run
    assert row_segments(row_plan([2040], 1024, 64)[0][1], 1024) == [(0, 0, 0, 2040)]


@pytest.mark.parametrize("row_points", [8192, 1024, 64, 1])
def test_packed_feed_answers_what_a_padded_call_does(row_points):
    rng = np.random.default_rng(0)
    pts = [rng.uniform(-1, 1, (n, 3)).astype(np.float32) for n in (3000, 0, 17, 1024)]
    parts = [PARTS[0], PARTS[1], None, PARTS[1]]
    packed, padded = PackedFeed(RowDecoder(parts).query, row_points), PaddedFeed(RowDecoder(parts).query)
    a, b = packed(pts), padded(pts)
    for x, y, p, part in zip(a, b, pts, parts):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, sphere_logits(p, part))
    assert packed.real_points == padded.real_points == 3000 + 17 + 1024
    assert padded.fed_points == 4 * 3000
    granule = min(row_points, 128)
    assert packed.real_points <= packed.fed_points < packed.real_points + 4 * granule


def test_extraction_through_the_packed_feed_is_the_plain_one():
    plain, ps = extract_meshes(lambda b: [sphere_logits(p, part) for p, part in zip(b, PARTS)], len(PARTS),
                               depth=7, chunk_points=5000)
    dec = RowDecoder(PARTS)
    feed = PackedFeed(dec.query, 625, 78)  # the pipeline's: chunk // 8, chunk // 64
    packed, qs = extract_meshes(feed, len(PARTS), depth=7, chunk_points=5000)
    assert qs.queries_per_part == ps.queries_per_part and feed.real_points == qs.total_queries
    for (v, f), (pv, pf) in zip(plain, packed):
        np.testing.assert_array_equal(v, pv)
        np.testing.assert_array_equal(f, pf)
    # padding: under one granule (5000 // 64 points) per part per decode call, far under a padded call's
    assert feed.fed_points - feed.real_points < 78 * len(PARTS) * qs.decode_calls
    assert feed.fed_points / feed.real_points < 1.02
    assert all(L % 78 == 0 or L == 625 for _, L in dec.shapes)
    assert all(R <= 9 * len(PARTS) for R, _ in dec.shapes)  # 8 rows and a tail per part at most


def test_packed_feed_checks_its_arguments_and_answers():
    with pytest.raises(InputError, match="row_points"):
        PackedFeed(lambda p, k: p, 0)
    with pytest.raises(InputError, match="granule"):
        PackedFeed(lambda p, k: p, 8, 0)
    feed = PackedFeed(lambda points, parts: np.zeros((len(points), 3)), 8)
    with pytest.raises(InputError, match="decoder query: expected 1 x 8 logits"):
        feed([np.zeros((8, 3), np.float32)])


def test_pipeline_packed_rows_give_the_padded_meshes(monkeypatch):
    import holopart_infer as hp
    from holopart_infer import assets, pipeline

    model = hp.load(assets.demo_model_path())
    opts = dict(steps=2, depth=7, num_points=1024, latent_tokens=64, decimate=None, seed=2)
    packed = model.complete(assets.demo_object_path(), **opts)
    monkeypatch.setattr(pipeline, "_kv_row_taker", lambda kv: None)  # key/values not gatherable: padded rows
    padded = model.complete(assets.demo_object_path(), **opts)
    real = sum(packed.stats["decoder_queries_per_level"].values())
    assert packed.stats["decoder_queries_per_level"] == padded.stats["decoder_queries_per_level"]
    assert real <= packed.stats["decoder_points_fed"] <= 1.02 * real
    assert padded.stats["decoder_points_fed"] > packed.stats["decoder_points_fed"]
    for a, b in zip(packed.parts, padded.parts):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)


def test_corner_points_of_a_cell_list_are_refine_points_of_its_mask():
    from holopart_infer.extraction import native
    from holopart_infer.extraction.extract import _corner_points, _unique_cells

    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(9, 8, 11)).astype(np.float32)
    coarse[rng.random(coarse.shape) < 0.4] = np.nan
    for density in (0.02, 0.3, 1.0):
        mask = rng.random((8, 7, 10)) < density
        cells = np.argwhere(mask)
        want = native.refine_points(mask.view(np.uint8), coarse)
        np.testing.assert_array_equal(_corner_points(cells, coarse), want)
        shuffled = np.concatenate([cells, cells])[rng.permutation(2 * len(cells))]
        np.testing.assert_array_equal(_unique_cells(shuffled, mask.shape), cells)


def test_sparse_add_merges_in_sorted_order():
    from holopart_infer.extraction.extract import _Sparse

    rng = np.random.default_rng(2)
    sp = _Sparse(np.zeros((3, 3, 3), np.float32), 4)
    seen = np.zeros(0, np.int64)
    for size in (0, 50, 1, 200, 7):
        ix = np.sort(rng.choice(np.setdiff1d(np.arange(5 ** 3 * 40), seen), size, replace=False))
        sp.add(ix, ix.astype(np.float32) * 0.5)
        seen = np.concatenate([seen, ix])
    np.testing.assert_array_equal(sp.idx, np.sort(seen))
    np.testing.assert_array_equal(sp.val, np.sort(seen).astype(np.float32) * 0.5)
