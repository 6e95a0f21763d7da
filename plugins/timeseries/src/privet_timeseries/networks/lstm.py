"""A stacked (optionally bidirectional) LSTM over the input window, with a dense head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .normalize import Normalizer, head_output


class LSTMNet(nn.Module):
    """past (N, L, P) [+ known (N, L+H, K)] -> forecast (N, H, T[, Q]), logits or value.

    The last hidden state of the top layer (both directions if bidirectional) summarises
    the window; known future covariates and a series embedding join it before the head,
    which emits all horizon steps at once (direct multi-step forecasting).
    """

    def __init__(self, *, tables: dict[str, Any], n_observed: int, n_known: int, length: int,
                 horizon: int, n_targets: int, n_quantiles: int, n_outputs: int, task: str,
                 hidden: int, layers: int, bidirectional: bool, dropout: float, n_series: int,
                 series_dim: int, label_scaling: Any = None) -> None:
        super().__init__()
        self.norm = Normalizer(tables)
        self.length, self.horizon, self.task = length, horizon, task
        self.n_targets, self.n_quantiles = n_targets, n_quantiles
        self.label_scaling = label_scaling
        self.lstm = nn.LSTM(n_observed + n_known, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(n_series + 1, series_dim) if series_dim else None
        head_in = hidden * self.directions + series_dim + (horizon * n_known if task == "forecast" else 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_in, hidden), nn.ReLU(),
                                  nn.Linear(hidden, n_outputs))

    def forward(self, past: torch.Tensor, series: torch.Tensor,
                known: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm.past(past, series)
        k = self.norm.known(known) if known is not None else None
        if k is not None:
            x = torch.cat([x, k[:, : self.length]], -1)
        _, (h, _) = self.lstm(x)
        parts = [h[-self.directions:].transpose(0, 1).reshape(x.shape[0], -1)]
        if self.embed is not None:
            parts.append(self.embed(series))
        if k is not None and self.task == "forecast":
            parts.append(k[:, self.length:].reshape(x.shape[0], -1))
        y = self.head(torch.cat(parts, -1))
        return head_output(y, self.norm, series, task=self.task, horizon=self.horizon,
                           n_targets=self.n_targets, n_quantiles=self.n_quantiles,
                           label_scaling=self.label_scaling)
