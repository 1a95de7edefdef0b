"""Which past positions each query sees, and at what resolution: one layer of each design.

Every function returns a float tensor ``(query, key)`` of shape ``(length, length)``:

* ``0``: the query cannot see this position at all;
* ``1``: it sees this position exactly (its own key and value);
* ``r > 1``: it sees this position only through a summary vector shared by ``r`` positions
  (for Long-Short, a segment of ``s`` positions summarised by ``rank`` vectors counts as
  ``s / rank`` positions per vector).

Where a position is seen both exactly and through a summary, the map shows the finest (smallest)
resolution. The tests check these maps against the receptive fields measured on the real modules.
``hourglass_edu.viz.plot_resolution_maps`` draws them side by side.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hourglass_edu.related.h_transformer import check_hierarchy, number_of_levels

__all__ = [
    "full_causal_map",
    "h_attention_map",
    "long_short_map",
    "simple_hierarchical_map",
    "sliding_window_map",
]


def _finest(current: Tensor, candidate: Tensor) -> Tensor:
    """Combine two maps, keeping the smallest non-zero resolution at each entry."""
    both = (current > 0) & (candidate > 0)
    either = current + candidate * (current == 0)
    return torch.where(both, torch.minimum(current, candidate), either)


def full_causal_map(length: int) -> Tensor:
    """Plain causal attention: every past position, exactly."""
    return torch.ones(length, length).tril()


def sliding_window_map(length: int, window: int) -> Tensor:
    """The ``window`` most recent positions (the query included), exactly."""
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    return ((key <= query) & (key > query - window)).float()


def long_short_map(length: int, window: int, segment_size: int, rank: int) -> Tensor:
    """Window exact; every segment that has ended seen through ``rank`` summaries."""
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    ended = (key // segment_size + 1) * segment_size <= query + 1
    summaries = ended.float() * (segment_size / rank)
    return _finest(sliding_window_map(length, window), summaries)


def h_attention_map(
    length: int, block_size: int, causal: bool = True, hierarchy: str = "paper"
) -> Tensor:
    """H-Transformer-1D with blocks of ``block_size`` (b); ``hierarchy`` as in ``h_attention``.

    "paper": the own block and its neighbour block(s), exactly; at level l >= 1 the neighbouring
    block of b * 2**l positions at resolution 2**l, except its half next to the query's own half
    (level l - 1 covers that). "sibling": the own block exactly; at level l the sibling of the
    query's span of b * 2**l positions at resolution 2**l.
    """
    check_hierarchy(hierarchy, block_size)
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    past = (key <= query) if causal else torch.ones(length, length, dtype=torch.bool)
    own = query // block_size == key // block_size
    resolution = (own & past).float()
    for level in range(number_of_levels(length, block_size)):
        span = block_size * 2**level
        if hierarchy == "sibling":
            seen = (query // span) ^ 1 == key // span
        else:
            blocks_apart = key // span - query // span
            seen = (blocks_apart == -1) | (blocks_apart == 1)
            if level > 0:
                half = span // 2
                seen = seen & ((key // half - query // half).abs() != 1)
        resolution = resolution + (seen & past).float() * 2**level
    return resolution


def simple_hierarchical_map(
    length: int,
    compressions: tuple[int, ...],
    windows: tuple[int | None, ...],
    strides: tuple[int, ...] | None = None,
    token_shift: bool = False,
) -> Tensor:
    """One layer: what the predicting stream gathers from every stream after the merge.

    Stream c with stride s (None: s = c for every stream, the strided variant) and window w (in
    its own attention steps, None = all): compressed position p stands for tokens p*s - (c-1) ...
    p*s at resolution c; fine position t reads p = t // s, which attends to p, p - a, p - 2a, ...
    (a = c / s: the stream runs as a interleaved subsequences), the last w of them; a token
    shift before attention and before the feed-forward reaches two steps further.
    """
    strides = tuple(compressions) if strides is None else tuple(strides)
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    resolution = torch.zeros(length, length)
    for factor, window, stride in zip(compressions, windows, strides, strict=True):
        step = factor // stride
        steps = length if window is None else window + (2 if token_shift else 0)
        seen = torch.zeros(length, length, dtype=torch.bool)
        for m in range(steps):
            held = query // stride - m * step  # the compressed position m steps back
            seen |= (held >= 0) & (key > held * stride - factor) & (key <= held * stride)
        resolution = _finest(resolution, seen.float() * factor)
    return resolution
