"""``timeseries.scale``: standard, min-max or robust scaling fitted on the training split."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional

import attrs

from privet import Cleaner, DataError, Record

from .columns import fit_pass
from .scaling import ColumnScaler
from .sources import SERIES
from .stats import finite


class Scale(Cleaner):
    """Scale numeric columns: ``standard`` (mean/std), ``minmax`` or ``robust`` (median/IQR).

    Missing values stay missing (NaN/inf become ``None``, counted). The fitted state maps
    predictions back with :meth:`inverse` or :func:`privet_timeseries.inverse_transform`.
    """

    needs_fit = True

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

    def fit(self, records: Any) -> None:
        scaler = ColumnScaler(self.options.method, self.options.per_series)

        def observe(record: Record, column: str, value: Any) -> None:
            v = finite(value)
            if v is not None:
                series = record.get(SERIES)
                scaler.observe(column, v, None if series is None else str(series))

        columns = fit_pass(records, self.options.columns, self.options.exclude, observe,
                           who=f"cleaner {self.name}")
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
