"""Hierarchical attention of H-Transformer-1D (Zhu & Soricut 2021, arXiv 2107.11906).

Cut the sequence into blocks of `block_size` (b) positions. At level l the keys and values are
averaged over aligned groups of 2**l positions, and grouped into blocks of b averaged keys (so a
level-l block spans b * 2**l positions). Every query attends to its own block exactly (causal mask
inside it) plus, per level, ONE neighbouring block of b keys. Two ways of choosing that block:

``hierarchy="paper"`` (the default; the paper, Sec. 5, and the official code, flaxformer
``architectures/h_transformer/h_attention.py`` and ``token_hierarchy.py``):

* level 0: the left neighbour block, exactly (resolution 1);
* level l >= 1: the left neighbour of the query's level-l block, pooled by 2**l; a query in the
  FIRST half of its level-l block skips that neighbour's second half, which level l - 1 has
  already covered (the official "correction mask"). So every past position is covered once, the
  previous `block_size` positions are always exact, and coarseness only grows with distance;
* in the causal form a coarse level uses, for every position of a group of 2**l, the query of the
  group's FIRST position (the official code samples queries: its kernel [1, 0]). The group-mates
  that share it all come after it, so nothing leaks; the two-sided form averages the group's
  queries instead. (Averaging queries in the causal form would leak: position i would use i+1.)

``hierarchy="sibling"`` (a binary tree, kept for comparison): at level l the *sibling* of the
query's aligned span of b * 2**l positions (the other half of the span one level up), pooled by
2**l; in the causal form a sibling on the right is the future and is dropped. It also covers the
past exactly once, but sees some near positions only through averages: at length 1024, block 16,
query 512 sees position 511 at resolution 32. Queries stay at full resolution.

Both give one proper softmax:

* a pooled key stands for `count` positions (2**l, fewer where it covers padding), so its logit
  gets + log(count): when the keys of a group are equal this is exactly what the full softmax
  would give those positions together;
* the own block and every level enter ONE softmax per query (one shared log-sum-exp), so the
  normalisation is right even for large logits.

Cost: b * (1 + levels) keys per query, levels = ceil(log2(length / b)). With b >= length both are
exactly ordinary softmax attention. Shapes: q, k, v are `(batch, heads, length, head_dim)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.lm import BlockStackConfig, BlockStackLM

__all__ = ["HTransformerLM", "h_attention", "number_of_levels"]

HIERARCHIES = ("paper", "sibling")


def number_of_levels(length: int, block_size: int) -> int:
    """Levels (blocks of b keys besides the own block) needed so that block_size * 2**levels >=
    length; 0 if one block holds the sequence."""
    blocks = math.ceil(length / block_size)
    return max(0, math.ceil(math.log2(blocks))) if blocks > 1 else 0


def check_hierarchy(hierarchy: Any, block_size: Any) -> None:
    """ValueError unless `hierarchy` is known and `block_size` suits it."""
    if hierarchy not in HIERARCHIES:
        raise ValueError(f"hierarchy must be one of {HIERARCHIES}, got {hierarchy!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size!r}")
    if hierarchy == "paper" and block_size % 2:
        raise ValueError(
            f"block_size must be even for hierarchy='paper', got {block_size}: a query in the "
            "first half of a block skips the second half of the neighbour block; choose "
            f"{block_size + 1} or use hierarchy='sibling'"
        )


@dataclass(frozen=True)
class _Part:
    """One set of b keys that each query attends to (its own block, or one level)."""

    factor: int  # positions averaged into one key
    partner: Tensor  # (query blocks,) the key block each query block reads; out of range = none
    allowed: Tensor  # bool, broadcasts to (query blocks, span, b): which of those keys it may use
    coarse_queries: bool = False  # the paper's coarse levels: one query per group of `factor`


def _parts(n_blocks: int, levels: int, b: int, causal: bool, hierarchy: str, device) -> list:
    """The own block and one part per level (the two-sided paper form: a right part too)."""
    block = torch.arange(n_blocks, device=device)
    rows = torch.arange(b, device=device)[:, None]
    cols = torch.arange(b, device=device)[None, :]
    own = (cols <= rows) if causal else torch.ones(b, b, dtype=torch.bool, device=device)
    parts = [_Part(1, block, own[None])]
    for level in range(levels):
        factor, level_blocks = 2**level, n_blocks >> level  # blocks of span b * 2**level
        block = torch.arange(level_blocks, device=device)
        if hierarchy == "sibling":
            sibling = block ^ 1
            allowed = (sibling < block) if causal else torch.ones_like(block, dtype=torch.bool)
            parts.append(_Part(factor, sibling, allowed[:, None, None]))
            continue
        # Paper: left (and two-sided: right) neighbour; at level >= 1 a query in one half of its
        # block skips the neighbour's near half, which level - 1 covered (official correction).
        first_half = torch.arange(b * factor, device=device)[:, None] < b * factor // 2
        key_second_half = cols >= b // 2
        for step in (-1,) if causal else (-1, 1):
            skip = (first_half & key_second_half) if step < 0 else (~first_half & ~key_second_half)
            allowed = ((block + step >= 0) & (block + step < level_blocks))[:, None, None]
            if level > 0:
                allowed = allowed & ~skip[None]
            parts.append(_Part(factor, block + step, allowed, coarse_queries=level > 0))
    return parts


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "q, k and v must all have shape (batch, heads, length, head_dim) (v may have its own "
            f"last dim); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def _pad(x: Tensor, length: int) -> Tensor:
    """Zeros appended along dim 2 up to `length`."""
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


def _upcast(x: Tensor) -> Tensor:
    """Scores and softmax run in at least float32 (bf16/fp16 logits lose the small weights)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _group_sum(x: Tensor, factor: int) -> Tensor:
    """Sum over aligned groups of `factor` positions: `(b, h, L, d)` -> `(b, h, L/factor, d)`."""
    return rearrange(x, "b h (n f) d -> b h n f d", f=factor).sum(dim=3)


def _average(x: Tensor, counts: Tensor, factor: int) -> Tensor:
    """Mean over the real (non-padding) positions of each aligned group of `factor`."""
    return (_group_sum(x, factor) / counts.clamp(min=1)).to(x.dtype)


def _pooled_blocks(k: Tensor, v: Tensor, valid: Tensor, factor: int, b: int) -> tuple:
    """Keys and values averaged over groups of `factor`, in blocks of b: `(counts (1, 1, L/factor,
    1), keys and values (batch, heads, blocks, b, d), log counts (1, 1, blocks, 1, b))`; the log
    count of a key made only of padding is -inf."""
    counts = _group_sum(valid, factor)  # real positions behind each pooled key
    keys = rearrange(_average(k, counts, factor), "b h (n c) d -> b h n c d", c=b)
    values = rearrange(_average(v, counts, factor), "b h (n c) d -> b h n c d", c=b)
    log_count = rearrange(counts.log(), "o t (n c) one -> o t n one c", c=b)
    return counts, keys, values, log_count


def h_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int,
    causal: bool = True,
    hierarchy: str = "paper",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Hierarchical attention. q, k, v: `(batch, heads, length, head_dim)` -> same shape.

    block_size: positions per finest block (exact attention inside it; also the number of keys
      per level). With block_size >= length this is exactly ordinary softmax attention.
    causal: mask the future inside the own block and use only blocks to the left.
    hierarchy: "paper" (own block + neighbour block per level) or "sibling" (binary tree); see
      the module docstring.
    return_weights: also return the `(batch, heads, length, length)` weight each query pays to
      each position (a pooled key's weight spread evenly over its group); O(length^2) memory.
    """
    _check_qkv(q, k, v)
    check_hierarchy(hierarchy, block_size)
    length, b = q.shape[2], block_size
    levels = number_of_levels(length, b)
    padded = b * 2**levels
    scale = 1.0 / math.sqrt(q.shape[-1])
    q, k, v = (_pad(x, padded) for x in (q, k, v))
    valid = _pad(torch.ones(1, 1, length, 1, device=q.device), padded)

    parts = _parts(padded // b, levels, b, causal, hierarchy, q.device)
    scores, value_blocks, pooled = [], [], {}
    for part in parts:
        if part.factor not in pooled:  # parts with the same factor share their pooled keys
            pooled[part.factor] = _pooled_blocks(k, v, valid, part.factor, b)
        counts, keys, values, log_count = pooled[part.factor]
        queries = q
        if part.coarse_queries:  # causal: the group's first query; two-sided: the group's mean
            coarse = q[:, :, :: part.factor] if causal else _average(q, counts, part.factor)
            queries = repeat(coarse, "b h g d -> b h (g f) d", f=part.factor)
        partner = part.partner.clamp(0, len(part.partner) - 1)  # out of range: masked below
        query_blocks = rearrange(queries, "b h (n r) d -> b h n r d", n=len(partner))
        logits = torch.einsum("bhnrd,bhncd->bhnrc", query_blocks, keys[:, :, partner])
        logits = _upcast(logits) * scale + log_count[:, :, partner]
        logits = logits.masked_fill(~part.allowed, float("-inf"))
        scores.append(rearrange(logits, "b h n r c -> b h (n r) c")[:, :, :length])
        value_blocks.append(values[:, :, partner])

    # One softmax across the own block and every level: a single shared log-sum-exp per query.
    pieces = torch.cat(scores, dim=-1).softmax(dim=-1).split(b, dim=-1)
    out = 0
    for piece, values in zip(pieces, value_blocks, strict=True):
        piece = rearrange(_pad(piece, padded), "b h (n r) c -> b h n r c", n=values.shape[2])
        level_out = torch.einsum("bhnrc,bhncd->bhnrd", piece.to(v.dtype), values)
        out = out + rearrange(level_out, "b h n r d -> b h (n r) d")
    out = out[:, :, :length]
    if not return_weights:
        return out
    return out, _dense_weights(parts, pieces, length, padded, b)


def _dense_weights(parts: list, pieces: tuple[Tensor, ...], length: int, padded: int, b: int):
    """Spread each part's weights onto positions: `(batch, heads, length, length)`."""
    batch, heads = pieces[0].shape[:2]
    dense = pieces[0].new_zeros(batch, heads, length, padded)
    query = torch.arange(length, device=dense.device)
    key = torch.arange(b, device=dense.device)
    for part, piece in zip(parts, pieces, strict=True):
        span = b * part.factor
        partner = part.partner.clamp(0, len(part.partner) - 1)[query // span]
        group_start = (partner * span)[:, None] + key * part.factor  # (length, b)
        # A pooled key's weight is shared evenly by the real positions of its group.
        count = (length - group_start).clamp(0, part.factor).clamp(min=1)
        for offset in range(part.factor):
            columns = (group_start + offset).expand(batch, heads, -1, -1)
            dense.scatter_add_(3, columns, piece / count)
    return dense[..., :length]


class HAttention(MultiHeadAttention):
    """Multi-head hierarchical self-attention, a drop-in for ``MultiHeadAttention``.

    Reuses the library's projections and rotary positions (applied before pooling) and replaces
    only ``attend``: ``causal=True`` gives the causal form, ``causal=False`` the two-sided one.
    ``hierarchy``: "paper" (default) or "sibling", see the module docstring.
    Attention-weight dropout is not applied (the block's residual dropout still is).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        block_size: int,
        hierarchy: str = "paper",
        rotary: nn.Module | None = None,
    ):
        check_hierarchy(hierarchy, block_size)
        super().__init__(d_model, n_heads, rotary=rotary, impl="explicit")
        self.block_size = block_size
        self.hierarchy = hierarchy

    def attend(self, q, k, v, *, mask=None, causal=False, need_weights=False):
        """q, k, v ``(batch, heads, length, head_dim)`` -> ``(output (batch, length, d_model),
        weights (batch, heads, length, length) or None)``."""
        if mask is not None:
            raise ValueError("hierarchical attention takes no explicit mask: use causal=True/False")
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(
                "hierarchical attention is self-attention: queries and keys must "
                f"have the same length, got {q.shape[-2]} and {k.shape[-2]}"
            )
        result = h_attention(q, k, v, block_size=self.block_size, causal=causal,
                             hierarchy=self.hierarchy, return_weights=need_weights)
        out, weights = result if need_weights else (result, None)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)")), weights


@dataclass
class HTransformerConfig(BlockStackConfig):
    """Everything that defines an ``HTransformerLM`` (causal hierarchical attention).

    block_size: positions per finest block, seen exactly; also the number of keys per level.
      Each query attends to block_size * (1 + levels) keys, levels = ceil(log2(length /
      block_size)). Must be even for the paper's hierarchy.
    hierarchy: "paper" (own block + left neighbour per level, the published design) or "sibling"
      (a binary tree). A saved config without this key is from before it existed, when the
      sibling tree was the only structure: ``from_dict`` reads it as "sibling", the structure its
      weights were trained with.
    """

    block_size: int = 16
    hierarchy: str = "paper"

    def __post_init__(self):
        super().__post_init__()
        check_hierarchy(self.hierarchy, self.block_size)
        if self.block_size > self.max_length:
            # Every window is padded to a whole block: a block beyond the longest window only
            # pads (its exact attention takes block_size^2 scores per head).
            raise ValueError(
                f"block_size={self.block_size:,} is more than max_length={self.max_length:,}: "
                "every window would be padded to a block that size (one block of max_length "
                "positions is already exact attention); use block_size up to max_length"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if isinstance(data, dict) and "hierarchy" not in data:
            data = {**data, "hierarchy": "sibling"}
        return super().from_dict(data)


class HTransformerLM(BlockStackLM):
    """Character LM: ``n_layers`` pre-norm blocks with causal hierarchical attention.

    Capture names: ``embedding``, ``block{j}``, ``block{j}.attn`` (weights ``(batch, heads,
    length, length)``, pooled weights spread evenly over their groups), ``final_norm``.
    """

    config_class = HTransformerConfig
    comparison_variants = ("h_transformer",)
    small_fields = {"n_layers": 2, "block_size": 4}

    @classmethod
    def comparison_config(cls, variant, *, common, n_layers, window):
        """``n_layers`` blocks, the paper's hierarchy with blocks of ``window // 2`` positions
        (rounded down to an even number, at least 2)."""
        return HTransformerConfig(**common, n_layers=n_layers,
                                  block_size=max(2, window // 4 * 2))

    def longest_sequence(self, length: int) -> int:
        """Queries, keys and values are padded to ``block_size * 2**levels`` positions."""
        block_size = self.config.block_size
        return block_size * 2 ** number_of_levels(length, block_size)

    def make_attention(self) -> HAttention:
        config = self.config
        return HAttention(config.d_model, config.n_heads, block_size=config.block_size,
                          hierarchy=config.hierarchy, rotary=self.rotary)
