"""Streaming statistics for fitting on data larger than memory.

Means and variances are exact (Welford); medians and quartiles come from a fixed-size,
deterministically seeded reservoir sample, exact below ``RESERVOIR`` values and a close
estimate above.
"""

from __future__ import annotations

import math
import random

import numpy as np

RESERVOIR = 50_000


class RunningStats:
    """Count, mean, variance, min, max and a reservoir for quantiles of one column."""

    __slots__ = ("count", "mean", "_m2", "min", "max", "_sample", "_rng")

    def __init__(self, seed: int = 0) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        """Observe one finite value (callers skip missing ones)."""
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        if len(self._sample) < RESERVOIR:
            self._sample.append(x)
        else:
            j = self._rng.randrange(self.count)
            if j < RESERVOIR:
                self._sample[j] = x

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0

    def quantile(self, q: float) -> float:
        if not self._sample:
            return math.nan
        return float(np.quantile(np.asarray(self._sample, dtype=np.float64), q))

    def summary(self) -> dict[str, float]:
        """JSON-ready numbers every fitted component may need."""
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, "q25": self.quantile(0.25), "median": self.quantile(0.5),
                "q75": self.quantile(0.75)}


def finite(value: object) -> float | None:
    """The value as a float if it is a finite number, else ``None`` (missing, NaN, inf, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None
