"""Synthetic data with known structure, for examples, tests and benchmarks (no downloads).

``seasonal_rows`` makes noisy hourly series with a daily and a weekly season, where a
good model beats the seasonal-naive forecast by a known margin; ``tabular_rows`` makes a
classification table with missing values, outliers and categorical columns whose label
is a learnable function of them.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

COLORS = ("red", "green", "blue", "black")
COLOR_EFFECT = {"red": 1.2, "green": -1.2, "blue": 0.4, "black": -0.4}
SIZES = ("S", "M", "L")


def seasonal_rows(n: int, *, period: int = 24, noise: float = 1.0, n_series: int = 1, seed: int = 0,
                  start: str = "2024-01-01T00:00:00", level: float = 10.0) -> list[dict[str, Any]]:
    """Hourly rows ``timestamp, series, value, temperature``, sorted by (series, time).

    value = level + 4 sin(daily) + 1.5 sin(weekly) + series offset + N(0, noise);
    temperature is an observed covariate loosely following the daily season.
    """
    rng = np.random.default_rng(seed)
    t0 = dt.datetime.fromisoformat(start)
    rows = []
    for s in range(n_series):
        offset = 3.0 * s
        phase = rng.uniform(0, 2 * math.pi) if s else 0.0
        for i in range(n):
            daily = 4.0 * math.sin(2 * math.pi * i / period + phase)
            weekly = 1.5 * math.sin(2 * math.pi * i / (7 * period))
            rows.append({
                "timestamp": (t0 + dt.timedelta(hours=i)).isoformat(),
                "series": f"s{s}",
                "value": round(level + offset + daily + weekly + rng.normal(0, noise), 4),
                "temperature": round(15 + 5 * math.sin(2 * math.pi * (i - 3) / period) + rng.normal(0, 0.5), 3),
            })
    return rows


def tabular_rows(n: int, *, seed: int = 0, missing: float = 0.04, outliers: float = 0.01,
                 noise: float = 0.25) -> list[dict[str, Any]]:
    """Rows ``x1..x4, color, size, label`` (label in low/mid/high).

    score = 1.5 x1 - x2 + 0.8 x3 x4 + color effect + size effect + N(0, noise); the label
    cuts the score at its terciles. ``missing`` of numeric cells are empty, ``outliers``
    are multiplied by 50, and a few colors are unseen ones (``purple``).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 4))
    color = rng.choice(COLORS, n)
    size = rng.choice(SIZES, n)
    score = (1.5 * x[:, 0] - x[:, 1] + 0.8 * x[:, 2] * x[:, 3]
             + np.array([COLOR_EFFECT[c] for c in color])
             + np.array([{"S": -0.5, "M": 0.0, "L": 0.5}[s] for s in size])
             + rng.normal(0, noise, n))
    cuts = np.quantile(score, [1 / 3, 2 / 3])
    labels = np.where(score < cuts[0], "low", np.where(score < cuts[1], "mid", "high"))
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for j in range(4):
            v = x[i, j]
            if rng.random() < outliers:
                v *= 50
            row[f"x{j + 1}"] = "" if rng.random() < missing else round(float(v), 4)
        row["color"] = "purple" if rng.random() < 0.01 else str(color[i])
        row["size"] = str(size[i])
        row["label"] = str(labels[i])
        rows.append(row)
    return rows


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows (dicts with the same keys) as a CSV file with a header."""
    rows = list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
