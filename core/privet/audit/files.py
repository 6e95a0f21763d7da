"""Which files make up a log, and where its last complete line is.

A log ``LOG`` rotates into ``LOG.1``, ``LOG.2``, ... (the number only grows: renaming one
file is atomic, shifting a series of them is not), so the chain runs ``LOG.1``,
``LOG.2``, ..., ``LOG``. Reading the tail backwards keeps opening a large log cheap.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..storage import Storage

_BLOCK = 1 << 16


def rotated(path: Path) -> list[tuple[int, Path]]:
    """``(n, LOG.n)`` for every rotated file of ``path``, oldest first."""
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]{0,8})")
    found = []
    for name in Storage(path.parent, cipher=None).listdir():
        match = pattern.fullmatch(name)
        if match and (path.parent / name).is_file():
            found.append((int(match.group(1)), path.parent / name))
    return sorted(found)


def chain_files(path: Path) -> list[Path]:
    """The log's files in chain order: the rotated ones, then the live one if it exists."""
    files = [p for _, p in rotated(path)]
    if path.is_file():
        files.append(path)
    return files


@dataclass(frozen=True)
class Tail:
    """The end of one file: its size, where its complete lines end, its last complete line."""

    size: int
    complete_end: int
    last_line: bytes | None
    last_start: int

    @property
    def partial(self) -> int:
        """Bytes after the last newline: a line cut off by a crash."""
        return self.size - self.complete_end


def read_tail(path: Path) -> Tail:
    """The :class:`Tail` of ``path``, reading backwards only as far as its last complete line."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        buf, start = b"", size
        while start > 0:
            step = min(_BLOCK, start)
            start -= step
            fh.seek(start)
            buf = fh.read(step) + buf
            end = buf.rfind(b"\n")
            if end >= 0 and (buf.rfind(b"\n", 0, end) >= 0 or start == 0):
                break
    end = buf.rfind(b"\n")
    if end < 0:
        return Tail(size, 0, None, 0)
    begin = buf.rfind(b"\n", 0, end) + 1
    return Tail(size, start + end + 1, buf[begin:end], start + begin)


def line_number(path: Path, offset: int) -> int:
    """The 1-based number of the line starting at byte ``offset`` (on error paths only)."""
    count, done = 1, 0
    with open(path, "rb") as fh:
        while done < offset:
            block = fh.read(min(_BLOCK, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count
