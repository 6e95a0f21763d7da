"""Which record keys a fitted cleaner works on, and fitting passes shared by them."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from privet import DataError, Record

from .sources import SERIES, SPLIT, TIME
from .stats import RunningStats, finite

#: Keys never treated as numeric features (they are bookkeeping written by the sources).
RESERVED = frozenset({TIME, SERIES, SPLIT})


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fit_pass(records: Iterable[Record], columns: list[str] | None, exclude: Iterable[str],
             observe: Callable[[Record, str, Any], None], *, who: str) -> list[str]:
    """Call ``observe(record, column, value)`` for each selected column of each record.

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
    if columns is None:
        return sorted(seen)
    missing = [c for c in columns if c not in fields]
    if missing and n:
        raise DataError(f"{who}: column(s) {', '.join(map(repr, missing))} not found in the "
                        f"training records (fields: {', '.join(sorted(fields))}); fix 'columns'")
    return list(columns)


#: Running statistics of a column, overall (series ``None``) or of one series.
ColumnStats = dict[tuple[str, "str | None"], RunningStats]


def column_stats(records: Iterable[Record], columns: list[str] | None, exclude: Iterable[str], *,
                 per_series: bool, who: str) -> tuple[list[str], ColumnStats]:
    """One :func:`fit_pass` collecting each selected column's finite values into
    :class:`RunningStats`: overall, and per series (``per_series``)."""
    stats: ColumnStats = {}

    def observe(record: Record, column: str, value: Any) -> None:
        v = finite(value)
        if v is None:
            return
        _stats_of(stats, (column, None)).add(v)
        if per_series and record.get(SERIES) is not None:
            _stats_of(stats, (column, str(record[SERIES]))).add(v)

    return fit_pass(records, columns, exclude, observe, who=who), stats


def _stats_of(stats: ColumnStats, key: tuple[str, str | None]) -> RunningStats:
    """The stats of ``key``, made on first use (``setdefault`` would build, and seed, a
    RunningStats for every value: a fifth of a fitting pass' time)."""
    found = stats.get(key)
    if found is None:
        found = stats[key] = RunningStats()
    return found
