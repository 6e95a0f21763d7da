"""The columnar path: the records ``_RowConverter.convert`` makes, as whole Arrow columns.

Shared by the CSV and Parquet sources' ``read_table``; kept apart from the readers so each
module stays about one thing (converting columns here, reading files in ``sources``).
"""

from __future__ import annotations

from typing import Any

from .record_keys import MISSING_MARKERS, SERIES, SPLIT, TIME
from .row_convert import _RowConverter
from .timeparse import is_text_type, number_cells, py_strip, time_cells

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
