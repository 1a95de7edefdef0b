"""The Long-Short model's cache: a window cache and a segment-summary cache per layer, so the
model is decoded one token at a time (``LongShortLM.new_cache()``).

``cache.extend(tokens)`` appends a chunk (a prompt or one token) and returns the logits a full
forward pass would give for those positions (`ModelCache`). Each Long-Short layer keeps only
what its new queries can still use (`LongShortLayerCache`):

* the window cache: the (locally normed) keys and values of the last ``window - 1`` positions;
  older ones can never enter a window again, so memory stays O(window);
* the open segment: the raw keys and values of the segment that has not ended yet (fewer than
  ``segment_size``), because its summary needs all of them;
* the summary cache: ``rank`` normed summary keys and values per finished segment, each computed
  once, the moment its segment ends (the full pass makes exactly these from exactly these keys,
  with the same `compress_segments`).

A new position therefore costs ``window`` exact keys plus ``rank`` keys per finished segment,
not a forward pass over the whole window.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor

from hourglass_edu.lm import ModelCache
from hourglass_edu.related.long_short_attention import compress_segments

if TYPE_CHECKING:  # annotations only: long_short.py imports this module
    from hourglass_edu.related.long_short import LongShortAttention

__all__: list[str] = []  # no public names: the modules that use these import them by name


def _append(cached: Tensor | None, new: Tensor) -> Tensor:
    return new if cached is None else torch.cat((cached, new), dim=2)


def _normed(norm, x: Tensor) -> Tensor:
    return x if norm is None else norm(x)


class LongShortLayerCache:
    """What one `LongShortAttention` layer keeps between calls (see the module docstring)."""

    def __init__(self, attention: LongShortAttention):
        self.attention = attention
        self.length = 0  # positions seen so far
        self.window_keys: Tensor | None = None  # (b, h, <= window - 1, d), locally normed
        self.window_values: Tensor | None = None
        self.open_keys: Tensor | None = None  # raw keys of the unfinished segment
        self.open_values: Tensor | None = None
        self.summary_keys: Tensor | None = None  # (b, h, finished segments * rank, d), normed
        self.summary_values: Tensor | None = None

    @property
    def _norms(self):
        norms = self.attention.norms
        return (None, None) if norms is None else (norms.local, norms.summary)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """New positions' q, k, v ``(batch, heads, new, head_dim)`` -> their attention output."""
        start, new = self.length, q.shape[2]
        local_norm, _ = self._norms
        keys = _append(self.window_keys, _normed(local_norm, k))
        values = _append(self.window_values, _normed(local_norm, v))
        query_positions = torch.arange(start, start + new, device=q.device)[:, None]
        key_positions = torch.arange(start + new - keys.shape[2], start + new, device=q.device)
        in_window = (key_positions <= query_positions) & (
            key_positions > query_positions - self.attention.window
        )
        scale = 1 / math.sqrt(q.shape[-1])
        scores = (torch.einsum("bhqd,bhkd->bhqk", q, keys) * scale).masked_fill(
            ~in_window, float("-inf")
        )
        if self.attention.projection is not None:
            self._summarise_finished_segments(k, v)
        if self.summary_keys is not None:
            scores = torch.cat((scores, self._summary_scores(q, query_positions, scale)), dim=-1)
            values = torch.cat((values, self.summary_values), dim=2)
        weights = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1)
        out = torch.einsum("bhqk,bhkd->bhqd", weights.to(values.dtype), values)
        # A later query reaches back window - 1 positions before itself: keep no more than that.
        local = keys.shape[2]
        first_kept = max(0, local - (self.attention.window - 1))
        self.window_keys = keys[:, :, first_kept:] if first_kept < local else None
        self.window_values = values[:, :, first_kept:local] if first_kept < local else None
        self.length += new
        return out

    def _summarise_finished_segments(self, k: Tensor, v: Tensor) -> None:
        """Add the new raw keys to the open segment; summarise every segment that has ended."""
        size = self.attention.segment_size
        self.open_keys = _append(self.open_keys, k)
        self.open_values = _append(self.open_values, v)
        ended = self.open_keys.shape[2] // size * size
        if ended == 0:
            return
        k_bar, v_bar = compress_segments(
            self.open_keys[:, :, :ended], self.open_values[:, :, :ended],
            self.attention.projection, size,
        )
        _, summary_norm = self._norms
        self.summary_keys = _append(self.summary_keys, _normed(summary_norm, k_bar))
        self.summary_values = _append(self.summary_values, _normed(summary_norm, v_bar))
        self.open_keys = self.open_keys[:, :, ended:]
        self.open_values = self.open_values[:, :, ended:]

    def _summary_scores(self, q: Tensor, query_positions: Tensor, scale: float) -> Tensor:
        """Scores against every summary; -inf where its segment ends after the query."""
        rank, size = self.attention.rank, self.attention.segment_size
        segment = torch.arange(self.summary_keys.shape[2], device=q.device) // rank
        ended = (segment + 1) * size <= query_positions + 1
        scores = torch.einsum("bhqd,bhkd->bhqk", q, self.summary_keys) * scale
        return scores.masked_fill(~ended, float("-inf"))


class LongShortCache(ModelCache):
    """A `LongShortLM` decoded one token at a time: one `LongShortLayerCache` per block."""

    def __init__(self, model):
        super().__init__(model)
        self.caches = [LongShortLayerCache(block.attn) for block in model.blocks]

    def _extend_body(self, x: Tensor, start: int) -> Tensor:
        # the rotation angles of the new positions, once for every block
        angles = self.model.rotary.angles(torch.arange(start, start + x.shape[1],
                                                       device=x.device))
        for block, cache in zip(self.model.blocks, self.caches, strict=True):
            normed = block.attn_norm(x)
            q = block.attn.queries(normed, angles)
            k, v = block.attn.keys_values(normed, angles)
            out = block.attn.out_proj(rearrange(cache.attend(q, k, v), "b h l d -> b l (h d)"))
            x = block.after_attention(x, out)
        return x
