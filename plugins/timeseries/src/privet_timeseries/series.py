"""From a stream of row records to clean, sorted, regular series (the windowing input).

Everything that needs a row's neighbours in time happens here, once per split, after
cleaning: sorting unsorted rows, merging duplicated timestamps by rule, putting rows on
a regular grid, and filling gaps (forward/backward fill, interpolation). Rows live in
compact float arrays, not dicts, so a split of millions of rows fits in memory.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Any, Iterable, Literal

import attrs
import numpy as np

from privet import DataError, Record

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


class SeriesCollector:
    """Streams records into per-series columns of ``columns`` (missing -> NaN)."""

    def __init__(self, columns: list[str], *, label: str | None = None,
                 not_before: dict[str, float] | None = None) -> None:
        self.columns = list(columns)
        self.label = label
        self.not_before = not_before
        self._times: dict[str, array] = {}
        self._values: dict[str, array] = {}
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
        times = self._times.get(name)
        if times is None:
            times = self._times[name] = array("d")
            self._values[name] = array("d")
            self._labels[name] = []
        times.append(float(t))
        vals = self._values[name]
        for col in self.columns:
            v = record.get(col)
            vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
        if self.label is not None:
            self._labels[name].append(record.get(self.label))

    def extend(self, records: Iterable[Record]) -> "SeriesCollector":
        for record in records:
            self.add(record)
        return self

    def series(self) -> list[Series]:
        out = []
        c = len(self.columns)
        for name in sorted(self._times):
            times = np.frombuffer(self._times[name], dtype=np.float64).copy()
            values = np.frombuffer(self._values[name], dtype=np.float64).reshape(-1, c).copy() if c else \
                np.zeros((len(times), 0))
            out.append(Series(name, times, values, self._labels[name] if self.label else None))
        return out


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
    uniq, first_idx, inverse, n_per = np.unique(keys, return_index=True, return_inverse=True,
                                               return_counts=True)
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
