"""privet-timeseries: time series and tabular data for Privet.

Sources (CSV, Parquet), cleaners fitted on the training split (impute, outliers,
categorical, scale, regularize, calendar), windowing without leakage, augmenters, and
three models: ``timeseries.lstm``, ``timeseries.tft`` and ``timeseries.mlp``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .scaling import ColumnScaler, inverse_transform

__all__ = ["ColumnScaler", "__version__", "inverse_transform"]
