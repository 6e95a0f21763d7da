"""Generic sources: JSON Lines and CSV files whose rows are records as they are."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import IO, Iterator

import attrs

from ..components import BadRecord, Record, Shard, Source
from ..hookspecs import hookimpl
from ..validators import existing_paths


def open_text(path: str) -> IO[str]:
    """Open a text file, transparently gunzipping ``.gz``; undecodable bytes stay visible."""
    raw = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def iter_lines(path: str) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text) for each line, or (line number, None) if not UTF-8.

    Streams the file: memory does not grow with its size.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None


def _expand(paths: list[Path], pattern: str) -> list[str]:
    out: list[str] = []
    for p in paths:
        out.extend(sorted(str(x) for x in p.glob(pattern)) if p.is_dir() else [str(p)])
    return out


class JsonLines(Source):
    """Each line of one or more ``.jsonl`` files (or ``.jsonl.gz``) is one record."""

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=existing_paths)

    def shards(self) -> list[Shard]:
        return [Shard(p) for p in _expand(self.options.paths, "*.jsonl*")]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        name = Path(shard.path).name
        for lineno, line in iter_lines(shard.path):
            if line is None:
                yield BadRecord("invalid_utf8", f"{name}:{lineno}")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield BadRecord("malformed_json", f"{name}:{lineno}", str(err))
                continue
            if not isinstance(obj, dict):
                yield BadRecord("not_an_object", f"{name}:{lineno}")
                continue
            yield obj


class Csv(Source):
    """Each row of one or more CSV files is one record (header row gives the keys).

    Numbers are parsed when ``parse_numbers`` is set; empty cells become ``None``.
    """

    @attrs.define(frozen=True)
    class Options:
        paths: list[Path] = attrs.field(validator=existing_paths)
        delimiter: str = ","
        parse_numbers: bool = True

    def shards(self) -> list[Shard]:
        return [Shard(p) for p in _expand(self.options.paths, "*.csv*")]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        name = Path(shard.path).name
        with open_text(shard.path) as fh:
            reader = csv.reader(fh, delimiter=self.options.delimiter)
            try:
                header = next(reader)
            except (StopIteration, UnicodeDecodeError):
                return
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (UnicodeDecodeError, csv.Error) as err:
                    yield BadRecord("unreadable_row", f"{name}:{reader.line_num}", str(err))
                    return
                if not row:
                    continue
                if len(row) != len(header):
                    yield BadRecord("wrong_column_count", f"{name}:{reader.line_num}",
                                    f"{len(row)} cells, header has {len(header)}")
                    continue
                yield {k: self._value(v) for k, v in zip(header, row)}

    def _value(self, v: str) -> object:
        if v == "":
            return None
        if self.options.parse_numbers:
            for cast in (int, float):
                try:
                    return cast(v)
                except ValueError:
                    pass
        return v


@hookimpl
def register_sources(register):
    register("jsonl", JsonLines)
    register("csv", Csv)
