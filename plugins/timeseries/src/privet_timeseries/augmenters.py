"""Augmenters of window examples (training split only, seeded per sample and epoch).

Transforms of the time axis (slicing, warping, resampling) act on the whole window:
the targets over input *and* horizon are one curve, warped together, so the input and
what the model must forecast stay consistent. Past-only features follow the same warp
within the input part; known covariates across the whole window. Jitter touches the
inputs only: the forecast targets stay the truth.
"""

from __future__ import annotations

import abc
from typing import Any

import attrs
import numpy as np

from privet import Augmenter, Record
from privet import OptionValueError, positive, probability

from .windows import Window, parse_shape


def _positive_pair(_inst: Any, attr: Any, value: list[float]) -> None:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise OptionValueError(f"{attr.name} must be [low, high] with 0 < low <= high, got {value}",
                               attr.name)


def _fraction(_inst: Any, attr: Any, value: float) -> None:
    if not 0 < value <= 1:
        raise OptionValueError(f"{attr.name} must be in (0, 1], got {value}", attr.name)


def _interp(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sample (rows, cols) ``values`` at fractional row ``positions`` (clamped to the ends)."""
    grid = np.arange(len(values), dtype=np.float64)
    positions = np.clip(positions, 0, len(values) - 1)
    if values.shape[1] == 0:
        return np.zeros((len(positions), 0))
    return np.stack([np.interp(positions, grid, values[:, j]) for j in range(values.shape[1])], 1)


def remap(record: Record, positions: np.ndarray) -> Record:
    """Resample a window so that its row ``i`` is the old row ``positions[i]``."""
    w = Window.from_record(record)
    targets, features, known = w.joined()
    L = w.length
    warped = Window.from_joined(_interp(targets, positions), _interp(features, np.minimum(positions[:L], L - 1)),
                                _interp(known, positions), L)
    return warped.to_record(record)


class _Base(Augmenter):
    """Applies :meth:`transform` with probability ``p``."""

    def augment(self, record: Record, rng: np.random.Generator) -> Record:
        if rng.random() >= self.options.p:
            return record
        return self.transform(record, rng)

    @abc.abstractmethod
    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        """The augmentation itself, applied when the coin toss says so."""


class Jitter(_Base):
    """Add Gaussian noise to the input window: ``sigma`` times each channel's std in it."""

    @attrs.define(frozen=True)
    class Options:
        sigma: float = attrs.field(default=0.05, validator=positive)
        p: float = attrs.field(default=1.0, validator=probability)

    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        w = Window.from_record(record)
        past = w.past.astype(np.float64)
        spread = past.std(axis=0)
        spread = np.where(spread > 0, spread, np.maximum(np.abs(past).mean(axis=0), 1e-3))
        w.past = (past + rng.normal(0.0, self.options.sigma, past.shape) * spread).astype(np.float32)
        return w.to_record(record)


class MagnitudeScale(_Base):
    """Multiply the targets (input and horizon alike) by one factor drawn from N(1, sigma)."""

    @attrs.define(frozen=True)
    class Options:
        sigma: float = attrs.field(default=0.1, validator=positive)
        p: float = attrs.field(default=1.0, validator=probability)

    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        w = Window.from_record(record)
        targets, features, known = w.joined()
        factor = rng.normal(1.0, self.options.sigma, (1, targets.shape[1]))
        return Window.from_joined(targets * factor, features, known, w.length).to_record(record)


class WindowSlice(_Base):
    """Crop a random ``ratio`` of the window and stretch it back to full length
    (Le Guennec et al., 2016)."""

    @attrs.define(frozen=True)
    class Options:
        ratio: float = attrs.field(default=0.9, validator=_fraction)
        p: float = attrs.field(default=1.0, validator=probability)

    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        L, H = parse_shape(record["shape"])[:2]
        n = L + H
        span = max(2.0, self.options.ratio * (n - 1))
        start = rng.uniform(0.0, (n - 1) - span) if span < n - 1 else 0.0
        return remap(record, start + np.linspace(0.0, span, n))


class TimeWarp(_Base):
    """Warp the time axis smoothly: a random speed at ``knots`` points, N(1, sigma),
    interpolated and integrated, so some stretches run faster and others slower."""

    @attrs.define(frozen=True)
    class Options:
        sigma: float = attrs.field(default=0.2, validator=positive)
        knots: int = attrs.field(default=4, validator=positive)
        p: float = attrs.field(default=1.0, validator=probability)

    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        L, H = parse_shape(record["shape"])[:2]
        n = L + H
        speed_at_knots = np.clip(rng.normal(1.0, self.options.sigma, self.options.knots + 2), 0.1, None)
        speed = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(speed_at_knots)), speed_at_knots)
        path = np.concatenate([[0.0], np.cumsum(speed[:-1])])
        return remap(record, path * (n - 1) / max(path[-1], 1e-9))


class Resample(_Base):
    """Up- or down-sample the window by a random rate in ``rates``, anchored at the cut
    between input and horizon: rate 2 reads every other step (a coarser sampling), 0.5
    interpolates between steps (a finer one). Reads beyond the window repeat its edge."""

    @attrs.define(frozen=True)
    class Options:
        rates: list[float] = attrs.field(factory=lambda: [0.8, 1.25], validator=_positive_pair)
        p: float = attrs.field(default=1.0, validator=probability)

    def transform(self, record: Record, rng: np.random.Generator) -> Record:
        L, H = parse_shape(record["shape"])[:2]
        low, high = self.options.rates
        rate = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        anchor = L - 0.5 if H else L - 1.0
        return remap(record, anchor + (np.arange(L + H) - anchor) * rate)
