"""The resolution maps agree with the receptive fields measured on the real modules."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from hourglass_edu.related import (
    h_attention,
    long_short_attention,
)
from hourglass_edu.related.h_transformer import number_of_levels
from hourglass_edu.related.maps import (
    h_attention_map,
    long_short_map,
    sliding_window_map,
)
from hourglass_edu.viz import plot_resolution_maps

matplotlib.use("Agg")


def qkv(length):
    return torch.randn(3, 1, 1, length, 4, dtype=torch.float64).unbind(0)


@pytest.mark.parametrize("length, window, segment_size, rank", [(30, 5, 6, 2), (17, 2, 3, 1)])
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


@pytest.mark.parametrize("length, window", [(6, 2), (9, 1), (7, 7), (5, 12)])
def test_sliding_window_map_is_the_band_and_matches_the_measured_support(length, window):
    """Entry by entry against a loop, and against the weights of the real attention."""
    resolution = sliding_window_map(length, window)
    for i in range(length):
        for j in range(length):
            assert resolution[i, j] == (1.0 if i - window < j <= i else 0.0), (i, j)
    q, k, v = qkv(length)
    _, weights = long_short_attention(q, k, v, window=window, return_weights=True)
    assert torch.equal(resolution > 0, weights[0, 0] > 0)


def test_plot_resolution_maps_draws_each_map_unseen_as_blank():
    import matplotlib.pyplot as plt

    maps = {"window": sliding_window_map(6, 2), "long-short": long_short_map(6, 2, 2, 1)}
    before = plt.get_fignums()
    figure = plot_resolution_maps(maps)
    assert plt.get_fignums() == before  # a plain Figure: nothing registered with pyplot
    *map_axes, bar = figure.axes
    assert [axis.get_title() for axis in map_axes] == list(maps)
    for axis, resolution in zip(map_axes, maps.values(), strict=True):
        drawn = axis.images[0].get_array()
        # unseen entries are masked (drawn blank), every other entry keeps its resolution
        assert torch.equal(torch.from_numpy(drawn.mask.copy()), resolution == 0)
        seen = resolution > 0
        assert torch.equal(torch.from_numpy(drawn.data[seen.numpy()]).float(), resolution[seen])
    assert bar.get_ylabel() == "positions per vector seen (1 = exact)"


def test_comparison_models_are_the_documented_designs():
    from hourglass_edu.related.compare import MODEL_NAMES, build_comparison_models

    models = build_comparison_models(7, d_model=16, n_heads=2, n_layers=4, max_length=64, window=4)
    assert tuple(models) == MODEL_NAMES
    assert {name: m.config.d_model for name, m in models.items()} == dict.fromkeys(MODEL_NAMES, 16)
    assert models["transformer"].config.structure == "4@1"
    assert models["hourglass"].config.structure == "1@1 4@3 1@1"
    long_short = models["long_short"].config
    assert (long_short.n_layers, long_short.window, long_short.segment_size, long_short.rank) == (
        4, 4, 4, 4
    )
    assert models["h_transformer"].config.block_size == 2
    hierarchical = models["simple_hierarchical"].config
    assert hierarchical.n_layers == 2 and hierarchical.compressions == (1, 2, 8)
    assert hierarchical.windows == (4, None, None) and hierarchical.strides == (1, 1, 1)
    # the same seed gives the same weights: a rebuilt model computes the same logits
    again = build_comparison_models(7, d_model=16, n_heads=2, n_layers=4, max_length=64,
                                    window=4, names=["long_short"])
    tokens = torch.randint(0, 7, (1, 20))
    torch.testing.assert_close(again["long_short"](tokens), models["long_short"](tokens))
    with pytest.raises(ValueError, match="unknown model names"):
        build_comparison_models(7, names=["transformer", "reformer"])
    with pytest.raises(ValueError, match="n_layers must be >= 2"):
        build_comparison_models(7, n_layers=1)


def test_comparison_models_have_about_the_same_number_of_parameters():
    """"Sized to cost about the same": no design may win by being several times larger."""
    from hourglass_edu.related.compare import build_comparison_models

    models = build_comparison_models(100)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    baseline = counts["transformer"]
    assert all(0.9 <= count / baseline <= 1.6 for count in counts.values()), counts


def test_measure_cost_counts_the_saved_activations_of_a_known_model():
    """A model whose saved tensors are known exactly: embedding -> ReLU -> Linear.

    Autograd keeps the token ids for the embedding's backward (8 bytes each) and the ReLU output
    (8 float32 features per position, 32 bytes; the ReLU's and the Linear's backward share it):
    40 bytes per position, parameters excluded."""
    from hourglass_edu.related.compare import measure_cost

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"vocab_size": 7})()
            self.embedding = torch.nn.Embedding(7, 8)
            self.head = torch.nn.Linear(8, 7)

        def forward(self, tokens):
            return self.head(torch.relu(self.embedding(tokens)))

    rows = measure_cost({"tiny": Tiny()}, [16, 64], batch_size=2, repeats=1, precision="fp32",
                        device="cpu")
    assert [(row["model"], row["length"]) for row in rows] == [("tiny", 16), ("tiny", 64)]
    for row in rows:
        assert row["saved_mb"] * 2**20 == 40 * 2 * row["length"]
        assert row["ms_per_step"] > 0 and row["peak_mb"] is None  # no CUDA peak on the CPU


def test_markdown_table_formats_each_cell_and_marks_missing_values():
    from hourglass_edu.related.compare import markdown_table

    rows = [{"model": "a", "bpc": 1.23456, "peak": None}, {"model": "b", "bpc": 2.0}]
    table = markdown_table(
        rows, [("model", "model", "{}"), ("bpc", "val bpc", "{:.2f}"), ("peak", "peak", "{:.1f}")]
    )
    assert table.splitlines() == [
        "| model | val bpc | peak |",
        "|---|---|---|",
        "| a | 1.23 | - |",
        "| b | 2.00 | - |",
    ]
