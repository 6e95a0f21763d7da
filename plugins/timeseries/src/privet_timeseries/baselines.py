"""Reference forecasts and forecast metrics, in numpy, for evaluating window examples.

A model is only worth training if it beats the seasonal-naive forecast (the value one
season earlier): ``seasonal_naive_mae(examples, season)`` gives that bar on the same
validation windows the engine scores.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .windows import Window


def seasonal_naive(window: Window, season: int) -> np.ndarray:
    """Forecast (horizon, targets): each step repeats the value ``season`` steps earlier."""
    past = window.past[:, : window.n_targets].astype(np.float64)
    L, H = len(past), len(window.future)
    if season < 1 or season > L:
        raise ValueError(f"season must be between 1 and the input length {L}, got {season}")
    idx = [L - season + (h % season) for h in range(H)]
    return past[idx]


def seasonal_naive_mae(examples: Iterable[dict[str, Any]], season: int) -> float:
    """Mean absolute error of the seasonal-naive forecast over window examples."""
    total, count = 0.0, 0
    for rec in examples:
        w = Window.from_record(rec)
        err = np.abs(seasonal_naive(w, season) - w.future.astype(np.float64))
        total += float(err.sum())
        count += err.size
    if not count:
        raise ValueError("no window examples to evaluate")
    return total / count

