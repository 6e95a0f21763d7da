"""Text sources: JSON Lines, CSV and folders of .txt files.

Every source emits records with the same keys whatever the input calls them: ``text``
(a non-empty string), ``label`` (a string, or ``None`` when the record has none; absent
when ``label_field`` is null) and any ``keep_fields`` as they are. Labels become strings
so that a label column has one type in the Arrow cache even when a file mixes ``1`` and
``"1"``. Files are streamed line by line: memory does not grow with the file size.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import attrs
from privet import BadRecord, Record, Shard, Source
from privet.builtins.sources import iter_lines
from privet import existing_path, existing_paths


def _expand(paths: list[Path], patterns: tuple[str, ...]) -> list[str]:
    """Files named directly, plus the matching files of folders (sorted, deterministic)."""
    out: list[str] = []
    for p in paths:
        if p.is_dir():
            found: set[str] = set()
            for pattern in patterns:
                found.update(str(x) for x in p.glob(pattern) if x.is_file())
            out.extend(sorted(found))
        else:
            out.append(str(p))
    return out


class _FieldMapper:
    """Turns a parsed row into a Privet text record, or a BadRecord saying why not."""

    def __init__(self, text_field: str, label_field: str | None, keep_fields: list[str]) -> None:
        self.text_field = text_field
        self.label_field = label_field
        self.keep_fields = keep_fields

    def __call__(self, row: dict[str, Any], location: str) -> Record | BadRecord:
        text = row.get(self.text_field)
        if text is None:
            return BadRecord("missing_text", location, f"no field {self.text_field!r}")
        if not isinstance(text, str):
            return BadRecord("text_not_a_string", location, f"{self.text_field!r} is {type(text).__name__}")
        if not text.strip():
            return BadRecord("empty_text", location)
        record: Record = {"text": text}
        if self.label_field is not None:
            label = row.get(self.label_field)
            if isinstance(label, (dict, list)):
                return BadRecord("bad_label", location, f"{self.label_field!r} is a {type(label).__name__}")
            record["label"] = None if label is None or label == "" else str(label)
        for key in self.keep_fields:
            record[key] = row.get(key)
        return record


@attrs.define(frozen=True, kw_only=True)
class _FieldOptions:
    text_field: str = "text"
    #: Field holding the label; ``null`` for unlabelled corpora (language modelling).
    label_field: Optional[str] = "label"
    #: Other fields copied into the record unchanged (e.g. a split or id column).
    keep_fields: list[str] = attrs.field(factory=list)


class TextJsonl(Source):
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``); text and label fields by name.

    Malformed lines, non-UTF-8 lines, non-object lines and empty texts are dropped with
    the reason and ``file:line``.
    """

    @attrs.define(frozen=True)
    class Options(_FieldOptions):
        paths: list[Path] = attrs.field(validator=existing_paths)

        def __attrs_post_init__(self) -> None:
            if not self.paths:
                raise ValueError("paths: name at least one .jsonl file or folder")

    def shards(self) -> list[Shard]:
        return [Shard(p) for p in _expand(self.options.paths, ("*.jsonl", "*.jsonl.gz", "*.json"))]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        o = self.options
        to_record = _FieldMapper(o.text_field, o.label_field, o.keep_fields)
        name = Path(shard.path).name
        for lineno, line in iter_lines(shard.path):
            where = f"{name}:{lineno}"
            if line is None:
                yield BadRecord("invalid_utf8", where)
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield BadRecord("malformed_json", where, err.msg)
                continue
            if not isinstance(row, dict):
                yield BadRecord("not_an_object", where)
                continue
            yield to_record(row, where)


class TextCsv(Source):
    """CSV (or TSV with ``delimiter: "\\t"``) with a header row; text and label columns by name.

    Cells stay strings. A row with undecodable bytes, or with the wrong number of cells,
    is dropped with ``file:line``; the rest of the file is still read.
    """

    @attrs.define(frozen=True)
    class Options(_FieldOptions):
        paths: list[Path] = attrs.field(validator=existing_paths)
        delimiter: str = ","
        #: Largest cell accepted, in characters (Python's csv default is 131072).
        max_field_chars: int = 10_000_000

        def __attrs_post_init__(self) -> None:
            if not self.paths:
                raise ValueError("paths: name at least one .csv file or folder")
            if len(self.delimiter) != 1:
                raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")

    def shards(self) -> list[Shard]:
        return [Shard(p) for p in _expand(self.options.paths, ("*.csv", "*.csv.gz", "*.tsv", "*.tsv.gz"))]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        o = self.options
        to_record = _FieldMapper(o.text_field, o.label_field, o.keep_fields)
        name = Path(shard.path).name
        bad_lines: set[int] = set()

        def lines() -> Iterator[str]:
            # Decode line by line so one bad byte taints one row, not the rest of the file;
            # the line keeps its shape (replacement characters) so quoting stays in step.
            opener = gzip.open if shard.path.endswith(".gz") else open
            with opener(shard.path, "rb") as fh:
                for lineno, raw in enumerate(fh, start=1):
                    try:
                        yield raw.decode("utf-8")
                    except UnicodeDecodeError:
                        bad_lines.add(lineno)
                        yield raw.decode("utf-8", errors="replace")

        csv.field_size_limit(min(o.max_field_chars, sys.maxsize))
        reader = csv.reader(lines(), delimiter=o.delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield BadRecord("unreadable_header", f"{name}:1", str(err))
            return
        if bad_lines:
            yield BadRecord("invalid_utf8", f"{name}:1", "in the header row; file skipped")
            return
        if o.text_field not in header:
            yield BadRecord("missing_text_column", f"{name}:1",
                            f"no column {o.text_field!r} in header {header}")
            return
        first_line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield BadRecord("unreadable_row", f"{name}:{reader.line_num}", str(err))
                first_line = reader.line_num + 1
                continue
            span = range(first_line, reader.line_num + 1)
            where = f"{name}:{first_line}"
            first_line = reader.line_num + 1
            if any(n in bad_lines for n in span):
                yield BadRecord("invalid_utf8", where)
                continue
            if not row:
                continue
            if len(row) != len(header):
                yield BadRecord("wrong_column_count", where, f"{len(row)} cells, header has {len(header)}")
                continue
            yield to_record(dict(zip(header, row)), where)


class TextFiles(Source):
    """A folder of ``.txt`` files, one record each; optionally one subfolder per label.

    With ``labels_from: subfolder`` a file ``root/positive/a.txt`` gets label ``positive``
    (files directly under the root get none). Files that are not UTF-8, empty, or larger
    than ``max_bytes`` are dropped with their path.
    """

    @attrs.define(frozen=True)
    class Options:
        path: Path = attrs.field(validator=existing_path)
        pattern: str = "**/*.txt"
        labels_from: Optional[str] = attrs.field(
            default="subfolder", validator=attrs.validators.in_(["subfolder", None]))
        max_bytes: int = 10_000_000

        def __attrs_post_init__(self) -> None:
            if not self.path.is_dir():
                raise ValueError(f"{self.path} is not a folder; text.files reads a folder of .txt files")

    def shards(self) -> list[Shard]:
        root = self.options.path
        return [Shard(str(p)) for p in sorted(root.glob(self.options.pattern)) if p.is_file()]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        path = Path(shard.path)
        rel = path.relative_to(self.options.path)
        where = str(rel)
        size = path.stat().st_size
        if size > self.options.max_bytes:
            yield BadRecord("file_too_large", where, f"{size} bytes > max_bytes {self.options.max_bytes}")
            return
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            yield BadRecord("invalid_utf8", where, f"byte {err.start}")
            return
        if text.startswith("\ufeff"):
            text = text[1:]
        if not text.strip():
            yield BadRecord("empty_text", where)
            return
        record: Record = {"text": text}
        if self.options.labels_from == "subfolder":
            record["label"] = rel.parts[0] if len(rel.parts) > 1 else None
        yield record
