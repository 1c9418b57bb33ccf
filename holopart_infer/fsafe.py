"""File safety: the one place where holopart_infer writes, hashes and locks files.

Every writer of the library (glb scenes, previews, model directories, manifests,
engine caches, the verified-hash record) goes through this module, so the
guarantees below hold everywhere (README "Guarantees and exit codes"):

* **Atomic.** Data goes to a uniquely named hidden temporary file (or folder)
  in the target's own folder, is fsync'ed, and is then renamed into place; a
  reader sees the old content or the whole new one, never a partial file.
* **Never replacing unless asked.** Without ``overwrite`` the final step is a
  no-replace publish (``os.link`` for files, ``renameat2(RENAME_NOREPLACE)`` or
  an exclusive claim for folders): a file that appeared at the target while we
  computed is an :class:`~holopart_infer.errors.OutputExists` error naming it,
  and it is kept.
* **Inputs protected.** :func:`check_output` refuses an output path that is,
  lies inside or contains one of the inputs, resolved through symlinks and
  hard links.
* **Interrupt-safe.** Temporary files and folders are registered while they
  exist; :func:`remove_temporaries` (called by the CLI's signal handling) and
  the ``except BaseException`` of every writer remove them. :func:`interrupted`
  records a signal that a dependency may have swallowed, and every publish
  step calls :func:`check_interrupt` first.

Standard library only.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from holopart_infer.errors import Interrupted, OutputError, OutputExists

_HASH_CHUNK = 16 << 20
TMP_MARK = ".tmp-"  # every temporary name contains it (".<name>.tmp-XXXX")

_live: set[Path] = set()  # temporaries that exist right now
_live_lock = threading.Lock()
_signal: int | None = None  # a termination signal received (and maybe swallowed)


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(text: object) -> bool:
    """True for 64 lowercase hex digits that are not all zeros (a placeholder)."""
    return (isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)
            and text.strip("0") != "")


# --------------------------------------------------------------------------- interrupts
def interrupted(signum: int) -> None:
    """Record a termination signal; later :func:`check_interrupt` calls raise."""
    global _signal
    _signal = signum


def pending_signal() -> int | None:
    return _signal


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a signal arrived (even one a dependency swallowed)."""
    if _signal is not None:
        raise Interrupted(_signal)


def remove_temporaries() -> int:
    """Remove every temporary file/folder this process still has; returns the count."""
    with _live_lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    return len(paths)


def _track(p: Path) -> None:
    with _live_lock:
        _live.add(p)


def _untrack(p: Path) -> None:
    with _live_lock:
        _live.discard(p)


@contextlib.contextmanager
def signals_raise(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM record themselves and raise :class:`Interrupted`.

    Raising lets every ``except BaseException``/``finally`` clean up; recording
    catches the case where a dependency swallows the exception.
    Main thread only (a no-op elsewhere).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        interrupted(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- paths
def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(p))))


def conflict_with_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """How ``output`` collides with an input, or None.

    Compares paths resolved through symlinks (and, for existing files, inode
    identity, so hard links count): output *is* an input, lies *inside* an input
    folder, or *contains* an input (a folder that would be replaced).
    """
    out = _resolved(output)
    for src in inputs:
        if src is None:
            continue
        inp = _resolved(src)
        same = out == inp
        if not same:
            with contextlib.suppress(OSError):
                same = os.path.exists(output) and os.path.exists(src) and os.path.samefile(output, src)
        if same:
            return f"is the input {src}"
        if inp in out.parents:
            return f"lies inside the input folder {src}"
        if out in inp.parents:
            return f"contains the input {src}"
    return None


def check_output(path: str | os.PathLike, *, what: str = "output", overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = (), suffixes: Iterable[str] | None = None,
                 directory: bool = False) -> Path:
    """Check before any work that ``path`` can be written, in a supported format.

    Args:
        path: the output file (or folder when ``directory``).
        what: how the message names it ("output", "preview", "model directory").
        overwrite: an existing target may be replaced.
        inputs: every path that was or will be read; the output may not be,
            lie inside or contain any of them.
        suffixes: accepted extensions (lower case, with the dot); None: any.
        directory: the output is a folder.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: collides with an input, wrong extension, is a folder
            (or a file, for ``directory``), parent folder missing or not writable.
        OutputExists: exists and ``overwrite`` is False.
    """
    path = Path(path)
    clash = conflict_with_input(path, inputs)
    if clash:
        raise OutputError(f"{what} {path} {clash}; inputs are never modified or replaced. "
                          "Choose another output path")
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {path} exists and is not a folder; choose another path")
    elif path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name such as {path / ('out' + (tuple(suffixes)[0] if suffixes else ''))}")
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if path.suffix.lower() not in suffixes:
            raise OutputError(f"{what} {path}: unsupported extension {path.suffix or '(none)'!r}; "
                              f"supported: {', '.join(suffixes)}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExists(f"{what} {path} already exists; pass --overwrite (overwrite=True) to replace it, "
                           "or choose another path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: folder {parent} does not exist; create it first")
    probe_writable(parent, what, path)
    return path


def probe_writable(folder: Path, what: str, path: Path) -> None:
    """Create and remove a temporary file: the only reliable test (ACLs, read-only mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + TMP_MARK + "probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot write in {folder} ({e.strerror or e}); "
                          "choose a writable folder") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


# --------------------------------------------------------------------------- files
def fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # the rename's durability cannot be forced (nor needs it) on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_file(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    os.close(fd)
    t = Path(tmp)
    _track(t)
    return t


def publish_file(tmp: Path, path: Path, overwrite: bool) -> None:
    check_interrupt()
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: never replaces
    except FileExistsError:
        raise OutputExists(f"{path} appeared while the result was being computed; it was kept. "
                           "Pass --overwrite (overwrite=True) to replace it, or choose another path") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        _rename_noreplace(tmp, path)  # filesystem without hard links
        return
    os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview, *,
                 overwrite: bool = True, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: target file; its folder is created if missing.
        data: the bytes.
        overwrite: replace an existing file; False: an existing file (even one
            created while we wrote) raises :class:`OutputExists` and is kept.
        mode: permission bits of the new file.

    Raises:
        OutputExists: ``overwrite`` is False and ``path`` exists.
        Interrupted: a termination signal arrived; nothing was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        publish_file(tmp, path, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _untrack(tmp)
    fsync_dir(path.parent)
    return path


# --------------------------------------------------------------------------- folders
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2_fn = _renameat2() if os.name == "posix" else None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; :class:`OutputExists` if ``dst`` exists (file or folder)."""
    if _renameat2_fn is not None:
        rc = _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise OutputExists(f"{dst} appeared while the result was being computed; it was kept. "
                               "Pass --overwrite (overwrite=True) to replace it, or choose another path")
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    # no renameat2 here: claim the name exclusively, then rename onto our own empty claim
    try:
        if src.is_dir():
            os.mkdir(dst)
        else:
            os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise OutputExists(f"{dst} appeared while the result was being computed; it was kept. "
                           "Pass --overwrite (overwrite=True) to replace it, or choose another path") from None
    os.replace(src, dst)  # a folder replaces only an empty one: anything put in our claim makes this fail


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace_if=None) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then rename it into place.

    Yields the temporary folder; when the block ends without an exception it
    becomes ``path``. On any exception (interrupts included) it is removed.

    Args:
        path: the folder to create.
        replace_if: None: never replace (an existing ``path``, even one created
            meanwhile, raises :class:`OutputExists`). A callable
            ``replace_if(path) -> None`` that raises unless the existing folder
            may be replaced; then the old folder is swapped out and removed
            only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    _track(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
        check_interrupt()
        if replace_if is None or not (path.exists() or path.is_symlink()):
            _rename_noreplace(tmp, path)
        else:
            replace_if(path)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}old-", dir=path.parent))
            _track(old)
            os.replace(path, old)  # onto our own empty folder
            try:
                os.rename(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
            _untrack(old)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _untrack(tmp)


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed), held for the block.

    ``fcntl.flock`` on POSIX. Where it is missing (Windows) there is no lock and
    correctness rests on the atomic writes alone (the last writer wins, nobody
    sees a partial file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/holopart_infer/...``, else ``~/.cache/holopart_infer/...``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec says.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base.joinpath("holopart_infer", *parts)


# --------------------------------------------------------------------------- verified hashes
class HashRecord:
    """Hashes already verified, keyed by resolved path, size, mtime_ns, ctime_ns and inode.

    Lets a model dir's integrity be checked on every load at the cost of one
    ``stat`` per file once it was hashed: any write to a file changes its
    mtime and ctime (ctime cannot be set back by the user), so the record
    cannot vouch for altered bytes. Stored as JSON in the user cache dir
    (:func:`user_cache_dir`), written atomically under a lock; an unreadable or
    unwritable record only costs a re-hash.
    """

    MAX_ENTRIES = 4096

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries: dict[str, dict] | None = None
        self._new: dict[str, dict] = {}

    @classmethod
    def default(cls) -> "HashRecord":
        return cls(user_cache_dir("verified-sha256.json"))

    @staticmethod
    def _key(p: Path) -> tuple[str, dict]:
        st = os.stat(p)
        return str(_resolved(p)), {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                   "ino": st.st_ino, "dev": st.st_dev}

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            import json

            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, path: str | os.PathLike) -> str:
        """The file's SHA-256: from the record if its stat is unchanged, else hashed now."""
        key, stat = self._key(Path(path))
        known = self._load().get(key)
        if isinstance(known, dict) and {k: known.get(k) for k in stat} == stat and is_sha256(known.get("sha256")):
            return known["sha256"]
        digest = sha256_file(path)
        if self._key(Path(path))[1] == stat:  # unchanged while hashing
            self._new[key] = {**stat, "sha256": digest}
        return digest

    def save(self) -> None:
        """Merge the new entries into the record on disk (best effort)."""
        if not self._new:
            return
        import json
        import logging

        try:
            with file_lock(self.path.with_name(self.path.name + ".lock")):
                self._entries = None
                entries = {**self._load(), **self._new}
                if len(entries) > self.MAX_ENTRIES:
                    entries = dict(list(entries.items())[-self.MAX_ENTRIES:])
                atomic_write(self.path, json.dumps(entries, indent=0, sort_keys=False).encode("utf-8"))
                self._entries, self._new = entries, {}
        except OSError as e:
            logging.getLogger("holopart_infer").debug("verified-hash record %s not written: %s", self.path, e)
