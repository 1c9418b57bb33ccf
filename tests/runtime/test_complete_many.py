"""HoloPart.complete_many: parts of several objects packed into shared batches,
results equal to complete() per object, failures isolated per job."""
from __future__ import annotations

import numpy as np
import pytest

import holopart_infer as hp
from holopart_infer import assets
from holopart_infer.errors import HoloPartError, InputError, InputFileNotFound
from holopart_infer.io.parts_io import Parts, load_parts
from holopart_infer.pipeline import CompletionJob, CompletionOptions
from tests.support import box, fast_options


@pytest.fixture(scope="module")
def model():
    return hp.load(assets.demo_model_path())


def _two_box_object(shift: float):
    return Parts.from_meshes(
        [box((shift, 0, 0), (1.0 + 0.3 * shift, 0.4, 0.6)), box((shift, 0.5, 0), (0.3, 0.6, 0.3))], names=["base", "post"])


def _surface_distance(a: hp.CompletionResult, b: hp.CompletionResult) -> float:
    """Largest symmetric nearest-vertex distance over all parts, relative to the part size."""
    from scipy.spatial import cKDTree

    worst = 0.0
    for pa, pb in zip(a.parts, b.parts):
        assert pa.name == pb.name
        assert (len(pa.vertices) == 0) == (len(pb.vertices) == 0), pa.name
        if not len(pa.vertices):  # the tiny model at these settings may leave a thin part empty
            continue
        size = float(np.ptp(pa.vertices, axis=0).max())
        d1 = cKDTree(pb.vertices).query(pa.vertices)[0].max()
        d2 = cKDTree(pa.vertices).query(pb.vertices)[0].max()
        worst = max(worst, max(d1, d2) / size)
    return worst


def test_packed_results_equal_complete_per_object(model):
    """Three objects with different seeds, 3 parts per batch: batches mix objects
    (and cut an object across batches), yet each result is complete()'s."""
    jobs = [CompletionJob(assets.demo_object_path("mug"), options=fast_options(model, seed=1), key="mug"),
            CompletionJob(_two_box_object(0.0), options=fast_options(model, seed=2), key="boxes"),
            CompletionJob(assets.demo_object_path("lamp"), options=fast_options(model, seed=3), key="lamp")]
    out = dict((job.key, res) for job, res in model.complete_many(jobs, parts_per_batch=3))
    assert set(out) == {"mug", "boxes", "lamp"}
    mixed, nonempty = False, 0
    for job in jobs:
        res = out[job.key]
        assert isinstance(res, hp.CompletionResult), res
        ref = model.complete(job.parts, options=job.options)  # parts_per_batch 8: other batches
        assert [p.name for p in res.parts] == [p.name for p in ref.parts]
        # geometry, not array order: the backend's numerics may vary with batch shape
        assert _surface_distance(res, ref) < 1e-3
        for pa, pb in zip(res.parts, ref.parts):
            assert abs(len(pa.faces) - len(pb.faces)) <= 0.01 * len(pb.faces) + 2
        assert res.stats["num_parts"] == len(ref.parts)
        nonempty += sum(len(p.faces) > 0 for p in res.parts)
        assert res.stats["decoder_queries_per_level"]["0"] == ref.stats["decoder_queries_per_level"]["0"]
        mixed |= any(n == 3 for n in res.stats["batch_sizes"])
    assert mixed and nonempty >= 6


def test_batch_composition_does_not_change_a_result(model):
    """The same object alone and packed with others, both with 4 parts per batch:
    its parts see the same noise and tokens (seeded per object)."""
    mug = CompletionJob(assets.demo_object_path("mug"), options=fast_options(model, seed=5), key="mug")
    alone = dict((j.key, r) for j, r in model.complete_many([mug], parts_per_batch=4))["mug"]
    others = [CompletionJob(_two_box_object(s), options=fast_options(model, seed=9), key=f"b{s}") for s in (0.0, 3.0)]
    packed = dict((j.key, r) for j, r in model.complete_many([others[0], mug, others[1]], parts_per_batch=4))
    assert _surface_distance(alone, packed["mug"]) < 1e-3
    assert packed["mug"].stats["batch_sizes"] != alone.stats["batch_sizes"] or len(alone.stats["batch_sizes"]) > 0


def test_bad_jobs_yield_errors_and_others_complete(model, tmp_path):
    garbage = tmp_path / "broken.glb"
    garbage.write_bytes(b"not a glb at all")
    jobs = [CompletionJob(tmp_path / "missing.glb", key="missing"),
            CompletionJob(_two_box_object(0.0), options=fast_options(model), key="good"),
            CompletionJob(garbage, options=fast_options(model), key="garbage"),
            CompletionJob(_two_box_object(1.0), options=CompletionOptions(**{**fast_options(model).__dict__, "steps": 0}),
                          key="bad-options"),
            CompletionJob(assets.demo_object_path("mug"), options=fast_options(model, seed=4), key="mug")]
    out = dict((j.key, r) for j, r in model.complete_many(jobs, parts_per_batch=2))
    assert set(out) == {j.key for j in jobs}
    assert isinstance(out["missing"], InputFileNotFound) and "missing.glb" in str(out["missing"])
    assert isinstance(out["garbage"], HoloPartError) and "broken.glb" in str(out["garbage"])
    assert isinstance(out["bad-options"], InputError) and "steps" in str(out["bad-options"])
    for key in ("good", "mug"):
        assert isinstance(out[key], hp.CompletionResult)


def test_groups_by_batch_options_and_yields_as_jobs_finish(model):
    """Jobs whose sampling options differ never share a batch; a small job is
    yielded before a later big one is even read."""
    read = []

    def jobs():
        for key, opts in (("a", fast_options(model)), ("b", fast_options(model, steps=1)), ("c", fast_options(model))):
            read.append(key)
            yield CompletionJob(_two_box_object(len(read)), options=opts, key=key)

    order = []
    for job, res in model.complete_many(jobs(), parts_per_batch=2):
        assert isinstance(res, hp.CompletionResult)
        order.append((job.key, list(read)))
        assert res.stats["batch_sizes"] == [2]  # each object fills a batch of its own group
    assert order[0] == ("a", ["a"])  # a full batch runs as soon as it is full
    assert [k for k, _ in order] == ["a", "b", "c"]


def test_a_failing_batch_fails_only_its_jobs(model, monkeypatch):
    calls = {"n": 0}
    real = model.backend.decoder_kv

    def flaky(latents):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated device fault")
        return real(latents)

    monkeypatch.setattr(model.backend, "decoder_kv", flaky)
    jobs = [CompletionJob(_two_box_object(s), options=fast_options(model), key=k) for k, s in (("a", 0), ("b", 1), ("c", 2))]
    out = dict((j.key, r) for j, r in model.complete_many(jobs, parts_per_batch=2))
    assert isinstance(out["b"], hp.EngineError) and "simulated device fault" in str(out["b"])
    assert isinstance(out["a"], hp.CompletionResult) and isinstance(out["c"], hp.CompletionResult)


def test_complete_many_rejects_non_jobs(model):
    with pytest.raises(InputError, match="CompletionJob"):
        list(model.complete_many(["x.glb"]))
    with pytest.raises(InputError, match="parts_per_batch"):
        list(model.complete_many([], parts_per_batch=0))


def test_parts_loaded_once_names_kept(model):
    parts = load_parts(assets.demo_object_path("table"))
    (job, res), = model.complete_many([CompletionJob(parts, options=fast_options(model), key=7)])
    assert job.key == 7 and [p.name for p in res.parts] == parts.names


def test_ort_outputs_are_batch_independent_within_tolerance(model):
    """What packing relies on: a part's DiT step and decoder logits do not depend
    (beyond float rounding) on the other rows of the batch."""
    rng = np.random.default_rng(0)
    be, K, C = model.backend, model.num_tokens, model.latent_channels
    L, N = 64, 512
    part_tok, local_tok = rng.standard_normal((3, K, 6), np.float32), rng.standard_normal((3, K, 6), np.float32)
    whole = rng.standard_normal((3, N, 7), np.float32)
    local = rng.standard_normal((3, N, 6), np.float32)
    w3, p3 = be.encode(part_tok, whole, local_tok, local)
    w1, p1 = be.encode(part_tok[1:2], whole[1:2], local_tok[1:2], local[1:2])
    np.testing.assert_allclose(np.asarray(p3)[1:2], np.asarray(p1), atol=1e-4, rtol=1e-4)
    x = rng.standard_normal((3, L, C), np.float32)
    s3 = np.asarray(be.guided_step(x, 500.0, 0.1, 3.5, p3, w3))
    s1 = np.asarray(be.guided_step(x[1:2], 500.0, 0.1, 3.5, p1, w1))
    np.testing.assert_allclose(s3[1:2], s1, atol=1e-4, rtol=1e-4)
    kv3, kv1 = be.decoder_kv(s3), be.decoder_kv(s1)
    pts = rng.uniform(-1, 1, (3, 1000, 3)).astype(np.float32)
    q3 = np.asarray(be.decoder_query(pts, kv3)).reshape(3, -1)
    q1 = np.asarray(be.decoder_query(pts[1:2, :700], kv1)).reshape(1, -1)  # other length: padding differs too
    np.testing.assert_allclose(q3[1, :700], q1[0], atol=1e-3, rtol=1e-4)


def test_a_poison_object_does_not_fail_objects_sharing_its_batch(model, monkeypatch):
    """A packed batch that fails is retried object by object: only the object
    that makes the backend fail is reported failed."""
    jobs = [CompletionJob(_two_box_object(s), options=fast_options(model), key=k) for k, s in (("a", 0), ("b", 1), ("c", 2))]
    poison = model._prepare(jobs[1].parts, None, jobs[1].options).part_tok[0]
    real = model.backend.encode

    def encode(part_tokens, *rest):
        if any(np.array_equal(row, poison) for row in part_tokens):
            raise RuntimeError("backend cannot take this part")
        return real(part_tokens, *rest)

    monkeypatch.setattr(model.backend, "encode", encode)
    out = dict((j.key, r) for j, r in model.complete_many(jobs, parts_per_batch=6))  # one batch of all 6 parts
    assert isinstance(out["b"], hp.EngineError) and "cannot take this part" in str(out["b"])
    assert isinstance(out["a"], hp.CompletionResult) and isinstance(out["c"], hp.CompletionResult)
    assert out["a"].stats["batch_sizes"] == [2]  # its retry ran alone


def test_complete_many_takes_complete_s_keyword_overrides(model):
    """complete_many(..., **overrides) as complete(..., **overrides): over each job's options (or the
    model's defaults), the resolved options travel with each result; a bad override fails the call."""
    base = fast_options(model, seed=5)
    jobs = [CompletionJob(_two_box_object(0.0), options=base, key="given"),
            CompletionJob(_two_box_object(1.0), key="defaults")]
    got = {job.key: res for job, res in model.complete_many(jobs, steps=1, depth=6, num_points=1024,
                                                            latent_tokens=64, decimate=None, parts_per_batch=4)}
    assert got["given"].options == base.replace(steps=1, parts_per_batch=4)
    assert got["defaults"].options == model.default_options().replace(
        steps=1, depth=6, num_points=1024, latent_tokens=64, decimate=None, parts_per_batch=4)
    same = model.complete(_two_box_object(0.0), options=base, steps=1, parts_per_batch=4)
    assert same.options == got["given"].options
    assert _surface_distance(same, got["given"]) < 1e-3
    with pytest.raises(InputError, match=r"option steps must be an integer >= 1, got 0 \(int\)"):
        list(model.complete_many(jobs, steps=0))
    with pytest.raises(InputError, match=r"unknown option\(s\): stepz"):
        list(model.complete_many(jobs, stepz=2))
