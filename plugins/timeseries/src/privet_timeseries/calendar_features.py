"""``timeseries.calendar``: features of the timestamp that are known in advance.

They are written under the ``cal_`` prefix, which is how the window models recognise
covariates known for the forecast horizon too (the TFT feeds them to its decoder).
"""

from __future__ import annotations

import math
import zoneinfo
from typing import Any, Literal

import attrs

from privet import Cleaner, DropRecord, Record
from privet import OptionValueError

from .sources import TIME
from .stats import finite
from .timeparse import to_datetime

Feature = Literal["minute", "hour", "day_of_week", "day_of_month", "day_of_year",
                  "week_of_year", "month", "quarter", "is_weekend"]
#: Period of each cyclical feature (sin/cos encoding).
PERIODS = {"minute": 60, "hour": 24, "day_of_week": 7, "day_of_month": 31, "day_of_year": 366,
           "week_of_year": 53, "month": 12, "quarter": 4}
PREFIX = "cal_"


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
