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
    """Count, mean, variance, min, max and a reservoir for quantiles of one column.

    ``quantiles=False`` keeps no reservoir: for a fit that needs moments only, which is
    then cheaper, and its :meth:`fit_table <privet.Cleaner.fit_table>` parts are small.
    """

    __slots__ = ("count", "mean", "_m2", "min", "max", "_sample", "_rng", "_np_rng", "_seed",
                 "quantiles")

    def __init__(self, seed: int = 0, quantiles: bool = True) -> None:
        self.quantiles = quantiles
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        #: a list while it fills, a float64 array once full (replacements then stay in numpy)
        self._sample: list[float] | np.ndarray = []
        self._rng: random.Random | None = None  # made when add() first needs it
        self._seed = seed
        self._np_rng: np.random.Generator | None = None

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
        if not self.quantiles:
            return
        if len(self._sample) < RESERVOIR:
            self._sample.append(x)  # a list until full
        else:
            if self._rng is None:
                self._rng = random.Random(self._seed)
            j = self._rng.randrange(self.count)
            if j < RESERVOIR:
                self._sample[j] = x

    def add_many(self, values: np.ndarray) -> None:
        """Observe an array of values at once (non-finite ones are skipped).

        Mean and variance merge exactly (Chan et al.); the reservoir keeps its first
        ``RESERVOIR`` values and then replaces entries with a seeded numpy generator, so
        results are deterministic for the same values in the same batches (they differ
        from :meth:`add`'s sample beyond ``RESERVOIR`` values, as two seeds would).
        """
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        x = x[np.isfinite(x)]
        n = len(x)
        if n == 0:
            return
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        if self.count:
            delta = mean - self.mean
            self._m2 += m2 + delta * delta * self.count * n / total
            self.mean += delta * n / total
        else:  # the first batch: its own numbers, without a rounding of the merge
            self._m2, self.mean = m2, mean
        lo, hi = float(x.min()), float(x.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        start = self.count
        self.count = total
        if not self.quantiles:
            return
        room = RESERVOIR - len(self._sample)
        if room > 0:
            self._sample.extend(x[:room].tolist())
            x = x[room:]
            start += min(room, n)
        if len(x):
            self._replace(x, start)

    def _replace(self, x: np.ndarray, start: int) -> None:
        """Reservoir replacement for values number ``start + 1 ...`` (Algorithm R)."""
        if self._np_rng is None:
            self._np_rng = np.random.default_rng(self._seed)
        seen = start + 1 + np.arange(len(x), dtype=np.float64)
        slot = (self._np_rng.random(len(x)) * seen).astype(np.int64)
        keep = slot < RESERVOIR
        slot, x = slot[keep], x[keep]
        if not len(slot):
            return
        last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]  # a later value wins
        if not isinstance(self._sample, np.ndarray):
            self._sample = np.asarray(self._sample, dtype=np.float64)
        self._sample[slot[last]] = x[last]

    def merge(self, other: "RunningStats") -> None:
        """Add the values ``other`` observed, as if they came next (the map-and-merge fit).

        Mean and variance merge as :meth:`add_many` merges a batch, so merging the stats
        of single batches gives exactly the numbers of adding those batches in turn. The
        samples join while every value fits in the reservoir (then quantiles are exact,
        as sequentially); beyond, each side keeps a share of the reservoir in proportion
        to its count, drawn with this stats' seeded generator: deterministic for the same
        parts in the same order.
        """
        n = other.count
        if not n:
            return
        total = self.count + n
        if self.count:
            delta = other.mean - self.mean
            self._m2 += other._m2 + delta * delta * self.count * n / total
            self.mean += delta * n / total
        else:
            self._m2, self.mean = other._m2, other.mean
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if self.quantiles:
            self._sample = self._joined_sample(other, total)
        self.count = total

    def _joined_sample(self, other: "RunningStats", total: int) -> list[float] | np.ndarray:
        mine, theirs = self._sample, other._sample
        if len(mine) + len(theirs) <= RESERVOIR and len(mine) == self.count and len(theirs) == other.count:
            return [*mine, *theirs]  # every value, in order: what add_many would hold
        if self._np_rng is None:
            self._np_rng = np.random.default_rng(self._seed)
        a = np.asarray(mine, dtype=np.float64)
        b = np.asarray(theirs, dtype=np.float64)
        take_a = min(len(a), round(RESERVOIR * self.count / total))
        take_b = min(len(b), RESERVOIR - take_a)
        take_a = min(len(a), RESERVOIR - take_b)
        rng = self._np_rng

        def pick(x: np.ndarray, k: int) -> np.ndarray:  # k of x's values, in their order
            return x if k >= len(x) else x[np.sort(rng.permutation(len(x))[:k])]

        joined = np.concatenate([pick(a, take_a), pick(b, take_b)])
        return joined if len(joined) >= RESERVOIR else joined.tolist()

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0

    def quantile(self, q: float) -> float:
        if not len(self._sample):
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
