"""The attention mechanisms of hourglass_edu.related, tested as pure functions of q, k, v.

References are written independently of the code under test: PyTorch's SDPA with an explicit
mask, and slow per-query loops in float64 written from the papers' equations (Long-Short: window
plus dynamic projection, DualLN, one softmax). Hierarchical attention: tests/test_h_transformer.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hourglass_edu.attention import MultiHeadAttention
from hourglass_edu.blocks import RotaryEmbedding
from hourglass_edu.related.h_transformer import HAttention, h_attention
from hourglass_edu.related.long_short import LongShortAttention, LongShortConfig
from hourglass_edu.related.long_short_attention import (
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
    assume(window >= segment_size - 1 and rank <= segment_size)  # the valid settings
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
    # ... and reach exactly the window plus the finished segments: never the future ...
    support = expected_long_short_support(length, window, segment_size)
    assert torch.equal(weights[0, 0] > 0, support)
    # ... which, with valid settings, is every past position (at least once: see below).
    assert torch.equal(support, torch.ones(length, length, dtype=torch.bool).tril())


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
    assume(window >= segment_size - 1 and rank <= segment_size)
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


# ---------------------------------------------------------------- Long-Short: the paper's equations


def layer_norm_reference(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dim, written out: (x - mean) / sqrt(var + eps) * weight + bias."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def long_short_reference(q, k, v, window, projection, segment_size, local_ln, summary_ln):
    """Slow and obvious, float64, one query at a time (Zhu et al. 2021, causal form).

    Query i's keys: (a) positions i-window+1 .. i, keys and values through the local LayerNorm;
    (b) for every segment g of `segment_size` positions that has ended (its last position <= i),
    `rank` summaries: P[:, r] = softmax over the segment's positions j of (k_j . W_p[:, r]),
    K_bar_r = sum_j P[j, r] k_j, V_bar_r = sum_j P[j, r] v_j, both through the summary LayerNorm.
    ONE softmax over all of (a) and (b). `local_ln`, `summary_ln`: (weight, bias) pairs.
    """
    q, k, v = q.double(), k.double(), v.double()
    batch, heads, length, head_dim = q.shape
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                keys, values = [], []
                for j in range(max(0, i - window + 1), i + 1):
                    keys.append(layer_norm_reference(k[b, h, j], *local_ln))
                    values.append(layer_norm_reference(v[b, h, j], *local_ln))
                if projection is not None:
                    for g in range(length // segment_size):
                        segment = range(g * segment_size, (g + 1) * segment_size)
                        if segment[-1] > i:
                            break
                        for r in range(projection.shape[2]):
                            logits = torch.stack(
                                [k[b, h, j] @ projection[h, :, r] for j in segment]
                            )
                            mix = torch.softmax(logits, dim=0)
                            k_bar = sum(mix[n] * k[b, h, j] for n, j in enumerate(segment))
                            v_bar = sum(mix[n] * v[b, h, j] for n, j in enumerate(segment))
                            keys.append(layer_norm_reference(k_bar, *summary_ln))
                            values.append(layer_norm_reference(v_bar, *summary_ln))
                logits = torch.stack([q[b, h, i] @ key for key in keys]) / math.sqrt(head_dim)
                weights = torch.softmax(logits, dim=0)
                out[b, h, i] = sum(w * value for w, value in zip(weights, values, strict=True))
    return out


def random_layer_norm(head_dim, seed):
    """A LayerNorm with random (non-identity) scale and shift, so two of them differ."""
    generator = torch.Generator().manual_seed(seed)
    norm = torch.nn.LayerNorm(head_dim).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(head_dim, generator=generator, dtype=torch.float64))
        norm.bias.copy_(0.5 * torch.randn(head_dim, generator=generator, dtype=torch.float64))
    return norm


@settings(max_examples=12, deadline=None)
@given(
    length=st.integers(1, 23),
    window=st.integers(1, 9),
    segment_size=st.integers(1, 7),
    rank=st.integers(1, 3),
    seed=st.integers(0, 100),
)
def test_long_short_matches_the_papers_equations(length, window, segment_size, rank, seed):
    """Output values against the loop reference: a real projection, two distinct random norms."""
    assume(window >= segment_size - 1 and rank <= segment_size)
    q, k, v = random_qkv(length, seed=seed)
    projection = torch.randn(2, 8, rank, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(seed + 1))
    local, summary = random_layer_norm(8, seed + 2), random_layer_norm(8, seed + 3)
    out = long_short_attention(q, k, v, window=window, projection=projection,
                               segment_size=segment_size, local_norm=local, global_norm=summary)
    expected = long_short_reference(q, k, v, window, projection, segment_size,
                                     (local.weight, local.bias), (summary.weight, summary.bias))
    torch.testing.assert_close(out, expected)


def test_long_short_module_matches_the_papers_equations_with_its_own_dual_norm():
    """The module wires its DualLN the right way round: `norms.local` on the window,
    `norms.summary` on the segment summaries (both randomised, so a swap changes the output)."""
    torch.manual_seed(6)
    layer = LongShortAttention(16, 2, window=4, segment_size=4, rank=2).double()
    with torch.no_grad():
        for norm in (layer.norms.local, layer.norms.summary):
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    q, k, v = random_qkv(19)
    out, _ = layer.attend(q, k, v, causal=True)
    heads_out = long_short_reference(
        q, k, v, 4, layer.projection.detach(), 4,
        (layer.norms.local.weight, layer.norms.local.bias),
        (layer.norms.summary.weight, layer.norms.summary.bias),
    )
    expected = layer.out_proj(heads_out.transpose(1, 2).reshape(2, 19, 16))
    torch.testing.assert_close(out, expected)


def unseen_past_pairs(length, window, segment_size):
    """(query, key) pairs with key <= query that neither the window nor a finished segment covers,
    counted by brute force."""
    unseen = 0
    for i in range(length):
        for j in range(i + 1):
            in_window = j > i - window
            segment_ended = (j // segment_size + 1) * segment_size - 1 <= i
            unseen += not (in_window or segment_ended)
    return unseen


def test_long_short_rejects_a_window_that_leaves_past_positions_unseen():
    assert unseen_past_pairs(64, 2, 16) == 364  # what the check prevents
    q, k, v = random_qkv(64)
    projection = torch.randn(2, 8, 2, dtype=torch.float64)
    message = r"window \(2\) must be >= segment_size - 1 \(15\).*raise window or lower segment"
    with pytest.raises(ValueError, match=message):
        long_short_attention(q, k, v, window=2, projection=projection, segment_size=16)
    with pytest.raises(ValueError, match=message):
        LongShortAttention(16, 2, window=2, segment_size=16, rank=2)
    with pytest.raises(ValueError, match=message):
        LongShortConfig(vocab_size=5, d_model=16, n_heads=2, window=2, segment_size=16, rank=2)
    # The smallest accepted window leaves nothing unseen.
    assert unseen_past_pairs(64, 15, 16) == 0
    long_short_attention(q, k, v, window=15, projection=projection, segment_size=16)


def test_long_short_rejects_more_summaries_than_segment_positions():
    q, k, v = random_qkv(16)
    projection = torch.randn(2, 8, 4, dtype=torch.float64)
    message = r"rank \(4\) must be <= segment_size \(1\).*lower rank or raise segment_size"
    with pytest.raises(ValueError, match=message):
        long_short_attention(q, k, v, window=4, projection=projection, segment_size=1)
    with pytest.raises(ValueError, match=message):
        LongShortAttention(16, 2, window=4, segment_size=1, rank=4)
    with pytest.raises(ValueError, match=message):
        LongShortConfig(vocab_size=5, d_model=16, n_heads=2, window=4, segment_size=1, rank=4)


@pytest.mark.parametrize("window, segment_size", [(3, 4), (4, 4), (9, 4), (1, 1), (1, 2)])
def test_long_short_with_valid_settings_sees_every_past_position_at_least_once(
    window, segment_size
):
    """Counting construction: zero logits, one-hot values, no norms. Each key then gets the same
    weight, and position j's share of query i's output is (times j is counted) / (keys of i).
    Every past share is positive (seen at least once); where the window and a finished segment
    overlap, a position counts twice (so "exactly once" does NOT hold, by design)."""
    length, rank = 21, 1
    values = torch.eye(length, dtype=torch.float64)[None, None]
    keys = torch.zeros(1, 1, length, length, dtype=torch.float64)
    projection = torch.zeros(1, length, rank, dtype=torch.float64)  # uniform P in each segment
    out = long_short_attention(
        torch.zeros(1, 1, length, length, dtype=torch.float64), keys, values, window=window,
        projection=projection, segment_size=segment_size,
    )[0, 0]
    past = torch.ones(length, length, dtype=torch.bool).tril()
    assert (out[past] > 0).all(), "a past position is unseen"
    assert (out[~past] == 0).all(), "a future position is seen"
    # Brute-force count: window keys once each, plus each finished segment's uniform summary.
    for i in range(length):
        counts = torch.zeros(length, dtype=torch.float64)
        counts[max(0, i - window + 1) : i + 1] += 1
        finished = (i + 1) // segment_size
        for g in range(finished):
            counts[g * segment_size : (g + 1) * segment_size] += 1 / segment_size
        total_keys = min(window, i + 1) + finished * rank
        torch.testing.assert_close(out[i], counts / total_keys)


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
