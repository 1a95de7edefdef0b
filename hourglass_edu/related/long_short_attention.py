"""Long-Short attention on plain tensors (Zhu et al. 2021, arXiv 2107.02192), causal form.

Each query attends to two key sets at once, under ONE softmax:

* short range: a sliding window of the `window` most recent positions (itself included), exact;
* long range: every *segment* of `segment_size` positions is compressed to `rank` key/value
  vectors by a dynamic projection P = softmax over the segment of (K W_p), with K_bar = P^T K and
  V_bar = P^T V. A query sees a segment's summary only once that segment has fully ended
  (its last position is the query's or earlier), so nothing from the future leaks in.

The two key sets live on different scales (a summary is a weighted average of many keys), so each
gets its own LayerNorm on keys and values ("DualLN") before the shared softmax.

Settings that leave a past position unseen are refused (`check_long_short_arguments`): the
window must reach back over the unfinished segment (``window >= segment_size - 1``), and a segment
cannot be summarised by more vectors than it has positions (``rank <= segment_size``). With valid
settings every past position is seen *at least* once (the window and the finished segments
overlap, so some positions are seen both exactly and through a summary).

Cost per query: `window` exact keys plus `rank` keys per finished segment, i.e.
O(length * (window + length * rank / segment_size)) in total instead of O(length^2).

Shapes: q, k, v are `(batch, heads, length, head_dim)`. The model built on it (the attention
module, config and `LongShortLM`) is in `related/long_short.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from hourglass_edu.attention import check_heads
from hourglass_edu.resampling import pad_to_multiple

__all__ = ["compress_segments", "long_short_attention"]

NormFn = Callable[[Tensor], Tensor]


def _upcast(x: Tensor) -> Tensor:
    """Scores and softmax run in at least float32 (bf16/fp16 logits lose the small weights)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "q, k and v must all have shape (batch, heads, length, head_dim) (v may have its own "
            f"last dim); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def window_mask(window: int, device: torch.device | None = None) -> Tensor:
    """Which keys a query block may use in the blocked sliding window.

    Queries come in blocks of `window`; block n's keys are blocks n-1 and n side by side (2*window
    keys). Query r (0-based inside its block) sits at key column window + r, so it may use columns
    c with r < c <= window + r: exactly the `window` most recent positions, itself included.
    Returns a bool tensor `(window, 2 * window)`, True = allowed.
    """
    rows = torch.arange(window, device=device)[:, None]
    cols = torch.arange(2 * window, device=device)[None, :]
    return (cols > rows) & (cols <= rows + window)


def local_window_scores(q: Tensor, k: Tensor, window: int) -> Tensor:
    """Scaled scores of each query against its sliding window, computed in O(length * window).

    q, k: `(batch, heads, length, head_dim)`. Returns `(batch, heads, blocks, window, 2 * window)`
    with -inf where a key is outside the window (or before the start); the query axis is padded to
    `blocks * window`.
    """
    q_blocks = rearrange(pad_to_multiple(q, window, dim=2), "b h (n w) d -> b h n w d", w=window)
    k_blocks = rearrange(pad_to_multiple(k, window, dim=2), "b h (n w) d -> b h n w d", w=window)
    # Keys for block n: block n-1 (zeros before the start, masked below) then block n.
    k_previous = F.pad(k_blocks, (0, 0, 0, 0, 1, 0))[:, :, :-1]
    k_pairs = torch.cat([k_previous, k_blocks], dim=3)  # (b, h, n, 2w, d)
    scores = torch.einsum("bhnwd,bhncd->bhnwc", q_blocks, k_pairs) / math.sqrt(q.shape[-1])
    allowed = window_mask(window, q.device).expand(k_blocks.shape[2], -1, -1).clone()
    allowed[0, :, :window] = False  # block 0 has no previous block
    return scores.masked_fill(~allowed, float("-inf"))


def _local_values(v: Tensor, window: int) -> Tensor:
    """Values laid out like the window keys: `(batch, heads, blocks, 2 * window, dim)`."""
    v_blocks = rearrange(pad_to_multiple(v, window, dim=2), "b h (n w) d -> b h n w d", w=window)
    v_previous = F.pad(v_blocks, (0, 0, 0, 0, 1, 0))[:, :, :-1]
    return torch.cat([v_previous, v_blocks], dim=3)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Causal attention over the `window` most recent positions (itself included), O(L * window).

    q, k, v: `(batch, heads, length, head_dim)` -> `(batch, heads, length, head_dim)`. With
    `window >= length` this is exactly full causal softmax attention.
    """
    _check_qkv(q, k, v)
    if window < 1:
        raise ValueError(f"window must be >= 1 (keys per query, itself included), got {window}")
    length = q.shape[2]
    window = min(window, length)
    weights = _upcast(local_window_scores(q, k, window)).softmax(dim=-1)
    out = torch.einsum("bhnwc,bhncd->bhnwd", weights.to(v.dtype), _local_values(v, window))
    return rearrange(out, "b h n w d -> b h (n w) d")[:, :, :length]


def compress_segments(
    k: Tensor, v: Tensor, projection: Tensor, segment_size: int
) -> tuple[Tensor, Tensor]:
    """Dynamic projection: each segment of `segment_size` positions -> `rank` keys and values.

    k, v: `(batch, heads, length, head_dim)`; projection W_p: `(heads, head_dim, rank)`.
    P = softmax over the positions of one segment of (K W_p), one distribution per rank slot;
    K_bar = P^T K, V_bar = P^T V. The last segment, if partial, is padded and its padding masked
    out of P (no query ever sees an unfinished segment anyway).
    Returns `(batch, heads, segments * rank, head_dim)` twice, segment-major.
    """
    length = k.shape[2]
    logits = _upcast(torch.einsum("bhld,hdr->bhlr", k, projection.to(k.dtype)))
    logits = pad_to_multiple(logits, segment_size, dim=2)
    valid = torch.arange(logits.shape[2], device=k.device) < length
    logits = logits.masked_fill(~valid[:, None], float("-inf"))
    mix = rearrange(logits, "b h (g s) r -> b h g s r", s=segment_size).softmax(dim=3)
    k_seg = rearrange(pad_to_multiple(k, segment_size, dim=2), "b h (g s) d -> b h g s d",
                      s=segment_size)
    v_seg = rearrange(pad_to_multiple(v, segment_size, dim=2), "b h (g s) d -> b h g s d",
                      s=segment_size)
    k_bar = torch.einsum("bhgsr,bhgsd->bhgrd", mix.to(k.dtype), k_seg)
    v_bar = torch.einsum("bhgsr,bhgsd->bhgrd", mix.to(v.dtype), v_seg)
    return (
        rearrange(k_bar, "b h g r d -> b h (g r) d"),
        rearrange(v_bar, "b h g r d -> b h (g r) d"),
    )


def finished_segments_mask(
    query_length: int, segments: int, segment_size: int, rank: int, device=None
) -> Tensor:
    """`(query_length, segments * rank)` bool: query i may use segment g iff (g+1)*s <= i+1."""
    query = torch.arange(query_length, device=device)[:, None]
    segment = torch.arange(segments, device=device).repeat_interleave(rank)[None, :]
    return (segment + 1) * segment_size <= query + 1


def long_short_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    projection: Tensor | None = None,
    segment_size: int | None = None,
    local_norm: NormFn | None = None,
    global_norm: NormFn | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Causal Long-Short attention. q, k, v: `(batch, heads, length, head_dim)`.

    window: keys per query in the exact sliding window (itself included).
    projection: W_p `(heads, head_dim, rank)`, or None to switch the long-range branch off (then
      this is sliding-window attention; with window >= length, exact full causal attention).
    segment_size: positions per compressed segment (needed with a projection); the checks of
      `check_long_short_arguments` apply (window >= segment_size - 1, rank <= segment_size).
    local_norm / global_norm: the DualLN pair, applied to the last dim of keys and values of the
      window and of the segment summaries respectively (None = identity).
    return_weights: also return the dense `(batch, heads, length, length)` attention each query
      pays to each *position* (a summary's weight is spread over its segment through P); for
      pictures and tests, O(length^2) memory.
    Returns `(batch, heads, length, head_dim)` (and the weights).
    """
    _check_qkv(q, k, v)
    _check_projection(q, window, projection, segment_size)
    length = q.shape[2]
    window = min(window, length)
    k_local, v_local = _normed(local_norm, k, v)
    scores = local_window_scores(q, k_local, window)  # (b, h, blocks, w, 2w)
    summaries = None
    if projection is not None:
        k_bar, v_bar = _normed(global_norm, *compress_segments(k, v, projection, segment_size))
        summary_scores = _summary_scores(q, k_bar, window, segment_size, projection.shape[2])
        summaries = (summary_scores.shape[-1], v_bar)
        scores = torch.cat([scores, summary_scores.to(scores.dtype)], dim=-1)
    # One softmax over both key sets: the two kinds of keys compete for the same attention.
    weights = _upcast(scores).softmax(dim=-1)
    out = _mix_values(weights, v_local, window, summaries)[:, :, :length]
    if not return_weights:
        return out
    return out, _dense_weights(weights, k, projection, segment_size, window, length)


def _check_projection(q: Tensor, window: int, projection, segment_size) -> None:
    """The argument checks of `long_short_attention` beyond the shapes of q, k, v."""
    if window < 1:
        raise ValueError(f"window must be >= 1 (keys per query, itself included), got {window}")
    if projection is None:
        return
    heads, head_dim = q.shape[1], q.shape[3]
    if projection.dim() != 3 or projection.shape[:2] != (heads, head_dim):
        raise ValueError(
            f"projection must have shape (heads={heads}, head_dim={head_dim}, rank); "
            f"got {tuple(projection.shape)}"
        )
    check_long_short_arguments(heads * head_dim, heads, window, segment_size, projection.shape[2])


def _normed(norm: NormFn | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """One of the DualLN pair applied to keys and values (None = identity)."""
    return (k, v) if norm is None else (norm(k), norm(v))


def _summary_scores(q: Tensor, k_bar: Tensor, window: int, segment_size: int, rank: int) -> Tensor:
    """Scaled scores of each query against every segment summary, -inf where the segment has not
    ended yet; laid out like the window scores: `(batch, heads, blocks, window, summaries)`."""
    q_padded = pad_to_multiple(q, window, dim=2)
    scores = torch.einsum("bhld,bhkd->bhlk", q_padded, k_bar) / math.sqrt(q.shape[-1])
    segments = k_bar.shape[2] // rank
    seen = finished_segments_mask(q_padded.shape[2], segments, segment_size, rank, q.device)
    scores = scores.masked_fill(~seen, float("-inf"))
    return rearrange(scores, "b h (n w) k -> b h n w k", w=window)


def _mix_values(weights: Tensor, v_local: Tensor, window: int, summaries) -> Tensor:
    """Weighted sum of the window's values and (if any) the summaries' values.

    weights: `(batch, heads, blocks, window, 2 * window [+ summary keys])` after the softmax;
    summaries: None or `(number of summary keys, v_bar)`. Returns `(batch, heads, blocks * window,
    dim)` (the query axis still padded).
    """
    local_keys = 2 * window
    local_weights = weights[..., :local_keys].to(v_local.dtype)
    out = torch.einsum("bhnwc,bhncd->bhnwd", local_weights, _local_values(v_local, window))
    out = rearrange(out, "b h n w d -> b h (n w) d")
    if summaries is not None:
        _, v_bar = summaries
        summary_weights = rearrange(weights[..., local_keys:], "b h n w k -> b h (n w) k")
        out = out + torch.einsum("bhlk,bhkd->bhld", summary_weights.to(v_bar.dtype), v_bar)
    return out


def _dense_weights(weights, k, projection, segment_size, window, length) -> Tensor:
    """Spread the blocked/summary weights back onto positions: `(batch, heads, length, length)`."""
    batch, heads, blocks = weights.shape[:3]
    padded = blocks * window
    dense = weights.new_zeros(batch, heads, padded, padded + window)
    # Local part: block n's keys are positions (n-1)*window ... (n+1)*window - 1, shifted by window.
    for n in range(blocks):
        rows = slice(n * window, (n + 1) * window)
        dense[:, :, rows, n * window : (n + 2) * window] += weights[:, :, n, :, : 2 * window]
    dense = dense[:, :, :, window:]
    if projection is not None:
        rank = projection.shape[2]
        logits = torch.einsum("bhld,hdr->bhlr", _upcast(k), _upcast(projection))
        logits = pad_to_multiple(logits, segment_size, dim=2)
        valid = torch.arange(logits.shape[2], device=k.device) < length
        logits = logits.masked_fill(~valid[:, None], float("-inf"))
        mix = rearrange(logits, "b h (g s) r -> b h g s r", s=segment_size).softmax(dim=3)
        summary = rearrange(weights[..., 2 * window :], "b h n w (g r) -> b h (n w) g r", r=rank)
        spread = torch.einsum("bhlgr,bhgsr->bhlgs", summary, mix)
        spread = rearrange(spread, "b h l g s -> b h l (g s)")
        dense[..., : spread.shape[-1]] += spread[..., : dense.shape[-1]]
    return dense[:, :, :length, :length]


def check_long_short_arguments(
    d_model: int, n_heads: int, window: int, segment_size: int | None, rank: int | None
) -> None:
    """Raise ValueError, saying what to change, for a configuration that cannot work."""
    check_heads(d_model, n_heads, rotary=False)  # the kernel itself has no rotary
    if window < 1:
        raise ValueError(f"window must be >= 1 (keys per query, itself included), got {window}")
    if rank is not None:
        if rank < 1:
            raise ValueError(
                f"rank must be >= 1 (summary vectors per segment), got {rank}; "
                "use rank=None to switch the long-range branch off"
            )
        if segment_size is None or segment_size < 1:
            raise ValueError(f"segment_size must be >= 1 when rank is set, got {segment_size}")
        if rank > segment_size:
            raise ValueError(
                f"rank ({rank}) must be <= segment_size ({segment_size}): more summary vectors "
                "than the positions they summarise is no compression; lower rank or raise "
                "segment_size"
            )
        if window < segment_size - 1:
            raise ValueError(
                f"window ({window}) must be >= segment_size - 1 ({segment_size - 1}): a query "
                "sees a segment's summary only once the segment has ended, so the positions of "
                "the unfinished segment need the window, or nothing sees them; raise window or "
                "lower segment_size"
            )
