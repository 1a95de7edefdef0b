"""The attention mechanisms of hourglass_edu.related, tested as pure functions of q, k, v.

References are written independently of the code under test: PyTorch's SDPA with an explicit
mask. (Hierarchical attention is tested in tests/test_h_transformer.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.blocks import RotaryEmbedding
from hourglass_edu.related.h_transformer import HAttention, h_attention
from hourglass_edu.related.long_short import (
    LongShortAttention,
    long_short_attention,
    sliding_window_attention,
)


def random_qkv(length, heads=2, head_dim=8, batch=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (3, batch, heads, length, head_dim)
    return torch.randn(shape, generator=generator, dtype=dtype).unbind(0)


def causal_sdpa(q, k, v, mask=None):
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def band(length, window):
    ones = torch.ones(length, length, dtype=torch.bool)
    return ones.tril() & ~ones.tril(-window)


# ---------------------------------------------------------------- sliding window / Long-Short


@settings(max_examples=15)
@given(length=st.integers(1, 40), window=st.integers(1, 45))
def test_sliding_window_equals_masked_full_attention(length, window):
    q, k, v = random_qkv(length)
    expected = causal_sdpa(q, k, v, band(length, window))
    torch.testing.assert_close(sliding_window_attention(q, k, v, window), expected)


@settings(max_examples=15)
@given(length=st.integers(1, 40), extra=st.integers(0, 10))
def test_long_short_with_window_covering_sequence_and_no_projection_is_full_causal(length, extra):
    q, k, v = random_qkv(length)
    out = long_short_attention(q, k, v, window=length + extra, projection=None)
    torch.testing.assert_close(out, causal_sdpa(q, k, v))


def test_long_short_module_without_projection_equals_library_attention():
    torch.manual_seed(0)
    rotary = RotaryEmbedding(8)
    layer = LongShortAttention(
        16, 2, window=64, segment_size=None, rank=None, dual_norm=False, rotary=rotary
    )
    library = MultiHeadAttention(16, 2, rotary=rotary)
    library.load_state_dict(layer.state_dict())
    x = torch.randn(2, 23, 16)
    out, weights = layer(x, causal=True, need_weights=True)
    expected, expected_weights = library(x, causal=True, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)


def expected_long_short_support(length, window, segment_size):
    """Which positions query i may draw on: its window, plus every segment that has ended."""
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    in_window = (key <= query) & (key > query - window)
    segment_ended = (key // segment_size + 1) * segment_size <= query + 1
    return in_window | segment_ended


@settings(max_examples=25)
@given(
    length=st.integers(1, 36),
    window=st.integers(1, 12),
    segment_size=st.integers(1, 9),
    rank=st.integers(1, 4),
)
def test_long_short_sees_window_and_finished_segments_only(length, window, segment_size, rank):
    q, k, v = random_qkv(length)
    projection = torch.randn(2, 8, rank, dtype=torch.float64)
    out, weights = long_short_attention(
        q,
        k,
        v,
        window=window,
        projection=projection,
        segment_size=segment_size,
        return_weights=True,
    )
    # The dense weights are a faithful account of the output (no norms here) ...
    torch.testing.assert_close(out, weights @ v)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
    # ... and reach exactly the window plus the finished segments: never the future.
    support = expected_long_short_support(length, window, segment_size)
    assert torch.equal(weights[0, 0] > 0, support)


@settings(max_examples=20)
@given(
    length=st.integers(2, 30),
    changed=st.data(),
    window=st.integers(1, 8),
    segment_size=st.integers(1, 8),
    rank=st.integers(1, 3),
)
def test_long_short_changing_position_j_never_moves_outputs_before_j(
    length, changed, window, segment_size, rank
):
    torch.manual_seed(1)
    layer = LongShortAttention(16, 2, window=window, segment_size=segment_size, rank=rank).double()
    x = torch.randn(1, length, 16, dtype=torch.float64)
    j = changed.draw(st.integers(0, length - 1))
    x_changed = x.clone()
    x_changed[:, j] += torch.randn(16, dtype=torch.float64)
    before, after = layer(x, causal=True)[0], layer(x_changed, causal=True)[0]
    torch.testing.assert_close(before[:, :j], after[:, :j], rtol=0, atol=0)
    assert not torch.allclose(before[:, j], after[:, j])


def test_long_short_gradients_reach_exactly_window_and_finished_segments():
    torch.manual_seed(2)
    length, window, segment_size = 21, 4, 5
    layer = LongShortAttention(16, 2, window=window, segment_size=segment_size, rank=3).double()
    x = torch.randn(1, length, 16, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x, causal=True)
    reached = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        (grad,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        reached[i] = grad[0].abs().sum(-1) > 0
    assert torch.equal(reached, expected_long_short_support(length, window, segment_size))


def test_long_short_runs_under_bf16_autocast_and_stays_close_to_fp32():
    torch.manual_seed(3)
    layer = LongShortAttention(32, 4, window=8, segment_size=8, rank=2)
    x = torch.randn(2, 50, 32)
    reference, _ = layer(x, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x, causal=True)
        out.float().sum().backward()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=16, n_heads=3, window=4, segment_size=4, rank=1), "multiple of n_heads"),
        (dict(d_model=16, n_heads=2, window=4, segment_size=4, rank=-1), "rank must be >= 1"),
        (dict(d_model=16, n_heads=2, window=0, segment_size=4, rank=1), "window must be >= 1"),
        (dict(d_model=16, n_heads=2, window=4, segment_size=4, rank=0), "rank must be >= 1"),
        (dict(d_model=16, n_heads=2, window=4, segment_size=None, rank=2), "segment_size"),
        (dict(d_model=16, n_heads=2, window=4, segment_size=0, rank=2), "segment_size"),
    ],
)
def test_long_short_bad_arguments_say_what_to_change(kwargs, message):
    d_model, n_heads = kwargs.pop("d_model"), kwargs.pop("n_heads")
    with pytest.raises(ValueError, match=message):
        LongShortAttention(d_model, n_heads, **kwargs)


def test_attention_functions_reject_mismatched_shapes():
    q, k, v = random_qkv(8)
    with pytest.raises(ValueError, match="batch, heads, length, head_dim"):
        long_short_attention(q, k[:, :, :4], v, window=2)
    with pytest.raises(ValueError, match="batch, heads, length, head_dim"):
        h_attention(q[0], k[0], v[0], block_size=2)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        h_attention(q, k, v, block_size=0)


# H-Transformer-1D's own tests live in tests/test_h_transformer.py.


def test_plugged_attention_rejects_cross_attention_and_masks():
    x, other = torch.randn(1, 8, 16), torch.randn(1, 5, 16)
    for layer in (
        LongShortAttention(16, 2, window=4, segment_size=4, rank=1),
        HAttention(16, 2, block_size=4),
    ):
        with pytest.raises(ValueError, match="same length"):
            layer(x, other, causal=True)
        with pytest.raises(ValueError, match="mask"):
            layer(x, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal=True"):
        LongShortAttention(16, 2, window=4, segment_size=4, rank=1)(x, causal=False)
