"""Helpers for the service tests: glb builders (honest and hostile) and a real server process."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)


def make_glb(doc: dict, binary: bytes = b"") -> bytes:
    """A glb container around a glTF JSON document and an optional BIN chunk."""
    j = json.dumps(doc).encode()
    j += b" " * (-len(j) % 4)
    body = struct.pack("<II", len(j), 0x4E4F534A) + j
    if binary:
        b = binary + b"\0" * (-len(binary) % 4)
        body += struct.pack("<II", len(b), 0x004E4942) + b
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def tetra_doc(n_parts: int = 2, *, instances: int | None = None, buffer_uri: str | None = None) -> tuple[dict, bytes]:
    """glTF JSON + BIN of ``n_parts`` tetrahedra (each its own mesh and node, offset along x).

    ``instances``: instead, one mesh referenced by that many nodes. ``buffer_uri``:
    the buffer points at this URI instead of the BIN chunk."""
    binary = b""
    meshes, accessors, views = [], [], []
    n_meshes = 1 if instances else n_parts
    for m in range(n_meshes):
        v = TETRA_V + np.float32([1.5 * m, 0, 0])
        for arr, target, comp, typ in ((v, 34962, 5126, "VEC3"), (TETRA_F.reshape(-1), 34963, 5125, "SCALAR")):
            data = np.ascontiguousarray(arr).tobytes()
            views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(data), "target": target})
            acc = {"bufferView": len(views) - 1, "componentType": comp, "count": int(len(arr)), "type": typ}
            if typ == "VEC3":
                acc["min"], acc["max"] = v.min(0).tolist(), v.max(0).tolist()
            accessors.append(acc)
            binary += data
        meshes.append({"primitives": [{"attributes": {"POSITION": len(accessors) - 2},
                                       "indices": len(accessors) - 1}]})
    count = instances or n_parts
    nodes = [{"name": f"part{i}", "mesh": 0 if instances else i, "translation": [0, 1.5 * i, 0]}
             for i in range(count)]
    buffer = {"byteLength": len(binary)}
    if buffer_uri is not None:
        buffer["uri"] = buffer_uri
    doc = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": list(range(count))}], "nodes": nodes,
           "meshes": meshes, "accessors": accessors, "bufferViews": views, "buffers": [buffer]}
    return doc, binary


def tetra_glb(n_parts: int = 2, **kw) -> bytes:
    doc, binary = tetra_doc(n_parts, **kw)
    return make_glb(doc, binary if "buffer_uri" not in kw else b"")


def data_uri(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------- server process
class Server:
    """``holopart-infer serve`` in a subprocess on a free port (``--port 0``)."""

    def __init__(self, tmp: Path, *args: str, token: str | None = None, timeout: float = 180.0):
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self.token = token
        env = dict(os.environ)
        if token:
            env["HOLOPART_SERVE_TOKEN"] = token
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "holopart_infer.cli", "serve", "--port", "0", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        self.url = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            m = re.search(r"listening on (http://\S+)", self.log())
            if m:
                self.url = m.group(1)
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                auth: bool = True, timeout: float = 300.0) -> tuple:
        h = dict(headers or {})
        if auth and self.token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: bytes | None = b"", **kw):
        return self.request("POST", path, body, **kw)

    def trickle_body(self, limit_s: float = 30.0) -> tuple[bytes, float]:
        """Slowloris: announce a 100 kB glb body and send it a byte at a time until the server
        answers and closes the connection (or ``limit_s`` passes). Returns (everything the server
        sent, seconds from the headers to the close)."""
        host, port = self.host_port
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(f"POST /v1/complete HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n"
                  "Content-Length: 100000\r\nContent-Type: model/gltf-binary\r\n\r\n".encode())
        t0 = time.monotonic()
        response = b""
        s.settimeout(0.2)
        while time.monotonic() - t0 < limit_s:
            try:
                s.sendall(b"g")
            except OSError:
                pass
            try:
                got = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:  # our trickle met the closed socket: the answer came before
                break
            if not got:
                break  # closed by the server: the answer is complete
            response += got
        elapsed = time.monotonic() - t0
        s.close()
        return response, elapsed

    def metrics(self) -> dict[str, float]:
        status, _, body = self.get("/metrics")
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, sig=signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
