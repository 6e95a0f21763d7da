"""Sources: CSV and Parquet files of time series (or plain tables), one record per row.

Each record is a flat dict the Arrow cache stores as it is: ``time`` (seconds since the
epoch, float), ``series`` (str), every target and numeric feature as a float (``None``
when missing) and text columns as str. Files are streamed: CSV by lines (optionally cut
into byte-range shards), Parquet by row group, so memory does not grow with file size.
Every file is listed and opened through :mod:`privet.io`, so ``s3://`` objects and
prefixes work as paths (ranged GETs; the cache key uses their ETags and sizes).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import attrs

from privet import BadRecord, DataError, PrivetError, Record, Shard, Source
from privet import OptionValueError, existing_paths, positive
from privet.io import ListedFiles, byte_ranges, open_binary, open_seekable

from .timeparse import all_true, is_text_type, number_cells, parse_time, py_strip, time_cells

TIME = "time"
SERIES = "series"
SPLIT = "split"
#: Cell texts read as a missing value (compared case-insensitively).
MISSING_MARKERS = frozenset({"", "na", "n/a", "null", "none", "nat", "-"})


def _check_time_format(_inst: Any, _attr: Any, value: str) -> None:
    if value not in ("auto", "unix", "unix_ms") and "%" not in value:
        raise OptionValueError(f"time_format must be auto, unix, unix_ms or a strftime pattern "
                               f"such as '%Y-%m-%d %H:%M', got {value!r}", "time_format")


def _non_negative(_inst: Any, attr: Any, value: float) -> None:
    if value < 0:
        raise OptionValueError(f"{attr.name} must be 0 or more, got {value}", attr.name)


@attrs.define(frozen=True)
class SeriesFileOptions:
    """What the columns of the files mean; shared by the CSV and Parquet sources."""

    paths: list[Path] = attrs.field(validator=existing_paths)
    #: Column holding the timestamp; ``null`` for plain tables without time.
    time_column: Optional[str] = "timestamp"
    #: ``auto`` (ISO 8601 or numbers as they are), ``unix``, ``unix_ms`` or a strftime pattern.
    time_format: str = attrs.field(default="auto", validator=_check_time_format)
    #: ``long``: one row per (series, time); ``wide``: one column per series.
    layout: Literal["long", "wide"] = "long"
    #: Long layout: column naming the series (many series in one file). Without it the
    #: series is named after the file.
    series_column: Optional[str] = None
    #: Long layout: the value(s) to forecast. Wide layout: the series columns (default:
    #: every column that is not time or a feature).
    target_columns: list[str] = attrs.field(factory=list)
    #: Wide layout: the key each series' value is stored under.
    value_name: str = "value"
    #: Numeric covariates; ``null`` = every other column (long layout) or none (wide).
    feature_columns: Optional[list[str]] = None
    #: Columns kept as text (categories, labels, a split marker). Parquet string columns
    #: are text anyway; CSV cells are numbers unless their column is listed here.
    categorical_columns: list[str] = attrs.field(factory=list)
    #: NaN / inf in a numeric cell: ``missing`` (stored as None for a cleaner to impute)
    #: or ``drop`` (the row is dropped with reason ``non_finite_value``).
    non_finite: Literal["missing", "drop"] = "missing"
    #: Rows at or after this time get ``split: val`` (and ``test`` after ``test_time``),
    #: others ``split: train``: use with ``data.split: {method: field, field: split}``.
    split_time: Optional[str] = None
    test_time: Optional[str] = None
    #: Read files in the named folders that are symlinks to places outside them
    #: (default: an ``outside_root`` bad record, never read).
    follow_symlinks: bool = False

    def __attrs_post_init__(self) -> None:
        if self.layout == "long" and not self.target_columns:
            raise OptionValueError("layout 'long' needs target_columns: the column(s) to "
                                   "forecast or predict", "target_columns")
        if self.layout == "wide" and self.series_column:
            raise OptionValueError("layout 'wide' takes no series_column: each value column "
                                   "is a series", "series_column")
        if self.layout == "wide" and self.time_column is None:
            raise OptionValueError("layout 'wide' needs a time_column", "time_column")
        for key in ("split_time", "test_time"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.time_column is None:
                raise OptionValueError(f"{key} needs a time_column", key)
            try:
                parse_time(value, self.time_format if "%" in self.time_format else "auto")
            except ValueError as err:
                raise OptionValueError(f"{key}: {err}", key) from None
        if self.split_time is None and self.test_time is not None:
            raise OptionValueError("test_time needs split_time (the start of validation)",
                                   "test_time")


class _RowConverter:
    """Turns one row (column -> raw cell) into records, by the roles the options give."""

    def __init__(self, options: SeriesFileOptions, columns: list[str], file: str,
                 text_columns: Iterable[str] = ()) -> None:
        o = options
        self.o = o
        self.file = file
        present = set(columns)

        def need(col: str, option: str) -> None:
            if col not in present:
                raise DataError(f"{file}: no column {col!r} (columns: {', '.join(columns)}); "
                                f"fix {option} in the source options")

        if o.time_column is not None:
            need(o.time_column, "time_column")
        if o.series_column is not None:
            need(o.series_column, "series_column")
        self.text = set(o.categorical_columns) | set(text_columns)
        used = {c for c in (o.time_column, o.series_column) if c is not None}
        if o.layout == "long":
            self.targets = list(o.target_columns)
        else:
            features = set(o.feature_columns or ()) | set(o.categorical_columns)
            self.targets = list(o.target_columns) or [c for c in columns if c not in used | features]
        for col in self.targets:
            need(col, "target_columns")
        used |= set(self.targets)
        if o.feature_columns is not None:
            for col in o.feature_columns:
                need(col, "feature_columns")
            extra = [c for c in o.categorical_columns if c not in o.feature_columns and c not in used]
            self.features = list(o.feature_columns) + [c for c in extra if c in present]
        elif o.layout == "long":
            self.features = [c for c in columns if c not in used]
        else:
            self.features = [c for c in o.categorical_columns if c in present]
        written = {TIME, SERIES} | ({SPLIT} if o.split_time else set())
        for col in [*self.features, *self.targets]:
            if col in written and col not in (o.time_column, o.series_column):
                raise DataError(f"{file}: column {col!r} clashes with the record key {col!r} "
                                f"this source writes; rename the column or leave it out of "
                                f"feature_columns")
        fmt = o.time_format
        self.time_format = fmt
        self.split_at = parse_time(o.split_time, fmt if "%" in fmt else "auto") if o.split_time else None
        self.test_at = parse_time(o.test_time, fmt if "%" in fmt else "auto") if o.test_time else None
        self.default_series = Path(file).name.split(".")[0]

    def convert(self, row: dict[str, Any], locate: Callable[[], str]) -> list[Record | BadRecord]:
        """Records of one row; ``locate()`` names the row, called only for a bad one."""
        o = self.o
        base: Record = {}
        if o.time_column is not None:
            try:
                t = parse_time(row[o.time_column], self.time_format)
            except ValueError as err:
                return [BadRecord("unparseable_timestamp", locate(), str(err))]
            base[TIME] = t
            if self.split_at is not None:
                base[SPLIT] = ("test" if self.test_at is not None and t >= self.test_at
                               else "val" if t >= self.split_at else "train")
        if o.layout == "long":
            if o.series_column is not None:
                sid = row[o.series_column]
                if sid is None or (isinstance(sid, str) and not sid.strip()):
                    return [BadRecord("missing_series_id", locate(), f"column {o.series_column!r} is empty")]
                base[SERIES] = _series_text(sid)
            elif o.time_column is not None:
                base[SERIES] = self.default_series
        for col in self.features:
            bad = self._put(base, col, row[col], locate)
            if bad is not None:
                return [bad]
        if o.layout == "long":
            for col in self.targets:
                bad = self._put(base, col, row[col], locate)
                if bad is not None:
                    return [bad]
            return [base]
        out: list[Record | BadRecord] = []
        for col in self.targets:
            rec = dict(base)
            rec[SERIES] = col
            bad = self._put(rec, o.value_name, row[col], locate, column=col)
            out.append(bad if bad is not None else rec)
        return out

    def _put(self, rec: Record, key: str, raw: Any, locate: Callable[[], str],
             column: str | None = None) -> BadRecord | None:
        column = column or key
        if column in self.text:
            rec[key] = None if _is_missing(raw) else _series_text(raw)
            return None
        if _is_missing(raw):
            rec[key] = None
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return BadRecord("unparseable_number", locate(),
                             f"column {column!r}: {raw!r} (list the column in categorical_columns "
                             f"if it holds text)")
        if not math.isfinite(value):
            if self.o.non_finite == "drop":
                return BadRecord("non_finite_value", locate(), f"column {column!r}: {raw!r}")
            value = None
        rec[key] = value
        return None


def _is_missing(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip().lower() in MISSING_MARKERS)


def _series_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


# --- The columnar path: the same records as whole Arrow columns ------------------------
#
# ``read_table`` gives a shard's records as one table when every row is one ``convert``
# turns into records without a BadRecord and with rules the columns can follow exactly.
# Each helper returns ``None`` to decline: the engine then reads the shard row by row,
# which names the bad rows. Arrow's errors (a cast that fails, say) decline as well.

_MARKERS = sorted(MISSING_MARKERS)


def _flat(column: Any) -> Any:
    """One Arrow array of a (chunked) column, dictionaries decoded."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _stripped(column: Any) -> Any:
    """A string-like column as ``str.strip()``-ed strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return py_strip(pc.cast(column, pa.string()))


def _missing(texts: Any) -> Any:
    """``_is_missing`` of stripped strings (the markers are ASCII, so ASCII lowering will do)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    marked = pc.is_in(pc.ascii_lower(texts), value_set=pa.array(_MARKERS, pa.string()))
    return pc.or_(pc.is_null(texts), marked)


def _any(mask: Any) -> bool:
    """Whether some cell of a boolean Arrow array is true."""
    import pyarrow.compute as pc

    return bool(pc.any(pc.fill_null(mask, False)).as_py())


def _text_cells(column: Any) -> Any:
    """``_put`` of a text column: stripped text, None for a missing marker."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.string())
    if is_text_type(t):
        texts = _stripped(column)
        return pc.if_else(_missing(texts), pa.scalar(None, pa.string()), texts)
    if pa.types.is_integer(t):  # a Parquet integer column listed as categorical: str(int)
        return pc.cast(column, pa.string())
    return None


def _number_cells(column: Any, non_finite: str) -> Any:
    """``_put`` of a numeric column: float64, None for missing (and non-finite unless the
    option drops those rows, which declines)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.float64())
    if is_text_type(t):
        texts = _stripped(column)
        missing = _missing(texts)
        values = number_cells(pc.if_else(missing, pa.scalar(None, pa.string()), texts))
        if _any(pc.and_(pc.invert(missing), pc.is_null(values))):
            return None  # a cell float() may read otherwise (or not at all)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or (
            pa.types.is_floating(t) and t.bit_width >= 32):
        values = pc.cast(column, pa.float64())  # safe: ints beyond 2**53 raise
    else:
        return None
    finite = pc.is_finite(values)
    if _any(pc.invert(finite)):
        if non_finite == "drop":
            return None
        values = pc.if_else(finite, values, pa.scalar(None, pa.float64()))
    return values


def _series_cells(column: Any) -> Any:
    """``_series_text`` of a series id column; None if an id is missing or not text/int."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        return None
    if is_text_type(column.type):
        texts = _stripped(column)
        return None if _any(pc.equal(pc.utf8_length(texts), 0)) else texts
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    return None


def _split_cells(times: Any, split_at: float, test_at: float | None) -> Any:
    """The ``split`` labels ``convert`` gives each time."""
    import pyarrow.compute as pc

    out = pc.if_else(pc.greater_equal(times, split_at), "val", "train")
    if test_at is not None:
        out = pc.if_else(pc.greater_equal(times, test_at), "test", out)
    return out


def _cells(conv: _RowConverter, column: Any, name: str) -> Any:
    """``_put`` of a whole column, by its role (text or number)."""
    return _text_cells(column) if name in conv.text else _number_cells(column, conv.o.non_finite)


def _records_table(conv: _RowConverter, raw: dict[str, Any], rows: int) -> Any:
    """The records ``conv.convert`` makes of every row of ``raw`` (column -> array), as
    one table with the records' keys in order; None to decline."""
    import pyarrow as pa

    o = conv.o
    cols: dict[str, Any] = {}  # assigned in convert's order: a key keeps its first place
    if o.time_column is not None:
        times = time_cells(raw[o.time_column], conv.time_format)
        if times is None:
            return None
        cols[TIME] = times
        if conv.split_at is not None:
            cols[SPLIT] = _split_cells(times, conv.split_at, conv.test_at)
    if o.layout == "long":
        if o.series_column is not None:
            cols[SERIES] = _series_cells(raw[o.series_column])
            if cols[SERIES] is None:
                return None
        elif o.time_column is not None:
            cols[SERIES] = pa.repeat(pa.scalar(conv.default_series, pa.string()), rows)
    for col in [*conv.features, *(conv.targets if o.layout == "long" else ())]:
        cols[col] = _cells(conv, raw[col], col)
        if cols[col] is None:
            return None
    if o.layout == "long":
        return pa.table(cols)
    return _wide_table(conv, cols, raw, rows)


def _wide_table(conv: _RowConverter, base: dict[str, Any], raw: dict[str, Any],
                rows: int) -> Any:
    """Wide layout: one record per (row, target column), row by row as ``convert`` yields."""
    import numpy as np
    import pyarrow as pa

    parts = []
    for col in conv.targets:
        value = _cells(conv, raw[col], col)
        if value is None:
            return None
        rec = dict(base)
        rec[SERIES] = pa.repeat(pa.scalar(col, pa.string()), rows)
        rec[conv.o.value_name] = value
        parts.append(pa.table(rec))
    if not parts or len({p.schema for p in parts}) != 1:
        return None  # text and numeric targets mixed: the records' types disagree
    k = len(parts)
    i = np.arange(rows * k)
    return pa.concat_tables(parts).take(pa.array((i % k) * rows + i // k))


class _ListedSource(ListedFiles, Source):
    """Files named in ``paths`` plus the matching files of named folders; a file that
    resolves outside its folder is an ``outside_root`` bad record, never opened."""


class TimeSeriesCsv(_ListedSource):
    """Rows of CSV files as time series records (long or wide layout, many series per file).

    Timestamps are parsed into ``time`` (seconds since the epoch); rows whose timestamp
    cannot be read are dropped as ``unparseable_timestamp``. With ``chunk_mb`` a big file
    is read as several byte-range shards (no quoted newlines across a chunk boundary).
    """

    patterns = ("*.csv", "*.csv.gz")

    @attrs.define(frozen=True)
    class Options(SeriesFileOptions):
        delimiter: str = ","
        #: Cut files bigger than this into byte-range shards (0: one shard per file).
        chunk_mb: float = attrs.field(default=0.0, validator=_non_negative)

    def shards(self) -> list[Shard]:
        out: list[Shard] = []
        chunk = int(self.options.chunk_mb * (1 << 20))
        listing = self.listing()
        for path in listing.files:
            if listing.refusal(path) is not None:
                out.append(Shard(path))
                continue
            out.extend(Shard(path, start, end) for start, end in byte_ranges(path, chunk))
        return out

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        refusal = self.listing().refusal(shard.path)
        if refusal is not None:
            yield refusal
            return
        name = Path(shard.path).name
        with open_binary(shard.path) as fh:  # a local file, or an s3:// object by ranged GETs
            header_raw = fh.readline()
            try:
                header = next(csv.reader([header_raw.decode("utf-8-sig")], delimiter=self.options.delimiter))
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as err:  # as privet.io reports a bad header
                yield BadRecord("bad_csv_header", f"{name}:1", f"{err}; file skipped")
                return
            header = [h.strip() for h in header]
            if shard.start <= len(header_raw):
                yield from self._rows(fh, len(header_raw), shard, header, name)
                return
        # A later byte range: open the file there (an object is not seekable) and finish
        # the line the range starts inside, which belongs to the range before.
        with open_binary(shard.path, shard.start - 1) as fh:
            pos = shard.start - 1 + len(fh.readline())
            yield from self._rows(fh, pos, shard, header, name)

    def read_table(self, shard: Shard) -> Any:
        """The shard's records as one table, parsed by ``pyarrow.csv`` and converted by
        columns; ``None`` (the record path) for anything ``read`` reports or might split
        or convert otherwise: a bad line, quotes that are not plain, an unusual cell."""
        import pyarrow as pa

        delimiter = self.options.delimiter
        if (len(delimiter) != 1 or not delimiter.isascii() or delimiter in '"\r\n'
                or self.listing().refusal(shard.path) is not None):
            return None
        try:
            got = self._shard_bytes(shard)
            if got is None:
                return None
            header, data = got
            if not header or len(set(header)) != len(header):
                return None  # duplicate names: a row's dict keeps the last cell of each
            conv = _RowConverter(self.options, header, Path(shard.path).name)
            got_columns = _csv_columns(data, header, delimiter, _numeric_columns(conv))
            if got_columns is None:
                return None
            return _records_table(conv, *got_columns)
        except (PrivetError, pa.ArrowException, OSError, EOFError, ValueError):
            return None

    def _shard_bytes(self, shard: Shard) -> tuple[list[str], bytes] | None:
        """The header and the bytes of the lines ``read`` reads for ``shard``, through
        the same :mod:`privet.io` calls; ``None`` for an empty or unreadable header."""
        with open_binary(shard.path) as fh:
            header_raw = fh.readline()
            try:
                header = next(csv.reader([header_raw.decode("utf-8-sig")],
                                         delimiter=self.options.delimiter))
            except (StopIteration, UnicodeDecodeError, csv.Error):
                return None
            header = [h.strip() for h in header]
            if shard.start <= len(header_raw):
                return header, _lines_before(fh, len(header_raw), shard.end)
        with open_binary(shard.path, shard.start - 1) as fh:
            pos = shard.start - 1 + len(fh.readline())
            return header, _lines_before(fh, pos, shard.end)

    def _rows(self, fh: Any, pos: int, shard: Shard, header: list[str], name: str
              ) -> Iterator[Record | BadRecord]:
        """Records of the lines from byte ``pos`` (where ``fh`` stands) to the shard's end."""
        conv = _RowConverter(self.options, header, name)
        undecodable: list[int] = []
        line_base = _LineBase(shard.path, pos)

        def lines() -> Iterator[str]:
            nonlocal pos
            n = 0
            while shard.end is None or pos < shard.end:
                raw = fh.readline()
                if not raw:
                    return
                pos += len(raw)
                n += 1
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    undecodable.append(n)
                    yield "\n"

        reader = csv.reader(lines(), delimiter=self.options.delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                yield BadRecord("unreadable_row", f"{name}:{line_base() + reader.line_num}", str(err))
                continue
            while undecodable:
                yield BadRecord("invalid_utf8", f"{name}:{line_base() + undecodable.pop(0)}")
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                yield BadRecord("wrong_column_count", f"{name}:{line_base() + reader.line_num}",
                                f"{len(row)} cells, header has {len(header)}")
                continue
            line = reader.line_num
            yield from conv.convert(dict(zip(header, row)),
                                    lambda line=line: f"{name}:{line_base() + line}")
        while undecodable:
            yield BadRecord("invalid_utf8", f"{name}:{line_base() + undecodable.pop(0)}")


def _lines_before(fh: Any, pos: int, end: int | None) -> bytes:
    """The bytes of the lines from ``pos`` (where ``fh`` stands) that start before
    ``end``: the last one runs on to its newline, as in ``_rows``."""
    if end is None:
        return fh.read()
    chunks = []
    left = end - pos
    while left > 0:
        block = fh.read(left)
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    data = b"".join(chunks)
    if data and not data.endswith(b"\n"):
        data += fh.readline()
    return data


def _numeric_columns(conv: _RowConverter) -> list[str]:
    """The columns ``conv`` reads as numbers (its features and targets not kept as text)."""
    return [c for c in dict.fromkeys([*conv.features, *conv.targets]) if c not in conv.text]


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


def _csv_columns(data: bytes, header: list[str], delimiter: str,
                 numeric: list[str] | None = None) -> tuple[dict[str, Any], int] | None:
    """The cells of ``data`` by header name (and the row count), split as ``_rows``
    splits them: the ``numeric`` columns as float64 where Arrow's typed read is certain
    to give what ``_put`` gives, else every column as strings; ``None`` where the csv
    reader of ``_rows`` might split or report a line otherwise."""
    if b"\x00" in data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None  # NUL or a lone CR: csv.Error there (unreadable_row)
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


def _read_cells(data: bytes, names: list[str], delimiter: str, types: dict[str, Any],
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


def _typed_columns(data: bytes, header: list[str], delimiter: str, numeric: list[str]
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

    if _blank(data) or _longest_line(data) >= csv.field_size_limit():
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


def _blank(data: bytes) -> bool:
    """Whether ``data`` holds nothing but line ends (no rows), without copying it."""
    return not data or (data[:1] in (b"\r", b"\n") and not data.strip(b"\r\n"))


def _longest_line(data: bytes) -> int:
    """The length in bytes of the longest line of ``data`` (newline included)."""
    import numpy as np

    if len(data) < csv.field_size_limit():
        return len(data)
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    return int(np.diff(ends, prepend=-1, append=len(data) - 1).max())


def _string_columns(data: bytes, header: list[str], delimiter: str) -> dict[str, Any] | None:
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


class _LineBase:
    """Number of lines before a byte offset, counted only when a bad row needs it."""

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        self.offset = offset
        self._value: int | None = None

    def __call__(self) -> int:
        if self._value is None:
            count = 0
            left = self.offset
            with open_binary(self.path) as fh:
                while left > 0:
                    block = fh.read(min(left, 1 << 20))
                    if not block:
                        break
                    count += block.count(b"\n")
                    left -= len(block)
            self._value = count
        return self._value


class TimeSeriesParquet(_ListedSource):
    """Rows of Parquet files as time series records, read one row group at a time.

    Arrow timestamp columns are used as they are; string columns are text features.
    Each row group is a shard, so big files stream and spread over workers and ranks.
    """

    patterns = ("*.parquet", "*.pq")

    @attrs.define(frozen=True)
    class Options(SeriesFileOptions):
        #: Rows converted to Python at once inside a row group.
        batch_rows: int = attrs.field(default=8192, validator=positive)

    def shards(self) -> list[Shard]:
        import pyarrow.parquet as pq

        out: list[Shard] = []
        listing = self.listing()
        for path in listing.files:
            if listing.refusal(path) is not None:
                out.append(Shard(path))  # read() reports it without opening it
                continue
            try:
                with open_seekable(path) as fh:
                    groups = pq.ParquetFile(fh).metadata.num_row_groups
            except PrivetError:  # the store refused (missing object, access denied): one line
                raise
            except Exception as err:  # pyarrow raises several types for a broken file
                raise DataError(f"{Path(path).name}: not a readable Parquet file ({err})") from None
            out.extend(Shard(path, g, g + 1) for g in range(groups))
        return out

    def read(self, shard: Shard) -> Iterator[Record | BadRecord]:
        import pyarrow.parquet as pq

        refusal = self.listing().refusal(shard.path)
        if refusal is not None:
            yield refusal
            return
        name = Path(shard.path).name
        with open_seekable(shard.path) as fh:  # an s3:// object: footer and row group by ranged GETs
            yield from self._group(pq.ParquetFile(fh), shard.start, name)

    def read_table(self, shard: Shard) -> Any:
        """The row group's records as one table, converted by columns; ``None`` (the
        record path) where a row would be a BadRecord or a type needs Python's rules."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.listing().refusal(shard.path) is not None:
            return None
        try:
            with open_seekable(shard.path) as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                if len(set(names)) != len(names):
                    return None
                text = [f.name for f in pf.schema_arrow
                        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                        or pa.types.is_dictionary(f.type)]
                conv = _RowConverter(self.options, names, Path(shard.path).name, text_columns=text)
                table = pf.read_row_group(shard.start)
            raw = {n: _flat(table.column(n)) for n in names}
            return _records_table(conv, raw, table.num_rows)
        except (PrivetError, pa.ArrowException, OSError, EOFError, ValueError):
            return None

    def _group(self, pf: Any, group: int, name: str) -> Iterator[Record | BadRecord]:
        """Records of one row group, converted ``batch_rows`` rows at a time."""
        import pyarrow as pa

        schema = pf.schema_arrow
        text = [f.name for f in schema
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                or pa.types.is_dictionary(f.type)]
        conv = _RowConverter(self.options, schema.names, name, text_columns=text)
        offset = sum(pf.metadata.row_group(g).num_rows for g in range(group))
        row_no = offset
        for batch in pf.iter_batches(batch_size=self.options.batch_rows, row_groups=[group]):
            for row in batch.to_pylist():
                row_no += 1
                yield from conv.convert(row, lambda n=row_no: f"{name}:row {n}")
