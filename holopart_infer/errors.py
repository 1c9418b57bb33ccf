"""Exception hierarchy.

Every error the library raises on purpose derives from :class:`HoloPartError`
and also from the builtin a caller would naturally catch (``ValueError``,
``FileNotFoundError`` ...), so ``except ValueError`` keeps working for callers
that do not know this library.
"""
from __future__ import annotations


class HoloPartError(Exception):
    """Base class of every error raised on purpose by holopart_infer."""


class InputError(HoloPartError, ValueError):
    """A user-supplied value (argument, array, file content) is unusable."""


class InputFileNotFound(HoloPartError, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class CheckpointError(HoloPartError, ValueError):
    """A checkpoint folder is incomplete, inconsistent or unreadable."""


class ModelDirError(HoloPartError, ValueError):
    """An exported model directory (manifest + ONNX graphs) is unusable."""


class OutputError(InputError):
    """An output path is unusable: it collides with an input, has an unsupported
    extension, is a folder, or its folder is missing or not writable."""


class OutputExists(OutputError, FileExistsError):
    """An output exists (or appeared while computing) and overwriting was not asked for."""


class ShapeError(InputError):
    """A tensor fed to a graph or a function has the wrong shape or dtype."""


class BackendUnavailable(HoloPartError, ImportError):
    """An explicitly requested backend/device cannot be used here.

    The message carries the install hint (``pip install ...``).
    """


class EngineError(HoloPartError, RuntimeError):
    """Building or running an inference engine failed."""


class EmptyResult(HoloPartError, RuntimeError):
    """Every part came out empty: the model produced no surface (a model problem, not the input)."""


class Interrupted(BaseException):
    """A termination signal (SIGINT, SIGTERM) arrived; the work was abandoned and
    nothing was written. A ``BaseException``, like ``KeyboardInterrupt``, so
    ``except Exception`` in the library or its dependencies does not stop it."""

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"interrupted by {name}; nothing was written")

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def missing_extra(module: str, extra: str, what: str) -> BackendUnavailable:
    """Build the standard error for an optional dependency that is not installed."""
    return BackendUnavailable(
        f"{what} needs the Python package '{module}', which is not installed. "
        f"Install it with: pip install 'holopart-infer[{extra}]'"
    )
