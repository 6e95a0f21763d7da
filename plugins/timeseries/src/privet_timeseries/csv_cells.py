"""CSV bytes into Arrow columns, split exactly as the csv reader of the record path splits them.

The columnar CSV reading (``pyarrow.csv`` with the checks that make it agree with Python's
csv module) lives here, apart from the source that opens the files and shards them.
"""

from __future__ import annotations

import csv
from typing import Any

from .record_keys import MISSING_MARKERS
from .table_cells import _any, _flat
from .timeparse import all_true, py_strip


def _lines_before(fh: Any, pos: int, end: int | None) -> bytes | bytearray:
    """The bytes of the lines from ``pos`` (where ``fh`` stands) that start before
    ``end``: the last one runs on to its newline, as in ``_rows``. Read into one buffer
    that the last line extends in place: a shard is copied out of the file once."""
    if end is None:
        return fh.read()
    data = bytearray(max(0, end - pos))
    with memoryview(data) as view:
        got = 0
        while got < len(data):
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    del data[got:]
    if data and not data.endswith(b"\n"):
        data += fh.readline()
    return data


def _null_cells() -> list[str]:
    """Every raw cell ``_is_missing`` reads as missing without stripping: each marker in
    every mix of upper and lower case (Arrow compares null values exactly)."""
    out: set[str] = set()
    for marker in MISSING_MARKERS:
        spellings = [""]
        for ch in marker:
            spellings = [s + c for s in spellings for c in {ch.lower(), ch.upper()}]
        out.update(spellings)
    return sorted(out)


_NULL_CELLS = _null_cells()


def _csv_columns(data: bytes | bytearray, header: list[str], delimiter: str,
                 numeric: list[str] | None = None) -> tuple[dict[str, Any], int] | None:
    """The cells of ``data`` by header name (and the row count), split as ``_rows``
    splits them: the ``numeric`` columns as float64 where Arrow's typed read is certain
    to give what ``_put`` gives, else every column as strings; ``None`` where the csv
    reader of ``_rows`` might split or report a line otherwise."""
    if b"\x00" in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None  # NUL or a lone CR: csv.Error there (unreadable_row)
    if b'"' in data or not data.isascii():  # ASCII is UTF-8: no decoded copy to check it
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None  # invalid_utf8
        if '"' in text and not _plain_quotes(text, delimiter):
            return None
    if numeric and len(header) > 1:  # one column: a blank cell is a line _rows skips
        typed = _typed_columns(data, header, delimiter, numeric)
        if typed is not None:
            return typed
    columns = _string_columns(data, header, delimiter)
    return None if columns is None else (columns, len(columns[header[0]]))


def _read_cells(data: bytes | bytearray, names: list[str], delimiter: str, types: dict[str, Any],
                **convert: Any) -> Any:
    """``pyarrow.csv`` of checked lines, split as Python's csv splits them (blank lines
    skipped; a line with another number of cells raises)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def blank(row: Any) -> str:  # csv gives one empty-looking cell: a line _rows skips
        return "skip" if delimiter not in row.text and not row.text.strip() else "error"

    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                       block_size=min(max(len(data) + 1, 1 << 20), 1 << 28)),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char='"', double_quote=True, escape_char=False,
            newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=blank),
        convert_options=pacsv.ConvertOptions(column_types=types, **convert))


def _typed_columns(data: bytes | bytearray, header: list[str], delimiter: str, numeric: list[str]
                   ) -> tuple[dict[str, Any], int] | None:
    """Every column, the ``numeric`` ones parsed by Arrow as float64 and the others as
    strings; ``None`` (read all as strings instead) if Arrow refuses any cell or might
    read one otherwise.

    Arrow reads a number where ``float(cell.strip())`` does with the same value: plain
    decimals (the same correctly rounded parser the string path casts with), spaces and
    tabs around them, ``nan``/``inf``/``infinity`` with a sign, or a decimal too big
    (inf); it refuses what else ``float`` reads (``1_0``, other spaces, other digits),
    which falls back. The one spelling it reads and ``float`` refuses is ``nan(chars)``,
    so a NaN in a shard with a ``(`` falls back too. Missing markers are null only as
    exact spellings; a padded one makes Arrow refuse the cell. A cell of a field's
    size limit (the csv reader's error) hides in a line at least as long."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if _blank(data) or _has_long_line(data, csv.field_size_limit()):
        return None  # no rows (the string path's empty columns), or a huge field
    names = [f"c{i}" for i in range(len(header))]
    floats = {names[header.index(c)] for c in numeric}
    types = {n: pa.float64() if n in floats else pa.string() for n in names}
    try:
        table = _read_cells(data, names, delimiter, types, null_values=_NULL_CELLS,
                            strings_can_be_null=False, quoted_strings_can_be_null=True)
    except (pa.ArrowException, ValueError):
        return None
    columns = {h: _flat(table.column(n)) for h, n in zip(header, names)}
    if b"(" in data and any(_any(pc.is_nan(columns[c])) for c in numeric):
        return None
    return columns, table.num_rows


def _blank(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds nothing but line ends (no rows), without copying it."""
    return not data or (data[:1] in (b"\r", b"\n") and not data.strip(b"\r\n"))


def _has_long_line(data: bytes | bytearray, limit: int) -> bool:
    """Whether a line of ``data`` is ``limit`` bytes or longer (newline included).

    A line that long holds a whole aligned block of ``limit // 2`` bytes without a
    newline, so when every such block has one (a ``find`` per block), none is; only
    otherwise are the lines measured.
    """
    import numpy as np

    if len(data) < limit:
        return False
    half = limit // 2
    if half and all(data.find(b"\n", i, i + half) >= 0 for i in range(0, len(data) - half + 1, half)):
        return False
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    return int(np.diff(ends, prepend=-1, append=len(data) - 1).max()) >= limit


def _string_columns(data: bytes | bytearray, header: list[str], delimiter: str) -> dict[str, Any] | None:
    """Every column as strings (``_put`` then reads each cell by the string rules);
    ``None`` if a cell is too long for the csv reader."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = [f"c{i}" for i in range(len(header))]
    if not _blank(data):
        table = _read_cells(data, names, delimiter, {n: pa.string() for n in names},
                            strings_can_be_null=False, quoted_strings_can_be_null=False)
        columns = [_flat(table.column(n)) for n in names]
    else:
        columns = [pa.array([], pa.string()) for _ in names]
    limit = csv.field_size_limit()
    if len(columns[0]) and any(pc.max(pc.binary_length(c)).as_py() >= limit for c in columns):
        return None  # csv.Error: field larger than field limit
    if len(columns) == 1:  # a cell that strips to nothing is a blank line to _rows
        columns = [columns[0].filter(pc.not_equal(pc.utf8_length(py_strip(columns[0])), 0))]
    return dict(zip(header, columns))


def _plain_quotes(text: str, delimiter: str) -> bool:
    """Whether every line is cells either unquoted (no quote at all) or wholly quoted
    (with ``""`` inside): the lines Python's csv and Arrow's reader split alike."""
    import pyarrow as pa
    import pyarrow.compute as pc

    d = f"\\x{{{ord(delimiter):x}}}"
    cell = f'"(?:[^"]|"")*"|[^"{d}]*'
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    return all_true(pc.match_substring_regex(lines, f"^(?:{cell})(?:{d}(?:{cell}))*\\r?$"))

