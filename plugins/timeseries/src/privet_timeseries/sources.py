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
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import attrs

from privet import BadRecord, DataError, PrivetError, Record, Shard, Source
from privet import OptionValueError, existing_paths, positive
from privet.io import ListedFiles, byte_ranges, open_binary, open_seekable

from .csv_cells import _csv_columns, _lines_before
from .record_keys import MISSING_MARKERS, SERIES, SPLIT, TIME
from .row_convert import _numeric_columns, _RowConverter
from .table_cells import _flat, _records_table
from .timeparse import parse_time

__all__ = ["MISSING_MARKERS", "SERIES", "SPLIT", "TIME", "SeriesFileOptions", "TimeSeriesCsv",
           "TimeSeriesParquet"]


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
