"""Multi-head attention: the explicit path, the fused path, and the masks an hourglass needs.

Attention, one head, written out: ``scores = q @ k.T / sqrt(head_dim)``; positions a query may not
see get ``-inf``; ``weights = softmax(scores)`` over the keys; ``output = weights @ v``.

Two implementations compute exactly this:

* ``explicit_attention`` writes every step in torch and can return the weights
  ``(batch, heads, query, key)``: the one to read, and the one ``run_with_cache`` uses.
* ``fused_attention`` calls ``torch.nn.functional.scaled_dot_product_attention`` (SDPA), which
  picks a fused kernel (flash / memory-efficient attention on GPU, a blocked kernel on CPU) that
  never materialises the weights: the default, faster and lighter. Where no fused kernel applies
  (dropout on a CPU, for one) SDPA falls back to its math path, which does build them.

Masks are boolean ``(query, key)`` tensors, ``True`` where the query may attend (SDPA's
convention). Besides the ordinary causal mask, an hourglass needs two "funnel" masks for attention
between resolutions (shortening factor ``k``):

* ``funnel_down_mask``: short position ``i`` attends to full-resolution positions of the
  *shifted* sequence ``s < (i + 1) * k``. Shifted position ``s`` holds original token ``s - (k-1)``,
  so short ``i`` sees originals ``<= i * k``: the first full position that will read short ``i``
  (after upsampling) is ``i * k``, so nothing it sees lies in that position's future.
* ``funnel_up_mask``: full position ``j`` attends to short positions ``m <= j // k``. Short ``m``
  holds originals up to ``m * k <= j``.

``MultiHeadAttention`` keeps the three steps separate (``queries``, ``keys_values``, ``attend``)
so that a decoder with a key/value cache can call them one at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "KeyValueCache",
    "MultiHeadAttention",
    "causal_mask",
    "explicit_attention",
    "funnel_down_mask",
    "funnel_up_mask",
    "fused_attention",
]

ATTENTION_IMPLS = ("fused", "explicit")


def check_heads(d_model: int, n_heads: int, *, rotary: bool = True) -> None:
    """The one head rule: ``n_heads`` must divide ``d_model``, and with rotary positions the head
    size must be even (they rotate pairs of features). ValueError saying what to change."""
    if n_heads < 1 or d_model % n_heads != 0:
        divisors = [h for h in range(1, d_model + 1) if d_model % h == 0][:8]
        raise ValueError(
            f"n_heads={n_heads} does not divide d_model={d_model} (d_model must be a multiple "
            f"of n_heads): choose n_heads from {divisors} or change d_model"
        )
    if rotary and (d_model // n_heads) % 2 != 0:
        raise ValueError(
            f"head dimension d_model / n_heads = {d_model // n_heads} is odd; rotary positions "
            "rotate pairs of features: make it even"
        )


def causal_mask(query_length: int, key_length: int | None = None, *, device=None) -> torch.Tensor:
    """Boolean ``(query, key)`` mask, ``True`` where key ``<=`` query.

    With ``key_length > query_length`` the queries are the *last* ``query_length`` positions (as
    when new tokens attend to a cache of earlier keys).
    """
    key_length = query_length if key_length is None else key_length
    offset = key_length - query_length
    query_index = torch.arange(query_length, device=device)[:, None] + offset
    key_index = torch.arange(key_length, device=device)[None, :]
    return key_index <= query_index


def funnel_down_mask(short_length: int, full_length: int, factor: int, *, device=None):
    """Mask for attention shortening: short query ``i`` sees shifted full keys ``s < (i+1)*factor``.

    Returns a boolean ``(short_length, full_length)`` tensor.
    """
    short_index = torch.arange(short_length, device=device)[:, None]
    full_index = torch.arange(full_length, device=device)[None, :]
    return full_index < (short_index + 1) * factor


def funnel_up_mask(full_length: int, short_length: int, factor: int, *, device=None):
    """Mask for attention upsampling: full query ``j`` sees short keys ``m <= j // factor``.

    Returns a boolean ``(full_length, short_length)`` tensor.
    """
    full_index = torch.arange(full_length, device=device)[:, None]
    short_index = torch.arange(short_length, device=device)[None, :]
    return short_index <= torch.div(full_index, factor, rounding_mode="floor")


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written step by step.

    q: ``(batch, heads, query, head_dim)``; k, v: ``(batch, heads, key, head_dim)``;
    mask: boolean ``(query, key)`` (or broadcastable to the scores), ``True`` = may attend.
    Returns ``(output (batch, heads, query, head_dim), weights (batch, heads, query, key))``.
    The weights are returned before dropout, so they always sum to one over the keys.
    """
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # softmax in fp32 even under bf16 autocast: exp() of large scores needs the range.
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    attended = F.dropout(weights, p=dropout, training=training) if dropout > 0 else weights
    output = torch.einsum("bhqk,bhkd->bhqd", attended, v)
    return output, weights


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """The same computation through ``F.scaled_dot_product_attention`` (no weights returned).

    ``is_causal=True`` (only when query and key lengths are equal) lets SDPA skip the masked half
    without building a mask tensor.
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout if training else 0.0
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention).

    Three steps, each usable alone (a cached decoder calls them separately):

    * ``queries(x, positions)`` -> ``(batch, heads, length, head_dim)``
    * ``keys_values(x, positions)`` -> ``(k, v)``, each ``(batch, heads, length, head_dim)``
    * ``attend(q, k, v, mask=..., causal=..., need_weights=...)`` -> ``(output (batch, length, d),
      weights or None)``

    ``rotary`` (a ``RotaryEmbedding`` or ``None``) rotates queries and keys by their integer
    positions, given explicitly so that queries and keys may live on different resolutions.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        dropout: float = 0.0,
        rotary: nn.Module | None = None,
        impl: str = "fused",
    ):
        super().__init__()
        check_heads(d_model, n_heads, rotary=rotary is not None)
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}: use one of {ATTENTION_IMPLS}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.impl = impl
        self.rotary = rotary
        self.query_proj = nn.Linear(d_model, d_model)
        self.key_value_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.out_proj.is_residual_output = True  # scaled at init (see LanguageModel.init_weights)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(
            x, "batch length (heads dim) -> batch heads length dim", heads=self.n_heads
        )

    def queries(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(batch, length, d_model)``, positions ``(length,)`` -> ``(b, heads, length, dh)``."""
        q = self._split_heads(self.query_proj(x))
        if self.rotary is not None:
            q = self.rotary(q, positions)
        return q

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor | None = None):
        """x ``(batch, length, d_model)`` -> ``(k, v)``, each ``(batch, heads, length, dh)``."""
        k, v = self.key_value_proj(x).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        if self.rotary is not None:
            k = self.rotary(k, positions)
        return k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend and project back: returns ``(output (batch, query, d_model), weights or None)``.

        ``causal=True`` means the plain causal mask (queries are the last positions of the keys);
        ``mask`` is an explicit boolean ``(query, key)`` mask. Weights come from the explicit
        path, used when ``need_weights`` or ``impl == "explicit"``.
        """
        if causal and mask is not None:
            raise ValueError("pass either causal=True or an explicit mask, not both")
        query_length, key_length = q.shape[-2], k.shape[-2]
        weights = None
        if need_weights or self.impl == "explicit":
            if causal:
                mask = causal_mask(query_length, key_length, device=q.device)
            out, weights = explicit_attention(
                q, k, v, mask, dropout=self.dropout, training=self.training
            )
        else:
            use_is_causal = causal and query_length == key_length
            if causal and not use_is_causal:
                mask = causal_mask(query_length, key_length, device=q.device)
            out = fused_attention(
                q, k, v, mask, is_causal=use_is_causal, dropout=self.dropout, training=self.training
            )
        out = rearrange(out, "batch heads length dim -> batch length (heads dim)")
        return self.out_proj(out), (weights if need_weights else None)

    def forward(
        self,
        x_query: torch.Tensor,
        x_key_value: torch.Tensor | None = None,
        *,
        query_positions: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention (``x_key_value=None``) or cross-attention.

        x_query: ``(batch, query, d_model)``; x_key_value: ``(batch, key, d_model)``;
        positions: ``(query,)`` / ``(key,)`` integer tensors (default ``arange``).
        Returns ``(output (batch, query, d_model), weights (batch, heads, query, key) or None)``.
        """
        if x_key_value is None:
            x_key_value = x_query
            if key_positions is None:
                key_positions = query_positions
        q = self.queries(x_query, query_positions)
        k, v = self.keys_values(x_key_value, key_positions)
        return self.attend(q, k, v, mask=mask, causal=causal, need_weights=need_weights)


class KeyValueCache:
    """Keys and values of one attention layer so far, ``(batch, heads, length, head_dim)`` each:
    what decoding one token at a time keeps, so a new token attends without recomputing the past.

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
        return self.contents()

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values stored so far."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]
