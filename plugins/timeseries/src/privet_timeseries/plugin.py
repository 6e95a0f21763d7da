"""Hook implementations of privet-timeseries (the ``timeseries`` entry point).

Component modules import numpy and attrs only; torch is imported when a model is built.
"""

from __future__ import annotations

from importlib.resources import files

from privet import hookimpl

from . import augmenters
from .calendar_features import Calendar
from .categorical import Categorical
from .impute import Impute
from .models.lstm import LSTM
from .models.mlp import MLP
from .models.tft import TFT
from .outliers import Outliers
from .regularize import Regularize
from .scaling import Scale
from .sources import TimeSeriesCsv, TimeSeriesParquet


@hookimpl
def register_sources(register):
    register("timeseries.csv", TimeSeriesCsv)
    register("timeseries.parquet", TimeSeriesParquet)


@hookimpl
def register_cleaners(register):
    register("timeseries.impute", Impute)
    register("timeseries.outliers", Outliers)
    register("timeseries.categorical", Categorical)
    register("timeseries.scale", Scale)
    register("timeseries.regularize", Regularize)
    register("timeseries.calendar", Calendar)


@hookimpl
def register_augmenters(register):
    register("timeseries.jitter", augmenters.Jitter)
    register("timeseries.magnitude_scale", augmenters.MagnitudeScale)
    register("timeseries.window_slice", augmenters.WindowSlice)
    register("timeseries.time_warp", augmenters.TimeWarp)
    register("timeseries.resample", augmenters.Resample)


@hookimpl
def register_models(register):
    register("timeseries.lstm", LSTM)
    register("timeseries.tft", TFT)
    register("timeseries.mlp", MLP)


@hookimpl
def starter_pipeline(modality):
    if modality == "timeseries":
        return (files(__package__) / "starter.yaml").read_text(encoding="utf-8")
    return None
