"""Report counters that count each record once, however often it is cleaned.

The engine streams the training split through the earlier cleaners once more for every
cleaner that needs fitting, so a cleaner may see the same record several times;
counting calls would inflate its report. Records are told apart by their path.
"""

from __future__ import annotations

from typing import Any


class Tally:
    """Named counters of distinct records."""

    def __init__(self, *keys: str) -> None:
        self.counts = dict.fromkeys(keys, 0)
        self._seen: dict[str, set[int]] = {k: set() for k in keys}

    def add(self, key: str, record: dict[str, Any], path_field: str = "path") -> None:
        """Count ``record`` under ``key`` unless it was counted there before."""
        ident = record.get(path_field)
        if not isinstance(ident, str) or not ident:
            self.counts[key] += 1  # nothing to tell it apart by: count every call
            return
        marker = hash(ident)
        if marker not in self._seen[key]:
            self._seen[key].add(marker)
            self.counts[key] += 1

    def report(self) -> dict[str, int]:
        return dict(self.counts)
