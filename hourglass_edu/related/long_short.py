"""The Long-Short model (Zhu et al. 2021): Long-Short attention as a drop-in attention module,
its config and `LongShortLM`.

What the attention computes (a sliding window plus segment summaries under one softmax, DualLN,
the settings it refuses) is in `related/long_short_attention.py`, on plain tensors; this module
wraps it in the library's multi-head attention (projections, rotary positions) and builds the
language model around it. Its cache for decoding one token at a time is
`related/long_short_cache.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.lm import BlockStackConfig, BlockStackLM
from hourglass_edu.related.long_short_attention import (
    check_long_short_arguments,
    long_short_attention,
)
from hourglass_edu.related.long_short_cache import LongShortCache

__all__ = ["LongShortConfig", "LongShortLM"]


class DualLayerNorm(nn.Module):
    """Two LayerNorms over the head dim: one for the window's keys/values, one for the summaries."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.local = nn.LayerNorm(head_dim)
        self.summary = nn.LayerNorm(head_dim)


class LongShortAttention(MultiHeadAttention):
    """Multi-head causal Long-Short self-attention, a drop-in for ``MultiHeadAttention``.

    Reuses the library's projections and rotary positions (``queries``, ``keys_values``,
    ``out_proj``) and replaces only ``attend``. window: exact keys per query; each finished
    segment of ``segment_size`` positions is summarised by ``rank`` keys/values (``rank=None``
    switches the long-range branch off: plain sliding-window attention). ``dual_norm``: the DualLN
    pair (off gives exactly the library's attention when the window covers the sequence).
    Attention-weight dropout is not applied (the block's residual dropout still is).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        window: int,
        segment_size: int | None,
        rank: int | None,
        dual_norm: bool = True,
        rotary: nn.Module | None = None,
    ):
        check_long_short_arguments(d_model, n_heads, window, segment_size, rank)
        super().__init__(d_model, n_heads, rotary=rotary, impl="explicit")
        self.window = window
        self.segment_size = segment_size
        self.rank = rank
        self.projection = (
            nn.Parameter(torch.randn(n_heads, self.head_dim, rank) / math.sqrt(self.head_dim))
            if rank is not None
            else None
        )
        self.norms = DualLayerNorm(self.head_dim) if dual_norm else None

    def attend(self, q, k, v, *, mask=None, causal=False, need_weights=False):
        """q, k, v ``(batch, heads, length, head_dim)`` -> ``(output (batch, length, d_model),
        weights (batch, heads, length, length) or None)``; weights spread summaries onto
        positions (see ``long_short_attention``)."""
        _require_causal_self_attention(q, k, mask, causal, "Long-Short")
        result = long_short_attention(
            q,
            k,
            v,
            window=self.window,
            projection=self.projection,
            segment_size=self.segment_size,
            local_norm=self.norms.local if self.norms is not None else None,
            global_norm=self.norms.summary if self.norms is not None else None,
            return_weights=need_weights,
        )
        out, weights = result if need_weights else (result, None)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)")), weights


def _require_causal_self_attention(q, k, mask, causal, name) -> None:
    if mask is not None or not causal:
        raise ValueError(
            f"{name} attention here is causal self-attention: call it with causal=True and no mask"
        )
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"{name} attention is self-attention: queries and keys must have the "
            f"same length, got {q.shape[-2]} and {k.shape[-2]}"
        )


@dataclass
class LongShortConfig(BlockStackConfig):
    """Everything that defines a ``LongShortLM``.

    window: exact keys per query (itself included); segment_size, rank: each finished segment is
    summarised by ``rank`` keys/values (``rank=None``: sliding-window attention only);
    dual_norm: separate LayerNorms on window and summary keys/values.
    """

    window: int = 32
    segment_size: int | None = 32
    rank: int | None = 4
    dual_norm: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_long_short_arguments(
            self.d_model, self.n_heads, self.window, self.segment_size, self.rank
        )


class LongShortLM(BlockStackLM):
    """Character LM: ``n_layers`` pre-norm blocks with causal Long-Short attention.

    Capture names: ``embedding``, ``block{j}`` (block output), ``block{j}.attn`` (weights
    ``(batch, heads, length, length)``, summaries spread onto positions), ``final_norm``.
    """

    config_class = LongShortConfig
    comparison_variants = ("long_short",)
    small_fields = {"n_layers": 2, "window": 8, "segment_size": 8, "rank": 2}

    def new_cache(self):
        """A window cache and a segment-summary cache per layer (`related.long_short_cache`)."""
        return LongShortCache(self)

    @classmethod
    def comparison_config(cls, variant, *, common, n_layers, window):
        """``n_layers`` blocks, window ``window``, segments of ``window`` summarised by 4."""
        return LongShortConfig(**common, n_layers=n_layers, window=window, segment_size=window,
                               rank=4)

    def make_attention(self) -> LongShortAttention:
        config = self.config
        return LongShortAttention(config.d_model, config.n_heads, window=config.window,
                                  segment_size=config.segment_size, rank=config.rank,
                                  dual_norm=config.dual_norm, rotary=self.rotary)
