"""The embedded assets ship nothing of the machine that built them: the demo model's
manifest names its checkpoint by folder name and content hash, never by a path."""
from __future__ import annotations

import hashlib
import json
import re

from holopart_infer import assets


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_shipped_manifest_records_no_absolute_path():
    manifest = json.loads((assets.demo_model_path() / "manifest.json").read_text())
    absolute = [s for s in _strings(manifest)
                if s.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", s) or "/work/" in s]
    assert not absolute, absolute
    source = manifest["source"]
    assert source["checkpoint"] == "holopart_mini"  # export/holopart_mini, by name
    # the one digest of the checkpoint's files: sha256 of the per-file hashes as sorted, compact JSON
    files = json.dumps(source["sha256"], sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert source["content_sha256"] == hashlib.sha256(files).hexdigest()
