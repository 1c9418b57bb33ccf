"""Engine cache: keys, hits/misses, invalidation, corruption, atomicity (no TensorRT needed)."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from holopart_infer.engines import cache as cache_mod
from holopart_infer.engines.cache import (
    CACHE_SCHEMA_VERSION, EngineCache, cache_key, default_cache_dir, onnx_digest,
)
from holopart_infer import fsafe
from holopart_infer.errors import EngineError, InputError, InputFileNotFound
from holopart_infer.fsafe import atomic_write

FIELDS = {
    "graph": "dit",
    "onnx_sha256": "ab" * 32,
    "precision": "fp16",
    "builder": {"strongly_typed": True, "optimization_level": 3, "workspace": None},
    "profiles": {"latents": {"min": [1, 2048, 64], "opt": [8, 2048, 64], "max": [16, 2048, 64]}},
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
    "tensorrt": "10.9.0.34",
}


class Builder:
    """Fake build_fn: counts calls, returns distinct bytes per call."""

    def __init__(self, payload: bytes = b"PLAN"):
        self.calls = 0
        self.payload = payload

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload + bytes([self.calls]) * 1000


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file()) if d.exists() else []


def test_miss_then_hit(tmp_path):
    c = EngineCache(tmp_path)
    b = Builder()
    first = c.get_or_build(FIELDS, b)
    assert not first.hit and b.calls == 1
    second = c.get_or_build(FIELDS, b)
    assert second.hit and b.calls == 1
    assert second.data == first.data and second.path == first.path
    assert first.path.name.startswith("dit-") and first.path.suffix == ".engine"


def test_sidecar_contents(tmp_path):
    c = EngineCache(tmp_path)
    got = c.get_or_build(FIELDS, Builder())
    side = json.loads(got.path.with_suffix(".json").read_text())
    assert side["schema"] == CACHE_SCHEMA_VERSION
    assert side["key"] == got.key == cache_key(FIELDS)
    assert side["key_fields"] == json.loads(json.dumps(FIELDS))
    assert side["engine_size"] == len(got.data)
    assert side["engine_file"] == got.path.name
    assert len(side["engine_sha256"]) == 64
    assert side["created"].endswith("Z") and side["created_unix"] > 0


def _change(fields: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(fields))
    d = out
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return out


@pytest.mark.parametrize("path,value", [
    (("graph",), "guided_step"),
    (("onnx_sha256",), "cd" * 32),
    (("precision",), "bf16"),
    (("builder", "strongly_typed"), False),
    (("builder", "optimization_level"), 5),
    (("builder", "workspace"), 1 << 30),
    (("profiles", "latents", "max"), [32, 2048, 64]),
    (("gpu", "name"), "NVIDIA H200"),
    (("gpu", "compute_capability"), "8.9"),
    (("tensorrt",), "10.10.0.31"),
])
def test_each_key_field_change_is_a_miss(tmp_path, path, value):
    c = EngineCache(tmp_path)
    b = Builder()
    c.get_or_build(FIELDS, b)
    changed = _change(FIELDS, path, value)
    assert cache_key(changed) != cache_key(FIELDS)
    got = c.get_or_build(changed, b)
    assert not got.hit and b.calls == 2
    # the original entry is untouched
    assert c.get_or_build(FIELDS, b).hit and b.calls == 2


def test_schema_version_is_part_of_the_key(monkeypatch):
    k1 = cache_key(FIELDS)
    monkeypatch.setattr(cache_mod, "CACHE_SCHEMA_VERSION", CACHE_SCHEMA_VERSION + 1)
    assert cache_key(FIELDS) != k1


def test_key_is_canonical():
    reordered = dict(reversed(list(FIELDS.items())))
    assert cache_key(reordered) == cache_key(FIELDS)
    as_tuples = _change(FIELDS, ("profiles", "latents", "min"), (1, 2048, 64))
    assert cache_key(as_tuples) == cache_key(FIELDS)


def test_key_fields_must_be_json(tmp_path):
    with pytest.raises(InputError, match="plain JSON"):
        cache_key({"graph": "dit", "bad": {1, 2}})
    with pytest.raises(InputError, match="plain JSON"):
        cache_key({"graph": "dit", "nan": float("nan")})


def test_truncated_engine_is_rebuilt_never_loaded(tmp_path, caplog):
    c = EngineCache(tmp_path)
    b = Builder()
    got = c.get_or_build(FIELDS, b)
    got.path.write_bytes(got.data[: len(got.data) // 2])
    assert c.lookup(FIELDS) is None
    assert "truncated" in caplog.text
    again = c.get_or_build(FIELDS, b)
    assert not again.hit and b.calls == 2
    assert again.path.read_bytes() == again.data and len(again.data) == len(got.data)


def test_corrupt_engine_same_size_is_rebuilt(tmp_path, caplog):
    c = EngineCache(tmp_path)
    b = Builder()
    got = c.get_or_build(FIELDS, b)
    bad = bytearray(got.data)
    bad[10] ^= 0xFF
    got.path.write_bytes(bytes(bad))
    again = c.get_or_build(FIELDS, b)
    assert not again.hit and b.calls == 2
    assert "corrupt" in caplog.text


@pytest.mark.parametrize("mutate", [
    lambda s: {**s, "key": "0" * 64},
    lambda s: {**s, "key_fields": {**s["key_fields"], "precision": "fp32"}},
    lambda s: {**s, "schema": CACHE_SCHEMA_VERSION + 1},
    lambda s: {**s, "engine_size": s["engine_size"] + 1},
    lambda s: {**s, "engine_sha256": "0" * 64},
    lambda s: [s],
])
def test_sidecar_mismatch_is_rebuilt(tmp_path, mutate):
    c = EngineCache(tmp_path)
    b = Builder()
    got = c.get_or_build(FIELDS, b)
    sidecar = got.path.with_suffix(".json")
    sidecar.write_text(json.dumps(mutate(json.loads(sidecar.read_text()))))
    assert not c.get_or_build(FIELDS, b).hit and b.calls == 2
    assert c.get_or_build(FIELDS, b).hit and b.calls == 2


def test_missing_or_garbage_sidecar_is_rebuilt(tmp_path):
    c = EngineCache(tmp_path)
    b = Builder()
    got = c.get_or_build(FIELDS, b)
    sidecar = got.path.with_suffix(".json")
    sidecar.unlink()
    assert not c.get_or_build(FIELDS, b).hit and b.calls == 2
    sidecar.write_text("{not json")
    assert not c.get_or_build(FIELDS, b).hit and b.calls == 3


def test_engine_without_sidecar_is_not_trusted(tmp_path):
    c = EngineCache(tmp_path)
    engine_path, _ = c.paths(FIELDS)
    tmp_path.mkdir(exist_ok=True)
    engine_path.write_bytes(b"looks like an engine")
    b = Builder()
    got = c.get_or_build(FIELDS, b)
    assert not got.hit and b.calls == 1 and got.data != b"looks like an engine"


def test_build_failure_leaves_no_partial_files(tmp_path):
    c = EngineCache(tmp_path)

    def boom():
        raise EngineError("parser failed")

    with pytest.raises(EngineError, match="parser failed"):
        c.get_or_build(FIELDS, boom)
    assert not any(n.endswith((".engine", ".json")) or n.startswith(".tmp-") for n in files(tmp_path))
    # and a later build works
    assert not c.get_or_build(FIELDS, Builder()).hit


def test_empty_build_result_is_an_error(tmp_path):
    c = EngineCache(tmp_path)
    with pytest.raises(EngineError, match="returned no data"):
        c.get_or_build(FIELDS, lambda: b"")
    assert files(tmp_path) == []


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.engine"
    atomic_write(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fsafe.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new content")
    assert target.read_bytes() == b"old"
    assert files(tmp_path) == ["x.engine"]


def test_default_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "holopart_infer" / "engines"
    assert EngineCache().directory == default_cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "holopart_infer" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "holopart_infer" / "engines"


def test_explicit_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert EngineCache(tmp_path / "mine").directory == tmp_path / "mine"


def test_clear(tmp_path):
    c = EngineCache(tmp_path)
    c.get_or_build(FIELDS, Builder())
    c.get_or_build(_change(FIELDS, ("graph",), "vae_kv"), Builder())
    assert c.clear() == 4
    assert c.lookup(FIELDS) is None


def test_onnx_digest_covers_external_data(tmp_path):
    g = tmp_path / "dit.onnx"
    g.write_bytes(b"graph")
    d0 = onnx_digest(g)
    data = tmp_path / "dit.onnx.data"
    data.write_bytes(b"weights")
    d1 = onnx_digest(g)
    assert d1 != d0
    data.write_bytes(b"weightz")
    assert onnx_digest(g) != d1
    (tmp_path / "other.onnx.data").write_bytes(b"unrelated")
    data.write_bytes(b"weights")
    assert onnx_digest(g) == d1
    # moving the model dir keeps the digest
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("dit.onnx", "dit.onnx.data"):
        os.replace(tmp_path / f, moved / f)
    assert onnx_digest(moved / "dit.onnx") == d1


def test_onnx_digest_missing_file(tmp_path):
    with pytest.raises(InputFileNotFound, match="nope.onnx"):
        onnx_digest(tmp_path / "nope.onnx")


def _race_worker(directory: str, counter: str, result_q) -> None:
    import time

    c = EngineCache(directory)

    def slow_build():
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.3)
        return b"ENGINE" * 1000

    got = c.get_or_build(FIELDS, slow_build)
    result_q.put((got.hit, len(got.data)))


@pytest.mark.skipif(os.name != "posix", reason="per-key lock uses fcntl (POSIX)")
def test_concurrent_builders_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    counter = tmp_path / "builds.txt"
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "c"), str(counter), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    results = [q.get(timeout=5) for _ in procs]
    assert counter.read_text() == "x"  # built exactly once
    assert sorted(h for h, _ in results) == [False, True, True]
    assert {n for _, n in results} == {6000}
