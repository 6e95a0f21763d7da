"""One row of a series file into records: the rules every source follows row by row.

Kept apart from the sources so that the columnar conversions (``table_cells``,
``csv_cells``) can follow the same converter without importing the file readers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from privet import BadRecord, DataError, Record

from .record_keys import MISSING_MARKERS, SERIES, SPLIT, TIME
from .timeparse import parse_time

if TYPE_CHECKING:
    from .sources import SeriesFileOptions


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


def _numeric_columns(conv: _RowConverter) -> list[str]:
    """The columns ``conv`` reads as numbers (its features and targets not kept as text)."""
    return [c for c in dict.fromkeys([*conv.features, *conv.targets]) if c not in conv.text]
