"""Resumable runs over many objects: ``holopart-infer batch`` and :func:`run_batch`.

    from holopart_infer.scale.batch import collect_items, run_batch
    summary = run_batch("model_dir", collect_items(["objects/"]), "out/")
    # on Ray: run_batch(..., executor=holopart_infer.scale.ray_runner.RayExecutor("auto"))
    print(summary.ok, summary.failed, summary.skipped)

Inputs (:func:`collect_items`), each becoming one or more objects:

* a scene file (``.glb``/``.gltf``): one object; a single mesh file (``.obj``,
  ``.ply``, ...) is one object when a per-face label file ``STEM.npy`` sits
  next to it;
* a folder of objects: every scene file, every mesh file with a ``STEM.npy``
  label file and every sub-folder (a folder of part meshes) in it is an
  object; a folder holding only part mesh files (no scenes, no sub-folders,
  no label files) is itself one object;
* a list file: ``.txt`` with one object path per line (``#`` comments, paths
  relative to the list file), or ``.jsonl`` with one JSON object per line:
  ``{"input": PATH, "labels": PATH, "options": {"steps": 20, ...}, "id": NAME, "up": "+z"}``
  (only ``input`` is required; ``up``: the axis pointing up in the input, as
  ``load_parts(up=)``; default: ``batch --up``, else the format's).

Outputs: ``OUT_DIR/<name>.glb`` per object (the name is the id, kept as given
and ``%``-encoded where unsafe: :func:`output_stem`; ids are unique per run), and
``OUT_DIR/ledger.jsonl``: one line per finished attempt with ``id``, ``input``,
``key`` (a hash of what was computed: input and labels content, resolved
options, model), ``status`` ("ok" or "failed"), ``output``, ``output_bytes``,
``output_sha256``, ``parts``, ``seconds``, ``timings``, ``error`` and
``error_type``. A re-run skips the work whose "ok" line and output are there
and computes the rest. Nothing in ``OUT_DIR`` is replaced without ``redo``
(``--overwrite``); an output is published (no-replace) after its ledger line;
one run at a time holds the folder's lock. docs/batch.md has the details.

Results and the ledger are written by one process (the caller's), whether the
objects are completed here (:class:`LocalExecutor`: :meth:`HoloPart.complete_many`,
parts of several objects packed into each batch) or on Ray actors
(:class:`holopart_infer.scale.ray_runner.RayExecutor`). This module parses no arguments and
prints nothing: the ``holopart-infer batch`` command (:mod:`holopart_infer.cli.batch`)
shows progress from :func:`run_batch`'s ``progress`` / ``on_result`` callbacks.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from holopart_infer.errors import HoloPartError, InputError, InputFileNotFound, OutputError, OutputExists

log = logging.getLogger("holopart_infer")

LEDGER_NAME = "ledger.jsonl"
#: where outputs are encoded before they are recorded and published (removed at the end of a run)
STAGING_NAME = ".holopart-batch-staging"
_JSONL_KEYS = {"input", "labels", "options", "id", "up"}


@dataclass
class BatchItem:
    """One object of a batch run.

    Attributes:
        id: its name, kept as given (any script): the output is
            ``OUT_DIR/<output_stem(id)>.glb``; the ledger's ``id``.
        input: scene / mesh file or folder of part meshes.
        labels: per-face label file for a single mesh, else None.
        options: per-object option overrides (from a JSONL list), applied on
            top of the run's options.
        error: set when the list entry itself was unusable; the object is then
            recorded as failed without being read.
        up: the axis pointing up in the input (None: the format's default).
    """

    id: str
    input: Path
    labels: Path | None = None
    options: dict = field(default_factory=dict)
    error: str | None = None
    #: where it was listed (``list.jsonl:3``, or the path), for messages
    source: str | None = None
    #: the id was given (a .jsonl ``id``), not derived from a file name
    explicit_id: bool = False
    #: set by :func:`run_batch`: output file name, resolved options, work key
    output: str | None = None
    resolved: Any = field(default=None, repr=False)
    key: str | None = None
    #: the axis pointing up in the input (``load_parts(up=)``); None: the format's
    up: str | None = None


@dataclass
class BatchSummary:
    """What a run did. ``failed_ids`` lists the objects whose attempt failed."""

    out_dir: Path
    ledger: Path
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    parts: int = 0
    seconds: float = 0.0
    worker_restarts: int = 0  # Ray actors replaced after their process died
    cluster_restarts: int = 0  # local Ray clusters restarted after their node died
    failed_ids: list[str] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        return self.failed == 0

    def describe(self) -> str:
        rate = self.ok / self.seconds * 60.0 if self.seconds > 0 else 0.0
        return (f"{self.total} objects: {self.ok} completed, {self.skipped} already done (skipped), "
                f"{self.failed} failed; {self.parts} parts in {self.seconds:.1f} s ({rate:.1f} objects/min)")


# ----------------------------------------------------------------------------- inputs
def collect_items(inputs: Sequence[str | os.PathLike]) -> list[BatchItem]:
    """Expand files, folders of objects and list files into :class:`BatchItem` s.

    Raises:
        InputFileNotFound: an input does not exist.
        InputError: no objects found, an unreadable list file, one id given to
            two different objects. (A bad *entry* of a JSONL list does not
            raise: it becomes a failed item.)
    """
    from holopart_infer.io.parts_io import MESH_EXTENSIONS

    raw: list[BatchItem] = []
    for inp in inputs:
        path = Path(inp)
        if not path.exists():
            raise InputFileNotFound(f"batch input {path} does not exist")
        if path.is_file() and path.suffix.lower() == ".txt":
            raw.extend(_read_txt_list(path))
        elif path.is_file() and path.suffix.lower() == ".jsonl":
            raw.extend(_read_jsonl_list(path))
        elif path.is_dir():
            raw.extend(_folder_items(path, MESH_EXTENSIONS))
        else:
            raw.append(_object_item(path))
    if not raw:
        raise InputError(f"no objects found in {', '.join(str(i) for i in inputs)}; expected scene files "
                         "(.glb/.gltf), meshes with STEM.npy labels, folders of part meshes or a .txt/.jsonl list")
    return _unique_ids(raw)


def _object_item(path: Path, labels: Path | None = None, options: dict | None = None, id: str | None = None,
                 error: str | None = None, source: str | None = None) -> BatchItem:
    if labels is None and path.is_file():
        sidecar = path.with_suffix(".npy")
        if path.suffix.lower() not in (".glb", ".gltf", ".npy") and sidecar.is_file():
            labels = sidecar
    return BatchItem(id=id or path.stem, input=path, labels=labels, options=dict(options or {}), error=error,
                     source=source or str(path), explicit_id=id is not None)


def _folder_items(folder: Path, mesh_exts) -> list[BatchItem]:
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    subdirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    scenes = [p for p in files if p.suffix.lower() in (".glb", ".gltf")]
    meshes = [p for p in files if p.suffix.lower() in mesh_exts and p not in scenes]
    labelled = [p for p in meshes if p.with_suffix(".npy").is_file()]
    if not subdirs and not scenes and not labelled:
        return [_object_item(folder)] if meshes else []  # a folder of part meshes: one object
    items = [_object_item(p) for p in scenes + labelled]
    items += [_object_item(d) for d in subdirs]
    return items


def _read_txt_list(path: Path) -> list[BatchItem]:
    items = []
    for n, line in enumerate(_read_lines(path), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            items.append(_object_item(_relative_to(path, entry), source=f"{path}:{n}"))
    return items


def _read_jsonl_list(path: Path) -> list[BatchItem]:
    items = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where}: not valid JSON ({e}); each line must be an object like "
                             '{"input": "chair.glb", "options": {"steps": 20}}') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
            raise InputError(f"{where}: each line must be a JSON object with an \"input\" path, got {line.strip()!r}")
        error = None
        unknown = set(entry) - _JSONL_KEYS
        options = entry.get("options") or {}
        if unknown:
            error = f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_JSONL_KEYS))}"
        elif not isinstance(options, dict):
            error = f"{where}: \"options\" must be a JSON object, got {type(options).__name__}"
            options = {}
        labels = entry.get("labels")
        up = entry.get("up")
        if up is not None:
            from holopart_infer.io.frames import check_up

            try:
                up = check_up(up, '"up"')
            except InputError as e:
                error = error or f"{where}: {e}"
                up = None
        ident = entry.get("id")
        if ident is not None and (not isinstance(ident, str) or not ident.strip()):
            error = error or f"{where}: \"id\" must be a non-empty string, got {ident!r}"
            ident = None
        items.append(_object_item(_relative_to(path, entry["input"]),
                                  labels=_relative_to(path, labels) if isinstance(labels, str) else None,
                                  options=options, id=ident, error=error, source=where))
        items[-1].up = up
    return items


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"list file {path}: cannot read it ({e})") from None


def _relative_to(list_file: Path, entry: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else list_file.parent / p


_KEPT_CHARS = set("-_.+=,@()[]{}~!#$&' ")
_MAX_NAME_BYTES = 160  # of the stem; file systems allow 255 bytes per name


def output_stem(ident: str) -> str:
    """The file-name stem of an id: the id itself where that is a safe file name.

    Letters and digits of any script and ``-_.+=,@()[]{}~!#$&'`` and space are
    kept; anything else (path separators, control characters, characters
    Windows refuses, ``%``, a leading or trailing dot or space) is written as
    ``%XX`` per UTF-8 byte. A name over 160 UTF-8 bytes is cut and ends with a
    hash of the id. Distinct ids give distinct names.
    """
    ident = unicodedata.normalize("NFC", ident)
    out = []
    last = len(ident) - 1
    for i, ch in enumerate(ident):
        keep = (ch.isalnum() or ch in _KEPT_CHARS) and unicodedata.category(ch)[0] != "C"
        if (i == 0 or i == last) and ch in ". ":
            keep = False
        out.append(ch if keep else "".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    name = "".join(out)
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]
        cut = name.encode("utf-8")[:_MAX_NAME_BYTES - 17].decode("utf-8", errors="ignore")
        name = f"{cut}-{digest}"
    return name


def _listing(it: BatchItem) -> str:
    """What an item asks for (input, labels, options), independent of its id and of the order of the list."""
    return json.dumps({"input": os.path.realpath(it.input), "labels": os.path.realpath(it.labels) if it.labels else None,
                       "options": it.options}, sort_keys=True, default=str)


def _unique_ids(items: list[BatchItem]) -> list[BatchItem]:
    """Make every object's output name unique (compared case-insensitively).

    An id given in a .jsonl list is kept as given; two different objects with
    the same given id are an error. An id derived from a file name that
    another object also has gets ``-`` and a hash of what the object asks
    for (input path, labels, options), lengthened until no other name has it:
    stable across re-runs with the same inputs, whatever their order. The
    same entry listed twice (same input, labels, options and id) is done once.
    """
    seen_listing: set[tuple[str, str]] = set()
    unique: list[BatchItem] = []
    for it in items:
        k = (_listing(it), it.id if it.explicit_id else "")
        if k in seen_listing:
            log.warning("batch: %s (%s) is listed more than once; completing it once", it.input, it.source)
            continue
        seen_listing.add(k)
        unique.append(it)

    def fold(it: BatchItem) -> str:
        return output_stem(it.id).casefold()

    given: dict[str, BatchItem] = {}
    for it in unique:
        if it.explicit_id:
            other = given.get(fold(it))
            if other is not None:
                raise InputError(f"id {it.id!r} ({it.source}) names the same output as id {other.id!r} "
                                 f"({other.source}) for a different object (ids are compared without case); "
                                 "give each object its own id")
            given[fold(it)] = it
    counts: dict[str, int] = {}
    for it in unique:
        counts[fold(it)] = counts.get(fold(it), 0) + 1
    fixed = {fold(it) for it in unique if it.explicit_id or counts[fold(it)] == 1}
    renamed = [it for it in unique if not it.explicit_id and counts[fold(it)] > 1]
    digests = {id(it): hashlib.sha256(_listing(it).encode("utf-8")).hexdigest() for it in renamed}
    stems = {id(it): it.id for it in renamed}
    length = {id(it): 8 for it in renamed}
    while renamed:
        for it in renamed:
            it.id = f"{stems[id(it)]}-{digests[id(it)][:length[id(it)]]}"
        names: dict[str, list[BatchItem]] = {}
        for it in renamed:
            names.setdefault(fold(it), []).append(it)
        clash = [it for it in renamed if fold(it) in fixed or len(names[fold(it)]) > 1]
        if not clash:
            break
        for it in clash:
            if length[id(it)] >= 64:  # pragma: no cover - a full sha256 collision
                raise InputError(f"batch: cannot give {it.input} a unique id")
            length[id(it)] = min(64, length[id(it)] * 2)
    return unique


# ----------------------------------------------------------------------------- what was computed
def _content_digest(path: Path, record) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, hidden ones excluded)."""
    if path.is_file():
        return record.sha256(path)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        h.update(f"{rel.as_posix()}\0{record.sha256(f)}\n".encode("utf-8"))
    return h.hexdigest()


def _model_digest(model_path: Path | None) -> str | None:
    """What identifies the model: its manifest (which holds every graph's sha256), else the
    checkpoint's file names and sizes."""
    if model_path is None:
        return None
    from holopart_infer import fsafe

    p = Path(model_path)
    manifest = p / "manifest.json"
    if manifest.is_file():
        return fsafe.sha256_file(manifest)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else []:
        if f.is_file() and not f.name.startswith("."):
            h.update(f"{f.relative_to(p).as_posix()}\0{f.stat().st_size}\n".encode("utf-8"))
    return h.hexdigest()


#: options that change how the work is scheduled, not its result (beyond rounding)
_SCHEDULING_OPTIONS = ("parts_per_batch", "chunk_points")


def work_key(it: BatchItem, options, model_digest: str | None, record) -> str:
    """The ledger's key of finished work: a hash of the input's content, the labels' content,
    the resolved options (less the scheduling ones: ``parts_per_batch``, ``chunk_points``), the
    input's up axis when one was given, and the model. Raises OSError when an input cannot be read."""
    opts = {k: v for k, v in asdict(options).items() if k not in _SCHEDULING_OPTIONS}
    data = {"input": _content_digest(it.input, record),
            "labels": _content_digest(it.labels, record) if it.labels else None,
            "options": opts, "model": model_digest}
    if it.up is not None:  # the input's frame changes what is computed
        data["up"] = it.up
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- ledger
class Ledger:
    """``OUT_DIR/ledger.jsonl``: append-only, one JSON line per finished attempt.

    Each line is written with one ``write`` and fsync'ed; a line cut by a crash
    is ignored when reading (and the next append starts on a new line).
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LEDGER_NAME

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def entries(self, offset: int = 0) -> list[dict]:
        """Every readable line, in order (from byte ``offset``: the lines appended since)."""
        out: list[dict] = []
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            fh.seek(offset)
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    out.append(entry)
        return out

    def read(self) -> dict[str, dict]:
        """The last entry per id."""
        return {e["id"]: e for e in self.entries()}

    def append(self, entry: dict) -> None:
        data = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class _LedgerIndex:
    """What the ledger says is finished: "ok" entries by work key and by output name."""

    def __init__(self, entries: list[dict]):
        self.last_by_id = {e["id"]: e for e in entries}
        self.ok_by_key: dict[str, list[dict]] = {}
        self.ok_by_output: dict[str, list[dict]] = {}  # oldest first
        for e in entries:
            if e.get("status") == "ok" and isinstance(e.get("output"), str):
                if isinstance(e.get("key"), str):
                    self.ok_by_key.setdefault(e["key"], []).append(e)
                self.ok_by_output.setdefault(e["output"], []).append(e)
        self.outputs = {e["output"] for e in entries if isinstance(e.get("output"), str)}

    def done(self, it: BatchItem, out_dir: Path) -> bool:
        """Finished: an "ok" line for this work (key) and this output name, and the file there
        is that line's output (the newest "ok" line naming it, at its size; else the same sha256).
        A line of an older version without a key counts for the same id and input path."""
        target = Path(out_dir) / it.output
        if not target.is_file() or target.is_symlink():
            return False
        if it.key and any(e["output"] == it.output for e in self.ok_by_key.get(it.key, ())):
            owner = self.owner_of(it.output, out_dir)
            return owner is not None and owner.get("key") == it.key
        legacy = self.last_by_id.get(it.id)
        return bool(legacy and "key" not in legacy and legacy.get("status") == "ok"
                    and legacy.get("input") == str(it.input) and legacy.get("output") == it.output)

    def owner_of(self, name: str, out_dir: Path) -> dict | None:
        """The "ok" line whose output the file ``name`` is now, or None: the newest line naming it
        when the size agrees (sha256 checked only when that is not conclusive)."""
        from holopart_infer import fsafe

        lines = self.ok_by_output.get(name)
        target = Path(out_dir) / name
        if not lines or not target.is_file() or target.is_symlink():
            return None
        newest = lines[-1]
        size = target.stat().st_size
        if newest.get("output_sha256") is None:  # an older version's line: trust its name
            return newest
        if newest.get("output_bytes") == size and len({e.get("output_sha256") for e in lines}) == 1:
            return newest
        try:
            digest = fsafe.sha256_file(target)
        except OSError:
            return None
        return next((e for e in reversed(lines) if e.get("output_sha256") == digest), None)


def is_done(entry: dict | None, out_dir: Path) -> bool:
    """An entry says ok and its output file exists (a weaker test than the run's, which also
    checks the work key; kept for callers of earlier versions)."""
    return bool(entry) and entry.get("status") == "ok" and (Path(out_dir) / str(entry.get("output"))).is_file()


class BatchFolderBusy(OutputError):
    """Another batch holds ``OUT_DIR``'s lock."""


class OutOfSpace(HoloPartError, OSError):
    """The output folder's file system is full (ENOSPC / EDQUOT); the run stopped.

    ``summary`` is the :class:`BatchSummary` of what finished (kept and recorded).
    """

    summary: "BatchSummary | None" = None

    def __init__(self, message: str, err: int = errno.ENOSPC):
        super().__init__(message)
        self.errno = err


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_MIN_FREE_BYTES = 1 << 20


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check before any work that files can be written there.

    Raises:
        OutputError: it is a file, cannot be created, is not writable, or its file system has
            less than 1 MiB free; the message names the folder.
    """
    from holopart_infer import fsafe

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} exists and is not a folder; choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"output folder {out}: cannot create it ({e.strerror or e}); "
                          "choose a writable folder") from None
    fsafe.probe_writable(out, "output folder", out)
    try:
        st = os.statvfs(out)
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):  # no statvfs (Windows): writing will tell
        free = None
    if free is not None and free < _MIN_FREE_BYTES:
        raise OutputError(f"output folder {out}: its file system is full ({free} bytes free); "
                          "free some space or choose another folder")
    return out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``OUT_DIR/ledger.jsonl`` (created) for the block; another holder:
    :class:`BatchFolderBusy`. Where ``fcntl`` is missing (Windows) there is no lock."""
    path = out / LEDGER_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"output folder {out}: cannot open its ledger {path} ({e.strerror or e}); "
                          "choose a writable folder") from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchFolderBusy(
                    f"output folder {out} is in use by another holopart-infer batch (its ledger {path} is "
                    "locked); wait for that run to finish, or choose another output folder") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _clean_leftovers(out: Path, index: _LedgerIndex) -> int:
    """Remove the temporaries that earlier batch runs on this folder left (a kill -9): the
    staging folder, and ``.NAME.tmp-*`` files next to outputs the ledger names. Nothing else."""
    from holopart_infer import fsafe

    removed = 0
    staging = out / STAGING_NAME
    if staging.is_dir() and not staging.is_symlink():
        removed += sum(1 for _ in staging.iterdir())
        shutil.rmtree(staging, ignore_errors=True)
    names = index.outputs | {LEDGER_NAME}
    for p in out.iterdir():
        n = p.name
        if not n.startswith(".") or fsafe.TMP_MARK not in n or p.is_symlink() or not p.is_file():
            continue
        if n[1:n.index(fsafe.TMP_MARK)] in names:
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    if removed:
        log.info("batch: removed %d temporary file(s) an earlier run left in %s", removed, out)
    return removed


# ----------------------------------------------------------------------------- running
class Executor:
    """Where :func:`run_batch` completes its objects: :class:`LocalExecutor` (this process) or
    :class:`holopart_infer.scale.ray_runner.RayExecutor` (Ray actors). The batch itself (inputs,
    ledger, outputs) is always the caller's process; an executor only turns jobs into results.

    Attributes:
        loads_parts: jobs carry parts the driver read (:class:`~holopart_infer.io.parts_io.Parts`),
            not paths: the workers need no access to the inputs.
        restarts, cluster_restarts: workers / clusters replaced during :meth:`run` (Ray).
    """

    loads_parts = False
    restarts = 0
    cluster_restarts = 0

    def prepare(self, model):
        """Take the model (a loaded :class:`HoloPart` or a model / checkpoint dir) before any work;
        returns ``(model_path, default_options)``. Nothing heavy starts here."""
        raise NotImplementedError

    def run(self, jobs: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """``(job, CompletionResult | error)`` for each :class:`CompletionJob`, in any order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`prepare` / :meth:`run` started."""


class LocalExecutor(Executor):
    """Complete here, with :meth:`HoloPart.complete_many` (parts of several objects share batches).

    Args:
        parts_per_batch: parts per DiT / decoder batch, packed across objects
            (default: each object's options' ``parts_per_batch``).
        backend, device, verify_integrity: as :func:`holopart_infer.load`, when the model
            is given as a path.
    """

    def __init__(self, parts_per_batch: int | None = None, *, backend: str = "auto", device: str = "auto",
                 verify_integrity: bool = True):
        self.parts_per_batch = parts_per_batch
        self.backend, self.device, self.verify_integrity = backend, device, verify_integrity
        self.model = None
        self._loaded_here = False

    def prepare(self, model):
        from holopart_infer.pipeline import HoloPart, load, model_defaults

        if not isinstance(model, HoloPart):
            model = load(model, backend=self.backend, device=self.device, verify_integrity=self.verify_integrity)
            self._loaded_here = True
        self.model = model
        return getattr(model, "path", None), model_defaults(model)

    def run(self, jobs):
        return self.model.complete_many(jobs, parts_per_batch=self.parts_per_batch)

    def close(self) -> None:
        if self._loaded_here and self.model is not None:
            self.model.close()
        self.model, self._loaded_here = None, False


def run_batch(model, items: Iterable[BatchItem], out_dir: str | os.PathLike, *, options=None,
              executor: Executor | None = None, redo: bool = False,
              on_result: Callable[[BatchItem, dict], None] | None = None,
              progress: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Complete many objects into ``out_dir``, resumably.

    Args:
        model: a loaded :class:`~holopart_infer.pipeline.HoloPart`, or a model /
            checkpoint dir (loaded by the executor: here, or on each Ray actor).
        items: from :func:`collect_items`.
        out_dir: output folder (created); holds ``<id>.glb`` and ``ledger.jsonl``.
        options: base :class:`CompletionOptions` (default: the model's
            defaults); per-item overrides apply on top (:meth:`CompletionOptions.replace`).
        executor: where the objects are completed: :class:`LocalExecutor` (default:
            ``LocalExecutor()``) or :class:`holopart_infer.scale.ray_runner.RayExecutor`.
        redo: recompute every object and replace existing outputs (``--overwrite``).
        on_result: called with each item and its ledger entry as it is recorded.
        progress: ``progress(done, total)`` over the objects to attempt (``done`` 0 first).

    Returns:
        :class:`BatchSummary`. One object failing never stops the run.

    Raises:
        OutputError: ``out_dir`` unusable (checked before any work);
            :class:`BatchFolderBusy`: another run holds its lock.
        OutOfSpace: the disk filled up; what finished is kept and recorded
            (``error.summary``); re-run to resume.
        InputError: unusable options; Ray errors when the cluster cannot be reached.
        Interrupted: a signal; its message says what was kept.
    """
    from holopart_infer import fsafe
    from holopart_infer.pipeline import CompletionOptions

    out = prepare_out_dir(out_dir)
    items = list(items)
    executor = executor if executor is not None else LocalExecutor()
    summary = BatchSummary(out_dir=out, ledger=out / LEDGER_NAME, total=len(items))
    with _locked(out):
        ledger = Ledger(out)
        index = _LedgerIndex(ledger.entries())
        _clean_leftovers(out, index)
        try:
            model_path, defaults = executor.prepare(model)
            base = options or defaults
            if not isinstance(base, CompletionOptions):
                raise InputError(f"options must be a CompletionOptions, got {type(base).__name__}")

            failed_early: list[tuple[BatchItem, Exception]] = []
            todo: list[BatchItem] = []
            # inputs' hashes, kept apart from the model-integrity record so that they never evict it
            record_hashes = fsafe.HashRecord(fsafe.user_cache_dir("batch-input-sha256.json"))
            record_hashes.MAX_ENTRIES = 100_000
            model_digest = _model_digest(model_path)
            protected = _Inputs(items)
            for it in items:
                it.output = f"{output_stem(it.id)}.glb"
                clash = protected.clash(out / it.output)
                if clash:  # inputs are never replaced, --overwrite or not
                    failed_early.append((it, OutputError(f"output {out / it.output} {clash}; inputs are never "
                                                         "modified or replaced. Choose another output folder")))
                    continue
                if it.error:
                    failed_early.append((it, InputError(it.error)))
                    continue
                try:  # the one merge: names the option, what it accepts and what it got
                    it.resolved = base.replace(**it.options)
                except InputError as e:
                    failed_early.append((it, InputError(f"{it.source}: {e}")))
                    continue
                try:
                    it.key = work_key(it, it.resolved, model_digest, record_hashes)
                except OSError:
                    it.key = None  # unreadable: the attempt will fail with the reader's message
                if not redo and index.done(it, out):
                    summary.skipped += 1
                    continue
                clash = None if redo else _existing_output(it, out, index)
                if clash:
                    failed_early.append((it, OutputExists(clash)))
                    continue
                todo.append(it)
            record_hashes.save()
            if summary.skipped:
                log.info("batch: %d of %d objects already done in %s; skipping them", summary.skipped, len(items),
                         out)
            _run_items(todo, failed_early, out, ledger, summary, executor=executor, redo=redo,
                       on_result=on_result, progress=progress)
        finally:
            executor.close()
    return summary


class _Inputs:
    """Every path a run reads (inputs, labels), to keep outputs off them: by resolved path,
    by folder (an output inside a folder object) and by inode (hard links)."""

    def __init__(self, items: list[BatchItem]):
        self.paths: dict[str, str] = {}
        self.dirs: dict[str, str] = {}
        self.inodes: dict[tuple[int, int], str] = {}
        for it in items:
            for p in (it.input, it.labels):
                if p is None:
                    continue
                r = os.path.realpath(p)
                (self.dirs if os.path.isdir(r) else self.paths)[r] = str(p)
                with contextlib.suppress(OSError):
                    st = os.stat(r)
                    self.inodes[(st.st_dev, st.st_ino)] = str(p)

    def clash(self, target: Path) -> str | None:
        r = os.path.realpath(target)
        if r in self.paths or r in self.dirs:
            return f"is the input {self.paths.get(r) or self.dirs[r]}"
        for parent in Path(r).parents:
            if str(parent) in self.dirs:
                return f"lies inside the input folder {self.dirs[str(parent)]}"
        with contextlib.suppress(OSError):
            st = os.stat(r)
            if (st.st_dev, st.st_ino) in self.inodes:
                return f"is the input {self.inodes[(st.st_dev, st.st_ino)]} (a hard link to it)"
        return None


def _existing_output(it: BatchItem, out: Path, index: _LedgerIndex) -> str | None:
    """Why ``OUT_DIR/<output>`` may not be written for this item without ``--overwrite``, or None."""
    target = out / it.output
    if not (target.exists() or target.is_symlink()):
        return None
    owner = index.owner_of(it.output, out)
    if owner is not None:
        return (f"{target} holds this folder's earlier result for {owner.get('input')} (ledger, "
                f"{owner.get('finished_at')}), computed from a different input content, labels, options or "
                f"model than {it.input} now asks for; it was kept. Pass --overwrite to recompute and replace, "
                "give this object another id (a .jsonl \"id\"), or choose another output folder")
    return (f"{target} already exists and is not an output recorded in {out / LEDGER_NAME}; it was kept. "
            "Move it away, choose another output folder, or pass --overwrite to replace it")


def _run_items(todo, failed_early, out, ledger, summary, *, executor: Executor, redo, on_result,
               progress) -> None:
    from holopart_infer.errors import Interrupted

    load_here = bool(todo) and executor.loads_parts  # e.g. Ray actors: parts, not paths (no shared file system)
    by_id = {it.id: it for it in todo}
    ledger_start = ledger.size()
    load_seconds: dict[str, float] = {}

    total = len(todo) + len(failed_early)
    done = 0
    if progress is not None:
        progress(0, total)
    t0 = time.perf_counter()
    recorded: set[str] = set()

    def record(it: BatchItem, res) -> None:
        nonlocal done
        if it.id in recorded:  # a retried task answered twice: the first answer stands
            return
        recorded.add(it.id)
        entry = _publish_result(it, res, out, ledger, summary, redo=redo, load_seconds=load_seconds)
        done += 1
        if on_result is not None:
            on_result(it, entry)
        if progress is not None:
            progress(done, total)

    jobs = _jobs(todo, failed_early, load_here, load_seconds)  # a generator: nothing is read before the executor asks
    results = executor.run(jobs) if todo else iter(())  # nothing left to run: no cluster needed
    try:
        while failed_early:
            record(*failed_early.pop(0))
        for job, res in results:
            while failed_early:
                record(*failed_early.pop(0))
            record(by_id[job.key], res)
        while failed_early:
            record(*failed_early.pop(0))
    except OutOfSpace as e:
        e.summary = summary
        e.args = (f"{e.args[0]}; the run stopped: {_kept(out, ledger, ledger_start)}. Free space there and run "
                  "the same command again to do the rest",)
        raise
    except Interrupted as e:
        e.args = (f"interrupted by {_signal_name(e.signum)}; {_kept(out, ledger, ledger_start)}. The objects in "
                  "progress were not written; run the same command again to do the rest",)
        raise
    finally:
        _close_run(results, summary, executor, out, t0)


def _jobs(todo, failed_early, load_here: bool, load_seconds: dict[str, float]):
    """The items' completion jobs, in order. With ``load_here`` the parts are read
    here (their seconds kept in ``load_seconds``); an item that cannot be read
    goes to ``failed_early`` instead."""
    from holopart_infer.pipeline import CompletionJob

    for it in todo:
        parts: Any = it.input
        if load_here:
            from holopart_infer.io.parts_io import load_parts

            t_load = time.perf_counter()
            try:
                parts = load_parts(it.input, labels=it.labels, up=it.up)
                load_seconds[it.id] = time.perf_counter() - t_load
            except Exception as e:
                failed_early.append((it, e))
                continue
        yield CompletionJob(parts=parts, labels=None if load_here else it.labels, options=it.resolved,
                            key=it.id, up=None if load_here else it.up)


def _publish_result(it: BatchItem, res, out: Path, ledger: Ledger, summary, *, redo,
                    load_seconds: dict[str, float]) -> dict:
    """Writes one item's result (or failure) to the output folder and the ledger and
    counts it in ``summary``; returns its ledger entry."""
    if it.id in load_seconds and hasattr(res, "timings"):  # read here, completed on a Ray actor
        res.timings["load_parts"] = load_seconds.pop(it.id)
    entry = _write_one(it, res, out, ledger, replace=redo)
    if entry["status"] == "ok":
        summary.ok += 1
        summary.parts += int(entry.get("parts") or 0)
    else:
        summary.failed += 1
        summary.failed_ids.append(it.id)
        log.warning("batch: %s failed: %s", it.id, entry["error"])
    return entry


def _close_run(results, summary, executor: Executor, out: Path, t0: float) -> None:
    """End of a run, however it ends: closes the executor's results, completes the
    summary's time and restart counts, removes the (empty) staging folder."""
    close = getattr(results, "close", None)
    if close is not None:
        close()
    summary.seconds = time.perf_counter() - t0
    summary.worker_restarts = executor.restarts
    summary.cluster_restarts = executor.cluster_restarts
    staging = out / STAGING_NAME
    with contextlib.suppress(OSError):
        staging.rmdir()  # empty unless something failed to clean up


def _kept(out: Path, ledger: Ledger, since: int) -> str:
    """What this run finished, from the ledger itself (a signal may land anywhere in the bookkeeping)."""
    index = _LedgerIndex(ledger.entries(since))
    done = sum(1 for name in index.ok_by_output if index.owner_of(name, out) is not None)
    if not done:
        return f"no object finished in this run; no output was written in {out}"
    return (f"{done} object{'s' if done != 1 else ''} finished in this run {'are' if done != 1 else 'is'} kept in "
            f"{out} and recorded in {ledger.path.name}")


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _write_one(it: BatchItem, res, out: Path, ledger: Ledger, *, replace: bool) -> dict:
    """Record one object's attempt and publish its output; returns its ledger entry.

    An output is encoded into ``OUT_DIR/.holopart-batch-staging/`` first; its "ok" line
    (with the output's size and sha256) is appended to the ledger; then it is published
    with a no-replace link (``replace``: ``--overwrite``). A crash between the two leaves
    an "ok" line without its file, which a resume redoes; a file never appears without its
    line. A full disk raises :class:`OutOfSpace` (the run stops, nothing finished is lost).
    """
    from holopart_infer import fsafe
    from holopart_infer.pipeline import CompletionResult

    entry: dict[str, Any] = {"id": it.id, "input": str(it.input), "key": it.key, "output": None, "parts": None,
                             "options": it.resolved.as_dict() if it.resolved is not None else None,
                             "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if isinstance(res, CompletionResult):
        target = out / it.output
        staging = out / STAGING_NAME
        staged = staging / it.output
        try:
            staging.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            res.save(staged, source=it.input)
            timings = {k: round(float(v), 4) for k, v in res.timings.items()}
            if res.options is not None:  # what it ran with (an executor may have changed parts_per_batch)
                entry["options"] = res.options.as_dict()
            entry.update(status="ok", output=it.output, parts=len(res.parts),
                         empty_parts=sum(1 for p in res.parts if len(p.faces) == 0),
                         replaced_parts=res.replaced,  # replaced by their closed visible patch (quality guard)
                         quality={p.name: p.quality.as_extras() for p in res.parts if p.quality is not None},
                         seconds=round(sum(timings.values()), 4), timings=timings,
                         worker=res.stats.worker, error=None, error_type=None,
                         output_bytes=staged.stat().st_size, output_sha256=fsafe.sha256_file(staged))
            ledger.append(entry)
            try:
                fsafe.publish_file(staged, target, replace)
            except OutputExists as e:  # appeared while we computed: kept, this attempt failed
                entry = {**entry, "status": "failed", "output": None, "error": str(e), "error_type": "OutputExists",
                         "output_bytes": None, "output_sha256": None}
                ledger.append(entry)
                return entry
            fsafe.fsync_dir(out)
            return entry
        except Exception as e:  # this object failed (e.g. an unencodable mesh); the run goes on, unless
            # the disk is full (an OSError, or a writer's own error around one: the probe's, say)
            cause = e if isinstance(e, OSError) else (e.__cause__ or e.__context__)
            if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
                with contextlib.suppress(OSError):  # the ledger's own line may not fit either
                    ledger.append({**entry, "status": "failed", "output": None, "output_bytes": None,
                                   "output_sha256": None, "error": f"no space left writing {target}",
                                   "error_type": "OutOfSpace"})
                raise OutOfSpace(f"no space left on the device of {out} while writing {target.name} "
                                 f"({cause.strerror})", cause.errno) from e
            res = e
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
    err = res if isinstance(res, BaseException) else HoloPartError(f"unexpected result {type(res).__name__}")
    entry.update(status="failed", output=None, output_bytes=None, output_sha256=None,
                 error=str(err) or type(err).__name__, error_type=type(err).__name__)
    ledger.append(entry)
    return entry
