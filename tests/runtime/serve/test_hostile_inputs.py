"""Hostile glTF and labels are 422 JSON naming the problem, never a server error
(unit level; the HTTP answers and the server log are checked in test_service_robustness.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from holopart_infer.serve.limits import Limits, RequestRefused, check_gltf, load_labels
from tests.runtime.serve.serve_util import make_glb, tetra_doc

LIMITS = Limits(max_parts=8, max_faces=1000, max_vertices=2000)


def hostile_glb(edit) -> bytes:
    doc, binary = tetra_doc(2)
    edit(doc)
    return make_glb(doc, binary)


HOSTILE_GLTF = {
    "children_int": lambda d: d["nodes"][0].update(children=1),
    "children_null": lambda d: d["nodes"][0].update(children=None),
    "children_dict": lambda d: d["nodes"][0].update(children={"0": 1}),
    "component_type_list": lambda d: d["accessors"][0].update(componentType=[5126]),
    "type_dict": lambda d: d["accessors"][0].update(type={"VEC3": 1}),
    "scene_nodes_str": lambda d: d.update(nodes=[{"children": "01"}]),
    "extensions_required_int": lambda d: d.update(extensionsRequired=5),
    "asset_list": lambda d: d.update(asset=[2.0]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_GLTF))
def test_hostile_gltf_is_invalid_gltf(case):
    with pytest.raises(RequestRefused) as e:
        check_gltf(hostile_glb(HOSTILE_GLTF[case]), LIMITS, "upload.glb")
    assert e.value.status == 422 and e.value.kind in ("invalid_gltf", "unsupported_gltf")
    assert "upload.glb" in str(e.value)
    if case.startswith("children"):
        assert "children" in str(e.value)


def npy_header(shape, descr="<i8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(2**64,), (2**63, 2), (2**62, 4), (2**32, 2**32)])
def test_labels_header_with_an_enormous_shape(shape):
    for tail in (b"", b"\0" * 64):
        with pytest.raises(RequestRefused) as e:
            load_labels(npy_header(shape) + tail, LIMITS, "labels.npy")
        assert e.value.status == 422 and e.value.kind in ("too_many_faces", "invalid_labels"), e.value
        assert "labels.npy" in str(e.value)


def test_labels_header_with_a_negative_or_odd_shape():
    for header in (npy_header((-1,)), npy_header((-2**63,))):
        with pytest.raises(RequestRefused) as e:
            load_labels(header, LIMITS, "labels.npy")
        assert e.value.status == 422


# --------------------------------------------------------------------------- deadlines
def test_a_batch_whose_every_deadline_passed_stops_between_stages(monkeypatch):
    """The worker stops a batch at its next progress report once nobody waits for any of its
    jobs (before: a 2 s deadline still ran 9.4 s to completion); a batch with a job still in
    time runs on, and only the late job gets 504."""
    import time

    from holopart_infer.pipeline import CompletionStats
    from holopart_infer.serve.batcher import DONE, FAILED, Batcher, ServeJob

    class _Result:
        stats = CompletionStats(batch_sizes=[2])
        timings = {}
        parts = []

    stages = []

    def run(jobs, progress):
        for step in range(200):  # 200 stages of 20 ms: 4 s when run to the end
            progress("denoise", step, 200)
            stages.append(step)
            time.sleep(0.02)
        for j in jobs:
            yield j, _Result()

    monkeypatch.setattr("holopart_infer.serve.batcher.encode_glb", lambda r: b"glb")
    b = Batcher(run, max_queue=4, max_wait_s=0.0, max_batch_objects=2)
    b.start()
    late = ServeJob(parts=[0, 1], options=None, deadline=time.monotonic() + 0.3)
    b.submit(late)
    assert b.stop(30)
    assert late.state == FAILED and late.error["status"] == 504 and "stopped" in late.error["message"]
    assert len(stages) < 100, f"ran {len(stages)} of 200 stages after the deadline passed"

    stages.clear()
    b = Batcher(run, max_queue=4, max_wait_s=0.2, max_batch_objects=2)
    b.start()
    late = ServeJob(parts=[0, 1], options=None, deadline=time.monotonic() + 0.5)
    in_time = ServeJob(parts=[0, 1], options=None, deadline=time.monotonic() + 600)
    b.submit(late)
    b.submit(in_time)
    assert b.stop(60)
    assert len(stages) == 200 and in_time.state == DONE
    assert late.state == FAILED and late.error["status"] == 504


def test_a_queued_job_past_its_deadline_leaves_the_queue(monkeypatch):
    """A job nobody waits for any more is failed (504) and gives its place in the queue up at
    once, not when the worker gets to it."""
    import threading
    import time

    from holopart_infer.serve.batcher import FAILED, Batcher, QueueFull, ServeJob

    gate = threading.Event()

    def run(jobs, progress):
        gate.wait(30)
        for j in jobs:
            yield j, ValueError("not run in this test")

    b = Batcher(run, max_queue=1, max_wait_s=0.0, max_batch_objects=1)
    b.start()
    try:
        b.submit(ServeJob(parts=[0], options=None, deadline=time.monotonic() + 60))  # holds the worker
        time.sleep(0.2)
        late = ServeJob(parts=[0], options=None, deadline=time.monotonic() + 0.1)
        b.submit(late)
        with pytest.raises(QueueFull):
            b.submit(ServeJob(parts=[0], options=None, deadline=time.monotonic() + 60))
        time.sleep(0.2)
        b.submit(ServeJob(parts=[0], options=None, deadline=time.monotonic() + 60))  # its place is free
        assert late.state == FAILED and late.error["status"] == 504 and "queue" in late.error["message"]
    finally:
        gate.set()
        assert b.stop(30)
