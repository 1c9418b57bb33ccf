"""The process's memory as a run reports it (``CompletionResult.stats["memory"]``).

Two figures come from the operating system, not from an estimate:

* **resident set size (RSS)**: the memory the process holds now
  (``/proc/self/statm`` on Linux; elsewhere the peak stands in for it).
* **peak RSS**: the most it has held since it started (``VmHWM`` of
  ``/proc/self/status`` on Linux, ``ru_maxrss`` elsewhere). It is process-wide:
  in a process that runs one completion (the CLI) it is that run's peak; in a
  long-lived process (a service, a notebook) it is the highest of everything
  the process has done, which the ``start`` figure of a run helps to read.

The sizes of arrays (the input's parts, the result's meshes) are counted from
their ``nbytes``, so what must grow with the object (its input and its output
meshes) is reported apart from the working set.
"""
from __future__ import annotations

import os
import resource
import sys

import numpy as np

_MB = 1024.0 * 1024.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, kB on Linux/BSD


def rss_mb() -> float:
    """The process's resident set size now, in MiB (the peak where the OS does not say)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / _MB
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()


def arrays_mb(arrays) -> float:
    """Total ``nbytes`` of the numpy arrays in ``arrays`` (None entries skipped), in MiB."""
    return sum(int(a.nbytes) for a in arrays if isinstance(a, np.ndarray)) / _MB


class Tracker:
    """A run's memory: RSS at the start, the peak after each stage, the sizes of input and output."""

    def __init__(self):
        self.start_rss_mb = rss_mb()
        self.start_peak_mb = peak_rss_mb()
        self.peak_after: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """Record the process's peak RSS after ``stage`` (the highest when a stage repeats)."""
        self.peak_after[stage] = max(self.peak_after.get(stage, 0.0), peak_rss_mb())

    def report(self, *, input_mb: float, result_mb: float) -> dict:
        """The ``stats["memory"]`` entry (MiB, rounded to 0.1)."""
        peak = peak_rss_mb()
        return {
            "peak_rss_mb": round(peak, 1),
            "start_rss_mb": round(self.start_rss_mb, 1),
            "peak_before_run_mb": round(self.start_peak_mb, 1),
            "end_rss_mb": round(rss_mb(), 1),
            "peak_rss_mb_after_stage": {k: round(v, 1) for k, v in self.peak_after.items()},
            "input_mb": round(input_mb, 1),
            "result_mb": round(result_mb, 1),
        }
