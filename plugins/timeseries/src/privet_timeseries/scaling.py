"""Fitted per-column (and per-series) scaling with an exact inverse, and the
``timeseries.scale`` cleaner built on it.

One implementation (:class:`ColumnScaler`) serves the cleaner and the models' own target
normalisation, so a prediction can always be mapped back to the units of the data with
the state saved in a checkpoint: ``inverse_transform(state, column, values, series)``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Literal, Optional

import attrs
import numpy as np
import pyarrow as pa

from privet import DataError, Record

from .columns import (ColumnStats, SeriesKeys, StatsCleaner, float_values, merge_stats, null_mask,
                      observe_array, per_row)
from .sources import SERIES
from .stats import RunningStats, finite

METHODS = ("standard", "minmax", "robust", "none")
#: Series with fewer training values than this use the column's global statistics.
MIN_SERIES_VALUES = 2


def _params(stats: RunningStats, method: str) -> list[float]:
    """(loc, scale) of one column under ``method``; a zero or undefined scale becomes 1."""
    if method == "none" or stats.count == 0:
        return [0.0, 1.0]
    if method == "standard":
        loc, scale = stats.mean, stats.std
    elif method == "minmax":
        loc, scale = stats.min, stats.max - stats.min
    elif method == "robust":
        loc, scale = stats.quantile(0.5), stats.quantile(0.75) - stats.quantile(0.25)
    else:  # pragma: no cover - Options validate the method
        raise ValueError(f"unknown scaling method {method!r}")
    if not math.isfinite(scale) or scale <= 1e-12:
        scale = 1.0
    return [float(loc), float(scale)]


class ColumnScaler:
    """``(x - loc) / scale`` per column, with loc/scale per series when asked.

    Fit with :meth:`observe_many` (or :meth:`observe`) on the training values, then
    :meth:`finish`. The state is
    plain JSON: ``{"method", "per_series", "columns": {col: {"global": [loc, scale],
    "series": {id: [loc, scale]}}}}``.
    """

    def __init__(self, method: str = "standard", per_series: bool = False) -> None:
        if method not in METHODS:
            raise ValueError(f"scaling method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        self.per_series = per_series
        self.columns: dict[str, dict[str, Any]] = {}
        self._stats: dict[tuple[str, str | None], RunningStats] = {}

    # -- fitting ------------------------------------------------------------------------

    def observe(self, column: str, value: float, series: str | None = None) -> None:
        """Add one finite training value of ``column`` (of ``series``)."""
        self._get(column, None).add(value)
        if self.per_series and series is not None:
            self._get(column, series).add(value)

    def observe_many(self, column: str, values: np.ndarray, series: np.ndarray | None = None) -> None:
        """Add an array of training values of ``column`` (non-finite ones are skipped);
        ``series``: each value's series id (str, ``None`` for none), same length.

        The batch form of :meth:`observe` (:meth:`RunningStats.add_many`): a statistic is
        kept only for a series with a finite value, as :meth:`observe` keeps them.
        """
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        keys = None
        if self.per_series and series is not None:
            if len(series) != len(x):
                raise ValueError(f"observe_many: {len(series)} series ids for {len(x)} values")
            keys = SeriesKeys.of_values(series)
        observe_array(self._stats, column, x, keys, quantiles=self.method == "robust")

    def merge(self, other: "ColumnScaler") -> None:
        """Add what ``other`` observed (of later values) to what this one observed."""
        merge_stats(self._stats, other._stats)

    def use_stats(self, stats: ColumnStats) -> None:
        """Take statistics gathered by :func:`~.columns.merged_stats` (keys ``(column,
        series or None)``) as what was observed; series ones only when ``per_series``."""
        self._stats = {k: v for k, v in stats.items() if self.per_series or k[1] is None}

    def _get(self, column: str, series: str | None) -> RunningStats:
        key = (column, series)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = RunningStats()
        return stats

    def finish(self, columns: Iterable[str] = ()) -> None:
        """Turn what was observed into parameters (columns never seen get loc 0, scale 1)."""
        out: dict[str, dict[str, Any]] = {c: {"global": [0.0, 1.0], "series": {}} for c in columns}
        for (column, series), stats in sorted(self._stats.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            entry = out.setdefault(column, {"global": [0.0, 1.0], "series": {}})
            if series is None:
                entry["global"] = _params(stats, self.method)
            elif stats.count >= MIN_SERIES_VALUES:
                entry["series"][series] = _params(stats, self.method)
        self.columns = out
        self._stats = {}

    # -- applying -----------------------------------------------------------------------

    def loc_scale(self, column: str, series: str | None = None) -> tuple[float, float]:
        entry = self.columns.get(column)
        if entry is None:
            raise KeyError(f"column {column!r} was not fitted (fitted: {', '.join(self.columns) or 'none'})")
        if series is not None and series in entry["series"]:
            loc, scale = entry["series"][series]
        else:
            loc, scale = entry["global"]
        return float(loc), float(scale)

    def transform(self, column: str, values: Any, series: str | None = None) -> Any:
        loc, scale = self.loc_scale(column, series)
        if isinstance(values, (int, float)):
            return (float(values) - loc) / scale
        return (np.asarray(values, dtype=np.float64) - loc) / scale

    def inverse(self, column: str, values: Any, series: str | None = None) -> Any:
        """Map scaled values back to the units of the data."""
        loc, scale = self.loc_scale(column, series)
        if isinstance(values, (int, float)):
            return float(values) * scale + loc
        return np.asarray(values, dtype=np.float64) * scale + loc

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "per_series": self.per_series, "columns": self.columns}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ColumnScaler":
        scaler = cls(state.get("method", "standard"), bool(state.get("per_series", False)))
        scaler.columns = {c: {"global": list(v["global"]), "series": {k: list(p) for k, p in v["series"].items()}}
                          for c, v in state.get("columns", {}).items()}
        return scaler


def inverse_transform(state: dict[str, Any], column: str, values: Any, series: str | None = None) -> Any:
    """Undo a fitted scaling given its saved state (a ``timeseries.scale`` cleaner's
    ``state_dict()``, or a model's ``state_dict()["target_scaler"]``)."""
    if "scaler" in state:
        state = state["scaler"]
    return ColumnScaler.from_state(state).inverse(column, values, series)


class Scale(StatsCleaner):
    """Scale numeric columns: ``standard`` (mean/std), ``minmax`` or ``robust`` (median/IQR).

    Missing values stay missing (NaN/inf become ``None``, counted). The fitted state maps
    predictions back with :meth:`inverse` or :func:`privet_timeseries.inverse_transform`.
    """


    @attrs.define(frozen=True)
    class Options:
        columns: Optional[list[str]] = None
        exclude: list[str] = attrs.field(factory=list)
        method: Literal["standard", "minmax", "robust"] = "standard"
        per_series: bool = False

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.scaler = ColumnScaler(self.options.method, self.options.per_series)
        self.fitted = False
        self.counts: Counter[str] = Counter()

    @property
    def needs_quantiles(self) -> bool:  # type: ignore[override]
        return self.options.method == "robust"

    def fit_stats(self, columns: list[str], stats: ColumnStats) -> None:
        o = self.options
        scaler = ColumnScaler(o.method, o.per_series)
        scaler.use_stats(stats)
        scaler.finish(columns)
        self.scaler = scaler
        self.fitted = True

    def clean(self, record: Record) -> Record:
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        series = record.get(SERIES)
        sid = None if series is None else str(series)
        for column in self.scaler.columns:
            if column not in record:
                continue
            v = finite(record[column])
            if v is None:
                if record[column] is not None:
                    self.counts[f"non_finite.{column}"] += 1
                record[column] = None
                continue
            record[column] = self.scaler.transform(column, v, sid)
        return record

    def clean_table(self, table: Any) -> Any:
        """:meth:`clean` over whole columns: numbers scaled (float64), a NaN, infinity or
        non-number becomes null and is counted; columns the table lacks stay absent."""
        if not self.fitted:
            raise DataError(f"cleaner {self.name} was used before it was fitted")
        by_series = any(entry["series"] for entry in self.scaler.columns.values())
        keys = SeriesKeys.of_table(table) if by_series else None  # clean reads it once, first
        counts: Counter[str] = Counter()
        for column, entry in self.scaler.columns.items():
            if column not in table.column_names or pa.types.is_null(table.column(column).type):
                continue  # absent, or None everywhere: clean leaves both alone
            nulls = null_mask(table.column(column))
            values = float_values(table.column(column))
            if values is None:  # text, bool ...: no row holds a number
                values = np.full(table.num_rows, np.nan)
            good = np.isfinite(values)
            bad = int((~good & ~nulls).sum())
            if bad:
                counts[f"non_finite.{column}"] += bad
            params = per_row(keys, table.num_rows, entry["series"], entry["global"])
            with np.errstate(invalid="ignore", over="ignore"):
                scaled = (values - params[:, 0]) / params[:, 1]
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array(scaled, pa.float64(), mask=~good))
        self.counts.update(counts)
        return table

    def inverse(self, column: str, values: Any, series: str | None = None) -> Any:
        """Scaled values of ``column`` back in the units of the data."""
        return self.scaler.inverse(column, values, series)

    def report(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler = ColumnScaler.from_state(state["scaler"])
        self.fitted = True
