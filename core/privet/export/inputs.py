"""Reading raw records for ``privet predict``: JSON Lines and CSV, with their locations.

This is the default of :meth:`privet.Model.read_inputs`. Every record comes with the file
and line it came from, so that an unreadable line becomes an error entry that names it
while the rest are predicted. Standard library only: no torch here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from ..builtins.sources import iter_lines, open_text
from ..components import BadRecord, Record
from ..errors import UsageError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
CSV_SUFFIXES = (".csv", ".csv.gz")

Located = tuple[str, "Record | BadRecord"]


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def input_files(path: str | Path) -> list[Path]:
    """The readable files ``path`` names: itself, or the JSONL/CSV files in a folder."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input not found: {path}; pass a .jsonl or .csv file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None
                       and not p.name.startswith("."))
        if not files:
            raise UsageError(f"{path}: no .jsonl or .csv files in this folder")
        return files
    if _kind(path) is None:
        raise UsageError(f"{path}: cannot read this kind of file; the model reads .jsonl or .csv "
                         f"records (its plugin may read other inputs)")
    return [path]


def read_records(path: str | Path) -> Iterator[Located]:
    """``(location, record or BadRecord)`` for each line or row of the input."""
    root = Path(path)
    for file in input_files(root):
        label = str(file.relative_to(root)) if root.is_dir() else file.name
        reader = read_jsonl if _kind(file) == "jsonl" else read_csv
        yield from reader(file, label)


def read_jsonl(file: Path, label: str) -> Iterator[Located]:
    """One record per non-blank line; bad lines become BadRecords naming the line."""
    for lineno, line in iter_lines(str(file)):
        where = f"{label}:{lineno}"
        if line is None:
            yield where, BadRecord("invalid_utf8", where)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield where, BadRecord("malformed_json", where, str(err))
            continue
        if not isinstance(obj, dict):
            yield where, BadRecord("not_an_object", where, f"got {type(obj).__name__}")
            continue
        yield where, obj


def _number(value: str) -> object:
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_csv(file: Path, label: str) -> Iterator[Located]:
    """One record per row (the header row gives the keys); numbers are parsed."""
    with open_text(str(file)) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (UnicodeDecodeError, csv.Error) as err:
            yield f"{label}:1", BadRecord("unreadable_row", f"{label}:1", str(err))
            return
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as err:
                where = f"{label}:{reader.line_num}"
                yield where, BadRecord("unreadable_row", where, str(err))
                return
            where = f"{label}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                yield where, BadRecord("wrong_column_count", where,
                                       f"{len(row)} cells, header has {len(header)}")
                continue
            yield where, {k: _number(v) for k, v in zip(header, row)}
