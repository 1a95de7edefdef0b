"""Transformer building blocks: rotary positions, feed-forward, the pre-norm block.

Position information: rotary embeddings (RoPE), at every level
---------------------------------------------------------------
An hourglass runs attention on sequences of different resolutions: the tokens, then vectors that
each summarise ``k`` tokens, then ``k * k'`` tokens, ... and attention *between* two resolutions
when shortening or upsampling uses attention. We use rotary embeddings because:

* they are *relative*: the score between a query at position ``p`` and a key at ``p'`` depends
  on ``p - p'`` only, so a level needs no table of absolute positions and works at any length;
* they take *explicit integer positions*, so each level can count in its own units, a cached
  decoder can pass the absolute position of the one new token, and the two sides of a
  cross-resolution attention can be placed on one common axis;
* they add no parameters and nothing to the residual stream, so a shortened vector (a pooled
  mixture of tokens) does not carry a mixture of absolute-position vectors.

Conventions used by the hourglass: inside a level, position ``t`` is the level-local index (the
``t``-th vector of that level's sequence). Between a fine level and the next shorter one (factor
``k``), short position ``i`` sits at fine position ``i * k``: the newest token it summarises
(after the ``k - 1`` shift) is fine position ``i * k``. So in attention shortening a short query
at ``i * k`` looks at shifted keys at ``s - (k - 1)`` (the token each holds), and in attention
upsampling a fine query at ``j`` looks at short keys at ``m * k``: every distance the rotation
encodes is a true "how far back" distance, never negative under the funnel masks.
(Learned absolute position embeddings, as in GPT-2, would fix a maximum length per level and
give pooled vectors blurred positions; sinusoidal absolute embeddings have the second problem.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hourglass_edu.attention import KeyValueCache, MultiHeadAttention

__all__ = [
    "FeedForward",
    "RotaryEmbedding",
    "TransformerBlock",
    "record",
    "rotary_inverse_frequencies",
]


def rotary_inverse_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """``base ** (-2i / dim)`` for ``i < dim / 2``, as a float32 tensor on the CPU.

    Always computed on the CPU (then moved with the model): ``pow`` may round differently on a
    GPU, and one ulp here moves a trained model's logits by ~1e-5 (measured on the shipped haiku
    model), so anything that must match the library (the capstone's own rotary) calls this
    function instead of recomputing it.
    """
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)


class RotaryAngles(NamedTuple):
    """The cosines and sines of one set of positions' rotation angles, ``(..., length, dim/2)``
    float32 each: computed once per forward pass (``RotaryEmbedding.angles``) and handed to every
    attention layer that rotates at those positions, instead of recomputed in each of them."""

    cos: torch.Tensor
    sin: torch.Tensor


class RotaryEmbedding(nn.Module):
    """Rotate pairs of features by angles proportional to the integer position.

    Feature pair ``(x[i], x[i + dim/2])`` is rotated by ``position * base ** (-2i / dim)``.
    ``forward(x, positions)``: x ``(batch, heads, length, dim)``, positions ``(length,)`` or
    ``(batch, length)`` integers (default ``arange(length)``), or the ``RotaryAngles`` that
    ``angles(positions)`` made for them -> same shape as x.
    Angles are computed in fp32 on the fly (no table, so no maximum position).
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head dimension, got {dim}: "
                             "choose d_model / n_heads even")
        self.dim = dim
        self.register_buffer("inverse_frequency", rotary_inverse_frequencies(dim, base),
                             persistent=False)

    def angles(self, positions: torch.Tensor) -> RotaryAngles:
        """cos and sin of ``positions * inverse_frequency`` (a heads axis added for batched
        positions): compute once, rotate every query and key at these positions with it."""
        angles = positions.to(torch.float32)[..., None] * self.inverse_frequency
        if angles.dim() == 3:  # (batch, length, dim/2): add the heads axis
            angles = angles[:, None]
        return RotaryAngles(angles.cos(), angles.sin())

    def forward(self, x: torch.Tensor,
                positions: torch.Tensor | RotaryAngles | None = None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        cos, sin = positions if isinstance(positions, RotaryAngles) else self.angles(positions)
        x_float = x.float()
        first, second = x_float.chunk(2, dim=-1)
        rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
        return rotated.to(x.dtype)


class FeedForward(nn.Module):
    """Position-wise MLP: ``(batch, length, d_model)`` -> same, via ``d_ff`` hidden units (GELU)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.expand = nn.Linear(d_model, d_ff)
        self.activation = nn.GELU()
        self.contract = nn.Linear(d_ff, d_model)
        self.contract.is_residual_output = True  # scaled at init
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.contract(self.activation(self.expand(x))))


def record(capture: dict | None, name: str, value: torch.Tensor | None) -> None:
    """Store ``value`` (detached) under ``name`` when capturing; free when ``capture is None``."""
    if capture is not None and value is not None:
        capture[name] = value.detach()


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(LN(x))``, then ``x + feed_forward(LN(x))``.

    ``forward(x, positions, capture=None, name="")``: x ``(batch, length, d_model)``, positions
    ``(length,)`` level-local integers. Causal self-attention. When ``capture`` is a dict, stores
    ``{name}`` (the block output) and ``{name}.attn`` (weights ``(batch, heads, query, key)``,
    computed by the explicit path).

    ``attention``: another attention module to use instead of ``MultiHeadAttention`` (same call
    signature and return value; ``hourglass_edu.related`` plugs in Long-Short and hierarchical
    attention this way).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
        attention_impl: str = "fused",
        attention: nn.Module | None = None,
    ):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = attention if attention is not None else MultiHeadAttention(
            d_model, n_heads, dropout=dropout, rotary=rotary, impl=attention_impl
        )
        self.attn_dropout = nn.Dropout(dropout)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | RotaryAngles | None = None,
        *,
        capture: dict | None = None,
        name: str = "",
    ) -> torch.Tensor:
        attended, weights = self.attn(
            self.attn_norm(x), query_positions=positions, causal=True,
            need_weights=capture is not None,
        )
        x = self.after_attention(x, attended)
        record(capture, f"{name}.attn", weights)
        record(capture, name, x)
        return x

    def extend(self, x: torch.Tensor, positions: torch.Tensor | RotaryAngles,
               cache: KeyValueCache) -> torch.Tensor:
        """``forward`` for new positions only, one token at a time (or a prompt at once): their
        keys and values join ``cache`` and they attend over everything in it.
        x ``(batch, new, d_model)`` at ``positions`` (after the cached ones) -> same shape."""
        normed = self.attn_norm(x)
        queries = self.attn.queries(normed, positions)
        keys, values = cache.extend(*self.attn.keys_values(normed, positions))
        # one newest query sees every key: no mask needed
        attended, _ = self.attn.attend(queries, keys, values, causal=queries.shape[2] > 1)
        return self.after_attention(x, attended)

    def after_attention(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The residual add and the feed-forward half of the block."""
        x = x + self.attn_dropout(attended)
        return x + self.ff(self.ff_norm(x))
