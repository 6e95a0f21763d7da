"""``timeseries.calendar``: features of the timestamp that are known in advance.

They are written under the ``cal_`` prefix, which is how the window models recognise
covariates known for the forecast horizon too (the TFT feeds them to its decoder).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from typing import Any, Collection, Literal

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from privet import Cleaner, DropRecord, Record
from privet import OptionValueError

from .columns import float_values, put_column
from .sources import TIME
from .stats import finite
from .timeparse import to_datetime

Feature = Literal["minute", "hour", "day_of_week", "day_of_month", "day_of_year",
                  "week_of_year", "month", "quarter", "is_weekend"]
#: Period of each cyclical feature (sin/cos encoding).
PERIODS = {"minute": 60, "hour": 24, "day_of_week": 7, "day_of_month": 31, "day_of_year": 366,
           "week_of_year": 53, "month": 12, "quarter": 4}
PREFIX = "cal_"
#: Times (seconds) the table path takes: datetimes of the record path exist between the
#: years 1 and 9999 in any timezone; times beyond go the record way (which fails there).
TABLE_RANGE = (-62_135_596_800.0 + 2 * 86_400, 253_402_300_799.0 - 2 * 86_400)
US_PER_MINUTE = 60_000_000
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Etc/Zulu", "Universal", "Zulu"})


def _check_tz(_inst: Any, _attr: Any, value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise OptionValueError(f"unknown timezone {value!r}; use an IANA name such as "
                               f"'Europe/Paris' or 'UTC'", "timezone") from None


def _values(d: Any) -> dict[str, float]:
    iso = d.isocalendar()
    return {"minute": d.minute, "hour": d.hour, "day_of_week": d.weekday(),
            "day_of_month": d.day - 1, "day_of_year": d.timetuple().tm_yday - 1,
            "week_of_year": iso[1] - 1, "month": d.month - 1, "quarter": (d.month - 1) // 3,
            "is_weekend": 1.0 if d.weekday() >= 5 else 0.0}


class Calendar(Cleaner):
    """Add hour, day of week, month ... of ``time`` as ``cal_*`` features (sin/cos if cyclical)."""

    @attrs.define(frozen=True)
    class Options:
        features: list[Feature] = attrs.field(factory=lambda: ["hour", "day_of_week", "month"])
        #: Encode periodic features as sin/cos pairs, so 23h and 0h are neighbours.
        cyclical: bool = True
        timezone: str = attrs.field(default="UTC", validator=_check_tz)
        time_field: str = TIME

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.tz = zoneinfo.ZoneInfo(self.options.timezone)
        #: sin and cos of each value of a cyclical feature, as :meth:`clean` computes them
        self._waves = {f: (np.array([math.sin(2 * math.pi * float(v) / p) for v in range(p)]),
                           np.array([math.cos(2 * math.pi * float(v) / p) for v in range(p)]))
                       for f, p in PERIODS.items()}

    def clean(self, record: Record) -> Record:
        t = finite(record.get(self.options.time_field))
        if t is None:
            raise DropRecord("missing_timestamp", f"no {self.options.time_field!r}")
        values = _values(to_datetime(t, self.tz))
        for f in self.options.features:
            v = float(values[f])
            if self.options.cyclical and f in PERIODS:
                angle = 2 * math.pi * v / PERIODS[f]
                record[f"{PREFIX}{f}_sin"] = math.sin(angle)
                record[f"{PREFIX}{f}_cos"] = math.cos(angle)
            else:
                record[f"{PREFIX}{f}"] = v
        return record

    def clean_table(self, table: Any) -> Any:
        """:meth:`clean` over whole columns (float64 ``cal_*`` columns in the order clean
        writes them). Declines when a time is missing or not finite (the record path drops
        those rows) or beyond the years datetimes hold (the record path fails there)."""
        o = self.options
        times = float_values(table.column(o.time_field)) if o.time_field in table.column_names else None
        if times is None or not np.isfinite(times).all():
            return None
        if len(times) and (times.min() < TABLE_RANGE[0] or times.max() > TABLE_RANGE[1]):
            return None
        values = _fields(self._local_micros(_micros(times), times), o.features)
        for f in o.features:
            v = values[f]
            if o.cyclical and f in PERIODS:
                sin, cos = self._waves[f]
                table = put_column(table, f"{PREFIX}{f}_sin", pa.array(sin[v]))
                table = put_column(table, f"{PREFIX}{f}_cos", pa.array(cos[v]))
            else:
                table = put_column(table, f"{PREFIX}{f}", pa.array(v.astype(np.float64)))
        return table

    def _local_micros(self, micros: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Wall-clock microseconds in the option's timezone, as :meth:`clean` finds them.

        Arrow converts; zoneinfo (what :meth:`clean` uses) must agree on the offset at the
        first and last time of each UTC day and on both sides of each change Arrow makes.
        Where they differ (Arrow may lack the summer times after 2037 that zoneinfo takes
        from the rule at the end of a zone file), zoneinfo gives each distinct time's offset.
        """
        if self.options.timezone in UTC_NAMES:
            return micros
        local = self._arrow_local(micros)
        if local is not None and self._zoneinfo_agrees(local - micros, micros, times):
            return local
        _distinct, first, inverse = np.unique(micros, return_index=True, return_inverse=True)
        offsets = np.array([self._offset(times[i]) for i in first], dtype=np.int64)
        return micros + offsets[inverse.reshape(-1)]

    def _arrow_local(self, micros: np.ndarray) -> np.ndarray | None:
        try:
            stamps = pa.array(micros, pa.timestamp("us", tz="UTC")).cast(
                pa.timestamp("us", tz=self.options.timezone))
            return np.asarray(pc.local_timestamp(stamps).cast(pa.int64()).to_numpy(zero_copy_only=False))
        except (pa.ArrowException, ValueError):
            return None  # a timezone Arrow's database lacks

    def _zoneinfo_agrees(self, offsets: np.ndarray, micros: np.ndarray, times: np.ndarray) -> bool:
        if not len(micros):
            return True
        order = np.argsort(micros, kind="stable")
        days = micros[order] // (86_400 * 1_000_000)
        first = np.flatnonzero(np.diff(days, prepend=days[0] - 1))
        change = np.flatnonzero(np.diff(offsets[order]))
        probes = np.concatenate([first, first[1:] - 1, [len(order) - 1], change, change + 1])
        return all(self._offset(times[i]) == offsets[i] for i in order[np.unique(probes)])

    def _offset(self, seconds: float) -> int:
        """The timezone's UTC offset at ``seconds``, in microseconds (as :meth:`clean` sees it)."""
        offset = to_datetime(seconds, self.tz).utcoffset()
        return 0 if offset is None else offset // dt.timedelta(microseconds=1)


def _micros(times: np.ndarray) -> np.ndarray:
    """Seconds -> whole microseconds, rounded as ``datetime.timedelta(seconds=t)`` rounds:
    the whole seconds exactly, then the fraction to the nearest microsecond, ties to even."""
    whole = np.trunc(times)
    return whole.astype(np.int64) * 1_000_000 + np.rint((times - whole) * 1e6).astype(np.int64)


def _fields(micros: np.ndarray, wanted: Collection[str]) -> dict[str, np.ndarray]:
    """The ``wanted`` features of :func:`_values` (ints) from wall-clock microseconds since
    1970. Those of the day alone are computed once per day of the span and looked up per
    row: numpy's calendar conversions cost about 15 ns a row each, and a shard of hourly
    rows holds a few dozen days."""
    minutes = micros // US_PER_MINUTE
    hours = minutes // 60
    days = hours // 24
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    per_row = {"minute": lambda: minutes % 60, "hour": lambda: hours % 24,
               "day_of_week": lambda: weekday, "is_weekend": lambda: (weekday >= 5).astype(np.int64)}
    out = {f: per_row[f]() for f in wanted if f in per_row}
    by_day = [f for f in wanted if f in DAY_FEATURES]
    first = int(days.min()) if len(days) else 0
    span = int(days.max()) - first + 1 if len(days) else 0
    if by_day and span <= max(len(days), 4096):  # a table of the days spanned, looked up
        table = _day_fields(np.arange(first, first + span, dtype=np.int64), by_day)
        out.update({f: values[days - first] for f, values in table.items()})
    elif by_day:  # a few rows over many years: per row
        out.update(_day_fields(days, by_day))
    return {f: out[f] for f in wanted}


#: the features that depend on the date only
DAY_FEATURES = ("day_of_month", "day_of_year", "week_of_year", "month", "quarter")


def _day_fields(days: np.ndarray, wanted: Collection[str]) -> dict[str, np.ndarray]:
    """The ``wanted`` date features of days since 1970 (int64)."""
    date = days.astype("datetime64[D]")
    month = date.astype("datetime64[M]")
    month0 = month.astype(np.int64) % 12
    out = {"month": month0, "quarter": month0 // 3}
    if "day_of_month" in wanted:
        out["day_of_month"] = days - month.astype("datetime64[D]").astype(np.int64)
    if "day_of_year" in wanted:
        out["day_of_year"] = days - date.astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    if "week_of_year" in wanted:
        thursday = days - (days + 3) % 7 + 3  # the ISO week belongs to the year of its Thursday
        iso_year_start = thursday.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]")
        out["week_of_year"] = (thursday - iso_year_start.astype(np.int64)) // 7
    return {f: out[f] for f in wanted}
