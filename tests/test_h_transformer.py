"""H-Transformer-1D: the paper's hierarchy (own block + neighbour block per level) and the binary
sibling tree, tested against references written from their resolution maps, and the maps
against hand-computed rows.

The reference (`attention_from_map`) knows nothing of blocks or levels: for each query it reads
from the map which aligned groups of positions it sees (resolution r = a group of r positions
seen through their average) and runs one softmax over them in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass_edu.registry import build_model_from_config
from hourglass_edu.related import HTransformerLM, h_attention
from hourglass_edu.related.h_transformer import HAttention, HTransformerConfig
from hourglass_edu.related.maps import h_attention_map

HIERARCHIES = ["paper", "sibling"]


def random_qkv(length, heads=2, head_dim=8, batch=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (3, batch, heads, length, head_dim)
    return torch.randn(shape, generator=generator, dtype=dtype).unbind(0)


def groups_seen(resolution_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, r) of every aligned group a query sees, read from one row of a map."""
    groups = set()
    for key in resolution_row.nonzero().flatten().tolist():
        r = int(resolution_row[key])
        groups.add((key // r * r, r))
    return sorted(groups)


def attention_from_map(q, k, v, resolution, *, hierarchy, causal):
    """Slow reference: one logit per group seen (mean key + log of its size), one logsumexp.

    The query is the query's own vector, except at the paper's coarse levels (r > 1): there the
    first query of the query's aligned group of r (causal) or the group's mean (two-sided).
    """
    q, k, v = q.double(), k.double(), v.double()
    length, head_dim = q.shape[2], q.shape[3]
    out = torch.zeros_like(q)
    for i in range(length):
        logits, values = [], []
        for start, r in groups_seen(resolution[i]):
            members = list(range(start, min(start + r, length)))
            query = q[:, :, i]
            if hierarchy == "paper" and r > 1:
                own_group = list(range(i // r * r, min(i // r * r + r, length)))
                query = q[:, :, own_group[0]] if causal else q[:, :, own_group].mean(2)
            key = k[:, :, members].mean(2)
            logits.append((query * key).sum(-1) / math.sqrt(head_dim) + math.log(len(members)))
            values.append(v[:, :, members].mean(2))
        logits = torch.stack(logits, dim=-1)
        weights = (logits - logits.logsumexp(-1, keepdim=True)).exp()
        out[:, :, i] = torch.einsum("bhg,gbhd->bhd", weights, torch.stack(values))
    return out


def measured_weights(q, k, block_size, hierarchy, causal=True):
    """The weight each query pays each position, measured with one-hot values (no helper of the
    module involved): output i, column j, is the weight of position j."""
    length = q.shape[2]
    markers = torch.eye(length, dtype=q.dtype).expand(q.shape[0], q.shape[1], -1, -1)
    return h_attention(q, k, markers, block_size=block_size, causal=causal, hierarchy=hierarchy)


# ---------------------------------------------------------------- near positions


@pytest.mark.parametrize("length, block_size", [(64, 4), (45, 2), (100, 8)])
def test_paper_hierarchy_sees_the_previous_block_size_positions_exactly(length, block_size):
    """With random keys, positions seen exactly get pairwise different weights; positions seen
    through one average share one weight. Every query's last block_size + 1 weights differ."""
    q, k, _ = random_qkv(length, batch=1, heads=1)
    weights = measured_weights(q, k, block_size, "paper")[0, 0]
    resolution = h_attention_map(length, block_size, hierarchy="paper")
    for i in range(length):
        near = weights[i, max(0, i - block_size) : i + 1]
        gaps = (near[:, None] - near[None, :]).abs() + torch.eye(len(near), dtype=near.dtype)
        assert gaps.min() > 1e-9, f"query {i} sees one of its previous positions coarsely"
        assert (resolution[i, max(0, i - block_size) : i + 1] == 1).all()


def test_sibling_hierarchy_sees_some_near_positions_only_through_averages():
    """The difference between the two structures: in the sibling tree query 32 (length 64, block
    4) sees position 31 only through the average of 24..31, so 31 and 30 share one weight."""
    q, k, _ = random_qkv(64, batch=1, heads=1)
    weights = measured_weights(q, k, 4, "sibling")[0, 0]
    assert float(weights[32, 31]) == pytest.approx(float(weights[32, 24]), abs=1e-15)
    assert h_attention_map(64, 4, hierarchy="sibling")[32, 24:32].tolist() == [8.0] * 8
    # The paper's structure sees the same position exactly.
    assert h_attention_map(64, 4, hierarchy="paper")[32, 28:33].tolist() == [1.0] * 5
    # At the notebook's size, length 1024 and block 16: query 512 sees 511 at resolution 32.
    assert h_attention_map(1024, 16, hierarchy="sibling")[512, 511] == 32
    assert h_attention_map(1024, 16, hierarchy="paper")[512, 511] == 1


# ---------------------------------------------------------------- the maps, value by value


def test_h_attention_map_resolutions_match_hand_computed_rows():
    """Length 16, block 2: levels 0, 1, 2 (resolutions 1, 2, 4). Written out by hand."""
    paper = h_attention_map(16, 2, hierarchy="paper")
    # Query 15: own block 14-15 and left block 12-13 exact; level 1 (spans of 4): block 8-11
    # at 2; level 2 (spans of 8): block 0-7 at 4.
    assert paper[15].tolist() == [4] * 8 + [2] * 4 + [1] * 4
    # Query 8 is in the first half of its level-1 block (8-11) and of its level-2 block (8-15):
    # level 1 gives only 4-5 (6-7 is level 0's), level 2 only 0-3 (4-7 is level 1's).
    assert paper[8].tolist() == [4] * 4 + [2] * 2 + [1] * 3 + [0] * 7
    # Query 1: its own block only (no block to the left).
    assert paper[1].tolist() == [1, 1] + [0] * 14
    two_sided = h_attention_map(16, 2, causal=False, hierarchy="paper")
    # Query 5: blocks 2-3, 4-5, 6-7 exact; level 1 left 0-1 (2-3 is level 0's), right 8-11;
    # level 2 right 12-15 (8-11 is level 1's).
    assert two_sided[5].tolist() == [2, 2] + [1] * 6 + [2] * 4 + [4] * 4
    sibling = h_attention_map(16, 2, hierarchy="sibling")
    # Query 8: own block 8, siblings at levels 0 and 1 lie to the right (future); level 2: 0-7.
    assert sibling[8].tolist() == [4] * 8 + [1] + [0] * 7
    assert sibling[15].tolist() == [4] * 8 + [2] * 4 + [1] * 4


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length, block_size", [(45, 4), (16, 16), (37, 2), (70, 6)])
def test_h_attention_map_groups_tile_the_sequence_exactly_once(length, block_size, causal,
                                                               hierarchy):
    """Every query's groups (read from the map) are whole, disjoint and cover its past (or the
    whole sequence, two-sided), and coarseness never shrinks with distance."""
    resolution = h_attention_map(length, block_size, causal, hierarchy)
    for i in range(length):
        covered = []
        for start, r in groups_seen(resolution[i]):
            members = list(range(start, min(start + r, length)))
            assert (resolution[i, members] == r).all(), f"query {i}: group {start}+{r} is split"
            covered += members
        assert sorted(covered) == list(range(i + 1 if causal else length))
        if causal:
            past = resolution[i, : i + 1].flip(0)  # nearest first
            assert (past[1:] >= past[:-1]).all(), f"query {i}: a farther position is finer"


# ---------------------------------------------------------------- the attention itself


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 40), half_block=st.integers(1, 5), causal=st.booleans(),
       hierarchy=st.sampled_from(HIERARCHIES))
def test_h_attention_equals_the_reference_built_from_its_map(length, half_block, causal,
                                                             hierarchy):
    """Exactly-once coverage and one shared normalizer: to 1e-6 in float64."""
    block_size = 2 * half_block if hierarchy == "paper" else 2 * half_block - 1
    q, k, v = random_qkv(length)
    resolution = h_attention_map(length, block_size, causal, hierarchy)
    torch.testing.assert_close(
        h_attention(q, k, v, block_size=block_size, causal=causal, hierarchy=hierarchy),
        attention_from_map(q, k, v, resolution, hierarchy=hierarchy, causal=causal),
        atol=1e-6, rtol=1e-6,
    )


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
def test_h_attention_shared_logsumexp_is_right_for_large_logits(hierarchy):
    """Logits in the hundreds: one max per query across all levels, no overflow, and separate
    per-level maxima (a bug of a public version) would be far off."""
    q, k, v = random_qkv(45, dtype=torch.float32, seed=4)
    q = q * 40.0
    for causal in (True, False):
        out = h_attention(q, k, v, block_size=4, causal=causal, hierarchy=hierarchy)
        assert torch.isfinite(out).all()
        reference = attention_from_map(q, k, v, h_attention_map(45, 4, causal, hierarchy),
                                       hierarchy=hierarchy, causal=causal)
        torch.testing.assert_close(out, reference.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
@pytest.mark.parametrize("length, block_size", [(37, 4), (50, 2), (23, 6), (64, 8)])
def test_h_attention_output_depends_on_the_whole_past_and_nothing_after(length, block_size,
                                                                       hierarchy):
    """Measured by gradient, with respect to q, k and v (the paper's coarse levels reuse an
    earlier query: it must never be a later one)."""
    q, k, v = (x.requires_grad_() for x in random_qkv(length, batch=1, heads=1))
    out = h_attention(q, k, v, block_size=block_size, causal=True, hierarchy=hierarchy)
    for i in range(length):
        grads = torch.autograd.grad(out[0, 0, i].sum(), (q, k, v), retain_graph=True)
        for name, grad in zip("qkv", grads, strict=True):
            reached = grad[0, 0].abs().sum(-1) > 0
            assert not reached[i + 1 :].any(), f"query {i} depends on a future {name}"
        assert (grads[2][0, 0].abs().sum(-1) > 0)[: i + 1].all(), f"query {i} misses its past"


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 8, 32])
def test_one_block_covering_the_sequence_is_exact_attention(length, causal, hierarchy):
    q, k, v = random_qkv(length)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    for block_size in (length + length % 2, length + length % 2 + 6):
        out = h_attention(q, k, v, block_size=block_size, causal=causal, hierarchy=hierarchy)
        torch.testing.assert_close(out, exact)


@pytest.mark.parametrize("hierarchy", HIERARCHIES)
def test_dense_weights_are_the_measured_weights_and_account_for_the_output(hierarchy):
    q, k, v = random_qkv(29)
    for causal in (True, False):
        out, weights = h_attention(q, k, v, block_size=4, causal=causal, hierarchy=hierarchy,
                                   return_weights=True)
        torch.testing.assert_close(weights, measured_weights(q, k, 4, hierarchy, causal))
        torch.testing.assert_close(out, weights @ v)
        if causal:
            assert (weights.triu(1) == 0).all()


def test_bad_hierarchy_or_block_size_says_what_to_change():
    q, k, v = random_qkv(8)
    with pytest.raises(ValueError, match="hierarchy must be one of"):
        h_attention(q, k, v, block_size=4, hierarchy="tree")
    with pytest.raises(ValueError, match="block_size must be even for hierarchy='paper'"):
        h_attention(q, k, v, block_size=3)
    h_attention(q, k, v, block_size=3, hierarchy="sibling")
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        h_attention(q, k, v, block_size=0, hierarchy="sibling")
    with pytest.raises(ValueError, match="block_size must be even"):
        HTransformerConfig(vocab_size=5, block_size=5)
    with pytest.raises(ValueError, match="hierarchy must be one of"):
        HAttention(16, 2, block_size=4, hierarchy="Paper")


# ---------------------------------------------------------------- the model


def test_config_without_hierarchy_loads_as_the_sibling_tree_it_was_trained_with():
    """Configs saved before `hierarchy` existed describe sibling-tree models."""
    old = HTransformerConfig(vocab_size=7, d_model=16, n_heads=2, n_layers=1, block_size=3,
                             hierarchy="sibling").to_dict()
    del old["hierarchy"]
    assert HTransformerConfig.from_dict(old).hierarchy == "sibling"
    model = build_model_from_config("HTransformerLM", old)
    assert model.blocks[0].attn.hierarchy == "sibling"
    new = HTransformerConfig(vocab_size=7).to_dict()
    assert new["hierarchy"] == "paper" and HTransformerConfig.from_dict(new).hierarchy == "paper"


@pytest.mark.parametrize("hierarchy, block_size", [("paper", 4), ("sibling", 3)])
def test_model_logits_at_t_ignore_tokens_after_t(hierarchy, block_size):
    torch.manual_seed(0)
    config = HTransformerConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, max_length=64,
                                block_size=block_size, hierarchy=hierarchy)
    model = HTransformerLM(config).double().eval()
    tokens = torch.randint(0, 11, (1, 53))
    with torch.no_grad():
        base = model(tokens)
        for j in (5, 17, 32, 52):
            changed = tokens.clone()
            changed[0, j] = (changed[0, j] + 1) % 11
            moved = (model(changed) - base).abs().amax(-1)[0]
            assert moved[:j].max() == 0, f"{hierarchy}: a change at {j} moved an earlier logit"
            assert moved[j] > 0


def test_module_runs_under_bf16_autocast():
    torch.manual_seed(5)
    for hierarchy in HIERARCHIES:
        layer = HAttention(32, 4, block_size=4, hierarchy=hierarchy)
        x = torch.randn(2, 45, 32)
        reference, _ = layer(x, causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(x, causal=True)
            out.float().sum().backward()
        torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_score_entries_are_counted_as_computed():
    """Plain attention computes heads * length**2 scores per layer; the paper's hierarchy
    heads * length * block_size * (1 + levels)."""
    from hourglass_edu.related.compare import build_comparison_models, count_score_entries
    from hourglass_edu.related.h_transformer import number_of_levels

    models = build_comparison_models(7, d_model=16, n_heads=2, n_layers=3, max_length=128,
                                     window=16, names=["transformer", "h_transformer"])
    tokens = torch.zeros(1, 100, dtype=torch.long)
    assert count_score_entries(models["transformer"], tokens) == 3 * 2 * 100**2
    block = models["h_transformer"].config.block_size
    expected = 3 * 2 * 100 * block * (1 + number_of_levels(100, block))
    assert count_score_entries(models["h_transformer"], tokens) == expected
