"""Changing resolution without seeing the future: pad, shift, shorten, upsample.

One hourglass level with shortening factor ``k`` turns a sequence of ``n`` vectors into
``ceil(n / k)`` and back. The order of the steps is the lesson:

1. ``pad_to_multiple``: append zeros up to ``m = ceil(n / k) * k`` vectors.
2. ``shift_right`` by ``k - 1``: prepend ``k - 1`` fill vectors (zeros or learned), drop the last
   ``k - 1``. Group ``i`` (positions ``i*k .. i*k + k - 1``) now holds original positions
   ``i*k - k + 1 .. i*k``; the first position that will read group ``i`` after upsampling is
   ``i*k``, so the group holds nothing from its future. Without the shift, position ``i*k`` would
   read tokens up to ``i*k + k - 1``: a leak.
   Padding *before* shifting matters: the shift drops the last ``k - 1`` positions, which hold all
   of the padding (fewer than ``k`` vectors) and otherwise only final tokens that no position
   may read through the shortened path, so no group holds padding and a group is the same
   whether the sequence ends inside it or goes on (shift first, pad after, and the last group of
   a short prefix would hold padding where the full sequence holds real past tokens -- causal,
   but the prefix's prediction would differ).
3. Shorten each group of ``k`` to one vector: ``AvgShortening`` (mean), ``LinearShortening``
   (concatenate the ``k`` vectors, project ``k*d -> d``), ``AttentionShortening`` (the mean
   queries the shifted sequence through a funnel mask, then a feed-forward; both residual).
4. (the inner levels run on the short sequence)
5. Upsample back to ``m`` and crop to ``n``, adding the residual saved before the shift:
   ``RepeatUpsampling`` (each short vector ``k`` times), ``LinearUpsampling`` (project
   ``d -> k*d`` and unfold), ``AttentionUpsampling`` (repeat, add the residual, then each full
   position queries the short sequence through a funnel mask, then a feed-forward).

Shapes: full sequences ``(batch, length, d_model)``, short ones ``(batch, length / k, d_model)``.

Each kind is one class, in one table per direction (``SHORTENINGS``, ``UPSAMPLINGS``: the names a
config's ``shortening`` / ``upsampling`` take, and the command line's choices); ``resampling_class``
is the one lookup, refusing a name that is not in the table. Every class has
``from_config(config, factor, rotary)`` (built from an `HourglassConfig`'s sizes) and
``flops(config, length, factor)``: its forward useful work on a level of ``length`` vectors, all
of them (hourglass.py's counting rule; ``HourglassLM.flops_per_token`` divides by the tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

from hourglass_edu.attention import (
    KeyValueCache,
    MultiHeadAttention,
    funnel_down_mask,
    funnel_up_mask,
)
from hourglass_edu.blocks import FeedForward, RotaryEmbedding, record

__all__ = [
    "SHORTENINGS",
    "UPSAMPLINGS",
    "AttentionShortening",
    "AttentionUpsampling",
    "AvgShortening",
    "LinearShortening",
    "LinearUpsampling",
    "RepeatUpsampling",
    "pad_to_multiple",
    "resampling_class",
    "shift_right",
]


def pad_to_multiple(x: torch.Tensor, factor: int, dim: int = 1) -> torch.Tensor:
    """Append zeros along ``dim`` so its length is a multiple of ``factor``: by default
    ``(b, n, d) -> (b, m, d)`` (the library's one pad-to-a-multiple; attention kernels pad their
    ``(b, heads, length, d)`` tensors with ``dim=2``)."""
    missing = -x.shape[dim] % factor
    if not missing:
        return x
    return F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, missing])


def shift_right(x: torch.Tensor, amount: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Prepend ``amount`` vectors (``fill (amount, d)``, zeros if None); drop the last ``amount``.

    ``(batch, length, d) -> (batch, length, d)``; output position ``s`` holds input ``s - amount``.
    """
    if amount == 0:
        return x
    batch, length, dim = x.shape
    if fill is None:
        front = x.new_zeros(batch, amount, dim)
    else:
        front = repeat(fill.to(x.dtype), "amount dim -> batch amount dim", batch=batch)
    return torch.cat((front, x), dim=1)[:, :length]


class ShiftRight(nn.Module):
    """Shift right by ``factor - 1`` with zeros or (``learned``) with ``factor - 1`` learned
    vectors, ``fill`` (None for zeros)."""

    def __init__(self, factor: int, d_model: int, learned: bool = False):
        super().__init__()
        self.amount = factor - 1
        self.fill = nn.Parameter(torch.randn(self.amount, d_model) * 0.02) if learned else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift_right(x, self.amount, self.fill)


def _short_length(length: int, factor: int) -> int:
    """``ceil(length / factor)``: the short vectors of a level of ``length`` vectors."""
    return -(-length // factor)


class _GroupwiseShortening(nn.Module):
    """A shortening that treats each group of ``factor`` on its own (avg, linear). The decoding
    methods (shared with the attention variant, so a decoder never asks which kind it has):
    ``add_shifted`` keeps nothing, ``shorten_groups`` is ``forward`` on the complete groups.
    ``forward`` takes the level's ``capture`` and ``name`` as every kind does, and records nothing.
    """

    def add_shifted(self, cache: KeyValueCache, shifted: torch.Tensor, first_position: int):
        """Nothing to remember: a group needs only its own vectors."""

    def shorten_groups(self, groups: torch.Tensor, first_group: int,
                       cache: KeyValueCache) -> torch.Tensor:
        """Complete groups ``(b, groups * factor, d)`` -> their short vectors ``(b, groups, d)``."""
        return self(groups)


class AvgShortening(_GroupwiseShortening):
    """Mean of each group of ``factor``: ``(b, m, d) -> (b, m / factor, d)`` (m a multiple)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    @classmethod
    def from_config(cls, config, factor: int, rotary: RotaryEmbedding) -> AvgShortening:
        return cls(factor)

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """No matrix product (a mean is not counted)."""
        return 0.0

    def forward(self, shifted: torch.Tensor, *, capture: dict | None = None,
                name: str = "") -> torch.Tensor:
        return reduce(shifted, "b (short k) d -> b short d", "mean", k=self.factor)


class LinearShortening(_GroupwiseShortening):
    """Concatenate each group of ``factor`` vectors and project ``factor*d -> d``."""

    def __init__(self, d_model: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(factor * d_model, d_model)

    @classmethod
    def from_config(cls, config, factor: int, rotary: RotaryEmbedding) -> LinearShortening:
        return cls(config.d_model, factor)

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """One ``(k d) -> d`` projection per short vector."""
        return _short_length(length, factor) * 2 * (factor * config.d_model) * config.d_model

    def forward(self, shifted: torch.Tensor, *, capture: dict | None = None,
                name: str = "") -> torch.Tensor:
        groups = rearrange(shifted, "b (short k) d -> b short (k d)", k=self.factor)
        return self.proj(groups)


class _FunnelAttentionLayer(nn.Module):
    """The parts attention shortening and upsampling share: pre-norms for the queries and for the
    keys/values (they come from different resolutions), cross-resolution attention, and a
    residual feed-forward. Subclasses differ only in which side is short and in the funnel mask.
    """

    def __init__(self, d_model, n_heads, d_ff, factor, *, dropout=0.0, rotary=None,
                 attention_impl="fused"):
        super().__init__()
        self.factor = factor
        self.query_norm = nn.LayerNorm(d_model)
        self.key_value_norm = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(
            d_model, n_heads, dropout=dropout, rotary=rotary, impl=attention_impl
        )
        self.attn_dropout = nn.Dropout(dropout)
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)

    @classmethod
    def from_config(cls, config, factor: int, rotary: RotaryEmbedding) -> _FunnelAttentionLayer:
        return cls(config.d_model, config.n_heads, config.feed_forward_width, factor,
                   dropout=config.dropout, rotary=rotary, attention_impl=config.attention_impl)

    def _keys_values(self, x: torch.Tensor, first: int, step: int):
        """Keys/values of ``x (b, n, d)`` whose positions are ``(first + arange(n)) * step``."""
        positions = torch.arange(first, first + x.shape[1], device=x.device) * step
        return self.attn.keys_values(self.key_value_norm(x), positions)

    def _attend_then_feed_forward(self, x, query_positions, keys, values, mask, need_weights):
        """``x + attention(LN(x), keys, values)``, then ``+ feed_forward(LN(.))``: both sides'
        residual steps; returns ``(output, weights or None)``."""
        queries = self.attn.queries(self.query_norm(x), query_positions)
        attended, weights = self.attn.attend(queries, keys, values, mask=mask,
                                             need_weights=need_weights)
        x = x + self.attn_dropout(attended)
        return x + self.ff(self.ff_norm(x)), weights


class AttentionShortening(_FunnelAttentionLayer):
    """Attention downsampling: ``pooled = mean of each group``, then (both residual, pre-norm)
    ``pooled + attention(query=LN(pooled), keys/values=LN(shifted), funnel_down_mask)`` and a
    feed-forward. Short query ``i`` (at fine position ``i*k``) sees shifted keys ``s < (i+1)*k``
    (at fine positions ``s - (k-1)``, the tokens they hold). Captures ``{name}.down_attn``.

    The decoder uses the same two steps as ``forward``: ``add_shifted`` (keys of new shifted
    vectors) and ``shorten_groups`` (the short vectors of complete groups).
    """

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """Queries, output and feed-forward on the short vectors, keys and values on the shifted
        sequence, and the funnel's pairs (short query ``i`` sees ``(i + 1) * k`` keys)."""
        d, d_ff, short = config.d_model, config.feed_forward_width, _short_length(length, factor)
        return (short * (2 * (2 * d * d) + 2 * (2 * d * d_ff))  # q, out, ff
                + short * factor * 2 * (2 * d * d)  # keys and values of the shifted sequence
                + 4 * d * factor * short * (short + 1) / 2)  # funnel pairs

    def forward(self, shifted: torch.Tensor, *, capture: dict | None = None, name: str = ""):
        keys, values = self._keys_values(shifted, first=-(self.factor - 1), step=1)
        short, weights = self._summarise(shifted, 0, keys, values, capture is not None)
        record(capture, f"{name}.down_attn", weights)
        return short

    def add_shifted(self, cache: KeyValueCache, shifted: torch.Tensor, first_position: int):
        """Cache the keys/values of new shifted vectors; shifted position ``s`` sits at fine
        position ``s - (k-1)``, so the first one is at ``first_position``."""
        cache.extend(*self._keys_values(shifted, first=first_position, step=1))

    def shorten_groups(self, groups: torch.Tensor, first_group: int,
                       cache: KeyValueCache) -> torch.Tensor:
        return self._summarise(groups, first_group, *cache.contents(), False)[0]

    def _summarise(self, groups, first_group, keys, values, need_weights):
        """Short vectors ``first_group ..`` from their groups ``(b, count * k, d)`` and the
        shifted sequence's keys/values so far."""
        k = self.factor
        pooled = reduce(groups, "b (short k) d -> b short d", "mean", k=k)
        count, device = pooled.shape[1], groups.device
        query_positions = torch.arange(first_group, first_group + count, device=device) * k
        mask = funnel_down_mask(first_group + count, keys.shape[2], k, device=device)
        return self._attend_then_feed_forward(pooled, query_positions, keys, values,
                                              mask[first_group:], need_weights)


class _GroupwiseUpsampling(nn.Module):
    """An upsampling that maps each short vector to ``factor`` vectors on its own (repeat,
    linear): ``forward`` adds ``expand(short)``, cropped, to the residual. The decoding methods
    (shared with the attention variant): ``add_short`` keeps nothing, ``refine`` is the identity.
    ``forward`` takes the level's ``capture`` and ``name`` as every kind does, and records nothing.
    """

    def forward(self, short: torch.Tensor, residual: torch.Tensor, *,
                capture: dict | None = None, name: str = "") -> torch.Tensor:
        return residual + self.expand(short)[:, : residual.shape[1]]

    def add_short(self, cache: KeyValueCache, short: torch.Tensor, first_group: int):
        """Nothing to remember."""

    def refine(self, x: torch.Tensor, start: int, cache: KeyValueCache) -> torch.Tensor:
        """Nothing after the expansion: new positions ``x`` as they are."""
        return x


class RepeatUpsampling(_GroupwiseUpsampling):
    """Repeat each short vector ``factor`` times, crop to the residual's length, add it."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    @classmethod
    def from_config(cls, config, factor: int, rotary: RotaryEmbedding) -> RepeatUpsampling:
        return cls(factor)

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """No matrix product (a copy is not counted)."""
        return 0.0

    def expand(self, short: torch.Tensor) -> torch.Tensor:
        """``(b, groups, d) -> (b, groups * factor, d)``: each vector ``factor`` times."""
        return repeat(short, "b short d -> b (short k) d", k=self.factor)


class LinearUpsampling(_GroupwiseUpsampling):
    """Project each short vector ``d -> factor*d``, unfold into ``factor`` vectors, crop, add."""

    def __init__(self, d_model: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(d_model, factor * d_model)

    @classmethod
    def from_config(cls, config, factor: int, rotary: RotaryEmbedding) -> LinearUpsampling:
        return cls(config.d_model, factor)

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """One ``d -> (k d)`` projection per short vector."""
        return _short_length(length, factor) * 2 * config.d_model * (factor * config.d_model)

    def expand(self, short: torch.Tensor) -> torch.Tensor:
        """``(b, groups, d) -> (b, groups * factor, d)``: one projection per short vector."""
        return rearrange(self.proj(short), "b short (k d) -> b (short k) d", k=self.factor)


class AttentionUpsampling(_FunnelAttentionLayer):
    """Attention upsampling: ``x = residual + repeat(short)`` (cropped), then (residual,
    pre-norm) ``x + attention(query=LN(x), keys/values=LN(short), funnel_up_mask)`` and a
    feed-forward. Full query ``j`` sees short keys ``m <= j // k`` (at fine positions ``m*k``).
    Captures ``{name}.up_attn``.

    The decoder uses the same steps as ``forward``: ``expand`` (the repeat), ``add_short`` (keys
    of new short vectors) and ``refine`` (the attention and feed-forward of new positions).
    """

    @classmethod
    def flops(cls, config, length: int, factor: int) -> float:
        """Queries, output and feed-forward on every position, keys and values on the short
        vectors, and the funnel's pairs (position ``j`` sees ``j // k + 1`` short keys)."""
        d, d_ff, short = config.d_model, config.feed_forward_width, _short_length(length, factor)
        visible = sum(j // factor + 1 for j in range(length))
        return (length * (2 * (2 * d * d) + 2 * (2 * d * d_ff))  # q, out, ff
                + short * 2 * (2 * d * d)  # keys and values of the short vectors
                + 4 * d * visible)  # funnel pairs

    def forward(self, short, residual, *, capture: dict | None = None, name: str = ""):
        x = residual + self.expand(short)[:, : residual.shape[1]]
        keys, values = self._keys_values(short, first=0, step=self.factor)
        x, weights = self._refine(x, 0, keys, values, capture is not None)
        record(capture, f"{name}.up_attn", weights)
        return x

    def expand(self, short: torch.Tensor) -> torch.Tensor:
        return repeat(short, "b short d -> b (short k) d", k=self.factor)

    def add_short(self, cache: KeyValueCache, short: torch.Tensor, first_group: int):
        """Cache the keys/values of new short vectors ``first_group ..`` (at ``m * k``)."""
        cache.extend(*self._keys_values(short, first=first_group, step=self.factor))

    def refine(self, x: torch.Tensor, start: int, cache: KeyValueCache) -> torch.Tensor:
        """New positions ``start ..`` (residual + repeated short output) -> their output."""
        return self._refine(x, start, *cache.contents(), False)[0]

    def _refine(self, x, start, keys, values, need_weights):
        device = x.device
        query_positions = torch.arange(start, start + x.shape[1], device=device)
        mask = funnel_up_mask(start + x.shape[1], keys.shape[2], self.factor, device=device)
        return self._attend_then_feed_forward(x, query_positions, keys, values, mask[start:],
                                              need_weights)


# One table per direction: a kind's name -> its class (the names configs and the command line take).
SHORTENINGS: dict[str, type[nn.Module]] = {
    "avg": AvgShortening, "linear": LinearShortening, "attention": AttentionShortening,
}
UPSAMPLINGS: dict[str, type[nn.Module]] = {
    "repeat": RepeatUpsampling, "linear": LinearUpsampling, "attention": AttentionUpsampling,
}


def resampling_class(option: str, kind: str) -> type[nn.Module]:
    """The class named ``kind`` for ``option`` (``"shortening"``: `SHORTENINGS`, ``"upsampling"``:
    `UPSAMPLINGS`); a name not in the table is refused, naming the option and the choices (the
    one check of both options: the config, the level and the FLOP count all ask here)."""
    table = {"shortening": SHORTENINGS, "upsampling": UPSAMPLINGS}[option]
    if not isinstance(kind, str) or kind not in table:
        raise ValueError(f"unknown {option} {kind!r}: use one of {', '.join(table)}")
    return table[kind]
