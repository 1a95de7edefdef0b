"""The resolution maps agree with the receptive fields measured on the real modules."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from hourglass_edu.related import (
    SimpleHierarchicalConfig,
    SimpleHierarchicalLM,
    h_attention,
    long_short_attention,
)
from hourglass_edu.related.h_transformer import number_of_levels
from hourglass_edu.related.maps import (
    h_attention_map,
    long_short_map,
    simple_hierarchical_map,
    sliding_window_map,
)
from hourglass_edu.viz import plot_resolution_maps

matplotlib.use("Agg")


def qkv(length):
    return torch.randn(3, 1, 1, length, 4, dtype=torch.float64).unbind(0)


@pytest.mark.parametrize("length, window, segment_size, rank", [(30, 4, 6, 2), (17, 1, 3, 1)])
def test_long_short_map_support_is_the_measured_support(length, window, segment_size, rank):
    q, k, v = qkv(length)
    projection = torch.randn(1, 4, rank, dtype=torch.float64)
    _, weights = long_short_attention(
        q,
        k,
        v,
        window=window,
        projection=projection,
        segment_size=segment_size,
        return_weights=True,
    )
    resolution = long_short_map(length, window, segment_size, rank)
    assert torch.equal(resolution > 0, weights[0, 0] > 0)
    assert set(resolution.unique().tolist()) <= {0.0, 1.0, segment_size / rank}


@pytest.mark.parametrize("hierarchy", ["paper", "sibling"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length, block_size", [(45, 4), (16, 16), (9, 2)])
def test_h_attention_map_matches_pooled_weights(length, block_size, causal, hierarchy):
    """The map covers exactly the positions the weights reach, at powers of two (resolution
    values: tests/test_h_transformer.py)."""
    q, k, v = qkv(length)
    k = torch.zeros_like(k)  # equal logits: a pooled key's weight is spread evenly, 1/count each
    _, weights = h_attention(q, k, v, block_size=block_size, causal=causal, hierarchy=hierarchy,
                             return_weights=True)
    resolution = h_attention_map(length, block_size, causal, hierarchy)
    seen = torch.ones(length, length).tril() if causal else torch.ones(length, length)
    assert torch.equal(resolution > 0, seen > 0)
    # With zero logits every position gets the same weight 1 / (number seen), whatever its level.
    torch.testing.assert_close(weights[0, 0], seen.double() / seen.sum(-1, keepdim=True))
    levels = number_of_levels(length, block_size)
    assert set(resolution.unique().tolist()) <= {0.0} | {2.0**level for level in range(levels + 1)}


def test_simple_hierarchical_map_support_is_the_measured_one_layer_receptive_field():
    torch.manual_seed(0)
    config = SimpleHierarchicalConfig(
        vocab_size=5,
        d_model=16,
        n_heads=2,
        n_layers=1,
        compressions=(1, 2, 4),
        windows=(3, 2, None),
    )
    model = SimpleHierarchicalLM(config).double()
    length = 26
    embedded = torch.randn(1, length, 16, dtype=torch.float64, requires_grad=True)
    out = model.body(embedded, None)
    measured = torch.zeros(length, length, dtype=torch.bool)
    for t in range(length):
        (grad,) = torch.autograd.grad(out[0, t].sum(), embedded, retain_graph=True)
        measured[t] = grad[0].abs().sum(-1) > 0
    resolution = simple_hierarchical_map(length, config.compressions, config.windows)
    assert torch.equal(resolution > 0, measured)


def test_sliding_window_map_and_plot():
    resolution = sliding_window_map(6, 2)
    assert resolution.sum() == 11
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figure = plot_resolution_maps({"window": resolution, "long-short": long_short_map(6, 2, 2, 1)})
    assert len(figure.axes) == 3  # two maps and the colour bar
    assert plt.get_fignums() == before  # a plain Figure: nothing registered with pyplot


def test_comparison_helpers_build_measure_and_tabulate():
    from hourglass_edu.related.compare import (
        MODEL_NAMES,
        build_comparison_models,
        markdown_table,
        measure_cost,
    )

    models = build_comparison_models(7, d_model=16, n_heads=2, n_layers=2, max_length=64, window=4)
    assert tuple(models) == MODEL_NAMES
    rows = measure_cost(
        {"long_short": models["long_short"]}, [16, 64], repeats=1, precision="fp32", device="cpu"
    )
    assert [row["length"] for row in rows] == [16, 64]
    assert rows[1]["saved_mb"] > rows[0]["saved_mb"] > 0 and rows[0]["peak_mb"] is None
    table = markdown_table(rows, [("model", "model", "{}"), ("peak_mb", "peak", "{:.1f}")])
    assert table.splitlines()[2] == "| long_short | - |"
    with pytest.raises(ValueError, match="unknown model names"):
        build_comparison_models(7, names=["transformer", "reformer"])
    with pytest.raises(ValueError, match="n_layers must be >= 2"):
        build_comparison_models(7, n_layers=1)
