"""The PyTorch modules of the text models: a GPT decoder and a text classifier.

Plain modules in the style of nanoGPT's ``model.py``: options are constructor
arguments, attention is ``torch.nn.functional.scaled_dot_product_attention`` (flash or
memory-efficient kernels where the device has them), nothing else is hidden. This
module imports torch at the top; the plugin's hook module never imports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal for the decoder, key-padding-masked for the encoder."""

    def __init__(self, hidden: int, heads: int, dropout: float, bias: bool, causal: bool) -> None:
        super().__init__()
        assert hidden % heads == 0, "hidden must be divisible by heads"
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.proj = nn.Linear(hidden, hidden, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.heads = heads
        self.dropout = dropout
        self.causal = causal

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, hidden: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 4 * hidden, bias=bias)
        self.proj = nn.Linear(4 * hidden, hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, hidden: int, heads: int, dropout: float, bias: bool, causal: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, bias=bias)
        self.attn = SelfAttention(hidden, heads, dropout, bias, causal)
        self.ln_2 = nn.LayerNorm(hidden, bias=bias)
        self.mlp = MLP(hidden, dropout, bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


def _init_weights(module: nn.Module, layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)."""
    for name, p in module.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))
        elif p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class GPT(nn.Module):
    """A GPT decoder: token + learned position embeddings, causal blocks, tied LM head."""

    def __init__(self, vocab_size: int, context_length: int = 256, layers: int = 4,
                 hidden: int = 256, heads: int = 4, dropout: float = 0.0,
                 tie_embeddings: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.context_length = context_length
        self.tok_emb = nn.Embedding(vocab_size, hidden)
        self.pos_emb = nn.Embedding(context_length, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout, bias, causal=True) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden, bias=bias)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        _init_weights(self, layers)
        if tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, T, vocab)`` for token ids ``(batch, T)``, T <= context_length."""
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, eos_id: int | None = None) -> torch.Tensor:
        """Extend ``ids`` (1, T) by sampling; ``temperature == 0`` is greedy decoding."""
        for _ in range(max_new_tokens):
            logits = self(ids[:, -self.context_length:])[:, -1, :]
            next_id = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=generator)
            ids = torch.cat([ids, next_id], dim=1)
            if eos_id is not None and int(next_id[0, 0]) == eos_id:
                break
        return ids


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V): greedy, or sampled with top-k / nucleus filtering."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the tokens before it already cover top_p; the first always stays
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


class TextClassifierNet(nn.Module):
    """Text classifier: a transformer encoder with padding masks, or a bag of embeddings.

    ``forward(ids, attention_mask)`` with ``attention_mask`` 1 for real tokens and 0 for
    padding (the Hugging Face convention, so exported models take the same inputs).
    Token vectors are mean-pooled over real tokens, then a linear layer gives logits.
    """

    def __init__(self, vocab_size: int, num_classes: int, *, arch: str = "transformer",
                 max_length: int = 256, layers: int = 2, hidden: int = 128, heads: int = 4,
                 dropout: float = 0.1, bias: bool = True) -> None:
        super().__init__()
        self.arch = arch
        self.tok_emb = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        if arch == "transformer":
            self.pos_emb = nn.Embedding(max_length, hidden)
            self.blocks = nn.ModuleList(Block(hidden, heads, dropout, bias, causal=False)
                                        for _ in range(layers))
            self.ln_f = nn.LayerNorm(hidden, bias=bias)
        self.head = nn.Linear(hidden, num_classes)
        _init_weights(self, max(layers, 1))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.to(torch.bool)
        x = self.tok_emb(ids)
        if self.arch == "transformer":
            # one row of positions per example: per-example gradients (DP-SGD) need the batch
            pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
            x = self.drop(x + self.pos_emb(pos))
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, T): every query sees the real keys
            for block in self.blocks:
                x = block(x, attn_mask)
            x = self.ln_f(x)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(self.drop(pooled))


__all__ = ["GPT", "TextClassifierNet", "sample_next"]
