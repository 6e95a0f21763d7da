"""``timeseries.outliers``: clip or drop values outside bounds learned on the training split."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional

import attrs
import numpy as np
import pyarrow as pa

from privet import DataError, DropRecord, Record
from privet import OptionValueError

from .columns import ColumnStats, SeriesKeys, StatsCleaner, float_values, null_mask, per_row
from .sources import SERIES
from .stats import RunningStats, finite


def _check_k(_inst: Any, _attr: Any, value: float | None) -> None:
    if value is not None and value <= 0:
        raise OptionValueError(f"k must be positive, got {value}", "k")


class Outliers(StatsCleaner):
    """Bound numeric values by 3-sigma (mean ± k·std) or IQR (quartiles ± k·IQR) rules.

    ``action: clip`` moves an outlier to the nearest bound; ``action: drop`` drops the
    record with reason ``outlier`` (counted, not a bad record). Missing values pass.
    """


    @attrs.define(frozen=True)
    class Options:
        columns: Optional[list[str]] = None
        exclude: list[str] = attrs.field(factory=list)
        method: Literal["sigma", "iqr"] = "sigma"
        #: Width of the band: default 3 for ``sigma``, 1.5 for ``iqr``.
        k: Optional[float] = attrs.field(default=None, validator=_check_k)
        action: Literal["clip", "drop"] = "clip"
        per_series: bool = False

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.bounds: dict[str, dict[str, Any]] = {}
        self.fitted = False
        self.counts: Counter[str] = Counter()

    @property
    def needs_quantiles(self) -> bool:  # type: ignore[override]
        return self.options.method == "iqr"

    def fit_stats(self, columns: list[str], stats: ColumnStats) -> None:
        self.bounds = {}
        for column in columns:
            glob = stats.get((column, None))
            if glob is None:
                continue  # nothing to bound: every training value is missing
            per = {s: self._band(st) for (c, s), st in stats.items()
                   if c == column and s is not None and st.count >= 4}
            self.bounds[column] = {"global": self._band(glob), "series": per}
        self.fitted = True

    def _band(self, stats: RunningStats) -> list[float]:
        o = self.options
        if o.method == "sigma":
            k = 3.0 if o.k is None else o.k
            return [stats.mean - k * stats.std, stats.mean + k * stats.std]
        k = 1.5 if o.k is None else o.k
        q1, q3 = stats.quantile(0.25), stats.quantile(0.75)
        return [q1 - k * (q3 - q1), q3 + k * (q3 - q1)]

    def clean(self, record: Record) -> Record:
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        for column, entry in self.bounds.items():
            v = finite(record.get(column))
            if v is None:
                continue
            series = record.get(SERIES)
            lo, hi = entry["series"].get(str(series), entry["global"]) if series is not None else entry["global"]
            if lo <= v <= hi:
                continue
            if self.options.action == "drop":
                self.counts[f"dropped.{column}"] += 1
                raise DropRecord("outlier", f"{column}={v:g} outside [{lo:g}, {hi:g}]", bad=False)
            record[column] = lo if v < lo else hi
            self.counts[f"clipped.{column}"] += 1
        return record

    def clean_table(self, table: Any) -> Any:
        """:meth:`clean` over whole columns. ``action: clip`` clips (a clipped int column
        becomes float64, as the cleaned records hold floats there); ``action: drop``
        declines (``None``) when any row is out of bounds, so the record path names the drops.
        """
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        counts: Counter[str] = Counter()
        keys: SeriesKeys | None = None
        for column, entry in self.bounds.items():
            values = float_values(table.column(column)) if column in table.column_names else None
            if values is None:
                continue  # absent, or no number in it: nothing to bound
            if entry["series"] and keys is None:
                keys = SeriesKeys.of_table(table)
            bounds = per_row(keys, table.num_rows, entry["series"], entry["global"])
            lo, hi = bounds[:, 0], bounds[:, 1]
            with np.errstate(invalid="ignore"):
                out = np.isfinite(values) & ~((lo <= values) & (values <= hi))
                n = int(out.sum())
                if not n:
                    continue
                if self.options.action == "drop":
                    return None
                clipped = np.where(out, np.where(values < lo, lo, hi), values)
            nulls = null_mask(table.column(column))
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array(clipped, pa.float64(), mask=nulls))
            counts[f"clipped.{column}"] += n
            if column == SERIES:
                keys = None  # clean reads the series after this change
        self.counts.update(counts)
        return table

    def report(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"bounds": self.bounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bounds = {c: {"global": list(v["global"]), "series": {k: list(b) for k, b in v["series"].items()}}
                       for c, v in state.get("bounds", {}).items()}
        self.fitted = True
