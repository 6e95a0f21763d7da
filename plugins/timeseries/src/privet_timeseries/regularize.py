"""``timeseries.regularize``: snap timestamps onto a fixed-frequency grid.

This is the per-record half of time regularisation: irregular stamps (10:00:03,
09:59:58) land on the grid (10:00). The other half needs neighbours and happens in the
window models (``frequency`` option): rows sharing a grid slot are merged by the
``duplicates`` rule and empty slots are inserted and filled.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal, Optional

import attrs

from privet import Cleaner, DropRecord, Record
from privet import OptionValueError

from .sources import TIME
from .stats import finite
from .timeparse import parse_frequency, parse_time


def _check_frequency(_inst: Any, _attr: Any, value: str) -> None:
    try:
        parse_frequency(value)
    except ValueError as err:
        raise OptionValueError(str(err), "frequency") from None


def _check_origin(_inst: Any, _attr: Any, value: str | None) -> None:
    if value is not None:
        try:
            parse_time(value)
        except ValueError as err:
            raise OptionValueError(f"origin: {err}", "origin") from None


class Regularize(Cleaner):
    """Move each timestamp to the grid ``origin + k * frequency`` (floor, round or ceil)."""

    @attrs.define(frozen=True)
    class Options:
        frequency: str = attrs.field(validator=_check_frequency)
        mode: Literal["floor", "round", "ceil"] = "floor"
        #: A grid point (ISO time or number); default the epoch, so days start at midnight UTC.
        origin: Optional[str] = attrs.field(default=None, validator=_check_origin)
        time_field: str = TIME

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.step = parse_frequency(self.options.frequency)
        self.origin = parse_time(self.options.origin) if self.options.origin is not None else 0.0
        self.counts: Counter[str] = Counter()

    def clean(self, record: Record) -> Record:
        t = finite(record.get(self.options.time_field))
        if t is None:
            raise DropRecord("missing_timestamp", f"no {self.options.time_field!r}")
        k = (t - self.origin) / self.step
        snapped = {"floor": math.floor, "ceil": math.ceil}.get(self.options.mode, round)(round(k, 9))
        new = self.origin + snapped * self.step
        if new != t:
            self.counts["snapped"] += 1
            record[self.options.time_field] = new
        return record

    def report(self) -> dict[str, int]:
        return dict(self.counts)
