"""Hierarchical attention in the style of H-Transformer-1D (Zhu & Soricut 2021, arXiv 2107.11906).

Split the sequence into blocks of `block_size` positions and build a binary tree over them. A
query's *ancestor* at level l is the aligned span of `block_size * 2**l` positions that contains
it; the ancestor's *sibling* is the other half of the span one level up. Each query attends to

* its own block (level "diagonal"), exactly, position by position;
* at each level l = 0, 1, ..., the sibling of its level-l ancestor, seen through keys and values
  averaged over groups of 2**l positions (so always `block_size` pooled keys, whatever the level).

The own block plus one sibling per level tile the whole sequence, each position exactly once: near
positions are seen exactly, far ones coarsely. In the causal form a sibling that lies to the right
(the future) is dropped, and what is left tiles exactly the query's past. Cost per query:
block_size * (1 + number of levels) keys, O(L log L) in all.

Two details make the result a proper softmax attention:

* a pooled key stands for `count` positions (2**l, fewer where it covers padding), so its logit
  gets + log(count): when the keys of a group are equal this is exactly what the full softmax
  would give those positions together;
* all levels' logits enter ONE softmax (one shared log-sum-exp), so the normalisation is right
  even when logits are large (merging per-level softmaxes with separate maxima is not).

Queries stay at full resolution. (The paper pools queries too, which is cheaper, but a pooled
query mixes positions of its group: in the causal form a position would see its group-mates'
future.)

Shapes: q, k, v are `(batch, heads, length, head_dim)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.lm import BlockStackConfig, BlockStackLM
from hourglass_edu.related.long_short import _check_qkv, _pad_length, _upcast

__all__ = [
    "HAttention",
    "HTransformerConfig",
    "HTransformerLM",
    "h_attention",
    "number_of_levels",
]


def number_of_levels(length: int, block_size: int) -> int:
    """Sibling levels needed so that block_size * 2**levels >= length (0 if one block suffices)."""
    blocks = math.ceil(length / block_size)
    return max(0, math.ceil(math.log2(blocks))) if blocks > 1 else 0


def _pool(x: Tensor, factor: int) -> Tensor:
    """Sum over aligned groups of `factor` positions: `(b, h, L, d)` -> `(b, h, L/factor, d)`."""
    return rearrange(x, "b h (n f) d -> b h n f d", f=factor).sum(dim=3)


def h_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int,
    causal: bool = True,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Hierarchical attention. q, k, v: `(batch, heads, length, head_dim)` -> same shape.

    block_size: positions per finest block (exact attention inside it; also the number of pooled
      keys per level). With block_size >= length this is exactly ordinary softmax attention.
    causal: drop the siblings to the right and mask the future inside the own block.
    return_weights: also return the `(batch, heads, length, length)` weight each query pays to
      each position (a pooled key's weight spread evenly over its group); O(length^2) memory.
    """
    _check_qkv(q, k, v)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    batch, heads, length, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    levels = number_of_levels(length, block_size)
    device = q.device

    # Own block, exact. Keys beyond the real length are padding and always masked.
    b = block_size
    q_blocks = rearrange(_pad_length(q, b), "b h (n r) d -> b h n r d", r=b)
    k_blocks = rearrange(_pad_length(k, b), "b h (n c) d -> b h n c d", c=b)
    v_blocks = rearrange(_pad_length(v, b), "b h (n c) d -> b h n c d", c=b)
    key_position = torch.arange(q_blocks.shape[2] * b, device=device).view(-1, 1, b)
    allowed = (key_position < length).expand(-1, b, -1)
    if causal:
        allowed = allowed & torch.ones(b, b, dtype=torch.bool, device=device).tril()
    diagonal = _upcast(torch.einsum("bhnrd,bhncd->bhnrc", q_blocks, k_blocks)) * scale
    diagonal = diagonal.masked_fill(~allowed, float("-inf"))
    scores = [rearrange(diagonal, "b h n r c -> b h (n r) c")[:, :, :length]]

    # Sibling levels: spans of b * 2**level, pooled by 2**level to b keys each.
    sibling_values = []
    for level in range(levels):
        factor = 2**level
        span = b * factor
        valid = _pad_length(k.new_ones(1, 1, length, 1), 2 * span)
        counts = _pool(valid, factor)  # (1, 1, L/factor, 1) real positions per pooled key
        k_sum = _pool(_pad_length(k, 2 * span), factor)
        v_sum = _pool(_pad_length(v, 2 * span), factor)
        k_pooled = k_sum / counts.clamp(min=1)
        v_pooled = v_sum / counts.clamp(min=1)
        # (pairs, half, key): the sibling of half t is half 1 - t of the same pair.
        pair = "b h (p t c) d -> b h p t c d"
        sibling_k = rearrange(k_pooled, pair, t=2, c=b).flip(3)
        sibling_v = rearrange(v_pooled, pair, t=2, c=b).flip(3)
        sibling_count = rearrange(counts, pair, t=2, c=b).flip(3)[..., 0]  # (1, 1, p, t, c)
        q_pairs = rearrange(_pad_length(q, 2 * span), "b h (p t r) d -> b h p t r d", t=2, r=span)
        level_scores = _upcast(torch.einsum("bhptrd,bhptcd->bhptrc", q_pairs, sibling_k)) * scale
        bias = _upcast(sibling_count).log()  # log(count); -inf for keys made only of padding
        if causal:
            bias = bias.clone()
            bias[:, :, :, 0] = float("-inf")  # the left half's sibling lies in the future
        level_scores = level_scores + bias[:, :, :, :, None, :]
        scores.append(rearrange(level_scores, "b h p t r c -> b h (p t r) c")[:, :, :length])
        sibling_values.append(sibling_v)

    # One softmax across the own block and every level: a single shared log-sum-exp.
    weights = torch.cat(scores, dim=-1).softmax(dim=-1)
    pieces = weights.split(b, dim=-1)

    own = rearrange(_pad_length(pieces[0], b), "b h (n r) c -> b h n r c", r=b)
    out = torch.einsum("bhnrc,bhncd->bhnrd", own.to(v.dtype), v_blocks)
    out = rearrange(out, "b h n r d -> b h (n r) d")[:, :, :length]
    for level, (piece, sibling_v) in enumerate(zip(pieces[1:], sibling_values, strict=True)):
        span = b * 2**level
        piece = rearrange(_pad_length(piece, 2 * span), "b h (p t r) c -> b h p t r c", t=2, r=span)
        level_out = torch.einsum("bhptrc,bhptcd->bhptrd", piece.to(v.dtype), sibling_v)
        out = out + rearrange(level_out, "b h p t r d -> b h (p t r) d")[:, :, :length]
    if not return_weights:
        return out
    return out, _dense_weights(pieces, length, b)


def _dense_weights(pieces: tuple[Tensor, ...], length: int, b: int) -> Tensor:
    """Spread per-level weights onto positions: `(batch, heads, length, length)`."""
    batch, heads = pieces[0].shape[:2]
    padded_length = length + 2 * b * 2 ** max(len(pieces) - 1, 0)
    dense = pieces[0].new_zeros(batch, heads, length, padded_length)
    query = torch.arange(length, device=dense.device)
    # Own block: key c of query i's block is position (i // b) * b + c.
    own_columns = (query // b * b)[:, None] + torch.arange(b, device=dense.device)[None, :]
    dense.scatter_add_(3, own_columns.expand(batch, heads, -1, -1), pieces[0])
    for level, piece in enumerate(pieces[1:]):
        factor = 2**level
        span = b * factor
        # The sibling is the other half of the pair of spans that holds the query.
        sibling = (query // span) ^ 1
        group_start = (sibling * span)[:, None] + torch.arange(b, device=dense.device) * factor
        # A pooled key's weight is shared evenly by the real positions of its group.
        count = (length - group_start).clamp(0, factor).clamp(min=1)
        for offset in range(factor):
            dense.scatter_add_(
                3, (group_start + offset).expand(batch, heads, -1, -1), piece / count
            )
    return dense[..., :length]


class HAttention(MultiHeadAttention):
    """Multi-head hierarchical self-attention, a drop-in for ``MultiHeadAttention``.

    Reuses the library's projections and rotary positions (applied before pooling) and replaces
    only ``attend``: ``causal=True`` gives the causal form, ``causal=False`` the two-sided one.
    Attention-weight dropout is not applied (the block's residual dropout still is).
    """

    def __init__(
        self, d_model: int, n_heads: int, *, block_size: int, rotary: nn.Module | None = None
    ):
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})"
            )
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        super().__init__(d_model, n_heads, rotary=rotary, impl="explicit")
        self.block_size = block_size

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
        result = h_attention(
            q, k, v, block_size=self.block_size, causal=causal, return_weights=need_weights
        )
        out, weights = result if need_weights else (result, None)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)")), weights


@dataclass
class HTransformerConfig(BlockStackConfig):
    """Everything that defines an ``HTransformerLM`` (causal hierarchical attention).

    block_size: positions per finest block, seen exactly; also the number of pooled keys per
    level. Each query attends to block_size * (1 + levels) keys, levels = ceil(log2(length /
    block_size)).
    """

    block_size: int = 16

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


class HTransformerLM(BlockStackLM):
    """Character LM: ``n_layers`` pre-norm blocks with causal hierarchical attention.

    Capture names: ``embedding``, ``block{j}``, ``block{j}.attn`` (weights ``(batch, heads,
    length, length)``, pooled weights spread evenly over their groups), ``final_norm``.
    """

    config_class = HTransformerConfig

    def make_attention(self) -> HAttention:
        config = self.config
        return HAttention(config.d_model, config.n_heads, block_size=config.block_size,
                          rotary=self.rotary)
