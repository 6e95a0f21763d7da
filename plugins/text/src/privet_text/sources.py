"""Text sources: JSON Lines, CSV and folders of .txt files.

Every source emits records with the same keys whatever the input calls them: ``text``
(a non-empty string), ``label`` (a string, or ``None`` when the record has none; absent
when ``label_field`` is null) and any ``keep_fields`` as they are. Labels become strings
so that a label column has one type in the Arrow cache even when a file mixes ``1`` and
``"1"``. Files are streamed line by line: memory does not grow with the file size.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

import attrs
from privet import BadRecord, Record, Shard, Source
from privet import existing_path, existing_paths
from privet.io import (ListedFilesSource, Located, file_size, is_remote, join_path, list_tree,
                        outside_root, read_bytes, read_csv, read_jsonl)


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
    #: Read files in the named folders that are symlinks to places outside them.
    follow_symlinks: bool = False


class _ListedSource(ListedFilesSource, Source):
    """Files named in ``paths`` plus the matching files of named folders (sorted).

    A file found in a folder that resolves outside it (a symlink to ``/etc/shadow``)
    is not read: it is an ``outside_root`` bad record unless ``follow_symlinks``.
    """

    def read_file(self, path: str) -> Iterator[Located]:
        o = self.options
        to_record = _FieldMapper(o.text_field, o.label_field, o.keep_fields)
        for where, row in self._rows(path):
            yield where, row if isinstance(row, BadRecord) else to_record(row, where)

    def _rows(self, path: str) -> Iterator[Located]:
        raise NotImplementedError(f"{type(self).__name__} must implement _rows(path)")


class TextJsonl(_ListedSource):
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``); text and label fields by name.

    Malformed lines, non-UTF-8 lines, non-object lines and empty texts are dropped with
    the reason and ``file:line``.
    """

    patterns = ("*.jsonl", "*.jsonl.gz", "*.json")

    @attrs.define(frozen=True)
    class Options(_FieldOptions):
        paths: list[Path] = attrs.field(validator=existing_paths)
        #: Cut files bigger than this many MiB into byte-range shards that preparation
        #: workers read side by side (0: one shard per file). Locations are then
        #: ``file@BYTE_OFFSET`` instead of ``file:line``.
        chunk_mb: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))

        def __attrs_post_init__(self) -> None:
            if not self.paths:
                raise ValueError("paths: name at least one .jsonl file or folder")

    def _rows(self, path: str) -> Iterator[Located]:
        return read_jsonl(path)

    def read_range(self, path: str, start: int, end: int) -> Iterator[Located]:
        to_record = _FieldMapper(self.options.text_field, self.options.label_field,
                                 self.options.keep_fields)
        for where, row in read_jsonl(path, start=start, end=end):
            yield where, row if isinstance(row, BadRecord) else to_record(row, where)


class TextCsv(_ListedSource):
    """CSV (or TSV with ``delimiter: "\\t"``) with a header row; text and label columns by name.

    Cells stay strings. A row with undecodable bytes, or with the wrong number of cells,
    is dropped with ``file:line``; the rest of the file is still read. A header that
    cannot be read or lacks the text column skips the file with one bad record at ``:1``.
    """

    patterns = ("*.csv", "*.csv.gz", "*.tsv", "*.tsv.gz")

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

    def _rows(self, path: str) -> Iterator[Located]:
        o = self.options
        return read_csv(path, delimiter=o.delimiter, parse_numbers=False,
                        required=[o.text_field], max_field_chars=o.max_field_chars)


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
        #: Read files that are symlinks to places outside ``path`` (default: refused).
        follow_symlinks: bool = False

        def __attrs_post_init__(self) -> None:
            if not is_remote(self.path) and not self.path.is_dir():
                raise ValueError(f"{self.path} is not a folder; text.files reads a folder of .txt files")

    def shards(self) -> list[Shard]:
        root = self.options.path
        if is_remote(root):  # a prefix: its objects (hidden ones left out) matched as Path.glob does
            pattern = self.options.pattern.split("/")
            return [Shard(join_path(root, rel)) for rel in list_tree(root)
                    if _glob_match(rel.split("/"), pattern)]
        return [Shard(str(p)) for p in sorted(root.glob(self.options.pattern)) if p.is_file()]

    def _relative(self, path: str) -> PurePosixPath | Path:
        if is_remote(path):
            return PurePosixPath(path[len(join_path(self.options.path, "")) + 1:])
        return Path(path).relative_to(self.options.path)

    def _outside(self, path: str) -> bool:
        return not self.options.follow_symlinks and outside_root(path, self.options.path)

    def files(self) -> list[str]:
        """Files the cache fingerprint may hash: never one outside the folder."""
        return [s.path for s in self.shards() if not self._outside(s.path)]

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        rel = self._relative(shard.path)
        where = str(rel)
        if self._outside(shard.path):
            yield BadRecord("outside_root", where, f"resolves outside {self.options.path}; not "
                                                   f"read (set follow_symlinks: true to read it)")
            return
        size = file_size(shard.path)  # an s3:// object: a HEAD request, nothing read yet
        if size > self.options.max_bytes:
            yield BadRecord("file_too_large", where, f"{size} bytes > max_bytes {self.options.max_bytes}")
            return
        try:
            text = read_bytes(shard.path).decode("utf-8")
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


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Whether a relative path (split on ``/``) matches a glob pattern the way
    ``Path.glob`` does: ``**`` spans any number of folders, other parts match one name."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0])
            and _glob_match(parts[1:], pattern[1:]))
