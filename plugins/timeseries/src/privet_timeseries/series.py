"""From a stream of row records to clean, sorted, regular series (the windowing input).

Everything that needs a row's neighbours in time happens here, once per split, after
cleaning: sorting unsorted rows, merging duplicated timestamps by rule, putting rows on
a regular grid, and filling gaps (forward/backward fill, interpolation). Rows live in
compact float arrays, not dicts, so a split of millions of rows fits in memory.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Any, Iterable, Iterator, Literal

import attrs
import numpy as np

from privet import DataError, Record, in_record_order

from .sources import SERIES, TIME
from .timeparse import parse_frequency, to_datetime

Duplicates = Literal["mean", "first", "last", "error"]
Fill = Literal["interpolate", "ffill", "bfill", "zero", "none"]
#: A regular grid may grow a series at most this many times (guards a mistyped frequency).
MAX_GRID_GROWTH = 100


@attrs.define
class Series:
    """One series: sorted times, a (rows, columns) float64 matrix and optional labels."""

    name: str
    times: np.ndarray
    values: np.ndarray
    labels: list[Any] | None = None


@attrs.define(frozen=True)
class SeriesRules:
    """How rows become a clean series; taken from the window models' options."""

    duplicates: Duplicates = "mean"
    frequency: str | None = None
    fill: Fill = "interpolate"


# -- columns of a record table (the columnar path of fit and examples) ------------------------

def numeric_values(table: Any, key: str) -> np.ndarray | None:
    """Column ``key`` as float64 (null -> NaN) when it holds numbers (int or float typed, the
    record path's ``is_number``), else ``None`` (absent, text, bool: no number in it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if key not in table.column_names:
        return None
    column = table.column(key)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    if not pa.types.is_float64(kind):
        column = pc.cast(column, pa.float64(), safe=False)  # float(v), as the record path does
    return np.asarray(column.to_numpy(), dtype=np.float64)


def has_values(table: Any, key: str) -> bool:
    """Whether column ``key`` exists and holds a non-null value (a number key of the record path)."""
    return key in table.column_names and table.column(key).null_count < table.num_rows


def distinct_values(table: Any, key: str) -> tuple[list[Any], np.ndarray]:
    """The distinct Python values of column ``key`` and each row's index into them (-1: null
    or absent), so per-value work (``str``, ``category_of``) runs once per value, not per row."""
    import pyarrow as pa

    n = table.num_rows
    if key not in table.column_names:
        return [], np.full(n, -1, np.int64)
    column = table.column(key).combine_chunks()
    if not pa.types.is_floating(column.type):  # floats: -0.0 and NaN need Python's equality
        try:
            encoded = column.dictionary_encode()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):  # lists, structs: below
            pass
        else:
            codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            return encoded.dictionary.to_pylist(), np.asarray(codes, dtype=np.int64)
    index: dict[Any, int] = {}
    values: list[Any] = []
    codes = np.full(n, -1, np.int64)
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        k = (type(value), repr(value))  # hashable and exact for any value
        code = index.get(k)
        if code is None:
            code = index[k] = len(values)
            values.append(value)
        codes[i] = code
    return values, codes


def series_names(table: Any) -> tuple[list[str], np.ndarray]:
    """Distinct series names of a table's rows and each row's index into them: the record
    path's ``str(record.get(SERIES, ""))``, so a null is ``"None"`` and no column is ``""``."""
    if SERIES not in table.column_names:
        return [""], np.zeros(table.num_rows, np.int64)
    values, codes = distinct_values(table, SERIES)
    texts = [*(str(v) for v in values), "None"]
    codes = np.where(codes < 0, len(values), codes)
    names: dict[str, int] = {}
    remap = np.array([names.setdefault(t, len(names)) for t in texts], np.int64)  # str(1) == str("1")
    return list(names), remap[codes]


#: Groups of series per split that preparation makes side by side (fixed: the cache must
#: not depend on the number of workers), the fewest rows worth a group of its own, and the
#: most a group takes beside its last series (a worker holds one group: its memory stays
#: the same for a larger corpus, which gets more groups).
MAX_GROUPS = 8
MIN_GROUP_ROWS = 50_000
MAX_GROUP_ROWS = 2_500_000


def series_groups(tables: Iterable[Any]) -> list[tuple[str, ...]]:
    """The series names of ``tables`` (as :func:`series_names` gives them), sorted and cut
    into consecutive runs of about equal row counts: ``MAX_GROUPS`` of them, or more of
    at most ``MAX_GROUP_ROWS`` rows (unless one series is longer) for a large split."""
    rows: Counter[str] = Counter()
    for table in tables:
        for name, n in _series_rows(table):
            if n:
                rows[name] += n
    total = sum(rows.values())
    target = max(MIN_GROUP_ROWS, min(MAX_GROUP_ROWS, math.ceil(total / MAX_GROUPS)))
    groups: list[tuple[str, ...]] = []
    run: list[str] = []
    size = 0
    for name in sorted(rows):
        run.append(name)
        size += rows[name]
        if size >= target:
            groups.append(tuple(run))
            run, size = [], 0
    if run:
        groups.append(tuple(run))
    return groups


def _series_rows(table: Any) -> Iterable[tuple[str, int]]:
    """``(series name, rows)`` of a table (a name may come more than once). A text column
    without nulls is read as runs of equal neighbours, one comparison a row, where a
    record file in series order holds a few long ones; else by :func:`series_names`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(SERIES) if SERIES in table.column_names else None
    if column is None or column.null_count or not (
            pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) \
            or not in_record_order(table):
        names, codes = series_names(table)
        return zip(names, np.bincount(codes, minlength=len(names)).tolist())
    column = column.combine_chunks()
    n = len(column)
    if n < 2:
        return zip(column.to_pylist(), [1] * n)
    change = pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    return zip(column.take(pa.array(starts)).to_pylist(), np.diff(starts, append=n).tolist())


def rows_of_series(table: Any, names: set[str]) -> Any:
    """The rows of ``table`` whose series (named as :func:`series_names` names it) is in ``names``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if SERIES not in table.column_names:
        return table if "" in names else table.slice(0, 0)
    column = table.column(SERIES)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        mask = pc.is_in(column, value_set=pa.array(sorted(names), column.type))
        if "None" in names:  # a null series is named "None", like the text
            mask = pc.or_(mask, pc.is_null(column))
        return table.filter(mask)
    found, codes = series_names(table)
    member = np.array([name in names for name in found], dtype=bool)
    return table.filter(pa.array(member[codes]))


def _series_parts(names: list[str], codes: np.ndarray) -> Iterator[tuple[str, Any]]:
    """Each series' rows (``names[code]``, a slice or an index array of the rows), in the
    order of their first row, table order within a series. Rows in series order (a record
    file of a window model) come as slices, not gathered."""
    if len(codes) < 2 or bool((codes[1:] >= codes[:-1]).all()):
        bounds = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(codes)]
        for a, b in zip(bounds, bounds[1:]):
            yield names[codes[a]], slice(a, b)
        return
    order = np.argsort(codes, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        yield names[codes[group[0]]], group


def series_order(table: Any) -> np.ndarray | None:
    """The rows of ``table`` by series name (sorted as :func:`series_groups` sorts them),
    in table order within a series; None when they already are."""
    names, codes = series_names(table)
    rank = np.empty(len(names), np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    keys = rank[codes]
    if not len(keys) or bool((keys[1:] >= keys[:-1]).all()):
        return None
    return np.argsort(keys, kind="stable")


def run_of_series(table: Any, first: str, last: str) -> Any:
    """The rows of a table ordered by :func:`series_order` whose series name lies between
    ``first`` and ``last``: one slice, found by bisection (no pass over the rows)."""
    if SERIES not in table.column_names:
        return table if first <= "" <= last else table.slice(0, 0)
    column = table.column(SERIES)
    rows = range(table.num_rows)
    name = lambda i: str(column[i].as_py())  # noqa: E731  (as series_names names a row)
    lo = bisect.bisect_left(rows, first, key=name)
    hi = bisect.bisect_right(rows, last, lo=lo, key=name)
    return table.slice(lo, hi - lo)


def first_seen(codes: np.ndarray) -> np.ndarray:
    """The distinct codes in the order their first row comes (insertion order of the record path)."""
    uniq, first = np.unique(codes, return_index=True)
    return uniq[np.argsort(first, kind="stable")]


class SeriesCollector:
    """Streams records (or tables of them) into per-series columns of ``columns`` (missing -> NaN).

    Rows are kept per series as a list of numpy chunks (one per table, or one per run of
    :meth:`add` calls) and joined once in :meth:`series`.
    """

    def __init__(self, columns: list[str], *, label: str | None = None,
                 not_before: dict[str, float] | None = None) -> None:
        self.columns = list(columns)
        self.label = label
        self.not_before = not_before
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._rows: dict[str, tuple[list[float], list[float]]] = {}  # add()'s rows, not yet a chunk
        self._labels: dict[str, list[Any]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, record: Record) -> None:
        t = record.get(TIME)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            self.counts["rows_without_time"] += 1
            return
        name = str(record.get(SERIES, ""))
        if self.not_before is not None and name in self.not_before and t <= self.not_before[name]:
            # a row of this split that is not strictly later than the training data
            self.counts["rows_not_after_training"] += 1
            return
        rows = self._rows.get(name)
        if rows is None:
            rows = self._rows[name] = ([], [])
            self._start(name)
        rows[0].append(float(t))
        vals = rows[1]
        for col in self.columns:
            v = record.get(col)
            vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
        if self.label is not None:
            self._labels[name].append(record.get(self.label))

    def extend(self, records: Iterable[Record]) -> "SeriesCollector":
        for record in records:
            self.add(record)
        return self

    def add_table(self, table: Any) -> "SeriesCollector":
        """:meth:`add` for every row of a pyarrow Table of records, with numpy per column."""
        n = table.num_rows
        times = numeric_values(table, TIME)
        times = np.full(n, np.nan) if times is None else times
        keep = np.isfinite(times)
        if n - int(keep.sum()):
            self.counts["rows_without_time"] += n - int(keep.sum())
        names, codes = series_names(table)
        if self.not_before is not None:
            limit = np.array([self.not_before.get(name, -math.inf) for name in names])
            early = keep & (times <= limit[codes])
            if early.any():
                self.counts["rows_not_after_training"] += int(early.sum())
                keep &= ~early
        rows = np.flatnonzero(keep)
        if not len(rows):
            return self
        every = len(rows) == n  # the usual case: no row left out, nothing to gather
        # filled column by column: a column-major matrix takes each as one contiguous write
        values = np.empty((len(self.columns), len(rows))).T
        for j, col in enumerate(self.columns):
            column = numeric_values(table, col)
            values[:, j] = math.nan if column is None else column if every else column[rows]
        labels = None
        if self.label is not None:
            labels = table.column(self.label).to_pylist() if self.label in table.column_names \
                else [None] * n
        if not every:
            times, codes = times[rows], codes[rows]
        for name, part in _series_parts(names, codes):  # copies: the table's matrix goes
            self._append(name, times[part].copy(), values[part].copy(order="C"),
                         [labels[i] for i in rows[part]] if labels is not None else None)
        return self

    def _start(self, name: str) -> None:
        if name not in self._chunks:
            self._chunks[name] = []
            self._labels[name] = []

    def _append(self, name: str, times: np.ndarray, values: np.ndarray, labels: list[Any] | None) -> None:
        self._start(name)
        self._flush(name)
        self._chunks[name].append((times, values))
        if labels is not None:
            self._labels[name].extend(labels)

    def _flush(self, name: str) -> None:
        """Turn the rows :meth:`add` gathered for ``name`` into a chunk (keeps row order)."""
        rows = self._rows.pop(name, None)
        if rows is not None:
            values = np.array(rows[1], dtype=np.float64).reshape(len(rows[0]), len(self.columns))
            self._chunks[name].append((np.array(rows[0], dtype=np.float64), values))

    def series(self) -> Iterator[Series]:
        """Each series, by name. The collector hands over its rows as it goes (a series'
        chunks are freed when it is joined), so a split is held once, not twice; it is
        empty afterwards."""
        c = len(self.columns)
        for name in sorted(self._chunks):
            self._flush(name)
            chunks = self._chunks.pop(name)
            labels = self._labels.pop(name)
            times = np.concatenate([t for t, _ in chunks]) if chunks else np.zeros(0)
            values = np.concatenate([v for _, v in chunks]) if chunks else np.zeros((0, c))
            del chunks
            yield Series(name, times, values, list(labels) if self.label else None)


def regularize(s: Series, rules: SeriesRules, counts: Counter[str]) -> Series:
    """Sort, merge duplicates, put on the grid and fill gaps; counts what it changed."""
    times, values, labels = s.times, s.values, s.labels
    if len(times) == 0:
        return s
    if np.any(np.diff(times) < 0):
        counts["unsorted_series"] += 1
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        labels = [labels[i] for i in order] if labels is not None else None
    step = parse_frequency(rules.frequency) if rules.frequency else None
    if step is not None:
        keys = np.floor((times - times[0]) / step + 1e-6).astype(np.int64)
    else:
        keys = times
    uniq, first_idx, inverse, n_per = _unique_sorted(keys)
    dupes = len(keys) - len(uniq)
    if dupes:
        counts["duplicate_timestamps"] += dupes
        if rules.duplicates == "error":
            at = float(times[first_idx[np.argmax(n_per > 1)]])
            raise DataError(f"series {s.name!r}: {dupes} rows share a timestamp "
                            f"(first at {_fmt_time(at)}); set the model option duplicates to "
                            f"mean, first or last")
        values, labels = _merge(values, labels, inverse, first_idx, n_per, rules.duplicates)
        times = times[first_idx] if step is None else times[0] + uniq * step
    elif step is not None:
        times = times[0] + uniq * step
    if step is not None:
        size = int(uniq[-1]) + 1
        if size > MAX_GRID_GROWTH * len(uniq) + 1000:
            raise DataError(f"series {s.name!r}: frequency {rules.frequency!r} would turn "
                            f"{len(uniq)} rows into {size} grid slots; check the frequency or "
                            f"split the series at its long gaps")
        if size > len(uniq):
            counts["inserted_rows"] += size - len(uniq)
            grid = np.full((size, values.shape[1]), np.nan)
            grid[uniq] = values
            values = grid
            if labels is not None:
                full: list[Any] = [None] * size
                for k, lab in zip(uniq, labels):
                    full[int(k)] = lab
                labels = full
            times = times[0] + np.arange(size) * step
    values = fill(values, times, rules.fill, counts)
    return Series(s.name, times, values, labels)


def _unique_sorted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index, return_inverse, return_counts)`` of keys already in
    order: equal keys are neighbours, so one comparison per row finds them (no sort)."""
    new = np.empty(len(keys), bool)
    new[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    first_idx = np.flatnonzero(new)
    n_per = np.diff(first_idx, append=len(keys))
    inverse = np.cumsum(new) - 1
    return keys[first_idx], first_idx, inverse, n_per


def _merge(values: np.ndarray, labels: list[Any] | None, inverse: np.ndarray, first_idx: np.ndarray,
           n_per: np.ndarray, rule: str) -> tuple[np.ndarray, list[Any] | None]:
    """One row per group of equal keys (groups are contiguous: rows are sorted)."""
    inverse = inverse.reshape(-1)
    n = len(first_idx)
    # the mean rule keeps the latest label: labels cannot be averaged
    idx = first_idx if rule == "first" else first_idx + n_per - 1
    merged_labels = [labels[i] for i in idx] if labels is not None else None
    if rule in ("first", "last"):
        return values[idx], merged_labels
    ok = np.isfinite(values)
    sums = np.zeros((n, values.shape[1]))
    cnt = np.zeros((n, values.shape[1]))
    np.add.at(sums, inverse, np.where(ok, values, 0.0))
    np.add.at(cnt, inverse, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    return mean, merged_labels


def fill(values: np.ndarray, times: np.ndarray, method: str, counts: Counter[str]) -> np.ndarray:
    """Fill NaN cells column by column; leading/trailing gaps stay NaN for ffill/bfill."""
    bad = ~np.isfinite(values)
    if method == "none" or not bad.any():
        return values
    values = values.copy()
    values[bad] = np.nan
    n = len(values)
    for j in range(values.shape[1]):
        col = values[:, j]
        miss = bad[:, j]
        if not miss.any():
            continue
        if method == "zero":
            col[miss] = 0.0
        elif method == "interpolate":
            ok = ~miss
            if ok.any():
                col[miss] = np.interp(times[miss], times[ok], col[ok])
        else:
            idx = np.where(~miss, np.arange(n), -1 if method == "ffill" else n)
            if method == "ffill":
                idx = np.maximum.accumulate(idx)
                got = idx >= 0
            else:
                idx = np.minimum.accumulate(idx[::-1])[::-1]
                got = idx < n
            col[got] = col[idx[got]]
        values[:, j] = col
    counts["filled_values"] += int(bad.sum() - (~np.isfinite(values)).sum())
    return values


def _fmt_time(t: float) -> str:
    try:
        return to_datetime(t).isoformat()
    except (OverflowError, ValueError, OSError):
        return str(t)
