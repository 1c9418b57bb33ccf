"""What the service accepts: bounds on every request, and checks of untrusted uploads.

Uploads are untrusted. Before any mesh reader sees a file, :func:`check_gltf`
parses it with the project's one glTF reader (:mod:`holopart_infer.io.gltf_json`,
strictly: :func:`~holopart_infer.io.gltf_json.read_container`), summarises what it
declares (:func:`~holopart_infer.io.gltf_json.summarise`), compares that with the
:class:`Limits`, and checks the declared sizes against the bytes sent. It refuses:

* any URI that is not a ``data:`` URI (buffers and images): the server never
  reads a file or URL named by an upload; only self-contained ``.glb`` files
  and ``.gltf`` files with embedded ``data:`` buffers are accepted;
* declared sizes that the upload does not hold (glb length, chunk lengths,
  buffer byteLength, bufferView ranges, accessor ranges), so a small upload
  cannot make a reader allocate or read more than it sent;
* counts beyond the limits (mesh nodes -> parts, triangles, vertices, nodes),
  counted per mesh *instance* so one mesh referenced by many nodes counts many
  times; sparse accessors and required extensions (Draco and the like: data
  that expands when decoded);
* scene graphs with cycles, nodes with two parents or a hierarchy deeper than
  :data:`holopart_infer.io.gltf_json.MAX_NODE_DEPTH`.

The reader then gets :func:`geometry_only` of the upload: images, textures,
materials and animations removed, so no embedded image is ever decoded.
Label arrays (``.npy``) are read with ``allow_pickle=False`` after their header
is checked against the bytes present. Nothing here imports the web stack.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import threading
from dataclasses import dataclass

import numpy as np

from holopart_infer.io import gltf_json
from holopart_infer.errors import InputError
from holopart_infer.io.gltf_json import GltfSummary  # noqa: F401  (check_gltf returns it)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request. The CLI flags of ``holopart-infer serve`` set them.

    Attributes:
        max_body_bytes: request body, counted as it streams in (413 beyond).
        max_parts: parts per object (422 beyond).
        max_faces: triangles per object, over all parts (422 beyond).
        max_vertices: vertices per object (422 beyond).
        max_nodes: glTF nodes (422 beyond).
        body_idle_s: longest wait for the next piece of the body (408 beyond).
        body_total_s: longest time to receive a whole body (408 beyond).
        deadline_s: longest time from a request's arrival to its result (504
            beyond); a request may ask for less with ``deadline``.
        max_steps: largest ``steps`` a request may ask for.
        max_depth: largest ``depth`` a request may ask for.
        max_inflight_bytes: uploads held at once, over all requests: a body's
            bytes count from its first byte (its Content-Length, when given,
            up front) until its job has finished; beyond it, 503 ``busy`` with
            Retry-After. Bounds the memory uploads and their parsed parts take.
    """

    max_body_bytes: int = 32 << 20
    max_parts: int = 32
    max_faces: int = 400_000
    max_vertices: int = 800_000
    max_nodes: int = 1024
    body_idle_s: float = 10.0
    body_total_s: float = 60.0
    deadline_s: float = 300.0
    max_steps: int = 100
    max_depth: int = 9
    max_inflight_bytes: int = 256 << 20


class ByteBudget:
    """The service-wide budget of upload bytes in flight (thread-safe: the inference
    thread gives back what a finished job held)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would pass the limit."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


class Hold:
    """What one request holds of a :class:`ByteBudget`; :meth:`release` gives it all back once."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.bytes = 0

    def grow_to(self, n: int) -> bool:
        if n <= self.bytes:
            return True
        if not self.budget.take(n - self.bytes):
            return False
        self.bytes = n
        return True

    def release(self) -> None:
        with self.budget._lock:  # the event loop and the inference thread may both call it
            n, self.bytes = self.bytes, 0
            self.budget.used = max(0, self.budget.used - n)


class RequestRefused(InputError):
    """A request the service answers with an HTTP error: ``status``, a machine ``kind``
    (``body_too_large``, ``too_many_parts``, ``unsafe_uri``, ...) and a message
    naming the problem, the limit and the actual value."""

    def __init__(self, status: int, kind: str, message: str, **details):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.details = details

    def as_json(self) -> dict:
        return {"error": {"kind": self.kind, "message": str(self), **self.details}}


def _bad(message: str) -> RequestRefused:
    return RequestRefused(422, "invalid_gltf", message)


def _list(doc: dict, key: str, what: str) -> list:
    val = doc.get(key, [])
    if not isinstance(val, list) or not all(isinstance(x, dict) for x in val):
        raise _bad(f"{what}: '{key}' must be a list of objects")
    return val


def _int(obj: dict, key: str, what: str, default: int | None = None, lo: int = 0) -> int:
    val = obj.get(key, default)
    if isinstance(val, bool) or not isinstance(val, int) or val < lo:
        raise _bad(f"{what}: '{key}' must be an integer >= {lo}, got {val!r}")
    return val


def _data_uri_length(uri: str, what: str) -> int:
    """Decoded length of a base64 ``data:`` URI (decoding it: it is inside the upload anyway)."""
    head, sep, payload = uri.partition(",")
    if not sep or ";base64" not in head:
        raise RequestRefused(422, "unsafe_uri", f"{what}: data: URI without base64 payload refused")
    try:
        return len(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{what}: data: URI is not valid base64 ({e})") from None


def _check_uri(uri, what: str) -> int:
    if not isinstance(uri, str):
        raise _bad(f"{what}: 'uri' must be a string")
    if not uri.startswith("data:"):
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        raise RequestRefused(
            422, "unsafe_uri",
            f"{what}: external URI {shown!r} refused; the service reads nothing outside the upload. "
            "Send a self-contained .glb (or a .gltf with data: URIs)", uri=shown)
    return _data_uri_length(uri, what)


def check_gltf(data: bytes, limits: Limits, what: str = "upload") -> GltfSummary:
    """Check an uploaded ``.glb`` (or ``.gltf`` JSON) before any reader parses it.

    Args:
        data: the upload (``bytes``, or an ``mmap`` of the spooled upload).

    Returns:
        :class:`GltfSummary` of what the file declares.

    Raises:
        RequestRefused: 422 with kind ``invalid_gltf``, ``unsafe_uri``,
            ``unsupported_gltf``, ``too_many_parts``, ``too_many_faces``,
            ``too_many_vertices`` or ``too_many_nodes``; the message names the
            element, the limit and the declared value. A value of the wrong
            JSON type anywhere is ``invalid_gltf`` too, never a server error.
    """
    try:
        return _check_gltf(data, limits, what)
    except RequestRefused:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, OverflowError, RecursionError) as e:
        raise _bad(f"{what}: the glTF JSON does not have the structure glTF 2 requires "
                   f"({type(e).__name__}: {e})") from None


def _check_gltf(data, limits: Limits, what: str) -> GltfSummary:
    try:
        # parse: the container (strictly: sizes against the bytes present) and the JSON
        container = gltf_json.read_container(data, what, strict=True)
        doc = container.doc
        _check_supported(doc, what)
        # summarise: what the file declares
        summary = gltf_json.summarise(doc, what)
    except gltf_json.GltfError as e:
        raise _bad(str(e)) from None
    # compare: with the limits, before anything the declarations size is looked at
    compare(summary, limits, what)
    _check_declared_sizes(doc, container.bin_length if container.bin_offset is not None else 0,
                          container.is_glb, what)
    try:
        gltf_json.check_node_tree(doc.get("nodes", []), what, strict=True)
    except gltf_json.GltfError as e:
        raise _bad(str(e)) from None
    return summary


def _check_supported(doc: dict, what: str) -> None:
    """glTF 2, and nothing that expands when decoded: no required extensions, no sparse accessors."""
    asset = doc.get("asset")
    if not isinstance(asset, dict) or not str(asset.get("version", "")).startswith("2."):
        raise _bad(f"{what}: asset.version must be 2.x (glTF 2)")
    required = doc.get("extensionsRequired", [])
    if required:
        raise RequestRefused(422, "unsupported_gltf",
                             f"{what}: required extensions {required!r} are not accepted (compressed or "
                             "extended data); export plain glTF 2 triangles")
    for i, a in enumerate(_list(doc, "accessors", what)):
        if "sparse" in a:
            raise RequestRefused(422, "unsupported_gltf", f"{what}: accessors[{i}]: sparse accessors are not accepted")


def compare(summary: GltfSummary, limits: Limits, what: str) -> None:
    """Raise 422 ``too_many_nodes`` / ``too_many_vertices`` (one accessor's elements) /
    ``too_many_parts`` / ``too_many_faces`` / ``too_many_vertices`` when ``summary``
    passes ``limits``."""
    if summary.nodes > limits.max_nodes:
        raise RequestRefused(422, "too_many_nodes", f"{what}: {summary.nodes} nodes; the limit is {limits.max_nodes}",
                             limit=limits.max_nodes, actual=summary.nodes)
    most = max(3 * limits.max_faces, limits.max_vertices)
    if summary.max_accessor_count > most:
        count = summary.max_accessor_count
        raise RequestRefused(422, "too_many_vertices", f"{what}: an accessor declares {count} elements; the "
                             f"limit is {most}", limit=most, actual=count)
    check_counts(summary.mesh_nodes, summary.faces, summary.vertices, limits, what)


def _check_declared_sizes(doc: dict, bin_len: int, glb: bool, what: str) -> None:
    """Every buffer, bufferView and accessor lies within the bytes the upload holds; every URI is a data: URI."""
    buffers = _list(doc, "buffers", what)
    sizes = []
    for i, b in enumerate(buffers):
        n = _int(b, "byteLength", f"{what}: buffers[{i}]")
        if "uri" in b:
            have = _check_uri(b["uri"], f"{what}: buffers[{i}]")
        elif glb and i == 0:
            have = bin_len
        else:
            raise _bad(f"{what}: buffers[{i}] has no uri and is not the glb BIN chunk")
        if n > have:
            raise _bad(f"{what}: buffers[{i}] declares byteLength {n} but holds {have} bytes")
        sizes.append(n)
    for i, img in enumerate(_list(doc, "images", what)):
        if "uri" in img:
            _check_uri(img["uri"], f"{what}: images[{i}]")
    view_len = []
    for i, v in enumerate(_list(doc, "bufferViews", what)):
        w = f"{what}: bufferViews[{i}]"
        b = _int(v, "buffer", w)
        if b >= len(sizes):
            raise _bad(f"{w}: buffer {b} does not exist ({len(sizes)} buffers)")
        off, n = _int(v, "byteOffset", w, 0), _int(v, "byteLength", w, None, lo=1)
        if off + n > sizes[b]:
            raise _bad(f"{w}: bytes {off}..{off + n} lie outside buffer {b} ({sizes[b]} bytes)")
        if "byteStride" in v and not 4 <= _int(v, "byteStride", w) <= 252:
            raise _bad(f"{w}: byteStride must be 4..252")
        view_len.append((n, v.get("byteStride")))
    for i, a in enumerate(_list(doc, "accessors", what)):
        w = f"{what}: accessors[{i}]"
        count = _int(a, "count", w, None, lo=0)
        comp, typ = a.get("componentType"), a.get("type")
        if (not isinstance(comp, int) or not isinstance(typ, str) or comp not in gltf_json.COMPONENT_BYTES
                or typ not in gltf_json.TYPE_COMPONENTS):
            raise _bad(f"{w}: unknown componentType {comp!r} or type {typ!r}")
        elem = gltf_json.element_bytes(a)
        if "bufferView" in a:
            bv = _int(a, "bufferView", w)
            if bv >= len(view_len):
                raise _bad(f"{w}: bufferView {bv} does not exist ({len(view_len)} bufferViews)")
            n, stride = view_len[bv]
            _int(a, "byteOffset", w, 0)
            need = gltf_json.accessor_span(a, stride)
            if need > n:
                raise _bad(f"{w}: {count} x {elem}-byte elements need {need} bytes of bufferView {bv}, "
                           f"which has {n}")
        elif count:
            # an accessor without data is zeros of the declared size: a tiny file could
            # declare a huge one, and meshes need real data anyway
            raise _bad(f"{w}: declares {count} elements but no bufferView (no data)")


_NOT_GEOMETRY = ("images", "textures", "samplers", "materials", "animations", "skins", "cameras", "extensions",
                 "extensionsUsed")


def geometry_only(data: bytes) -> bytes:
    """The upload with everything but geometry removed (images, textures, materials,
    animations, skins, extensions), for the mesh reader: embedded images are never
    decoded (no image decompression bombs). Call after :func:`check_gltf`."""
    out = io.BytesIO()
    write_geometry_only(data, out)
    return out.getvalue()


def write_geometry_only(data, out, source=None) -> None:
    """:func:`geometry_only` written to the binary file ``out``. ``data`` may be an
    ``mmap``; with ``source`` (the open upload file) the BIN chunk is copied from it
    piece by piece instead of through memory."""
    try:
        container = gltf_json.read_container(data, "upload", strict=True)
    except gltf_json.GltfError as e:
        raise _bad(str(e)) from None
    doc = container.doc
    rest_at = container.json_end if container.is_glb else None  # the BIN chunk (header included), unchanged
    for key in _NOT_GEOMETRY:
        doc.pop(key, None)
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            prim.pop("material", None)
            prim.pop("extensions", None)
            prim.pop("targets", None)
    for node in doc.get("nodes", []):
        for key in ("skin", "camera", "extensions", "weights"):
            node.pop(key, None)
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if rest_at is None:
        out.write(raw)
        return
    raw += b" " * (-len(raw) % 4)
    out.write(gltf_json.glb_header(len(raw), len(data) - rest_at) + raw)
    if source is None:
        out.write(memoryview(data)[rest_at:])
    else:
        import shutil

        source.seek(rest_at)
        shutil.copyfileobj(source, out, 1 << 20)


def check_counts(parts: int, faces: int, vertices: int, limits: Limits, what: str) -> None:
    """Raise 422 ``too_many_parts`` / ``too_many_faces`` / ``too_many_vertices``."""
    for kind, n, limit, noun in (("too_many_parts", parts, limits.max_parts, "parts (mesh nodes)"),
                                 ("too_many_faces", faces, limits.max_faces, "triangles"),
                                 ("too_many_vertices", vertices, limits.max_vertices, "vertices")):
        if n > limit:
            raise RequestRefused(422, kind, f"{what}: {n} {noun}; the limit is {limit}", limit=limit, actual=n)


def load_labels(data: bytes, limits: Limits, what: str = "labels") -> np.ndarray:
    """A per-face label array from untrusted ``.npy`` bytes (no pickles; the header's
    shape checked against the bytes present before anything is allocated)."""
    f = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError) as e:
        raise RequestRefused(422, "invalid_labels", f"{what}: not a .npy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "iu":
        raise RequestRefused(422, "invalid_labels", f"{what}: labels must be integers, got dtype {dtype}")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestRefused(422, "invalid_labels", f"{what}: header declares an invalid shape {shape!r}")
    n = math.prod(shape)  # Python integers: a declared 2**64 does not wrap around
    if n > limits.max_faces:
        raise RequestRefused(422, "too_many_faces", f"{what}: {n} labels; the limit is {limits.max_faces} faces",
                             limit=limits.max_faces, actual=n)
    if n * dtype.itemsize != len(data) - f.tell():
        raise RequestRefused(422, "invalid_labels", f"{what}: header declares shape {shape} of {dtype} "
                             f"({n * dtype.itemsize} bytes) but {len(data) - f.tell()} bytes follow")
    f.seek(0)
    arr = np.load(f, allow_pickle=False)
    distinct = len(np.unique(arr))
    if distinct > limits.max_parts:
        raise RequestRefused(422, "too_many_parts", f"{what}: {distinct} distinct labels (parts); the limit is "
                             f"{limits.max_parts}", limit=limits.max_parts, actual=distinct)
    return arr
