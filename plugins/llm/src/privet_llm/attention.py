"""Attention over packed rows, one sequence at a time (``attn_implementation: privet_packed``).

A packed row holds several sequences; the block-diagonal causal mask keeps them apart, but
a masked ``scaled_dot_product_attention`` still computes the whole row x row score matrix
and cannot use the fused causal kernels: on a 512-token row of four chats it does ~4x the
attention work of the chats alone, which costs packing most of its gain over padding.
This implementation runs causal attention on each sequence's span instead, located by the
``cu_seq_lens_q`` keyword (cumulative sequence starts over the flattened batch, the
convention of flash-attention's varlen kernels, which receive the same keyword when
``attn_implementation: flash_attention_2`` is chosen). Without that keyword (generation,
export checks) it is transformers' ``sdpa`` attention, with the same masks: the model
computes the same function either way.
"""

from __future__ import annotations

from typing import Any

NAME = "privet_packed"
_registered = False


def register() -> str:
    """Register the attention and its mask function with transformers (once); its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention per sequence span; ``sdpa`` when no spans are given.

    ``query`` is (batch, heads, length, dim), ``key``/``value`` (batch, kv heads, length,
    dim); returns (batch, length, heads, value dim) as transformers' attention functions do.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    starts = kwargs.get("cu_seq_lens_q")
    if starts is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, length, _ = query.shape
    flat = lambda t: t.transpose(0, 1).reshape(1, t.shape[1], batch * length, t.shape[-1])  # noqa: E731
    q, k, v = flat(query), flat(key), flat(value)
    gqa = q.shape[1] != k.shape[1]
    bounds = starts.tolist()
    pieces = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                             dropout_p=dropout, scale=scaling, enable_gqa=gqa)
              for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    out = torch.cat(pieces, dim=2).reshape(heads, batch, length, -1)
    return out.permute(1, 2, 0, 3).contiguous(), None


def sequence_starts(seq_lens: list[list[int]], width: int) -> list[int]:
    """``cu_seq_lens`` over the flattened batch: each row's sequences, then its padding."""
    bounds = [0]
    for row, lens in enumerate(seq_lens):
        for n in lens:
            bounds.append(bounds[-1] + n)
        end = (row + 1) * width
        if bounds[-1] < end:
            bounds.append(end)
    return bounds
