"""``timeseries.lstm``: a stacked LSTM for forecasting and sequence classification/regression."""

from __future__ import annotations

from typing import Any

import attrs

from privet import OptionValueError, positive

from .base import WindowModel, WindowOptions


def _non_negative(_inst: Any, attr: Any, value: int) -> None:
    if value < 0:
        raise OptionValueError(f"{attr.name} must be 0 or more, got {value}", attr.name)


class LSTM(WindowModel):
    """Stacked LSTM over the input window; forecasts the horizon at once, or classifies it.

    ``bidirectional`` reads the window both ways (the window is all past, so this leaks
    nothing; it mostly helps classification). ``series_embedding`` > 0 learns a vector per
    series for many-series data.
    """

    @attrs.define(frozen=True)
    class Options(WindowOptions):
        hidden_size: int = attrs.field(default=64, validator=positive)
        num_layers: int = attrs.field(default=2, validator=positive)
        bidirectional: bool = False
        #: Size of a learned per-series vector (0: none).
        series_embedding: int = attrs.field(default=0, validator=_non_negative)

    def build(self) -> Any:
        from ..networks.lstm import LSTMNet  # imported lazily: torch

        self._require_fit()
        o = self.options
        if self.task == "forecast":
            n_out = self.horizon * self.n_targets * self.n_quantiles
        else:
            n_out = self.n_classes if self.task == "classification" else 1
        return LSTMNet(tables=self.norm_tables(), n_observed=self.n_observed, n_known=self.n_known,
                       length=o.input_length, horizon=self.horizon, n_targets=self.n_targets,
                       n_quantiles=self.n_quantiles, n_outputs=n_out, task=self.task,
                       hidden=o.hidden_size, layers=o.num_layers, bidirectional=o.bidirectional,
                       dropout=o.dropout, n_series=self.n_series, series_dim=o.series_embedding,
                       label_scaling=self.state.get("label_scaling"))
