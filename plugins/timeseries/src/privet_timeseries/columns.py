"""Which record keys a fitted cleaner works on, and fitting passes shared by them.

Fitting reads the training records as Arrow tables (:func:`privet.record_tables`) and
feeds whole numpy columns to :meth:`RunningStats.add_many`, overall and per series: the
same statistics as one ``add`` per record value, without a dict per row.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Iterator

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from privet import Cleaner, DataError, Record, record_tables

from .sources import SERIES, SPLIT, TIME
from .stats import RunningStats

#: Keys never treated as numeric features (they are bookkeeping written by the sources).
RESERVED = frozenset({TIME, SERIES, SPLIT})


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_numeric_type(kind: Any) -> bool:
    """Arrow types whose values are Python ints or floats in a record (not bool)."""
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def float_values(column: Any) -> np.ndarray | None:
    """A numeric column as float64 with NaN for nulls, or ``None`` for any other type:
    the record path (:func:`~.stats.finite`) sees no number in a text or bool value."""
    if not is_numeric_type(column.type):
        return None
    values = column.cast(pa.float64(), safe=False).fill_null(np.nan)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def null_mask(column: Any) -> np.ndarray:
    """Which rows of ``column`` are null."""
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def put_column(table: Any, name: str, values: Any) -> Any:
    """``table`` with column ``name`` replaced in place, or appended when it is new (the
    key order a record gets from ``record[name] = ...``)."""
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, values)
    return table.set_column(index, name, values)


class SeriesKeys:
    """Each row's series as the record path keys it (``str(value)``): ``codes`` index
    ``names``, -1 where a row has no series."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes = codes
        self.names = names
        self._groups: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of_table(cls, table: Any) -> SeriesKeys | None:
        """The keys of the table's series column, ``None`` without one."""
        if SERIES not in table.column_names:
            return None
        return cls.of_array(table.column(SERIES))

    @classmethod
    def of_values(cls, values: Any) -> SeriesKeys:
        """Keys of an array of series ids (str; ``None`` for no series)."""
        try:
            array = pa.array(np.asarray(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            array = pa.array([None if v is None else str(v) for v in values], pa.string())
        return cls.of_array(array)

    @classmethod
    def of_array(cls, array: Any) -> SeriesKeys:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_null(array.type):
            return cls(np.full(len(array), -1, dtype=np.int64), [])
        try:
            encoded = pc.dictionary_encode(array)
            distinct = encoded.dictionary.to_pylist()
            index = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            distinct = array.to_pylist()  # a type Arrow cannot encode: one entry per row
            index = np.arange(len(distinct), dtype=np.int64)
        texts = [None if v is None else str(v) for v in distinct]
        names = list(dict.fromkeys(t for t in texts if t is not None))  # first-seen order
        where = {name: i for i, name in enumerate(names)}
        remap = np.array([-1 if t is None else where[t] for t in texts] + [-1], dtype=np.int64)
        return cls(remap[index], names)

    def split(self, values: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """``values`` of each series (rows in their order), skipping rows without one."""
        if self._groups is None:
            rows = np.flatnonzero(self.codes >= 0)
            order = rows[np.argsort(self.codes[rows], kind="stable")]
            starts = np.zeros(len(self.names) + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.codes[rows], minlength=len(self.names)), out=starts[1:])
            self._groups = order, starts
        order, starts = self._groups
        grouped = values[order]
        for i, name in enumerate(self.names):
            if starts[i + 1] > starts[i]:
                yield name, grouped[starts[i]:starts[i + 1]]

    def per_row(self, lookup: dict[str, Any], default: Any) -> np.ndarray:
        """Each row's ``lookup[series]``, or ``default`` (no series, or one not in ``lookup``)."""
        options = np.array([lookup.get(name, default) for name in self.names] + [default], dtype=np.float64)
        return options[self.codes]


def per_row(keys: SeriesKeys | None, rows: int, lookup: dict[str, Any], default: Any) -> np.ndarray:
    """Per row, the series' entry of ``lookup`` or ``default`` (a number or a pair):
    how the record path picks a series' fitted parameters."""
    if keys is None or not lookup:
        value = np.asarray(default, dtype=np.float64)
        return np.broadcast_to(value, (rows, *value.shape)).copy()
    return keys.per_row(lookup, default)


def fit_pass(records: Iterable[Record], columns: list[str] | None, exclude: Iterable[str],
             observe: Callable[[Record, str, Any], None], *, who: str) -> list[str]:
    """Call ``observe(record, column, value)`` for each selected column of each record.

    The record-at-a-time pass, for fits that need each value (categories).
    ``columns=None`` selects every numeric key (except the reserved ones and
    ``exclude``), discovered while streaming. Returns the columns in a stable order and
    fails with a clear error if an explicitly named column never appears.
    """
    skip = set(exclude) | RESERVED
    seen: dict[str, None] = {}
    fields: set[str] = set()
    n = 0
    for record in records:
        n += 1
        fields.update(record)
        if columns is None:
            for key, value in record.items():
                if key in skip or not is_number(value):
                    continue
                seen.setdefault(key, None)
                observe(record, key, value)
        else:
            for key in columns:
                observe(record, key, record.get(key))
    return _chosen(columns, seen, fields, n, who)


def _chosen(columns: list[str] | None, seen: dict[str, None], fields: set[str], rows: int,
            who: str) -> list[str]:
    """The fitted columns: those discovered (sorted), or the named ones if all appear."""
    if columns is None:
        return sorted(seen)
    missing = [c for c in columns if c not in fields]
    if missing and rows:
        raise DataError(f"{who}: column(s) {', '.join(map(repr, missing))} not found in the "
                        f"training records (fields: {', '.join(sorted(fields))}); fix 'columns'")
    return list(columns)


#: Running statistics of a column, overall (series ``None``) or of one series.
ColumnStats = dict[tuple[str, "str | None"], RunningStats]


@attrs.define
class StatsPart:
    """Column statistics of some training tables: a ``fit_table`` part of the fitting
    cleaners, merged in source order by :meth:`merge`."""

    rows: int = 0
    fields: set[str] = attrs.field(factory=set)
    #: the columns that held a number, in first-seen order
    seen: dict[str, None] = attrs.field(factory=dict)
    stats: ColumnStats = attrs.field(factory=dict)

    def merge(self, other: "StatsPart") -> "StatsPart":
        """Add ``other`` (the statistics of the tables after these); takes its stats over."""
        self.rows += other.rows
        self.fields |= other.fields
        for column in other.seen:
            self.seen.setdefault(column, None)
        merge_stats(self.stats, other.stats)
        return self


def merge_stats(into: dict[Any, RunningStats], other: dict[Any, RunningStats]) -> None:
    """Add the running statistics of ``other`` (of later values) to those of ``into``, key
    by key; keys new to ``into`` come after its own, in ``other``'s order (taken over)."""
    for key, st in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = st
        else:
            mine.merge(st)


def table_stats(table: Any, columns: list[str] | None, exclude: Iterable[str], *,
                per_series: bool, quantiles: bool = True) -> StatsPart:
    """Each selected column's finite values of one table in :class:`RunningStats`:
    overall, and per series (``per_series``); ``quantiles``: keep reservoirs.

    ``columns=None`` selects every column that holds a number somewhere (a float or int
    column with a value; not bool), except the reserved ones and ``exclude``.
    """
    part = StatsPart(rows=table.num_rows, fields=set(table.column_names))
    keys = SeriesKeys.of_table(table) if per_series else None
    for column in _table_columns(table, columns, set(exclude) | RESERVED):
        values = float_values(table.column(column))
        if values is None:
            continue
        part.seen.setdefault(column, None)
        observe_array(part.stats, column, values, keys, quantiles)
    return part


def merged_stats(parts: Iterable[StatsPart], columns: list[str] | None, *,
                 who: str) -> tuple[list[str], ColumnStats]:
    """The fitted columns and their statistics from the parts of the whole training split."""
    total = StatsPart()
    for part in parts:
        total.merge(part)
    return _chosen(columns, total.seen, total.fields, total.rows, who), total.stats


def _table_columns(table: Any, columns: list[str] | None, skip: set[str]) -> list[str]:
    if columns is not None:
        return [c for c in columns if c in table.column_names]
    return [c for c in table.column_names if c not in skip
            and is_numeric_type(table.column(c).type) and table.column(c).null_count < table.num_rows]


def observe_array(stats: ColumnStats, column: str, values: np.ndarray, keys: SeriesKeys | None,
                  quantiles: bool = True) -> None:
    """Add the finite ``values`` of ``column`` overall and, given ``keys``, per series."""
    _add(stats, (column, None), values, quantiles)
    if keys is not None:
        for name, part in keys.split(values):
            _add(stats, (column, name), part, quantiles)


def _add(stats: ColumnStats, key: tuple[str, str | None], values: np.ndarray, quantiles: bool) -> None:
    """Stats are made only for a key with a finite value, as the record path makes them."""
    finite = values[np.isfinite(values)]
    if len(finite):
        _stats_of(stats, key, quantiles).add_many(finite)


def _stats_of(stats: ColumnStats, key: tuple[str, str | None], quantiles: bool) -> RunningStats:
    """The stats of ``key``, made on first use (``setdefault`` would build, and seed, a
    RunningStats for every value: a fifth of a fitting pass' time)."""
    found = stats.get(key)
    if found is None:
        found = stats[key] = RunningStats(quantiles=quantiles)
    return found


class StatsCleaner(Cleaner):
    """A cleaner fitted on column statistics (its options name ``columns``, ``exclude``
    and ``per_series``), fitted in parallel by map and merge.

    ``fit_table`` gathers one table's :class:`StatsPart` (in the workers, during
    preparation), ``fit_merge`` merges the parts in source order and hands the result to
    :meth:`fit_stats`; ``fit`` does both over the records' tables.
    """

    needs_fit = True
    #: the fit reads quantiles (medians, quartiles): keep reservoir samples
    needs_quantiles: bool = False

    def fit(self, records: Any) -> None:
        self.fit_merge(self.fit_table(t) for t in record_tables(records))

    def fit_table(self, table: Any) -> StatsPart:
        o = self.options
        return table_stats(table, o.columns, o.exclude, per_series=o.per_series,
                           quantiles=self.needs_quantiles)

    def fit_merge(self, parts: Iterable[StatsPart]) -> None:
        columns, stats = merged_stats(parts, self.options.columns, who=f"cleaner {self.name}")
        self.fit_stats(columns, stats)

    @abc.abstractmethod
    def fit_stats(self, columns: list[str], stats: ColumnStats) -> None:
        """Set the fitted state from the statistics of the whole training split."""
