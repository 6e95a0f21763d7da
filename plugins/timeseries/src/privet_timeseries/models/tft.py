"""``timeseries.tft``: Temporal Fusion Transformer with quantile forecasts."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from privet import OptionValueError, positive

from .base import WindowModel, WindowOptions


class TFT(WindowModel):
    """Temporal Fusion Transformer (Lim et al., 2021): variable selection, gated residual
    networks, LSTM encoder-decoder, interpretable attention and quantile outputs.

    Covariates named ``cal_*`` (or listed in ``known_features``) feed the decoder as
    inputs known in advance; the series identity is the static covariate.
    """

    @attrs.define(frozen=True)
    class Options(WindowOptions):
        task: Literal["forecast"] = "forecast"
        loss: Literal["quantile", "mse", "mae", "huber"] = "quantile"
        hidden_size: int = attrs.field(default=32, validator=positive)
        attention_heads: int = attrs.field(default=4, validator=positive)
        lstm_layers: int = attrs.field(default=1, validator=positive)

        def __attrs_post_init__(self) -> None:
            super().__attrs_post_init__()
            if self.hidden_size < self.attention_heads:
                raise OptionValueError(f"hidden_size ({self.hidden_size}) must be at least "
                                       f"attention_heads ({self.attention_heads})", "hidden_size")

    def build(self) -> Any:
        from ..networks.tft import TFTNet  # imported lazily: torch

        self._require_fit()
        o = self.options
        return TFTNet(tables=self.norm_tables(), n_observed=self.n_observed, n_known=self.n_known,
                      length=o.input_length, horizon=self.horizon, n_targets=self.n_targets,
                      n_quantiles=self.n_quantiles, n_series=self.n_series, d=o.hidden_size,
                      heads=o.attention_heads, lstm_layers=o.lstm_layers, dropout=o.dropout)
