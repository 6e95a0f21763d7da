"""A plain MLP over numeric features plus embeddings of integer-coded categories."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class MLPNet(nn.Module):
    """x (N, D) raw numeric features [, codes (N, E) int64] -> logits (N, C) or value (N,)."""

    def __init__(self, *, feature_loc: Any, feature_scale: Any, cardinalities: list[int],
                 embed_dim: int, hidden: list[int], dropout: float, n_outputs: int,
                 label_scaling: Any = None) -> None:
        super().__init__()
        self.register_buffer("feature_loc", torch.tensor(np.asarray(feature_loc, np.float32)))
        self.register_buffer("feature_scale", torch.tensor(np.asarray(feature_scale, np.float32)))
        self.embeddings = nn.ModuleList(nn.Embedding(c, embed_dim) for c in cardinalities)
        layers: list[nn.Module] = []
        width = len(feature_loc) + embed_dim * len(cardinalities)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)
        self.label_scaling = label_scaling

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        parts = [(x - self.feature_loc) / self.feature_scale]
        if codes is not None:
            parts += [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        y = self.layers(torch.cat(parts, -1))
        if self.label_scaling is not None:
            loc, scale = self.label_scaling
            return y.squeeze(-1) * scale + loc
        return y
