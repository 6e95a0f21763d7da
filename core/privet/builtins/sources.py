"""Generic sources: JSON Lines and CSV files whose rows are records as they are.

Both read through :mod:`privet.io`, so their bad lines get the same reasons and
``file:line`` locations as every other reader of Privet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import attrs

from ..components import Source
from ..hookspecs import hookimpl
from ..io import ListedFilesSource, Located, iter_lines, open_text, read_csv, read_jsonl
from ..validators import existing_paths, non_negative

__all__ = ["Csv", "JsonLines", "iter_lines", "open_text"]  # the two readers moved to privet.io


class _FileSource(ListedFilesSource, Source):
    """Files named in ``paths`` plus matching files in named folders (``privet.io``'s
    listing: a symlink out of its folder is an ``outside_root`` bad record)."""


class JsonLines(_FileSource):
    """Each line of one or more ``.jsonl`` files (or ``.jsonl.gz``) is one record."""

    patterns = ("*.jsonl*",)

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=existing_paths)
        #: Read files in the folders that are symlinks to places outside them.
        follow_symlinks: bool = False
        #: Cut files (and s3:// objects) bigger than this many MiB into byte-range shards
        #: that workers read side by side (0: one shard per file).
        chunk_mb: float = attrs.field(default=0.0, validator=non_negative)

    def read_file(self, path: str) -> Iterator[Located]:
        return read_jsonl(path)

    def read_range(self, path: str, start: int, end: int) -> Iterator[Located]:
        return read_jsonl(path, start=start, end=end)


class Csv(_FileSource):
    """Each row of one or more CSV files is one record (header row gives the keys).

    Numbers are parsed when ``parse_numbers`` is set; empty cells become ``None``. An
    unreadable header is one ``bad_csv_header`` bad record at ``file:1`` (file skipped).
    """

    patterns = ("*.csv*",)

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=existing_paths)
        delimiter: str = ","
        parse_numbers: bool = True
        #: Read files in the folders that are symlinks to places outside them.
        follow_symlinks: bool = False

    def read_file(self, path: str) -> Iterator[Located]:
        return read_csv(path, delimiter=self.options.delimiter,
                        parse_numbers=self.options.parse_numbers)


@hookimpl
def register_sources(register):
    register("jsonl", JsonLines)
    register("csv", Csv)
