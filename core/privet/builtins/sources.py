"""Generic sources: JSON Lines and CSV files whose rows are records as they are.

Both read through :mod:`privet.io`, so their bad lines get the same reasons and
``file:line`` locations as every other reader of Privet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import attrs

from ..components import BadRecord, Record, Shard, Source
from ..hookspecs import hookimpl
from ..io import FileListing, Located, iter_lines, open_text, read_csv, read_jsonl
from ..validators import existing_paths

__all__ = ["Csv", "JsonLines", "iter_lines", "open_text"]  # the two readers moved to privet.io


class _FileSource(Source):
    """Shared listing: files named in ``paths`` plus matching files in named folders.

    A file in a folder that is a symlink to somewhere outside it is not read: it becomes
    an ``outside_root`` bad record (``follow_symlinks: true`` reads it).
    """

    patterns: tuple[str, ...] = ()

    def _listing(self) -> FileListing:
        cached = getattr(self, "_listing_cache", None)
        if cached is None:
            cached = self._listing_cache = FileListing(
                self.options.paths, self.patterns, follow_symlinks=self.options.follow_symlinks)
        return cached

    def shards(self) -> list[Shard]:
        return [Shard(p) for p in self._listing().files]

    def files(self) -> list[str]:
        return sorted(self._listing().readable())

    def read_located(self, shard: Shard) -> Iterator[Located]:
        """``(file:line, record or BadRecord)``: the engine names lines with it."""
        refusal = self._listing().refusal(shard.path)
        if refusal is not None:
            yield refusal.location, refusal
            return
        yield from self._read_file(shard.path)

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        for _where, item in self.read_located(shard):
            yield item

    def _read_file(self, path: str) -> Iterator[Located]:
        raise NotImplementedError


class JsonLines(_FileSource):
    """Each line of one or more ``.jsonl`` files (or ``.jsonl.gz``) is one record."""

    patterns = ("*.jsonl*",)

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=existing_paths)
        #: Read files in the folders that are symlinks to places outside them.
        follow_symlinks: bool = False

    def _read_file(self, path: str) -> Iterator[Located]:
        return read_jsonl(path)


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

    def _read_file(self, path: str) -> Iterator[Located]:
        return read_csv(path, delimiter=self.options.delimiter,
                        parse_numbers=self.options.parse_numbers)


@hookimpl
def register_sources(register):
    register("jsonl", JsonLines)
    register("csv", Csv)
