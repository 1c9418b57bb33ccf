"""Untrusted uploads (holopart_infer.serve.limits) and the dynamic batcher, without a server."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from holopart_infer import assets
from holopart_infer.serve.batcher import DONE, FAILED, Batcher, QueueFull, ServeJob
from holopart_infer.serve.limits import Limits, RequestRefused, check_gltf, load_labels
from tests.runtime.serve.serve_util import data_uri, make_glb, tetra_doc, tetra_glb

LIMITS = Limits(max_parts=8, max_faces=1000, max_vertices=2000)


def refused(data: bytes, limits: Limits = LIMITS) -> RequestRefused:
    with pytest.raises(RequestRefused) as e:
        check_gltf(data, limits, "upload.glb")
    return e.value


@pytest.mark.parametrize("name", sorted(assets.DEMO_OBJECTS))
def test_embedded_objects_pass_and_are_counted(name):
    import trimesh

    data = assets.demo_object_path(name).read_bytes()
    s = check_gltf(data, Limits(), name)
    scene = trimesh.load_scene(assets.demo_object_path(name))
    assert s.mesh_nodes == len(scene.graph.nodes_geometry)
    assert s.faces == sum(len(scene.geometry[scene.graph[n][1]].faces) for n in scene.graph.nodes_geometry)


def test_honest_glb_and_data_uri_gltf_pass():
    assert check_gltf(tetra_glb(3), LIMITS).faces == 12
    doc, binary = tetra_doc(2, buffer_uri=None)
    doc["buffers"][0]["uri"] = data_uri(binary)
    import json

    assert check_gltf(json.dumps(doc).encode(), LIMITS).mesh_nodes == 2


@pytest.mark.parametrize("uri", ["../../../../etc/passwd", "/etc/passwd", "file:///etc/passwd",
                                 "subdir/../../secret.bin", "http://169.254.169.254/latest", "%2e%2e/secret.bin"])
def test_external_buffer_uris_are_refused(uri, tmp_path):
    e = refused(tetra_glb(2, buffer_uri=uri))
    assert (e.status, e.kind) == (422, "unsafe_uri")
    assert "external URI" in str(e) and "self-contained" in str(e)


def test_external_image_uri_is_refused():
    doc, binary = tetra_doc(2)
    doc["images"] = [{"uri": "../../textures/secret.png"}]
    assert refused(make_glb(doc, binary)).kind == "unsafe_uri"


def test_huge_declared_buffer_length_is_refused():
    doc, binary = tetra_doc(2)
    doc["buffers"][0]["byteLength"] = 2**40
    e = refused(make_glb(doc, binary))
    assert e.kind == "invalid_gltf" and "byteLength 1099511627776" in str(e)


def test_glb_header_length_and_chunk_lengths_are_checked():
    data = bytearray(tetra_glb(2))
    data[8:12] = (2**31).to_bytes(4, "little")  # declared total length
    assert "declares 2147483648 bytes" in str(refused(bytes(data)))
    data = bytearray(tetra_glb(2))
    data[12:16] = (2**30).to_bytes(4, "little")  # JSON chunk length
    assert "JSON chunk declares" in str(refused(bytes(data)))


def test_tiny_upload_declaring_enormous_counts_is_refused():
    # zip-bomb-like: a few hundred bytes claiming a billion vertices
    doc, binary = tetra_doc(2)
    doc["accessors"][0]["count"] = 10**9
    e = refused(make_glb(doc, binary))
    assert e.kind == "too_many_vertices" and e.details["actual"] == 10**9
    # within the limits but beyond the bytes present
    doc, binary = tetra_doc(2)
    doc["accessors"][0]["count"] = 500
    assert "need" in str(refused(make_glb(doc, binary)))
    # no bufferView: a reader would allocate zeros of the declared size
    doc, binary = tetra_doc(2)
    del doc["accessors"][0]["bufferView"]
    assert "no bufferView" in str(refused(make_glb(doc, binary)))


def test_instanced_mesh_counts_per_node():
    e = refused(tetra_glb(instances=300), Limits(max_parts=1000, max_faces=1000))
    assert e.kind == "too_many_faces" and e.details["actual"] == 1200
    assert refused(tetra_glb(9)).kind == "too_many_parts"


def test_graph_cycles_two_parents_and_extensions_are_refused():
    doc, binary = tetra_doc(2)
    doc["nodes"][0]["children"] = [1]
    doc["nodes"][1]["children"] = [0]
    assert "parents" in str(refused(make_glb(doc, binary))) or "cycle" in str(refused(make_glb(doc, binary)))
    doc, binary = tetra_doc(2)
    doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    assert refused(make_glb(doc, binary)).kind == "unsupported_gltf"
    doc, binary = tetra_doc(2)
    doc["accessors"][0]["sparse"] = {"count": 1}
    assert refused(make_glb(doc, binary)).kind == "unsupported_gltf"


def test_garbage_is_invalid_not_a_crash():
    for data in (b"", b"glTF", b"not a gltf at all", b"{\"asset\": 3}", b"\xff" * 100, b"[" * 100000):
        assert refused(data).status == 422


def test_labels_no_pickles_and_header_checked():
    good = io.BytesIO()
    np.save(good, np.array([0, 0, 1, 1], np.int64))
    assert load_labels(good.getvalue(), LIMITS).tolist() == [0, 0, 1, 1]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RequestRefused, match="integers"):
        load_labels(pickled.getvalue(), LIMITS)
    # header declares a billion labels, 32 bytes follow
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (10**9,)})
    with pytest.raises(RequestRefused) as e:
        load_labels(header.getvalue() + b"\0" * 32, Limits(max_faces=10**10))
    assert e.value.kind == "invalid_labels" and "bytes follow" in str(e.value)
    with pytest.raises(RequestRefused) as e:
        load_labels(header.getvalue(), LIMITS)
    assert e.value.kind == "too_many_faces"
    many = io.BytesIO()
    np.save(many, np.arange(20))
    with pytest.raises(RequestRefused) as e:
        load_labels(many.getvalue(), LIMITS)
    assert e.value.kind == "too_many_parts"


# --------------------------------------------------------------------------- batcher
class _Parts(list):
    pass


def _job(n_parts=2, deadline=60.0) -> ServeJob:
    return ServeJob(parts=_Parts(range(n_parts)), options=None, deadline=time.monotonic() + deadline)


class _Result:
    def __init__(self, n):
        from holopart_infer.pipeline import CompletionStats

        self.stats = CompletionStats(batch_sizes=[n])
        self.timings = {}
        self.parts = []


def test_batcher_collects_concurrent_jobs_into_one_batch(monkeypatch):
    calls = []

    def run(jobs, progress):
        calls.append(len(jobs))
        for j in jobs:
            yield j, _Result(sum(x.num_parts for x in jobs))

    monkeypatch.setattr("holopart_infer.serve.batcher.encode_glb", lambda r: b"glb")
    b = Batcher(run, max_queue=8, max_wait_s=0.5, max_batch_parts=100, max_batch_objects=3)
    b.start()
    jobs = [_job() for _ in range(5)]
    for j in jobs:
        b.submit(j)
    assert b.stop(30)
    assert all(j.state == DONE and j.glb == b"glb" for j in jobs)
    assert calls == [3, 2]
    assert jobs[0].batch == {"objects": 3, "parts": 6, "dit_batch_sizes": [6]}


def test_batcher_queue_bound_deadline_and_failures_keep_the_worker_alive(monkeypatch):
    gate = threading.Event()
    seen = []

    def run(jobs, progress):
        gate.wait(10)
        seen.append(len(jobs))
        if len(seen) == 1:
            raise RuntimeError("boom")  # an unexpected failure in the first batch
        for j in jobs:
            yield j, ValueError("bad object") if j.num_parts == 3 else _Result(2)

    monkeypatch.setattr("holopart_infer.serve.batcher.encode_glb", lambda r: b"glb")
    b = Batcher(run, max_queue=2, max_wait_s=0.0, max_batch_objects=1)
    b.start()
    first = _job()
    b.submit(first)
    time.sleep(0.2)  # the worker holds `first`; the queue is empty again
    late, bad = _job(deadline=0.05), _job(n_parts=3)
    b.submit(late)
    b.submit(bad)
    with pytest.raises(QueueFull) as e:
        b.submit(_job())
    assert e.value.retry_after >= 1
    time.sleep(0.1)
    gate.set()
    good = _job()
    deadline = time.monotonic() + 10
    while True:
        try:
            b.submit(good)
            break
        except QueueFull:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert b.stop(30)
    assert first.state == FAILED and first.error["kind"] == "internal_error"
    assert late.state == FAILED and late.error["status"] == 504
    assert bad.state == FAILED and bad.error == {"status": 422, "kind": "invalid_input", "message": "bad object"}
    assert good.state == DONE


def test_reader_gets_geometry_only(tmp_path):
    """Images (even data: URIs), textures and materials are removed before the mesh reader runs."""
    import json
    import struct

    from holopart_infer.io.parts_io import load_parts
    from holopart_infer.serve.limits import geometry_only

    doc, binary = tetra_doc(2)
    doc["images"] = [{"uri": data_uri(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)}]
    doc["textures"] = [{"source": 0}]
    doc["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
    doc["meshes"][0]["primitives"][0]["material"] = 0
    data = make_glb(doc, binary)
    check_gltf(data, LIMITS)
    clean = geometry_only(data)
    json_len = struct.unpack_from("<I", clean, 12)[0]
    kept = json.loads(clean[20:20 + json_len])
    assert not {"images", "textures", "materials"} & set(kept)
    assert "material" not in kept["meshes"][0]["primitives"][0]
    assert check_gltf(clean, LIMITS).faces == 8
    (tmp_path / "clean.glb").write_bytes(clean)
    (tmp_path / "orig.glb").write_bytes(tetra_glb(2))
    a, b = load_parts(tmp_path / "clean.glb"), load_parts(tmp_path / "orig.glb")
    assert a.names == b.names and all(np.allclose(x.vertices, y.vertices) for x, y in zip(a, b))


def test_service_builds_without_torch():
    """The service side (CLI hook, app, batcher, limits, metrics) never imports torch or export/."""
    pytest.importorskip("starlette", reason="needs the [serve] extra")
    from tests.support import loaded_modules, run_blocked_child

    r = run_blocked_child("""
        from holopart_infer.cli import build_parser
        from holopart_infer.cli.serve import build_service
        service = build_service(build_parser().parse_args(["serve", "--option", "steps=1"]))
        service.asgi()
        service.metrics.render()
        print("OK", service.model.backend_name, service.defaults.steps)
    """)
    assert "OK onnxruntime 1" in r.stdout, r.stdout + r.stderr
    assert loaded_modules(r) == []
