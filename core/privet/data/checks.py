"""Values no model can train on, caught before any cleaner fits statistics on them.

Kept apart from the preparer so worker processes (``data/parallel.py``) run the same check.
"""

from __future__ import annotations

import math
from typing import Any

from ..components import Record

#: Largest float32: a bigger number becomes inf once a model makes a tensor of it.
FLOAT32_MAX = 3.4028234663852886e38


def _bad_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not finite"
    if abs(value) > FLOAT32_MAX:
        return "overflows float32 (largest 3.4e38)"
    return None


def non_finite(record: Record) -> str | None:
    """Why a record holds a number no model can train on (NaN, inf, beyond float32), or None.

    Looks at top-level numbers and lists of numbers (feature vectors): a model turns them
    into float32 tensors, where 1e308 becomes inf and the loss NaN many steps later.
    """
    for key, value in record.items():
        why = _bad_number(value)
        if why is not None:
            return f"field {key!r}: {value!r} {why}"
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
            bad = _first_bad_number(value)
            if bad is not None:
                return f"field {key!r}: {bad[0]!r} {bad[1]}"
    return None


def _first_bad_number(values: list[Any] | tuple[Any, ...]) -> tuple[Any, str] | None:
    if len(values) > 64:  # long vectors: one numpy pass instead of a Python loop
        import numpy as np

        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            arr = None
        if arr is not None and arr.ndim == 1 and np.isfinite(arr).all() \
                and float(np.abs(arr).max()) <= FLOAT32_MAX:
            return None
    for item in values:
        why = _bad_number(item)
        if why is not None:
            return item, why
    return None
