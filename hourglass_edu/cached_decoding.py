"""Cached decoding: per-level key/value caches that decode the hourglass one token at a time.

Recomputing the whole window for each new character costs a full forward pass per character.
Here every level keeps what it has already computed, so a new character costs one position of
work at full resolution, and a shortened level runs only when one of its groups is complete.

When does a shortened vector become computable? (factor ``k``, level-local positions ``t``)
------------------------------------------------------------------------------------------
The forward pass pads the pre-block outputs ``x`` to a multiple of ``k``, shifts them right by
``k - 1`` (``fill`` vectors in front) and cuts the shifted sequence into groups of ``k``::

    shifted = fill[0] .. fill[k-2], x[0], x[1], ...      (shifted[s] = x[s - (k-1)])
    group i = shifted[i*k : (i+1)*k] = x[i*k - k + 1 .. i*k]

So short vector ``i`` needs ``x`` up to position ``i*k`` and nothing after it: it can be made
the moment position ``i*k`` has gone through the pre blocks. The first group (``i = 0``) is the
``k - 1`` fill vectors plus ``x[0]``, ready after the very first token. Upsampling hands short
output ``i`` to positions ``i*k .. i*k + k - 1``, so it is ready exactly when the first of them,
``i*k``, needs it, and serves the ``k - 1`` positions after it unchanged. Because the forward pass
pads *before* shifting, its groups always hold real positions (never padding), which is why the
forward pass on a prefix gives the same logits as on the whole sequence, and why this decoder can
match it exactly.

Per level, the decoder keeps:
* one key/value cache per attention layer (pre blocks, post blocks, and the attention of
  attention shortening / upsampling);
* ``pending``: the shifted vectors not yet gathered into a group (at most ``k - 1`` of them);
* ``upsampled``: the upsampled vectors of the current group, for the positions still to come;
* the inner level's own state (the recursion).

`IncrementalDecoder.extend(tokens)` appends any number of tokens: a prompt (prefill) or one
token (a step) run the same code, so the prefill builds exactly the caches the steps extend.
It reuses the model's own layers (their norms, projections and feed-forwards); only the
bookkeeping of what is new lives here. Dropout is not applied: decode in eval mode.

Beyond ``config.max_length`` the decoder raises, like the model; `CachedDecoder` (decoders.py)
slides its window and re-prefills, so `generate` never gets there.
"""

from __future__ import annotations

import torch
from einops import reduce, repeat

from hourglass_edu.attention import funnel_down_mask, funnel_up_mask
from hourglass_edu.blocks import TransformerBlock
from hourglass_edu.hourglass import HourglassLevel, HourglassLM
from hourglass_edu.resampling import AttentionShortening, AttentionUpsampling

__all__ = [
    "IncrementalDecoder", "KeyValueCache", "LevelDecoder", "block_extend", "check_decoding_input",
]


class KeyValueCache:
    """Keys and values of one attention layer, ``(batch, heads, length, head_dim)`` each.

    Stored in buffers that double when full, so appending one position does not copy the
    whole cache (a plain `torch.cat` per step would cost O(length) every step).
    """

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0

    def extend(self, keys: torch.Tensor, values: torch.Tensor):
        """Append ``(batch, heads, new, head_dim)`` keys/values; return all of them so far."""
        needed = self.length + keys.shape[2]
        if self.keys is None or needed > self.keys.shape[2]:
            capacity = max(needed, 2 * (0 if self.keys is None else self.keys.shape[2]), 16)
            batch, heads, _, head_dim = keys.shape
            new_keys = keys.new_empty(batch, heads, capacity, head_dim)
            new_values = values.new_empty(batch, heads, capacity, head_dim)
            if self.keys is not None:
                new_keys[:, :, : self.length] = self.keys[:, :, : self.length]
                new_values[:, :, : self.length] = self.values[:, :, : self.length]
            self.keys, self.values = new_keys, new_values
        self.keys[:, :, self.length : needed] = keys
        self.values[:, :, self.length : needed] = values
        self.length = needed
        return self.keys[:, :, :needed], self.values[:, :, :needed]


def _attend_with_cache(attention, queries, keys, values, cache, mask=None, causal=False):
    """Append keys/values to ``cache`` and attend over everything in it."""
    all_keys, all_values = cache.extend(keys, values)
    if queries.shape[2] == 1 and causal:
        causal = False  # one newest query sees every key: no mask needed
    output, _ = attention.attend(queries, all_keys, all_values, mask=mask, causal=causal)
    return output


def block_extend(block: TransformerBlock, x, positions, cache: KeyValueCache):
    """`TransformerBlock.forward` for new positions only: x ``(batch, new, d)`` -> same shape."""
    normed = block.attn_norm(x)
    queries = block.attn.queries(normed, positions)
    keys, values = block.attn.keys_values(normed, positions)
    x = x + _attend_with_cache(block.attn, queries, keys, values, cache, causal=True)
    return x + block.ff(block.ff_norm(x))


class LevelDecoder:
    """Incremental state of one `HourglassLevel` (and, recursively, of the levels inside it)."""

    def __init__(self, level: HourglassLevel):
        if level.inner is not None and level.disable_shift:
            raise ValueError(
                "this model was built with unsafe_disable_shift=True: it sees the future, so it "
                "cannot generate one token at a time; use a model with the k-1 shift"
            )
        self.level = level
        self.length = 0  # positions processed at this level
        self.pre_caches = [KeyValueCache() for _ in level.pre_blocks]
        self.post_caches = [KeyValueCache() for _ in level.post_blocks]
        if level.inner is not None:
            self.factor = level.factor
            self.inner = LevelDecoder(level.inner)
            self.pending: torch.Tensor | None = None  # shifted vectors not yet in a group
            self.upsampled: torch.Tensor | None = None  # for positions self.length onwards
            self.groups_done = 0
            self.down_cache = KeyValueCache()  # attention shortening: keys = shifted sequence
            self.up_cache = KeyValueCache()  # attention upsampling: keys = short outputs

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """Run new positions through the level: ``(batch, new, d) -> (batch, new, d)``."""
        level = self.level
        start, new = self.length, x.shape[1]
        positions = torch.arange(start, start + new, device=x.device)
        for block, cache in zip(level.pre_blocks, self.pre_caches, strict=True):
            x = block_extend(block, x, positions, cache)
        if level.inner is not None:
            x = self._through_inner(x, start)
            for block, cache in zip(level.post_blocks, self.post_caches, strict=True):
                x = block_extend(block, x, positions, cache)
        self.length += new
        return x

    def _through_inner(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Shift, shorten the groups that are now complete, run the inner level, upsample."""
        k = self.factor
        if self.pending is None:  # first call: the shift puts k-1 fill vectors in front
            batch, _, d_model = x.shape
            fill = self.level.shift.fill
            front = x.new_zeros(k - 1, d_model) if fill is None else fill.to(x.dtype)
            self.pending = repeat(front, "amount d -> batch amount d", batch=batch)
            if isinstance(self.level.shorten, AttentionShortening):
                self._extend_down_keys(self.pending, first_position=-(k - 1))
        if isinstance(self.level.shorten, AttentionShortening):
            self._extend_down_keys(x, first_position=start)
        self.pending = torch.cat((self.pending, x), dim=1)
        complete = self.pending.shape[1] // k
        if complete > 0:
            groups = self.pending[:, : complete * k]
            self.pending = self.pending[:, complete * k :]
            first_group = self.groups_done  # index of the first short vector made now
            short = self.inner.extend(self._shorten(groups, first_group))
            expanded = self._expand(short, first_group)
            self.groups_done += complete
            if self.upsampled is not None:
                expanded = torch.cat((self.upsampled, expanded), dim=1)
            # `expanded` now covers positions start .. groups_done * k - 1
            assert expanded.shape[1] == self.groups_done * k - start, "group bookkeeping"
            self.upsampled = expanded
        upsampled, self.upsampled = self.upsampled[:, : x.shape[1]], self.upsampled[:, x.shape[1] :]
        if isinstance(self.level.upsample, AttentionUpsampling):
            return self._attention_upsample(x + upsampled, start)
        return x + upsampled

    # --- shortening ----------------------------------------------------------------------

    def _shorten(self, groups: torch.Tensor, first: int) -> torch.Tensor:
        """Complete groups ``(batch, groups * k, d)`` -> short vectors ``(batch, groups, d)``;
        ``first`` is the index of the first of them in the short sequence."""
        shorten = self.level.shorten
        if not isinstance(shorten, AttentionShortening):
            return shorten(groups)  # avg / linear treat each group on its own
        k = self.factor
        count = groups.shape[1] // k
        pooled = reduce(groups, "b (short k) d -> b short d", "mean", k=k)
        query_positions = torch.arange(first, first + count, device=groups.device) * k
        queries = shorten.attn.queries(shorten.query_norm(pooled), query_positions)
        keys_so_far = self.down_cache.length
        mask = funnel_down_mask(first + count, keys_so_far, k, device=groups.device)[first:]
        output, _ = shorten.attn.attend(queries, *self._down_keys_values(), mask=mask)
        short = pooled + output
        return short + shorten.ff(shorten.ff_norm(short))

    def _extend_down_keys(self, shifted: torch.Tensor, first_position: int) -> None:
        """Attention shortening: cache keys/values of new shifted vectors (at the token they
        hold: shifted position s sits at fine position s - (k-1))."""
        shorten = self.level.shorten
        positions = torch.arange(
            first_position, first_position + shifted.shape[1], device=shifted.device
        )
        keys, values = shorten.attn.keys_values(shorten.key_value_norm(shifted), positions)
        self.down_cache.extend(keys, values)

    def _down_keys_values(self):
        cache = self.down_cache
        return cache.keys[:, :, : cache.length], cache.values[:, :, : cache.length]

    # --- upsampling ----------------------------------------------------------------------

    def _expand(self, short: torch.Tensor, first: int) -> torch.Tensor:
        """Short outputs ``(batch, groups, d)`` -> the ``k`` vectors each hands to its positions,
        ``(batch, groups * k, d)`` (before the residual is added)."""
        upsample, k = self.level.upsample, self.factor
        if isinstance(upsample, AttentionUpsampling):
            # its keys are the short outputs so far; its first step is a plain repeat
            positions = torch.arange(first, first + short.shape[1], device=short.device) * k
            keys, values = upsample.attn.keys_values(upsample.key_value_norm(short), positions)
            self.up_cache.extend(keys, values)
            return repeat(short, "b short d -> b (short k) d", k=k)
        # repeat / linear upsampling map each short vector to k vectors on its own: call the
        # module itself with a zero residual to get exactly its expansion
        zeros = short.new_zeros(short.shape[0], short.shape[1] * k, short.shape[2])
        return upsample(short, zeros)

    def _attention_upsample(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Attention upsampling for new positions: x = residual + repeated short output."""
        upsample, k = self.level.upsample, self.factor
        new = x.shape[1]
        positions = torch.arange(start, start + new, device=x.device)
        queries = upsample.attn.queries(upsample.query_norm(x), positions)
        cache = self.up_cache
        keys, values = cache.keys[:, :, : cache.length], cache.values[:, :, : cache.length]
        mask = funnel_up_mask(start + new, cache.length, k, device=x.device)[start:]
        output, _ = upsample.attn.attend(queries, keys, values, mask=mask)
        x = x + output
        return x + upsample.ff(upsample.ff_norm(x))


def check_decoding_input(model, tokens: torch.Tensor, length: int) -> None:
    """Refuse what a cached decoder cannot do: dropout in training mode, bad token ids, and
    going past ``config.max_length`` (`length` tokens are already decoded)."""
    if model.training and model.config.dropout > 0:
        raise ValueError("call model.eval() before decoding: dropout is not applied here")
    model.check_tokens(tokens)
    if length + tokens.shape[1] > model.config.max_length:
        raise ValueError(
            f"decoding past config.max_length={model.config.max_length} tokens: start again "
            "from the last tokens (generate() does this for you)"
        )


class IncrementalDecoder:
    """Feed tokens a chunk at a time; get the logits a full forward pass would give for them.

    ``decoder = IncrementalDecoder(model)``; ``decoder.extend(tokens)``: tokens ``(batch, new)``
    -> logits ``(batch, new, vocab)`` for those positions, equal (to float rounding) to
    ``model(all_tokens_so_far)[:, -new:]``. ``prefill`` starts afresh; ``step`` is `extend`.
    The model must be in eval mode (dropout is not applied here).
    """

    def __init__(self, model: HourglassLM):
        if not isinstance(model, HourglassLM):
            raise ValueError(f"IncrementalDecoder needs an HourglassLM, got {type(model).__name__}")
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.levels = LevelDecoder(self.model.hourglass)
        self.length = 0

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        check_decoding_input(model, tokens, self.length)
        x = self.levels.extend(model.embedding(tokens))
        self.length += tokens.shape[1]
        return model.head(model.final_norm(x))

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Start from scratch with ``tokens (batch, length)``; returns their logits."""
        self.reset()
        return self.extend(tokens)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append a few more tokens (usually one) ``(batch, new)``; returns their logits."""
        return self.extend(tokens)
