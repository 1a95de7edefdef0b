"""The simple hierarchical model's cache: per-stream, per-subsequence key/value caches, so the
model is decoded one position at a time (``SimpleHierarchicalLM.new_cache()``).

A new token t needs, per stream of compression c and stride s (axial step a = c / s):

* the compressor: only the last c embeddings (a compressed vector is made when t is a multiple
  of s, from tokens t - (c-1) .. t: `CausalCompressor.newest`, the forward pass's own code);
* each block: one key/value cache per interleaved subsequence (the compressed position q joins
  subsequence q mod a at its position q // a; with a window, attention reads only the last
  ``window`` keys, though the cache keeps them all), and for the token shift the previous
  member's attention input and feed-forward input;
* the merge: each stream's latest output per layer (fine t reads compressed t // s, the newest),
  mixed by `StreamMerge.mix`, the forward pass's own code.

A prompt is fed position by position through the same code (slower than one batched pass, but
the caches it builds are by construction the ones the steps extend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hourglass_edu.attention import KeyValueCache, MultiHeadAttention
from hourglass_edu.lm import ModelCache

if TYPE_CHECKING:  # annotations only: simple_hierarchical.py imports this module
    from hourglass_edu.related.simple_hierarchical import StreamBlock

__all__: list[str] = []  # no public names: the modules that use these import them by name


def _shifted(current: Tensor, previous: Tensor | None) -> Tensor:
    """Token shift for one position: first half of `current`'s channels, second half of the
    previous member's (zeros for the first member)."""
    keep, _ = current.chunk(2, dim=-1)
    late = torch.zeros_like(keep) if previous is None else previous.chunk(2, dim=-1)[1]
    return torch.cat((keep, late), dim=-1)


class StreamBlockCache:
    """One `StreamBlock`'s state: a key/value cache and the token-shift inputs, per subsequence."""

    def __init__(self, block: StreamBlock):
        self.block = block
        self.caches = [KeyValueCache() for _ in range(block.axial)]
        self.previous_attention_input: list[Tensor | None] = [None] * block.axial
        self.previous_feed_forward_input: list[Tensor | None] = [None] * block.axial

    def step(self, x: Tensor, position: int) -> Tensor:
        """Stream position ``position``'s block input ``(batch, 1, width)`` -> its output."""
        block = self.block
        member, index = position % block.axial, position // block.axial
        attention_input = x
        if block.shift:
            attention_input = _shifted(x, self.previous_attention_input[member])
            self.previous_attention_input[member] = x
        normed = block.attn_norm(attention_input)
        where = torch.tensor([index], device=x.device)
        queries = block.attn.queries(normed, where)
        keys, values = self.caches[member].extend(*block.attn.keys_values(normed, where))
        window = getattr(block.attn, "window", None)
        if window is not None:
            keys, values = keys[:, :, -window:], values[:, :, -window:]
        # the newest query may see every key it is given: no mask
        attended, _ = MultiHeadAttention.attend(block.attn, queries, keys, values)
        x = x + attended
        feed_forward_input = x
        if block.shift:
            feed_forward_input = _shifted(x, self.previous_feed_forward_input[member])
            self.previous_feed_forward_input[member] = x
        return x + block.ff(block.ff_norm(feed_forward_input))


class SimpleHierarchicalCache(ModelCache):
    """A `SimpleHierarchicalLM` decoded one position at a time (``model.new_cache()``)."""

    def __init__(self, model):
        super().__init__(model)
        self.blocks = [[StreamBlockCache(block) for block in layer] for layer in model.layers]
        self.recent_embeddings: Tensor | None = None
        # latest[j][i]: stream i's newest output of layer j (what the merge hands to fine t)
        self.latest: list[list[Tensor | None]] = [
            [None] * len(model.config.compressions) for _ in model.layers
        ]

    def _extend_body(self, x: Tensor, start: int) -> Tensor:
        outputs = [self._position(embedding, start + offset)
                   for offset, embedding in enumerate(x.split(1, dim=1))]
        return torch.cat(outputs, dim=1)

    def _position(self, embedding: Tensor, t: int) -> Tensor:
        """Fine position ``t`` with embedding ``(batch, 1, d)`` -> its final vector."""
        model, config = self.model, self.model.config
        longest = max(config.compressions)
        self.recent_embeddings = (
            embedding if self.recent_embeddings is None
            else torch.cat((self.recent_embeddings, embedding), dim=1)[:, -longest:]
        )
        streams = zip(config.compressions, config.strides, strict=True)
        for i, (compression, stride) in enumerate(streams):
            if i == 0 or t % stride:
                continue  # the fine stream below; no new compressed vector at this t
            x = model.compressors[i - 1].newest(self.recent_embeddings[:, -compression:])
            for j, layer in enumerate(self.blocks):
                x = self.latest[j][i] = layer[i].step(x, t // stride)
        x = embedding
        for j, layer in enumerate(self.blocks):
            x = self.latest[j][0] = layer[0].step(x, t)
            if model.merges is not None:
                x = x + model.merges[j].mix(torch.cat(self.latest[j], dim=-1))
        return x
