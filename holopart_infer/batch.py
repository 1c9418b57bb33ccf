"""Resumable runs over many objects: ``holopart-infer batch`` and :func:`run_batch`.

    from holopart_infer.batch import collect_items, run_batch
    summary = run_batch("model_dir", collect_items(["objects/"]), "out/")   # or ray="auto"
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
  ``{"input": PATH, "labels": PATH, "options": {"steps": 20, ...}, "id": NAME}``
  (only ``input`` is required).

Outputs: ``OUT_DIR/<id>.glb`` per object (the id is the input's stem, made
unique), each written atomically, and ``OUT_DIR/ledger.jsonl``: one line per
finished attempt with ``id``, ``input``, ``status`` ("ok" or "failed"),
``output``, ``parts``, ``seconds``, ``timings``, ``error`` and ``error_type``;
the last line of an id wins. A re-run skips an object whose last ledger line
is "ok" and whose output exists, and retries the rest.

Results and the ledger are written by one process (the caller's), whether the
objects are completed here (:meth:`HoloPart.complete_many`, parts of several
objects packed into each batch) or on Ray actors (:mod:`holopart_infer.ray_runner`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from holopart_infer.errors import HoloPartError, InputError, InputFileNotFound

log = logging.getLogger("holopart_infer")

LEDGER_NAME = "ledger.jsonl"
LIST_EXTENSIONS = (".txt", ".jsonl")
_JSONL_KEYS = {"input", "labels", "options", "id"}


@dataclass
class BatchItem:
    """One object of a batch run.

    Attributes:
        id: its name: the output is ``OUT_DIR/<id>.glb``, the ledger key.
        input: scene / mesh file or folder of part meshes.
        labels: per-face label file for a single mesh, else None.
        options: per-object option overrides (from a JSONL list), applied on
            top of the run's options.
        error: set when the list entry itself was unusable; the object is then
            recorded as failed without being read.
    """

    id: str
    input: Path
    labels: Path | None = None
    options: dict = field(default_factory=dict)
    error: str | None = None


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
        InputError: no objects found, an unreadable list file. (A bad *entry*
            of a JSONL list does not raise: it becomes a failed item.)
    """
    from holopart_infer.parts_io import MESH_EXTENSIONS

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
                 error: str | None = None) -> BatchItem:
    if labels is None and path.is_file():
        sidecar = path.with_suffix(".npy")
        if path.suffix.lower() not in (".glb", ".gltf", ".npy") and sidecar.is_file():
            labels = sidecar
    return BatchItem(id=id or path.stem, input=path, labels=labels, options=dict(options or {}), error=error)


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
    for line in _read_lines(path):
        entry = line.split("#", 1)[0].strip()
        if entry:
            items.append(_object_item(_relative_to(path, entry)))
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
        ident = entry.get("id")
        if ident is not None and (not isinstance(ident, str) or not ident.strip()):
            error = error or f"{where}: \"id\" must be a non-empty string, got {ident!r}"
            ident = None
        items.append(_object_item(_relative_to(path, entry["input"]),
                                  labels=_relative_to(path, labels) if isinstance(labels, str) else None,
                                  options=options, id=ident, error=error))
    return items


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"list file {path}: cannot read it ({e})") from None


def _relative_to(list_file: Path, entry: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else list_file.parent / p


def _safe_id(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "object"
    return s[:120]


def _unique_ids(items: list[BatchItem]) -> list[BatchItem]:
    """Ids safe as file names and unique; a repeated stem gets a suffix from its
    input path (stable across re-runs with the same inputs, whatever the order)."""
    for it in items:
        it.id = _safe_id(it.id)
    counts: dict[str, int] = {}
    for it in items:
        counts[it.id] = counts.get(it.id, 0) + 1
    seen: set[str] = set()
    out = []
    for it in items:
        if counts[it.id] > 1:
            digest = hashlib.sha1(str(it.input.resolve()).encode()).hexdigest()[:8]
            it.id = f"{it.id}-{digest}"
        if it.id in seen:  # the same input listed twice: do it once
            log.warning("batch: %s is listed more than once; completing it once", it.input)
            continue
        seen.add(it.id)
        out.append(it)
    return out


# ----------------------------------------------------------------------------- ledger
class Ledger:
    """``OUT_DIR/ledger.jsonl``: append-only, one JSON line per finished attempt.

    Each line is written with one ``write`` and fsync'ed; a line cut by a crash
    is ignored when reading (and the next append starts on a new line).
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LEDGER_NAME

    def read(self) -> dict[str, dict]:
        """The last entry per id."""
        last: dict[str, dict] = {}
        if not self.path.exists():
            return last
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    last[entry["id"]] = entry
        return last

    def append(self, entry: dict) -> None:
        data = (json.dumps(entry, sort_keys=True) + "\n").encode()
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


def is_done(entry: dict | None, out_dir: Path) -> bool:
    """Finished: the last ledger entry says ok and its output file exists."""
    return bool(entry) and entry.get("status") == "ok" and (Path(out_dir) / str(entry.get("output"))).is_file()


# ----------------------------------------------------------------------------- running
#: an executor turns jobs into (job, result or error) pairs, in any order
Executor = Callable[[Iterable[Any]], Iterator[tuple[Any, Any]]]


def run_batch(model, items: Iterable[BatchItem], out_dir: str | os.PathLike, *, options=None,
              parts_per_batch: int | None = None, ray: str | None = None, ray_workers: int | None = None,
              backend: str = "auto", device: str = "auto", redo: bool = False, show_progress: bool = False,
              on_result: Callable[[BatchItem, dict], None] | None = None, _ray_hook=None) -> BatchSummary:
    """Complete many objects into ``out_dir``, resumably.

    Args:
        model: a loaded :class:`~holopart_infer.pipeline.HoloPart`, or a model /
            checkpoint dir (loaded here, or on each Ray actor).
        items: from :func:`collect_items`.
        out_dir: output folder (created); holds ``<id>.glb`` and ``ledger.jsonl``.
        options: base :class:`CompletionOptions` (default: the model's
            defaults); per-item overrides apply on top.
        parts_per_batch: parts per DiT / decoder batch, packed across objects
            (default: the options' ``parts_per_batch``).
        ray: None runs here; ``"auto"`` (a running cluster, else a local one) or
            a Ray address runs on Ray actors (``pip install 'holopart-infer[ray]'``).
        ray_workers: number of actors (default: one per GPU, else one per CPU).
        backend, device: used when ``model`` is a path.
        redo: recompute objects already done.
        show_progress: a tqdm bar over objects (with an ETA) on stderr.
        on_result: called with each item and its ledger entry as it is recorded.

    Returns:
        :class:`BatchSummary`. One object failing never stops the run.

    Raises:
        InputError: unusable ``out_dir`` or options; Ray errors when the
        cluster cannot be reached.
    """
    from holopart_infer.pipeline import CompletionJob, CompletionOptions, HoloPart, load

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out)
    done = ledger.read()
    items = list(items)
    summary = BatchSummary(out_dir=out, ledger=ledger.path, total=len(items))
    todo = []
    for it in items:
        if not redo and is_done(done.get(it.id), out):
            summary.skipped += 1
        else:
            todo.append(it)
    if summary.skipped:
        log.info("batch: %d of %d objects already done in %s; skipping them", summary.skipped, len(items), out)

    if ray is None:
        holo = model if isinstance(model, HoloPart) else load(model, backend=backend, device=device)
        base = options or holo.default_options()
        executor: Executor = lambda jobs: holo.complete_many(jobs, parts_per_batch=parts_per_batch)  # noqa: E731
        load_here = False
    else:
        from holopart_infer import ray_runner

        if isinstance(model, HoloPart):
            model_path, backend, device = model.path, model.backend_name, model.device
        else:
            model_path = Path(model)
        base = options or _defaults_of(model_path)
        pool = ray_runner.RayPool(model_path, address=ray, backend=backend, device=device,
                                  num_workers=ray_workers, parts_per_batch=parts_per_batch, hook=_ray_hook)
        executor = pool.run
        load_here = True  # Ray actors get the parts, not paths: no shared file system needed
    if not isinstance(base, CompletionOptions):
        raise InputError(f"options must be a CompletionOptions, got {type(base).__name__}")

    by_id = {it.id: it for it in todo}
    failed_early: list[tuple[BatchItem, Exception]] = []
    load_seconds: dict[str, float] = {}

    def jobs():
        for it in todo:
            if it.error:
                failed_early.append((it, InputError(it.error)))
                continue
            try:
                opts = CompletionOptions(**{**asdict(base), **it.options}) if it.options else base
            except TypeError as e:
                failed_early.append((it, InputError(
                    f"{it.input}: bad options {sorted(it.options)} ({e}); known: "
                    f"{', '.join(CompletionOptions.__dataclass_fields__)}")))
                continue
            parts: Any = it.input
            if load_here:
                from holopart_infer.parts_io import load_parts

                t_load = time.perf_counter()
                try:
                    parts = load_parts(it.input, labels=it.labels)
                    load_seconds[it.id] = time.perf_counter() - t_load
                except Exception as e:
                    failed_early.append((it, e))
                    continue
            yield CompletionJob(parts=parts, labels=None if load_here else it.labels, options=opts, key=it.id)

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="objects", unit="obj", dynamic_ncols=True)
    t0 = time.perf_counter()
    recorded: set[str] = set()

    def record(it: BatchItem, res) -> None:
        if it.id in recorded:  # a retried task answered twice: the first answer stands
            return
        recorded.add(it.id)
        if it.id in load_seconds and hasattr(res, "timings"):  # read here, completed on a Ray actor
            res.timings["load_parts"] = load_seconds.pop(it.id)
        entry = _write_one(it, res, out)
        ledger.append(entry)
        if entry["status"] == "ok":
            summary.ok += 1
            summary.parts += int(entry.get("parts") or 0)
        else:
            summary.failed += 1
            summary.failed_ids.append(it.id)
            log.warning("batch: %s failed: %s", it.id, entry["error"])
        if bar is not None:
            bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
            bar.update(1)
        if on_result is not None:
            on_result(it, entry)

    try:
        for job, res in executor(jobs()):
            while failed_early:
                record(*failed_early.pop(0))
            record(by_id[job.key], res)
        while failed_early:
            record(*failed_early.pop(0))
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        if ray is not None:
            summary.worker_restarts = pool.restarts
    return summary


def _defaults_of(model_path: Path):
    """The model's default options without loading its graphs (for Ray runs)."""
    from holopart_infer.checkpoint import checkpoint_inference_defaults
    from holopart_infer.engines.registry import CHECKPOINT_DIR, model_kind
    from holopart_infer.pipeline import CompletionOptions

    if model_kind(model_path) == CHECKPOINT_DIR:
        return CompletionOptions.with_defaults(checkpoint_inference_defaults(model_path), str(model_path))
    from holopart_infer.manifest import load_manifest

    return CompletionOptions.with_defaults(load_manifest(model_path).defaults, str(model_path))


def _write_one(it: BatchItem, res, out: Path) -> dict:
    """Write one object's output (atomically) and return its ledger entry."""
    from holopart_infer.pipeline import CompletionResult

    entry: dict[str, Any] = {"id": it.id, "input": str(it.input), "output": None, "parts": None,
                             "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if isinstance(res, CompletionResult):
        target = out / f"{it.id}.glb"
        try:
            # OUT_DIR/<id>.glb belongs to this run's ledger: an object redone (failed before, or
            # --overwrite) replaces its own earlier output; inputs stay protected
            res.save(target, source=it.input, overwrite=True)
        except Exception as e:  # e.g. a full disk: this object failed, the run goes on
            res = e
        else:
            timings = {k: round(float(v), 4) for k, v in res.timings.items()}
            entry.update(status="ok", output=target.name, parts=len(res.parts),
                         empty_parts=sum(1 for p in res.parts if len(p.faces) == 0),
                         replaced_parts=res.replaced,  # replaced by their closed visible patch (quality guard)
                         quality={p.name: p.quality.as_extras() for p in res.parts if p.quality is not None},
                         seconds=round(sum(timings.values()), 4), timings=timings,
                         worker=res.stats.get("worker"), error=None, error_type=None)
            return entry
    err = res if isinstance(res, BaseException) else HoloPartError(f"unexpected result {type(res).__name__}")
    entry.update(status="failed", error=str(err) or type(err).__name__, error_type=type(err).__name__)
    return entry


# ----------------------------------------------------------------------------- CLI
#: exit codes of ``holopart-infer batch``
EXIT_ALL_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3


def add_batch_command(sub, common=None) -> None:
    """Register ``holopart-infer batch`` on the CLI's subparsers (``common``: the shared -v/-q parent)."""
    from holopart_infer import cli
    from holopart_infer.pipeline import CompletionOptions

    b = sub.add_parser(
        "batch", parents=[common] if common is not None else [], help="complete many objects into a folder, resumably (parts of several objects share batches)",
        description="Complete many objects: files, folders of objects, or list files (.txt one path per line; "
                    ".jsonl with per-object labels/options/id). Writes OUT_DIR/<id>.glb atomically and "
                    "OUT_DIR/ledger.jsonl; a re-run skips objects already done. Exit codes: 0 every object "
                    "completed (or already done), 3 some objects failed (see the ledger), 2 bad arguments or "
                    "inputs, 1 internal error, 130 interrupted.")
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="object file, folder of objects, or .txt/.jsonl list")
    b.add_argument("-o", "--output-dir", dest="output_dir", required=True, help="output folder (created)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint dir (published layout; needs the [torch] extra)")
    src.add_argument("--model", help="exported model dir (manifest.json + ONNX)")
    b.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run on Ray: 'auto' (the running cluster, else a local one) or a cluster address; "
                        "needs pip install 'holopart-infer[ray]'")
    b.add_argument("--ray-workers", dest="ray_workers", type=int,
                   help="number of Ray actors (default: one per GPU, else one per CPU)")
    cli._common_run_args(b)
    cli.add_option_args(b, CompletionOptions().__dict__,
                        "the library's; the model's manifest and a .jsonl line's options win over them")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    """``holopart-infer batch``: see :func:`add_batch_command` for the exit codes."""
    import sys

    from holopart_infer import cli
    from holopart_infer.pipeline import load

    items = collect_items(args.inputs)
    path = args.weights or args.model
    if args.ray:
        model = path
        base = cli._options_from(args, _defaults_of(Path(path)))
    else:
        model = load(path, backend=args.backend, device=args.device, verify_integrity=not args.no_verify)
        base = cli._options_from(args, model.default_options())
    base.validate()
    summary = run_batch(model, items, args.output_dir, options=base, parts_per_batch=args.parts_per_batch,
                        ray=args.ray, ray_workers=args.ray_workers, backend=args.backend, device=args.device,
                        redo=args.overwrite, show_progress=not args.quiet)
    print(summary.describe())
    if summary.failed:
        shown = ", ".join(summary.failed_ids[:10]) + (" ..." if len(summary.failed_ids) > 10 else "")
        print(f"failed: {shown} (errors in {summary.ledger})", file=sys.stderr)
    print(f"outputs in {summary.out_dir}, ledger {summary.ledger}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_ALL_OK
