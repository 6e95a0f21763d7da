"""``timeseries.impute``: fill missing numeric values with a statistic of the training split.

Only record-local methods live here (mean, median, constant): a cleaner sees one record
at a time. Forward/backward fill and interpolation need a series' neighbours in time
order, so the window models do them after sorting (their ``fill`` option).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional

import attrs
import numpy as np
import pyarrow as pa

from privet import DataError, Record

from .columns import ColumnStats, SeriesKeys, StatsCleaner, float_values, per_row, put_column
from .sources import SERIES
from .stats import RunningStats, finite


class Impute(StatsCleaner):
    """Fill missing, NaN and inf values (mean, median or a constant, fitted on train)."""


    @attrs.define(frozen=True)
    class Options:
        #: Columns to fill; ``null`` = every numeric field.
        columns: Optional[list[str]] = None
        #: Numeric fields to leave alone when ``columns`` is null (labels, ids).
        exclude: list[str] = attrs.field(factory=list)
        method: Literal["mean", "median", "constant"] = "mean"
        #: The fill value of ``method: constant``.
        value: float = 0.0
        #: Fill with the series' own statistic (falls back to the global one).
        per_series: bool = False
        #: Add ``<column>_missing`` = 1.0 where a value was filled (0.0 elsewhere).
        indicator: bool = False

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.fill: dict[str, dict[str, Any]] = {}
        self.fitted = False
        self.counts: Counter[str] = Counter()

    @property
    def needs_quantiles(self) -> bool:  # type: ignore[override]
        return self.options.method == "median"

    def fit_stats(self, columns: list[str], stats: ColumnStats) -> None:
        o = self.options
        fill: dict[str, dict[str, Any]] = {}
        for column in columns:
            glob = stats.get((column, None))
            if o.method != "constant" and glob is None:
                raise DataError(f"cleaner {self.name}: column {column!r} has no finite value in "
                                f"the training split, so its {o.method} is undefined; use method: "
                                f"constant or drop the column")
            per = {s: self._stat(st) for (c, s), st in stats.items() if c == column and s is not None}
            fill[column] = {"global": self._stat(glob) if glob else o.value, "series": per}
        self.fill = fill
        self.fitted = True

    def _stat(self, stats: RunningStats) -> float:
        m = self.options.method
        return self.options.value if m == "constant" else stats.mean if m == "mean" else stats.quantile(0.5)

    def clean(self, record: Record) -> Record:
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        for column, entry in self.fill.items():
            missing = finite(record.get(column)) is None
            if missing:
                series = record.get(SERIES)
                record[column] = entry["series"].get(str(series), entry["global"]) if series is not None else entry["global"]
                self.counts[column] += 1
            if self.options.indicator:
                record[f"{column}_missing"] = 1.0 if missing else 0.0
        return record

    def clean_table(self, table: Any) -> Any:
        """:meth:`clean` over whole columns: a filled column becomes float64 (an int one
        only where a row was filled), a column the table lacks is appended filled, and
        ``<column>_missing`` indicators come after each column as :meth:`clean` adds them."""
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        counts: Counter[str] = Counter()
        keys: SeriesKeys | None = None
        rows = table.num_rows
        for column, entry in self.fill.items():
            present = column in table.column_names
            values = float_values(table.column(column)) if present else None
            missing = np.ones(rows, dtype=bool) if values is None else ~np.isfinite(values)
            n = int(missing.sum())
            if n:
                if entry["series"] and keys is None:
                    keys = SeriesKeys.of_table(table)
                fill = per_row(keys, rows, entry["series"], entry["global"])
                filled = fill if values is None else np.where(missing, fill, values)
                table = put_column(table, column, pa.array(filled, pa.float64()))
                counts[column] += n
                if column == SERIES:
                    keys = None  # clean reads the series after this change
            if self.options.indicator:
                table = put_column(table, f"{column}_missing", pa.array(missing.astype(np.float64)))
                if f"{column}_missing" == SERIES:
                    keys = None
        self.counts.update(counts)
        return table

    def report(self) -> dict[str, int]:
        return {f"imputed.{c}": n for c, n in sorted(self.counts.items())}

    def state_dict(self) -> dict[str, Any]:
        return {"fill": self.fill}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fill = {c: {"global": float(v["global"]), "series": dict(v["series"])}
                     for c, v in state.get("fill", {}).items()}
        self.fitted = True
