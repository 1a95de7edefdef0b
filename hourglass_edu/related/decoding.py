"""Cached decoding for the related designs: Long-Short and the simple hierarchical model decoded
one token at a time.

`LongShortIncrementalDecoder(model)` works like the hourglass's `IncrementalDecoder`:
``extend(tokens)`` appends a chunk (a prompt or one token) and returns the logits a full forward
pass would give for those positions. Each Long-Short layer keeps only what its new queries can
still use (`LongShortLayerCache`):

* the window cache: the (locally normed) keys and values of the last ``window - 1`` positions;
  older ones can never enter a window again, so memory stays O(window);
* the open segment: the raw keys and values of the segment that has not ended yet (fewer than
  ``segment_size``), because its summary needs all of them;
* the summary cache: ``rank`` normed summary keys and values per finished segment, each computed
  once, the moment its segment ends (the full pass makes exactly these from exactly these keys).

A new position therefore costs ``window`` exact keys plus ``rank`` keys per finished segment,
not a forward pass over the whole window.

`SimpleHierarchicalIncrementalDecoder(model)` does the same for the simple hierarchical model
(reference variant or strided), one position at a time. A new token t needs, per stream of
compression c and stride s (axial step a = c / s):

* the compressor: only the last c embeddings (a compressed vector is made when t is a multiple
  of s, from tokens t - (c-1) .. t);
* each block: one key/value cache per interleaved subsequence (the compressed position q joins
  subsequence q mod a at its position q // a; with a window, attention reads only the last
  ``window`` keys, though the cache keeps them all), and for the token shift the previous
  member's attention input and feed-forward input;
* the merge: each stream's latest output per layer (fine t reads compressed t // s, the newest).

A prompt is fed position by position through the same code (slower than one batched pass, but
the caches it builds are by construction the ones the steps extend).

``HTransformerLM`` recomputes the window for every character: its pooled keys could be cached per
finished block, but this module does not implement it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.cached_decoding import KeyValueCache
from hourglass_edu.related.long_short import (
    LongShortAttention,
    LongShortLM,
    compress_segments,
)
from hourglass_edu.related.simple_hierarchical import (
    CausalCompressor,
    SimpleHierarchicalLM,
    StreamBlock,
)

__all__ = [
    "LongShortIncrementalDecoder",
    "LongShortLayerCache",
    "SimpleHierarchicalIncrementalDecoder",
    "StreamBlockCache",
]


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


class _TokenDecoder:
    """What the incremental decoders share: checks, the max_length rule, prefill / step."""

    model_class: type = object

    def __init__(self, model):
        if not isinstance(model, self.model_class):
            raise ValueError(f"{type(self).__name__} needs a {self.model_class.__name__}, got "
                             f"{type(model).__name__}")
        self.model = model
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def _check(self, tokens: Tensor) -> None:
        model = self.model
        if model.training and model.config.dropout > 0:
            raise ValueError("call model.eval() before decoding: dropout is not applied here")
        model.check_tokens(tokens)
        if self.length + tokens.shape[1] > model.config.max_length:
            raise ValueError(
                f"decoding past config.max_length={model.config.max_length} tokens: start again "
                "from the last tokens (generate() does this for you)"
            )

    def prefill(self, tokens: Tensor) -> Tensor:
        """Start from scratch with ``tokens (batch, length)``; returns their logits."""
        self.reset()
        return self.extend(tokens)

    def step(self, tokens: Tensor) -> Tensor:
        """Append a few more tokens (usually one) ``(batch, new)``; returns their logits."""
        return self.extend(tokens)


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


def _compress_newest(compressor: CausalCompressor, embeddings: Tensor) -> Tensor:
    """The compressed vector of the newest position from the last `compression` embeddings
    ``(batch, <= compression, d)`` (zeros stand in before the start, as in the forward pass)."""
    missing = compressor.compression - embeddings.shape[1]
    window = F.pad(rearrange(embeddings, "b l d -> b d l"), (missing, 0))
    hidden = compressor.activation(F.conv1d(window, compressor.window.weight,
                                            compressor.window.bias))
    return compressor.norm(rearrange(compressor.out(hidden), "b d l -> b l d"))


class SimpleHierarchicalIncrementalDecoder(_TokenDecoder):
    """Feed a `SimpleHierarchicalLM` tokens a chunk at a time; get the logits of a full forward
    pass (``extend``, ``prefill``, ``step`` as for the other decoders). Eval mode only."""

    model_class = SimpleHierarchicalLM

    def reset(self) -> None:
        model = self.model
        self.blocks = [[StreamBlockCache(block) for block in layer] for layer in model.layers]
        self.recent_embeddings: Tensor | None = None
        # latest[j][i]: stream i's newest output of layer j (what the merge hands to fine t)
        self.latest: list[list[Tensor | None]] = [
            [None] * len(model.config.compressions) for _ in model.layers
        ]
        self.length = 0

    @torch.no_grad()
    def extend(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        model = self.model
        logits = []
        for embedding in model.embedding(tokens).split(1, dim=1):
            logits.append(model.head(model.final_norm(self._position(embedding))))
            self.length += 1
        return torch.cat(logits, dim=1)

    def _position(self, embedding: Tensor) -> Tensor:
        """Fine position ``self.length`` with embedding ``(batch, 1, d)`` -> its final vector."""
        config, t = self.model.config, self.length
        longest = max(config.compressions)
        self.recent_embeddings = (
            embedding if self.recent_embeddings is None
            else torch.cat((self.recent_embeddings, embedding), dim=1)[:, -longest:]
        )
        streams = zip(config.compressions, config.strides, strict=True)
        for i, (compression, stride) in enumerate(streams):
            if i == 0 or t % stride:
                continue  # the fine stream below; no new compressed vector at this t
            x = _compress_newest(self.model.compressors[i - 1],
                                 self.recent_embeddings[:, -compression:])
            for j, layer in enumerate(self.blocks):
                x = self.latest[j][i] = layer[i].step(x, t // stride)
        x = embedding
        for j, layer in enumerate(self.blocks):
            x = self.latest[j][0] = layer[0].step(x, t)
            merges = self.model.merges
            if merges is not None:
                merge = merges[j]
                joined = torch.cat(self.latest[j], dim=-1)
                x = x + merge.contract(merge.activation(merge.expand(merge.norm(joined))))
        return x


class LongShortIncrementalDecoder(_TokenDecoder):
    """Feed a `LongShortLM` tokens a chunk at a time; get the logits of a full forward pass.

    ``extend(tokens (batch, new)) -> logits (batch, new, vocab)``, equal (to float rounding) to
    ``model(all_tokens_so_far)[:, -new:]``; ``prefill`` starts afresh, ``step`` is ``extend``.
    Decode in eval mode (dropout is not applied here).
    """

    model_class = LongShortLM

    def reset(self) -> None:
        self.caches = [LongShortLayerCache(block.attn) for block in self.model.blocks]
        self.length = 0

    @torch.no_grad()
    def extend(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        model = self.model
        positions = torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)
        x = model.embedding(tokens)
        for block, cache in zip(model.blocks, self.caches, strict=True):
            normed = block.attn_norm(x)
            q = block.attn.queries(normed, positions)
            k, v = block.attn.keys_values(normed, positions)
            out = cache.attend(q, k, v)
            x = x + block.attn.out_proj(rearrange(out, "b h l d -> b l (h d)"))
            x = x + block.ff(block.ff_norm(x))
        self.length += tokens.shape[1]
        return model.head(model.final_norm(x))
