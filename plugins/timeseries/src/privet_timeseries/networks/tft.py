"""Temporal Fusion Transformer (Lim et al., 2021), compact.

The parts, in the paper's words: gated residual networks (GRN) everywhere, variable
selection networks (VSN) that weight each input variable per time step, static
covariate encoders (here: a learned series embedding) that condition selection, the
LSTM state and enrichment, an LSTM encoder-decoder for local processing, interpretable
multi-head attention (heads share the value projection and are averaged) over the whole
window, and a quantile head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalizer


class GateAddNorm(nn.Module):
    """GLU gate, residual add, layer norm: ``LayerNorm(residual + GLU(x))``."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(d_in, 2 * d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm(residual + F.glu(self.fc(self.drop(x)), dim=-1))


class GRN(nn.Module):
    """Gated residual network: ``GateAddNorm(W2 ELU(W1 x + Wc c), skip(x))``."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float, d_context: int = 0) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.context = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.gate = GateAddNorm(d_hidden, d_out, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc1(x)
        if context is not None and self.context is not None:
            c = self.context(context)
            h = h + (c.unsqueeze(1) if h.dim() == 3 else c)
        return self.gate(self.fc2(F.elu(h)), self.skip(x))


class VariableSelection(nn.Module):
    """Embeds each scalar variable, weights the variables (softmax) per time step, sums."""

    def __init__(self, n_vars: int, d: int, dropout: float, d_context: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_vars, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(n_vars, d))
        self.select = GRN(n_vars * d, d, n_vars, dropout, d_context)
        self.transform = nn.ModuleList(GRN(d, d, d, dropout) for _ in range(n_vars))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = x.unsqueeze(-1) * self.weight + self.bias                    # (N, T, V, d)
        weights = torch.softmax(self.select(emb.flatten(-2), context), -1)  # (N, T, V)
        processed = torch.stack([grn(emb[..., i, :]) for i, grn in enumerate(self.transform)], -2)
        return (weights.unsqueeze(-1) * processed).sum(-2), weights


class InterpretableAttention(nn.Module):
    """Multi-head attention whose heads share V and are averaged, so the mean attention
    pattern is one interpretable weighting of time steps."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.d_head = max(1, d // heads)
        self.q = nn.Linear(d, heads * self.d_head)
        self.k = nn.Linear(d, heads * self.d_head)
        self.v = nn.Linear(d, self.d_head)
        self.out = nn.Linear(self.d_head, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, tq, tk = query.shape[0], query.shape[1], key.shape[1]
        q = self.q(query).view(n, tq, self.heads, self.d_head).transpose(1, 2)
        k = self.k(key).view(n, tk, self.heads, self.d_head).transpose(1, 2)
        v = self.v(key).unsqueeze(1)                                       # shared by the heads
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        attn = self.drop(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1))
        return self.out((attn @ v).mean(1)), attn.mean(1)


class TFTNet(nn.Module):
    """past (N, L, P), series (N,) [, known (N, L+H, K)] -> quantile forecasts (N, H, T, Q)."""

    def __init__(self, *, tables: dict[str, Any], n_observed: int, n_known: int, length: int,
                 horizon: int, n_targets: int, n_quantiles: int, n_series: int, d: int,
                 heads: int, lstm_layers: int, dropout: float) -> None:
        super().__init__()
        self.norm = Normalizer(tables)
        self.length, self.horizon = length, horizon
        self.n_targets, self.n_quantiles, self.layers = n_targets, n_quantiles, lstm_layers
        n_known_in = n_known + 1  # + the position relative to the forecast start
        self.register_buffer("position", (torch.arange(length + horizon, dtype=torch.float32) - length)
                             / float(length + horizon))
        steps = torch.arange(length + horizon)
        self.register_buffer("mask", steps[None, :] <= steps[length:, None])  # causal, decoder rows
        self.static = nn.Embedding(n_series + 1, d)
        self.static_contexts = nn.ModuleList(GRN(d, d, d, dropout) for _ in range(4))
        self.past_vsn = VariableSelection(n_observed + n_known_in, d, dropout, d)
        self.future_vsn = VariableSelection(n_known_in, d, dropout, d)
        rnn_dropout = dropout if lstm_layers > 1 else 0.0
        self.encoder = nn.LSTM(d, d, lstm_layers, batch_first=True, dropout=rnn_dropout)
        self.decoder = nn.LSTM(d, d, lstm_layers, batch_first=True, dropout=rnn_dropout)
        self.lstm_gate = GateAddNorm(d, d, dropout)
        self.enrichment = GRN(d, d, d, dropout, d_context=d)
        self.attention = InterpretableAttention(d, heads, dropout)
        self.attention_gate = GateAddNorm(d, d, dropout)
        self.positionwise = GRN(d, d, d, dropout)
        self.output_gate = GateAddNorm(d, d, 0.0)
        self.head = nn.Linear(d, n_targets * n_quantiles)

    def forward(self, past: torch.Tensor, series: torch.Tensor,
                known: torch.Tensor | None = None) -> torch.Tensor:
        n, L = past.shape[0], self.length
        pos = self.position.expand(n, -1).unsqueeze(-1)
        k = torch.cat([self.norm.known(known), pos], -1) if known is not None else pos
        # static covariate encoders: contexts for selection, enrichment and the LSTM state
        s = self.static(series)
        c_select, c_enrich, c_h, c_c = (grn(s) for grn in self.static_contexts)
        past_in, _ = self.past_vsn(torch.cat([self.norm.past(past, series), k[:, :L]], -1), c_select)
        future_in, _ = self.future_vsn(k[:, L:], c_select)
        state = (c_h.unsqueeze(0).repeat(self.layers, 1, 1), c_c.unsqueeze(0).repeat(self.layers, 1, 1))
        encoded, state = self.encoder(past_in, state)
        decoded, _ = self.decoder(future_in, state)
        temporal = self.lstm_gate(torch.cat([encoded, decoded], 1), torch.cat([past_in, future_in], 1))
        enriched = self.enrichment(temporal, c_enrich)
        attended, _ = self.attention(enriched[:, L:], enriched, self.mask)
        x = self.attention_gate(attended, enriched[:, L:])
        x = self.output_gate(self.positionwise(x), temporal[:, L:])
        y = self.head(x).view(n, self.horizon, self.n_targets, self.n_quantiles)
        y = self.norm.forecast(y, series)
        return y if self.n_quantiles > 1 else y.squeeze(-1)
