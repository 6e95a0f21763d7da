"""Normalisation inside the module, from the fitted state, so exports take raw values."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """Scales inputs on the way in and forecasts back to data units on the way out.

    ``target_loc``/``target_scale`` have one row per series (row 0: unseen series, global
    statistics); observed and known features use global statistics.
    """

    def __init__(self, tables: dict[str, np.ndarray]) -> None:
        super().__init__()
        for name, value in tables.items():
            # a copy: views of one array would share storage, which safetensors refuses
            self.register_buffer(name, torch.tensor(np.asarray(value, np.float32)))

    def past(self, past: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        """(N, L, targets + features) raw -> scaled."""
        n = past.shape[0]
        loc = torch.cat([self.target_loc[series], self.feature_loc.expand(n, -1)], -1)
        scale = torch.cat([self.target_scale[series], self.feature_scale.expand(n, -1)], -1)
        return (past - loc[:, None, :]) / scale[:, None, :]

    def known(self, known: torch.Tensor) -> torch.Tensor:
        return (known - self.known_loc) / self.known_scale

    def forecast(self, y: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
        """(N, H, T, Q) scaled -> data units (the inverse transform of the targets)."""
        loc = self.target_loc[series][:, None, :, None]
        scale = self.target_scale[series][:, None, :, None]
        return y * scale + loc


def head_output(y: torch.Tensor, norm: Normalizer, series: torch.Tensor, *, task: str,
                horizon: int, n_targets: int, n_quantiles: int, label_scaling: Any) -> torch.Tensor:
    """Shape a head's output for the task: forecasts and regressions in data units."""
    if task == "forecast":
        y = norm.forecast(y.reshape(y.shape[0], horizon, n_targets, n_quantiles), series)
        return y if n_quantiles > 1 else y.squeeze(-1)
    if task == "regression":
        loc, scale = label_scaling
        return y.squeeze(-1) * scale + loc
    return y
