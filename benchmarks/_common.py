"""Helpers shared by the benchmark scripts in this folder.

The scripts are run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they import these with ``from _common import machine, replace_results``.

* :func:`machine` describes the CPU and the OS for the "Machine:" line of a results section.
* :func:`replace_results` puts a fresh results section between a script's two HTML-comment
  markers in its ``docs/benchmarks-*.md`` page, leaving the prose around them as it is.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name, e.g. ``AMD EPYC``.

    The first ``model name`` line of ``/proc/cpuinfo`` (Linux); elsewhere, or where that
    file cannot be read or has no such line, ``platform.processor()``, or failing that
    ``platform.machine()`` (the architecture, e.g. ``x86_64``).
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def machine(*, load: bool = False) -> str:
    """The machine a benchmark ran on, in one line: CPU model, CPU count, OS and kernel.

    For example ``AMD EPYC, 2 CPUs, Linux 6.1.0``. With ``load=True`` (and where the OS
    has ``os.getloadavg``), the 1-minute load average at the time of the call follows:
    ``AMD EPYC, 2 CPUs, Linux 6.1.0, load average 1.0 at the end`` (call it when the
    measurements are done, as the wording says).
    """
    suffix = ""
    if load and hasattr(os, "getloadavg"):
        suffix = f", load average {os.getloadavg()[0]:.1f} at the end"
    return f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}{suffix}"


def replace_results(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between the markers ``begin`` and ``end`` of ``path`` with ``section``.

    The file becomes: everything before ``begin``, ``begin``, a newline, ``section`` as
    given (end it with a newline so that ``end`` starts a line of its own), ``end``, and
    everything after ``end``: the prose around the markers stays byte for byte. Only the
    first ``begin`` and the first ``end`` after it count. A file that does not exist yet
    is written as the two markers with the section between them.

    Raises ``SystemExit`` (with a message naming the file and the markers) where the file
    lacks ``begin``, or lacks ``end`` after it; the file is then left as it was.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else f"{begin}\n{end}\n"
    head, found_begin, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise SystemExit(f"{path}: the markers {begin!r} and {end!r} are missing")
    path.write_text(f"{head}{begin}\n{section}{end}{tail}", encoding="utf-8")
