"""`holopart-infer serve` end to end: a real server process, real concurrent HTTP clients.

The servers run the embedded holopart-mini with fast options (2 steps, depth 6).
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.runtime.serve.serve_util import Server, tetra_glb
from tests.support import FAST_SERVE_FLAGS

pytest.importorskip("starlette", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")

pytestmark = pytest.mark.slow

TOKEN = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve"), *FAST_SERVE_FLAGS, "--batch-wait-ms", "1500", "--max-batch-parts", "64",
                 "--max-parts", "12", "--max-body-mb", "0.25", "--body-idle-timeout", "1",
                 "--body-timeout", "3", token=TOKEN)
    yield srv
    code = srv.stop()
    assert code == 0, srv.log()


def parts_of(glb: bytes, tmp_path):
    from holopart_infer.io.parts_io import load_parts

    path = tmp_path / f"{uuid.uuid4().hex}.glb"
    path.write_bytes(glb)
    return load_parts(path)


def test_health_ready_token_and_page(server):
    assert server.get("/healthz", auth=False)[0] == 200
    status, _, body = server.get("/readyz", auth=False)
    assert status == 200 and json.loads(body)["backend"] == "onnxruntime"
    status, headers, body = server.get("/metrics", auth=False)
    assert status == 401 and json.loads(body)["error"]["kind"] == "unauthorized"
    status, _, body = server.post("/v1/complete?demo=mug", auth=False)
    assert status == 401
    status, _, body = server.request("POST", "/v1/complete?demo=mug", b"",
                                     headers={"Authorization": "Bearer wrong"}, auth=False)
    assert status == 401
    status, _, page = server.get("/", auth=False)
    assert status == 200 and b"/static/viewer.js" in page
    assert server.get("/static/viewer.js", auth=False)[0] == 200
    assert b"http://" not in page and b"https://" not in page  # nothing loaded from elsewhere


def test_concurrent_requests_share_batches(server, tmp_path):
    """Three clients at once: one dynamic batch, parts of different objects in the same DiT batches."""
    uploads = [tetra_glb(2), tetra_glb(2), tetra_glb(3)]
    expected = []
    for data in uploads:
        expected.append(len(parts_of(data, tmp_path)))
    before = server.metrics()

    def call(data):
        return server.post("/v1/complete?seed=1", data, headers={"Content-Type": "model/gltf-binary"})

    with ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(call, uploads))
    for (status, headers, body), n_parts in zip(results, expected):
        assert status == 200, body[:500]
        assert headers["Content-Type"] == "model/gltf-binary"
        got = parts_of(body, tmp_path)
        assert len(got) == n_parts
    jobs = [json.loads(server.get(f"/v1/jobs/{h['X-HoloPart-Job']}")[2]) for _, h, _ in results]
    # all three arrived within the 1.5 s window: at least two were completed in one complete_many call
    assert max(j["batch"]["objects"] for j in jobs) >= 2
    # ... and some object's parts were packed with another object's parts into one DiT batch
    assert any(max(j["batch"]["dit_batch_sizes"]) > j["parts"] for j in jobs), jobs
    after = server.metrics()
    assert after["holopart_jobs_completed_total"] - before.get("holopart_jobs_completed_total", 0) == 3
    assert after["holopart_parts_completed_total"] - before.get("holopart_parts_completed_total", 0) == sum(expected)
    assert after["holopart_shared_dit_batches_total"] >= 1
    assert after['holopart_batch_objects_bucket{le="1.0"}'] < after["holopart_batch_objects_count"]
    for name in ("holopart_queue_depth", "holopart_inflight_jobs", 'holopart_job_latency_window_seconds{quantile="0.99"}',
                 "holopart_parts_per_second", "holopart_job_latency_seconds_count"):
        assert name in after


def test_options_preview_and_same_seed_same_result(server, tmp_path):
    status, headers, body = server.post("/v1/complete?seed=3&preview=1", tetra_glb(2))
    assert status == 200 and "X-HoloPart-Preview" in headers
    png = server.get(headers["X-HoloPart-Preview"])
    assert png[0] == 200 and png[2][:8] == b"\x89PNG\r\n\x1a\n"
    again = server.post("/v1/complete?seed=3", tetra_glb(2))
    a, b = parts_of(body, tmp_path), parts_of(again[2], tmp_path)
    for pa, pb in zip(a, b):
        assert pa.name == pb.name and abs(pa.area - pb.area) <= 1e-3 * pa.area


def test_async_job_progress_and_downloads(server):
    status, headers, body = server.post("/v1/jobs?demo=mug")
    assert status == 202
    job = json.loads(body)
    assert headers["Location"] == f"/v1/jobs/{job['id']}" and job["state"] in ("queued", "running")
    inputs = json.loads(server.get(f"/v1/jobs/{job['id']}/meshes.json?which=input")[2])
    assert len(inputs["parts"]) == job["parts"]
    states = set()
    while job["state"] in ("queued", "running"):
        states.add(job["state"])
        job = json.loads(server.get(f"/v1/jobs/{job['id']}?wait=10")[2])
    assert job["state"] == "done" and "queued" in states
    outputs = json.loads(server.get(f"/v1/jobs/{job['id']}/meshes.json?which=output")[2])
    for part in outputs["parts"]:
        v = np.frombuffer(base64.b64decode(part["positions"]), "<f4").reshape(-1, 3)
        f = np.frombuffer(base64.b64decode(part["indices"]), "<u4").reshape(-1, 3)
        assert len(v) and len(f) and f.max() < len(v)
    assert server.get(f"/v1/jobs/{job['id']}/result.glb")[2][:4] == b"glTF"
    assert server.get("/v1/jobs/nope")[0] == 404


def test_mesh_plus_labels_multipart(server, tmp_path):
    from holopart_infer.io.parts_io import load_parts, write_scene

    path = tmp_path / "tetra.glb"
    path.write_bytes(tetra_glb(2))
    parts = load_parts(path)
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts][:-1])
    v = np.concatenate([p.vertices for p in parts])
    f = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    labels = np.concatenate([np.full(len(p.faces), 7 * i, np.int32) for i, p in enumerate(parts)])
    write_scene([(v, f)], ["whole"], tmp_path / "whole.glb")
    npy = io.BytesIO()
    np.save(npy, labels)
    boundary = "holopart-test-boundary"
    body = b""
    for name, filename, data in (("file", "whole.glb", (tmp_path / "whole.glb").read_bytes()),
                                 ("labels", "labels.npy", npy.getvalue())):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"options\"\r\n\r\n"
             '{"seed": 2}\r\n' f"--{boundary}--\r\n").encode()
    status, _, out = server.post("/v1/complete", body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, out[:300]
    assert parts_of(out, tmp_path).names == [f"part_{7 * i}" for i in range(len(parts))]


# --------------------------------------------------------------------------- hostile and bad requests
def _error(resp):
    status, _, body = resp
    return status, json.loads(body)["error"]


def test_limits_answer_413_and_422_naming_the_problem(server, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 1024)
    for uri in ("../../../../../etc/passwd", str(secret), f"file://{secret}"):
        status, err = _error(server.post("/v1/complete", tetra_glb(2, buffer_uri=uri)))
        assert (status, err["kind"]) == (422, "unsafe_uri") and "outside the upload" in err["message"]
    status, err = _error(server.post("/v1/complete", tetra_glb(13)))
    assert (status, err["kind"], err["limit"], err["actual"]) == (422, "too_many_parts", 12, 13)
    from tests.runtime.serve.serve_util import make_glb, tetra_doc

    doc, binary = tetra_doc(2)
    doc["accessors"][0]["count"] = 10**9  # a few hundred bytes declaring a billion vertices
    status, err = _error(server.post("/v1/complete", make_glb(doc, binary)))
    assert (status, err["kind"], err["actual"]) == (422, "too_many_vertices", 10**9)
    doc, binary = tetra_doc(2)
    doc["buffers"][0]["byteLength"] = 2**40
    status, err = _error(server.post("/v1/complete", make_glb(doc, binary)))
    assert (status, err["kind"]) == (422, "invalid_gltf") and "byteLength" in err["message"]
    status, err = _error(server.post("/v1/complete", b"\0" * 300_000))
    assert (status, err["kind"]) == (413, "body_too_large") and err["limit"] == 262144
    status, err = _error(server.post("/v1/complete?steps=1000&demo=mug"))
    assert (status, err["kind"]) == (422, "option_over_limit")
    status, err = _error(server.post("/v1/complete?num_points=99999999&demo=mug"))
    assert (status, err["kind"]) == (422, "unknown_option")
    status, err = _error(server.post("/v1/complete?seed=abc&demo=mug"))
    assert (status, err["kind"]) == (422, "invalid_option")


def test_chunked_body_is_counted_not_trusted(server):
    """No Content-Length: the server counts what arrives and stops at the limit."""
    host, port = server.host_port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    chunks = (b"x" * 50_000 for _ in range(8))  # 400 kB, limit 256 kiB
    conn.request("POST", "/v1/complete", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["kind"] == "body_too_large"
    conn.close()


def test_slow_client_times_out(server):
    """Slowloris: a body trickled a byte at a time is cut off by the total body timeout (3 s here)."""
    response, _ = server.trickle_body(limit_s=20)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b'"body_timeout"' in response


def test_bad_input_never_kills_the_worker(server, tmp_path):
    from tests.runtime.serve.serve_util import make_glb

    flat = make_glb({"asset": {"version": "2.0"}})  # a valid glTF with no meshes
    for bad in (b"garbage" * 10, flat, tetra_glb(1), b"glTF" + b"\xff" * 40):
        status, err = _error(server.post("/v1/complete", bad))
        assert status == 422, err
        assert err["message"]
    status, _, body = server.post("/v1/complete", tetra_glb(2))
    assert status == 200 and len(parts_of(body, tmp_path)) == 2
    assert server.get("/healthz")[0] == 200 and server.get("/readyz")[0] == 200
    m = server.metrics()
    assert m['holopart_errors_total{kind="invalid_gltf"}'] >= 1


def test_deadline(server):
    # the batch waits 1.5 s for company: a 0.2 s deadline passes in the queue
    status, err = _error(server.post("/v1/complete?demo=mug&deadline=0.2"))
    assert (status, err["kind"]) == (504, "deadline_exceeded")


# --------------------------------------------------------------------------- backpressure and shutdown
def test_queue_full_503_and_graceful_shutdown(tmp_path):
    srv = Server(tmp_path, *FAST_SERVE_FLAGS, "--option", "steps=6", "--max-queue", "1", "--max-batch-objects", "1",
                 "--batch-wait-ms", "0")
    try:
        accepted, refused = [], []
        for _ in range(8):
            status, headers, body = srv.post("/v1/jobs", tetra_glb(2))
            (accepted if status == 202 else refused).append((status, headers, json.loads(body)))
        assert refused, "8 quick submissions into a queue of 1 behind a running job must overflow"
        for status, headers, body in refused:
            assert status == 503 and int(headers["Retry-After"]) >= 1 and body["error"]["kind"] == "queue_full"
        assert 1 <= len(accepted) <= 2
        # a synchronous request in flight when SIGTERM arrives still gets its result
        result = {}

        def call():
            result["r"] = srv.post("/v1/complete", tetra_glb(2), timeout=300)

        for _, _, job in accepted:  # the accepted jobs all complete
            while job["state"] in ("queued", "running"):
                job = json.loads(srv.get(f"/v1/jobs/{job['id']}?wait=10")[2])
            assert job["state"] == "done", job
        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 60
        while srv.metrics()["holopart_inflight_jobs"] < 1:  # the mug is being completed
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.05)
        code = srv.stop(timeout=300)
        t.join(300)
    finally:
        srv.stop()
    assert code == 0, srv.log()
    status, headers, body = result["r"]
    assert status == 200 and body[:4] == b"glTF", body[:300]


def test_up_axis_per_request(server, tmp_path):
    """``up`` overrides glTF's +Y per request; results come back in the upload's own frame."""
    status, err = _error(server.post("/v1/complete?up=north&demo=mug"))
    assert (status, err["kind"], err["option"]) == (422, "invalid_option", "up") and "'north'" in err["message"]
    glb = tetra_glb(2)
    status, hdrs, body = server.post("/v1/complete?up=%2Bz&seed=1", glb)  # "+z"; a bare "+" would arrive as " "
    assert status == 200, body[:300]
    inp, out = parts_of(glb, tmp_path), parts_of(body, tmp_path)
    assert out.names == inp.names
    for a, b in zip(inp, out):  # the tetrahedra sit 1.5 apart along x: each result on its own input
        ca, cb = (np.ptp(p.vertices, axis=0) / 2 + p.vertices.min(axis=0) for p in (a, b))
        assert np.linalg.norm(ca - cb) < 0.5, (a.name, ca, cb)
    # the page's viewer is Y-up: it gets the upload turned +z -> +y (exactly), the glb keeps its frame
    from holopart_infer.io.frames import up_rotation

    job = hdrs["X-HoloPart-Job"]
    shown = json.loads(server.get(f"/v1/jobs/{job}/meshes.json?which=input")[2])["parts"]
    turn = up_rotation("+z", "+y")
    for a, m in zip(inp, shown):
        pos = np.frombuffer(base64.b64decode(m["positions"]), "<f4").reshape(-1, 3)
        np.testing.assert_array_equal(pos, turn.apply(a.vertices.astype(np.float32)))
