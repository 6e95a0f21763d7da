"""Timestamps and frequencies as plain floats.

Records carry time as seconds since the Unix epoch (UTC) in a float: Arrow stores it
compactly, arithmetic on a grid is exact enough (float64 resolves microseconds until the
year 2255), and numeric time indexes (step 0, 1, 2 ...) fit the same slot unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "minute": 60.0, "minutes": 60.0, "t": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_FREQ = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*([a-zA-Z]*)\s*$")


def parse_frequency(value: str | float | int) -> float:
    """``"15min"``, ``"1h"``, ``"1d"``, ``"2w"`` or a number of seconds (or steps) -> seconds.

    Months and years are not fixed lengths, so they are refused rather than guessed.
    """
    if isinstance(value, bool):
        raise ValueError(f"frequency must be like '15min', '1h', '1d' or a number, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise ValueError(f"frequency must be positive, got {value!r}")
        return float(value)
    m = _FREQ.match(str(value))
    unit = (m.group(2) or "s").lower() if m else ""
    if not m or unit not in _UNITS:
        hint = " (months and years have no fixed length; use days)" if unit in ("m", "mo", "month", "y", "year") else ""
        raise ValueError(f"frequency {value!r} is not understood{hint}; use e.g. 30s, 15min, 1h, "
                         f"1d, 1w or a number of seconds")
    amount = float(m.group(1)) if m.group(1) else 1.0
    if amount <= 0:
        raise ValueError(f"frequency must be positive, got {value!r}")
    return amount * _UNITS[unit]


def _from_datetime(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)  # naive timestamps are read as UTC
    return (value - _EPOCH).total_seconds()


def parse_time(value: Any, fmt: str = "auto") -> float:
    """Turn one timestamp into seconds since the epoch (UTC); ``ValueError`` if impossible.

    ``fmt``: ``auto`` (ISO 8601 text, datetimes, or numbers kept as they are),
    ``unix`` (seconds), ``unix_ms`` (milliseconds), or a ``strftime`` pattern such as
    ``%d/%m/%Y %H:%M``. Naive times are UTC.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("missing timestamp")
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if isinstance(value, dt.datetime):
        return _from_datetime(value)
    if isinstance(value, dt.date):
        return _from_datetime(dt.datetime(value.year, value.month, value.day))
    if fmt in ("auto", "unix", "unix_ms"):
        number = _as_number(value)
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{value!r} is not a finite timestamp")
            return number / 1000.0 if fmt == "unix_ms" else number
        if fmt != "auto":
            raise ValueError(f"{value!r} is not a number of {'milli' if fmt == 'unix_ms' else ''}seconds")
        text = str(value).strip()
        try:
            return _from_datetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 timestamp (set time_format to a "
                             f"strftime pattern such as '%d/%m/%Y %H:%M')") from None
    try:
        return _from_datetime(dt.datetime.strptime(str(value).strip(), fmt))
    except ValueError:
        raise ValueError(f"{str(value)!r} does not match time_format {fmt!r}") from None


def _as_number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def to_datetime(seconds: float, tz: dt.tzinfo | None = None) -> dt.datetime:
    """Seconds since the epoch -> aware datetime (UTC unless ``tz`` is given)."""
    out = _EPOCH + dt.timedelta(seconds=float(seconds))
    return out.astimezone(tz) if tz is not None else out
