"""The hourglass's cache: per-level key/value caches that decode it one token at a time.

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
forward pass on a prefix gives the same logits as on the whole sequence, and why this cache can
match it exactly.

Per level, the cache keeps:
* one key/value cache per attention layer (pre blocks, post blocks, and the keys of attention
  shortening / upsampling, which only those layers fill);
* ``pending``: the shifted vectors not yet gathered into a group (at most ``k - 1`` of them);
* ``upsampled``: the upsampled vectors of the current group, for the positions still to come;
* the inner level's own cache (the recursion).

The math is the layers' own: `TransformerBlock.extend`, and the decoding methods every
shortening (``add_shifted``, ``shorten_groups``) and upsampling (``expand``, ``add_short``,
``refine``) has beside its ``forward`` (resampling.py); only the bookkeeping of what is new lives
here. A prompt and one token run the same code, so the prefill builds exactly the caches the
steps extend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import repeat

from hourglass_edu.attention import KeyValueCache
from hourglass_edu.lm import ModelCache

if TYPE_CHECKING:
    from hourglass_edu.hourglass import HourglassLevel, HourglassLM

__all__: list[str] = []  # no public names: the modules that use these import them by name


class LevelCache:
    """The decoding state of one `HourglassLevel` (and, recursively, of the levels inside it)."""

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
            self.inner = LevelCache(level.inner)
            self.pending: torch.Tensor | None = None  # shifted vectors not yet in a group
            self.upsampled: torch.Tensor | None = None  # for positions self.length onwards
            self.groups_done = 0
            self.down_cache = KeyValueCache()  # attention shortening: keys of the shifted input
            self.up_cache = KeyValueCache()  # attention upsampling: keys of the short outputs

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """Run new positions through the level: ``(batch, new, d) -> (batch, new, d)``."""
        level = self.level
        start, new = self.length, x.shape[1]
        # the rotation angles of the new positions, once for all the level's blocks
        angles = level.rotary.angles(torch.arange(start, start + new, device=x.device))
        for block, cache in zip(level.pre_blocks, self.pre_caches, strict=True):
            x = block.extend(x, angles, cache)
        if level.inner is not None:
            x = self._through_inner(x, start)
            for block, cache in zip(level.post_blocks, self.post_caches, strict=True):
                x = block.extend(x, angles, cache)
        self.length += new
        return x

    def _through_inner(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Shift, shorten the groups that are now complete, run the inner level, upsample."""
        k, shorten, upsample = self.factor, self.level.shorten, self.level.upsample
        if self.pending is None:  # first call: the shift puts k-1 fill vectors in front
            batch, _, d_model = x.shape
            fill = self.level.shift.fill
            front = x.new_zeros(k - 1, d_model) if fill is None else fill.to(x.dtype)
            self.pending = repeat(front, "amount d -> batch amount d", batch=batch)
            shorten.add_shifted(self.down_cache, self.pending, -(k - 1))
        shorten.add_shifted(self.down_cache, x, start)
        self.pending = torch.cat((self.pending, x), dim=1)
        complete = self.pending.shape[1] // k
        if complete > 0:
            groups = self.pending[:, : complete * k]
            self.pending = self.pending[:, complete * k :]
            first_group = self.groups_done  # index of the first short vector made now
            short = self.inner.extend(shorten.shorten_groups(groups, first_group,
                                                             self.down_cache))
            upsample.add_short(self.up_cache, short, first_group)
            expanded = upsample.expand(short)
            self.groups_done += complete
            if self.upsampled is not None:
                expanded = torch.cat((self.upsampled, expanded), dim=1)
            # `expanded` now covers positions start .. groups_done * k - 1
            assert expanded.shape[1] == self.groups_done * k - start, "group bookkeeping"
            self.upsampled = expanded
        upsampled, self.upsampled = self.upsampled[:, : x.shape[1]], self.upsampled[:, x.shape[1] :]
        return upsample.refine(x + upsampled, start, self.up_cache)


class HourglassCache(ModelCache):
    """An `HourglassLM` decoded one token at a time (``model.new_cache()``); see `ModelCache`
    for ``extend`` and the module docstring for what each level keeps."""

    def __init__(self, model: HourglassLM):
        super().__init__(model)
        self.levels = LevelCache(model.hourglass)

    def _extend_body(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return self.levels.extend(x)
