"""The record keys every time series module shares, and the cell texts read as missing.

A module of its own so that the sources, the row and column conversions and the
cleaners and models can all import them without importing each other.
"""

from __future__ import annotations

TIME = "time"
SERIES = "series"
SPLIT = "split"
#: Cell texts read as a missing value (compared case-insensitively).
MISSING_MARKERS = frozenset({"", "na", "n/a", "null", "none", "nat", "-"})
