"""On-disk cache of built inference engines (TensorRT plans), safe across processes.

An engine is only valid for the exact ONNX content, build settings, GPU and
library version that produced it, so the cache key is a SHA-256 over a canonical
JSON of all of those (``key_fields``, chosen by the caller). Each entry is two
files in the cache folder::

    <graph>-<key>.engine   the serialized engine
    <graph>-<key>.json     sidecar: key, key fields, engine size + SHA-256, creation time

A lookup trusts neither file on its own: the sidecar must carry the same key and
key fields, and the engine file must have the size and SHA-256 the sidecar
records. Anything else (missing sidecar, truncated or corrupt engine, key
collision, older schema) is a miss and the engine is rebuilt.

Writes go through :func:`holopart_infer.fsafe.atomic_write` (temp file in the
same folder, fsync, rename into place), engine first, sidecar last, so a reader never sees a half-written engine paired with a valid sidecar.
Builders of the same key serialize on a per-key lock file (``fcntl.flock`` where
available); the second one finds the first one's engine and does not rebuild.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from holopart_infer.errors import EngineError, InputError, InputFileNotFound
from holopart_infer.fsafe import TMP_MARK, atomic_write, file_lock, sha256_bytes, sha256_file, user_cache_dir

log = logging.getLogger("holopart_infer")

#: Bump when the sidecar layout or the meaning of a key field changes: every
#: engine cached under an older schema becomes a miss.
CACHE_SCHEMA_VERSION = 1

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/holopart_infer/engines``, else ``~/.cache/holopart_infer/engines``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec says.
    """
    return user_cache_dir("engines")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, tuples as lists.

    Raises:
        InputError: ``obj`` holds something JSON cannot represent exactly
            (sets, bytes, NaN, objects).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"engine cache key fields must be plain JSON values "
                         f"(str, int, float, bool, None, lists, dicts): {e}") from e


def cache_key(key_fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``key_fields`` plus the cache schema version."""
    return hashlib.sha256(canonical_json({"schema": CACHE_SCHEMA_VERSION,
                                          "fields": dict(key_fields)}).encode()).hexdigest()


def onnx_files(onnx_path: str | os.PathLike) -> list[Path]:
    """The ONNX file and its external-data files, in a fixed order.

    External weights are the files beside the graph whose name starts with the
    graph's file name plus a dot (``dit.onnx.data``, ``dit.onnx.data.1`` ...), the
    layout the model directory contract uses.

    Raises:
        InputFileNotFound: the ONNX file does not exist.
    """
    p = Path(onnx_path)
    if not p.is_file():
        raise InputFileNotFound(f"ONNX file {p} does not exist")
    extra = sorted(q for q in p.parent.iterdir()
                   if q.is_file() and q.name.startswith(p.name + "."))
    return [p, *extra]


def onnx_digest(onnx_path: str | os.PathLike) -> str:
    """SHA-256 over the ONNX graph and its external-data files (names and contents).

    Renaming or editing any weight file changes the digest; the graph's folder
    does not (a model directory may be moved without invalidating its engines).
    """
    h = hashlib.sha256()
    for f in onnx_files(onnx_path):
        h.update(f.name.encode() + b"\0")
        h.update(sha256_file(f).encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class CachedEngine:
    """An engine read from (or just written to) the cache."""
    data: bytes
    path: Path
    key: str
    hit: bool  # False when build_fn ran in this call


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:64] or "engine"


class EngineCache:
    """Engines keyed by everything that invalidates them, written atomically.

    Args:
        directory: cache folder; default :func:`default_cache_dir`.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    # -- paths -------------------------------------------------------------
    def _stem(self, key_fields: Mapping[str, Any], key: str) -> str:
        return f"{_safe_name(str(key_fields.get('graph', 'engine')))}-{key}"

    def paths(self, key_fields: Mapping[str, Any]) -> tuple[Path, Path]:
        """(engine path, sidecar path) for ``key_fields``."""
        key = cache_key(key_fields)
        stem = self._stem(key_fields, key)
        return self.directory / (stem + ENGINE_SUFFIX), self.directory / (stem + SIDECAR_SUFFIX)

    def _lock_path(self, key_fields: Mapping[str, Any]) -> Path:
        return self.directory / "locks" / (self._stem(key_fields, cache_key(key_fields)) + ".lock")

    # -- lookup ------------------------------------------------------------
    def _validate(self, key_fields: Mapping[str, Any]) -> tuple[bytes | None, str]:
        """(engine bytes, "") when the entry is valid, else (None, why not); why is ""
        for a plain miss (neither file there)."""
        key = cache_key(key_fields)
        engine_path, sidecar_path = self.paths(key_fields)
        if not sidecar_path.is_file():
            return None, "" if not engine_path.exists() else f"{sidecar_path.name} missing"
        try:
            side = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return None, f"sidecar {sidecar_path.name} unreadable ({e})"
        if not isinstance(side, dict):
            return None, f"sidecar {sidecar_path.name} is not a JSON object"
        if side.get("schema") != CACHE_SCHEMA_VERSION:
            return None, f"sidecar schema {side.get('schema')!r} != {CACHE_SCHEMA_VERSION}"
        if side.get("key") != key:
            return None, "sidecar key differs from the requested key"
        # Compare through canonical JSON so tuples vs lists do not matter.
        if canonical_json(side.get("key_fields")) != canonical_json(dict(key_fields)):
            return None, "sidecar key fields differ from the requested ones"
        try:
            data = engine_path.read_bytes()
        except FileNotFoundError:
            return None, f"{engine_path.name} missing"
        if len(data) != side.get("engine_size"):
            return None, (f"{engine_path.name} has {len(data)} bytes, sidecar records "
                          f"{side.get('engine_size')} (truncated or replaced)")
        if sha256_bytes(data) != side.get("engine_sha256"):
            return None, f"{engine_path.name} SHA-256 differs from the sidecar (corrupt)"
        return data, ""

    def lookup(self, key_fields: Mapping[str, Any]) -> bytes | None:
        """The cached engine for ``key_fields``, or None when absent or invalid."""
        data, why = self._validate(key_fields)
        if data is None and why:
            log.warning("engine cache: ignoring entry for %s: %s; it will be rebuilt",
                        key_fields.get("graph", "engine"), why)
        return data

    # -- store -------------------------------------------------------------
    def store(self, key_fields: Mapping[str, Any], data: bytes | bytearray | memoryview) -> Path:
        """Write ``data`` (engine first, then sidecar, both atomically); returns the engine path."""
        data = bytes(data)
        if not data:
            raise EngineError(f"refusing to cache an empty engine for {key_fields.get('graph', 'engine')}")
        key = cache_key(key_fields)
        engine_path, sidecar_path = self.paths(key_fields)
        atomic_write(engine_path, data)
        now = time.time()
        sidecar = {
            "schema": CACHE_SCHEMA_VERSION,
            "key": key,
            "key_fields": json.loads(canonical_json(dict(key_fields))),
            "engine_file": engine_path.name,
            "engine_size": len(data),
            "engine_sha256": sha256_bytes(data),
            "created_unix": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        atomic_write(sidecar_path, (json.dumps(sidecar, indent=1, sort_keys=True) + "\n").encode())
        return engine_path

    def get_or_build(self, key_fields: Mapping[str, Any],
                     build_fn: Callable[[], bytes | bytearray | memoryview]) -> CachedEngine:
        """Return the cached engine for ``key_fields``, building and caching it on a miss.

        Args:
            key_fields: JSON-able mapping of everything that invalidates the engine
                (its ``"graph"`` entry, if any, names the files).
            build_fn: called with no arguments on a miss; returns the serialized engine.

        Returns:
            CachedEngine with the bytes, the engine path, the key and whether it was a hit.

        Raises:
            Whatever ``build_fn`` raises (nothing is written then), EngineError
            when it returns no data, OSError when the folder is not writable.
        """
        key = cache_key(key_fields)
        engine_path, _ = self.paths(key_fields)
        data = self.lookup(key_fields)
        if data is not None:
            log.info("engine cache hit: %s", engine_path)
            return CachedEngine(data, engine_path, key, True)
        with file_lock(self._lock_path(key_fields)):
            # Another process may have built it while we waited for the lock.
            data, _ = self._validate(key_fields)
            if data is not None:
                log.info("engine cache hit after waiting for another builder: %s", engine_path)
                return CachedEngine(data, engine_path, key, True)
            log.info("engine cache miss: building %s", engine_path.name)
            t0 = time.perf_counter()
            built = build_fn()
            if built is None or len(built) == 0:
                raise EngineError(f"building engine {key_fields.get('graph', 'engine')} returned no data")
            self.store(key_fields, built)
            log.info("built and cached %s in %.1f s", engine_path.name, time.perf_counter() - t0)
            return CachedEngine(bytes(built), engine_path, key, False)

    def clear(self) -> int:
        """Remove every cached engine and sidecar (not the timing caches); returns the count."""
        n = 0
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.is_file() and (p.suffix in (ENGINE_SUFFIX, SIDECAR_SUFFIX) or TMP_MARK in p.name):
                    p.unlink()
                    n += 1
        return n
