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


# --- Columnar parsing: the same numbers as parse_time, for whole Arrow columns --------
#
# Each function below returns an Arrow array holding exactly what the scalar functions
# give each cell, or ``None`` (or nulls, where documented) when some cell needs the
# scalar rules: the record path then reads it and reports what is wrong. A fast path
# only accepts text whose meaning to Python is certain; anything else declines.

#: The characters ``str.strip()`` removes (``str.isspace``), to trim Arrow strings alike.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003"
                 "\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_FINITE_RE = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NON_FINITE_RE = r"(?i)^[+-]?(?:nan|inf|infinity)$"
#: float64 holds every microsecond count below this exactly (years ~1685 to ~2255).
_EXACT_US = 1 << 53
_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


def py_strip(texts: Any) -> Any:
    """Arrow strings trimmed as ``str.strip()`` trims them."""
    import pyarrow.compute as pc

    return pc.utf8_trim(texts, characters=PY_WHITESPACE)


def number_cells(texts: Any) -> Any:
    """``float(text)`` of each stripped string as float64 (NaN for any non-finite text),
    null where the text is not a plain decimal number (those need ``float`` itself)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    finite = pc.fill_null(pc.match_substring_regex(texts, _FINITE_RE), False)
    values = pc.cast(pc.if_else(finite, texts, pa.scalar(None, texts.type)), pa.float64())
    non_finite = pc.fill_null(pc.match_substring_regex(texts, _NON_FINITE_RE), False)
    return pc.if_else(non_finite, math.nan, values)


def time_cells(column: Any, fmt: str) -> Any:
    """``parse_time(cell, fmt)`` of every cell as float64, or ``None`` if any cell is
    missing, unparseable or outside the fast paths (Arrow timestamps and dates, numbers,
    ISO 8601 text in the common shapes, strftime patterns of numeric directives)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if column.null_count:
        return None
    if pa.types.is_timestamp(t) or pa.types.is_date32(t):
        return _arrow_time_cells(column)
    if pa.types.is_integer(t) or (pa.types.is_floating(t) and t.bit_width >= 32):
        if "%" in fmt:
            return None
        values = pc.cast(column, pa.float64())  # safe: ints beyond 2**53 raise
        return _checked_numbers(values, fmt)
    if not is_text_type(t):
        return None
    texts = pc.cast(column, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if len(texts) > 1:  # a time repeats once per series: parse each distinct text once
        encoded = pc.dictionary_encode(texts)
        if len(encoded.dictionary) < len(texts):
            values = _text_time_cells(encoded.dictionary, fmt)
            return None if values is None else values.take(encoded.indices)
    return _text_time_cells(texts, fmt)


def _text_time_cells(column: Any, fmt: str) -> Any:
    """``time_cells`` of a string array without nulls (cell by cell, so the distinct
    texts of a column give the same values as the whole column)."""
    import pyarrow.compute as pc

    texts = py_strip(column)
    if "%" in fmt:
        return strftime_cells(texts, fmt)
    numbers = number_cells(texts)
    if fmt != "auto":
        return None if numbers.null_count else _checked_numbers(numbers, fmt)
    if numbers.null_count:
        numbers = pc.coalesce(numbers, iso_cells(texts))
        if numbers.null_count:
            return None
    return _checked_numbers(numbers, fmt)


def all_true(mask: Any) -> bool:
    """Whether every cell of a boolean Arrow array is true (nulls are not; empty is)."""
    import pyarrow.compute as pc

    return bool(pc.all(pc.fill_null(mask, False), min_count=0).as_py())


def is_text_type(t: Any) -> bool:
    """Whether an Arrow type holds plain strings."""
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _checked_numbers(values: Any, fmt: str) -> Any:
    """Numbers read as times: any non-finite one declines; ``unix_ms`` is divided."""
    import pyarrow.compute as pc

    if values.null_count or not all_true(pc.is_finite(values)):
        return None
    return pc.divide(values, 1000.0) if fmt == "unix_ms" else values


def _arrow_time_cells(column: Any) -> Any:
    """Timestamps (s, ms, us; any zone) and dates as ``_from_datetime`` gives them."""
    import numpy as np
    import pyarrow as pa

    t = column.type
    if pa.types.is_date32(t):
        raw = np.asarray(column.cast(pa.int32()).to_numpy(zero_copy_only=False), np.int64)
        factor = 86_400 * 1_000_000
    elif t.unit in _US:
        raw = np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        factor = _US[t.unit]
    else:  # nanoseconds: Python sees them through pandas or not at all
        return None
    limit = _EXACT_US // factor
    if raw.size and (int(raw.max()) >= limit or int(raw.min()) <= -limit):
        return None
    return pa.array((raw * factor) / 1e6, pa.float64())


def _iso_fraction_digits() -> frozenset[int]:
    """Digit counts of fractional seconds this Python's ``fromisoformat`` reads (3.10:
    3 and 6 only; 3.11 on: 1 to 6, more are cut)."""
    ok = set()
    for n in range(1, 7):
        try:
            dt.datetime.fromisoformat("2000-01-01T00:00:00." + "1" * n)
            ok.add(n)
        except ValueError:
            pass
    return frozenset(ok)


_ISO_FRACTIONS = _iso_fraction_digits()
_ISO_RE = (r"^(?P<Y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})"
           r"(?:[T ](?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:\.(?P<f>[0-9]{1,6}))?)?"
           r"(?:(?P<Z>Z)|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))?)?$")


def iso_cells(texts: Any) -> Any:
    """``parse_time(text)`` (auto) of stripped ISO 8601 strings as float64: date, date
    and ``HH:MM[:SS[.ffffff]]`` after ``T`` or a space, optional ``Z`` or ``+hh:mm``;
    null for any other shape or an impossible date or time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    fixed = _iso_fixed(texts)
    if fixed is not None:
        return fixed
    parts = pc.extract_regex(texts, _ISO_RE)
    f = parts.field("f")
    places = pc.utf8_length(f)
    allowed = pa.array([0, *sorted(_ISO_FRACTIONS)], places.type)
    ok = _mask(parts.is_valid()) & _mask(pc.is_in(places, value_set=allowed))
    fields = {k: _digits(parts.field(k)) for k in ("Y", "m", "d", "H", "M", "S", "oh", "om")}
    micro = _digits(pc.utf8_rpad(f, width=6, padding="0"))
    sign = np.where(_mask(pc.equal(parts.field("sign"), "-")), -1, 1)
    ok &= (fields["oh"] < 24) & (fields["om"] < 60)
    offset = sign * (fields["oh"] * 3600 + fields["om"] * 60)
    return _epoch_cells(fields["Y"], fields["m"], fields["d"], fields["H"], fields["M"],
                        fields["S"], micro, offset, ok)


def _mask(flags: Any) -> Any:
    """A boolean Arrow array as a numpy mask (null as False)."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(flags, False).to_numpy(zero_copy_only=False), bool)


def _iso_fixed(texts: Any) -> Any:
    """``iso_cells`` of a column whose strings all have the first one's shape (the usual
    case: one writer, one format), from the bytes at each position; ``None`` otherwise.
    Every position is checked to be a digit or the shape's character, so each string
    is one ``_ISO_RE`` matches with the same groups."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(texts) or texts.null_count or not pa.types.is_string(texts.type):
        return None
    first = texts[0].as_py()
    m = re.fullmatch(_ISO_RE, first)
    width = len(first)
    if m is None or pc.min_max(pc.binary_length(texts)).as_py() != {"min": width, "max": width}:
        return None
    start = int(np.frombuffer(texts.buffers()[1], np.int32, 1, 4 * texts.offset)[0])
    cells = np.frombuffer(texts.buffers()[2], np.uint8, len(texts) * width, start)
    cells = cells.reshape(-1, width)
    spans = {k: m.span(k) for k in m.groupdict() if m.group(k) is not None}
    digit = np.zeros(width, bool)
    for k, (a, b) in spans.items():
        digit[a:b] = k not in ("Z", "sign")
    want = np.frombuffer(first.encode(), np.uint8)
    other = want.copy()  # the one position where either of two characters is allowed
    if width > 10:
        other[10] = ord(" ") if first[10] == "T" else ord("T")
    if "sign" in spans:
        other[spans["sign"][0]] = ord("-") if m.group("sign") == "+" else ord("+")
    lit = cells[:, ~digit]
    if not (((lit == want[~digit]) | (lit == other[~digit])).all()
            and ((cells[:, digit] >= 48) & (cells[:, digit] <= 57)).all()):
        return None

    def num(k: str) -> Any:
        a, b = spans.get(k, (0, 0))
        tens = 10 ** np.arange(b - a - 1, -1, -1, dtype=np.int64)
        return (cells[:, a:b].astype(np.int64) - 48) @ tens

    places = spans["f"][1] - spans["f"][0] if "f" in spans else 0
    if places and places not in _ISO_FRACTIONS:
        return None
    sign = np.where(cells[:, spans["sign"][0]] == ord("-"), -1, 1) if "sign" in spans else 1
    hours, minutes = num("oh"), num("om")
    return _epoch_cells(num("Y"), num("m"), num("d"), num("H"), num("M"), num("S"),
                        num("f") * 10 ** (6 - places), sign * (hours * 3600 + minutes * 60),
                        (hours < 24) & (minutes < 60))


def _digits(texts: Any) -> Any:
    """ASCII digit strings as int64 numpy values ("" and null as 0)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    filled = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(texts), 0), True), "0", texts)
    return np.asarray(pc.cast(filled, pa.int64()).to_numpy(zero_copy_only=False), np.int64)


def _epoch_cells(year: Any, month: Any, day: Any, hour: Any, minute: Any, second: Any,
                 micro: Any, offset_s: Any, ok: Any) -> Any:
    """Seconds since the epoch of validated calendar fields, as ``(dt - EPOCH)
    .total_seconds()`` gives them; null where the fields make no datetime."""
    import numpy as np
    import pyarrow as pa

    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
    m = np.clip(month, 0, 12)
    ok = ok & (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1)
    ok &= day <= month_days[m] + ((m == 2) & leap)
    ok &= (hour < 24) & (minute < 60) & (second < 60)
    # days from the civil date (H. Hinnant's algorithm), in int64 throughout
    y = year - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    us = ((days * 24 + hour) * 60 + minute) * 60 + second - offset_s
    us = us * 1_000_000 + micro
    ok &= np.abs(us) < _EXACT_US
    return pa.array(us / 1e6, pa.float64(), mask=~ok)


#: Python's ``_strptime`` regexes for the numeric directives, with ASCII digits (cells
#: are ASCII-only here, so ``\d`` means the same).
_STRPTIME_RE = {
    "d": r"(?P<d>3[0-1]|[1-2][0-9]|0[1-9]|[1-9]| [1-9])", "f": r"(?P<f>[0-9]{1,6})",
    "H": r"(?P<H>2[0-3]|[0-1][0-9]|[0-9])", "m": r"(?P<m>1[0-2]|0[1-9]|[1-9])",
    "M": r"(?P<M>[0-5][0-9]|[0-9])", "S": r"(?P<S>6[0-1]|[0-5][0-9]|[0-9])",
    "y": r"(?P<y>[0-9][0-9])", "Y": r"(?P<Y>[0-9][0-9][0-9][0-9])",
}


def strftime_pattern(fmt: str) -> str | None:
    """An RE2 pattern that splits text as ``datetime.strptime(text, fmt)`` does, for
    formats of ``%Y %y %m %d %H %M %S %f %%`` and ASCII literals; ``None`` otherwise.

    Like ``_strptime`` it matches from the start, leftmost alternative first, with
    whitespace runs as ``\\s+``; the trailing ``rest`` group is text ``strptime`` would
    refuse as unconverted."""
    out = ["(?i)^"]
    seen: set[str] = set()
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%":
            d = fmt[i + 1:i + 2]
            if d == "%":
                out.append("%")
            elif d in _STRPTIME_RE and d not in seen:
                seen.add(d)
                out.append(_STRPTIME_RE[d])
            else:
                return None
            i += 2
            continue
        if c.isspace():
            while i < len(fmt) and fmt[i].isspace():
                i += 1
            out.append(r"[ \t\n\r\f\x0b]+")
            continue
        if not (c.isascii() and c.isprintable()):
            return None
        out.append(c if c.isalnum() else f"\\x{{{ord(c):x}}}")
        i += 1
    return "".join(out) + "(?P<rest>(?s:.*))$" if not ("Y" in seen and "y" in seen) else None


def strftime_cells(texts: Any, fmt: str) -> Any:
    """``parse_time(text, fmt)`` of stripped strings for a strftime ``fmt``, or ``None``
    if the pattern or any cell needs ``strptime`` itself."""
    import numpy as np
    import pyarrow.compute as pc

    pattern = strftime_pattern(fmt)
    if pattern is None or not all_true(pc.string_is_ascii(texts)):
        return None
    parts = pc.extract_regex(texts, pattern)
    if parts.null_count or not all_true(pc.equal(pc.utf8_length(parts.field("rest")), 0)):
        return None
    names = {parts.type.field(i).name for i in range(parts.type.num_fields)}

    def field(name: str, default: int) -> Any:
        if name not in names:
            return np.full(len(texts), default, np.int64)
        return _digits(pc.utf8_trim_whitespace(parts.field(name)))

    year = field("Y", 1900)
    if "y" in names:
        short = field("y", 0)
        year = np.where(short <= 68, short + 2000, short + 1900)
    micro = _digits(pc.utf8_rpad(parts.field("f"), width=6, padding="0")) if "f" in names else 0
    zero = np.zeros(len(texts), np.int64)
    out = _epoch_cells(year, field("m", 1), field("d", 1), field("H", 0), field("M", 0),
                       field("S", 0), micro + zero, zero, np.ones(len(texts), bool))
    return None if out.null_count else out
