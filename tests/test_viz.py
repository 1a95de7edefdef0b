"""Figures: each runs on a tiny model and carries the expected labels and sizes; the dependency
matrix shows the causal triangle with the k-1 shift and a leak without it."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tiny import tiny_hourglass  # noqa: E402

from hourglass_edu import CharTokenizer, analysis, viz  # noqa: E402
from hourglass_edu.hourglass import without_shift  # noqa: E402
from hourglass_edu.training import History  # noqa: E402

TEXT = "the old pond\na frog jumps in, splash!"


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.from_documents([TEXT + " THE END? yes."])


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_hourglass(tokenizer.vocab_size, structure="1@1 1@3 1@6 1@3 1@1", max_length=96,
                          attention_impl="explicit")


@pytest.fixture(scope="module")
def look(model, tokenizer):
    return analysis.inspect_text(model, tokenizer, TEXT)


def tick_texts(ax, axis="x"):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


# --- labels that account for the shift -------------------------------------------------------


def test_pooled_spans_shift_moves_groups_back_by_k_minus_one():
    shifted = analysis.pooled_spans(8, [3], shift=True)[1]
    assert shifted == [range(0, 1), range(1, 4), range(4, 7)]
    unshifted = analysis.pooled_spans(8, [3], shift=False)[1]
    assert unshifted == [range(0, 3), range(3, 6), range(6, 8)]
    # nested: level 2 position j pools level-1 positions 2j-1, 2j -> characters 4j-3 .. 4j
    level2 = analysis.pooled_spans(20, [2, 2], shift=True)[2]
    assert level2[:3] == [range(0, 1), range(1, 5), range(5, 9)]


def test_with_shift_no_position_holds_a_character_after_the_ones_it_serves():
    for factors in ([2], [3], [2, 4], [3, 3]):
        spans = analysis.pooled_spans(50, factors, shift=True)
        total = 1
        for level, factor in enumerate(factors, start=1):
            total *= factor
            for position, span in enumerate(spans[level]):
                # position serves full-resolution outputs position*total ... ; it must hold
                # nothing after the first of them
                assert len(span) == 0 or span.stop - 1 <= position * total


def test_labels_match_model_level_lengths_and_show_pooled_chars(look):
    assert look.labels[0][0] == viz.EOT_GLYPH
    assert look.labels[0][1:4] == ["t", "h", "e"]
    assert look.labels[1][:3] == [viz.EOT_GLYPH, "the", "␣ol"]
    assert look.labels[2][1] == "the␣old␣p"[:6]  # 6 characters: positions 1..6
    for level in range(look.n_levels):
        assert len(look.labels[level]) == look.hidden(level).shape[0]


def test_bad_input_raises_clear_errors(model, tokenizer):
    with pytest.raises(ValueError, match="lacks"):
        analysis.inspect_text(model, tokenizer, "the ÿ")
    with pytest.raises(ValueError, match="non-empty"):
        analysis.inspect_text(model, tokenizer, "")
    with pytest.raises(ValueError, match="at most"):
        analysis.inspect_text(model, tokenizer, "the " * 40)
    with pytest.raises(ValueError, match="positive integers"):
        analysis.pooled_spans(5, [0])
    with pytest.raises(ValueError, match="at most 40"):
        viz.pooling_diagram("x" * 41)


# --- figures ----------------------------------------------------------------------------------


def test_pooling_diagram_counts_leaks_only_without_shift():
    fig = viz.pooling_diagram("the old pond", factor=3)
    assert isinstance(fig, Figure)
    unshifted, shifted = fig.axes
    # k=3, 12 characters: in each group of 3 the first two positions see their future
    assert "8 of 12 positions see the future" in unshifted.get_title(loc="left")
    assert "no position sees its future" in shifted.get_title(loc="left")
    texts = [t.get_text() for t in shifted.texts]
    assert "he␣" in texts and "old" in texts and viz.FILL_GLYPH in texts
    # The second row is the input to pooling, shifted or not: no row claims to be "pooled".
    assert "shifted\ninput" in texts
    assert "unshifted\ninput" in [t.get_text() for t in unshifted.texts]
    assert not any("pooled" in text.get_text() for ax in fig.axes for text in ax.texts)


def test_attention_grid_rows_levels_blocks_columns_heads(look):
    fig = viz.plot_attention(look)
    panels = [ax for ax in fig.axes if ax.get_title()]
    # levels 0,1 have 2 blocks each, level 2 has 1: 5 rows x 2 heads
    assert len(panels) == 10
    assert panels[0].get_title() == "level 0 · block 0 · head 0"
    assert tick_texts(panels[0], "x") == look.labels[0]
    level1 = next(ax for ax in panels if ax.get_title().startswith("level 1"))
    assert tick_texts(level1, "y") == look.labels[1]
    image = level1.images[0].get_array()
    assert image.shape == (len(look.labels[1]),) * 2
    assert math.isclose(float(image.sum(axis=1)[0]), 1.0, rel_tol=1e-5)  # rows are softmaxes


def test_attention_single_head_and_mean(look):
    one = viz.plot_attention(look, level=1, block=1, head=1)
    assert [ax.get_title() for ax in one.axes if ax.get_title()] == ["level 1 · block 1 · head 1"]
    mean = viz.plot_attention(look, level=0, block=0, head="mean")
    expected = look.get("level0.block0.attn").mean(0).numpy()
    assert (mean.axes[0].images[0].get_array() == expected).all()
    with pytest.raises(ValueError, match="head must be"):
        viz.plot_attention(look, level=0, block=0, head=5)
    with pytest.raises(ValueError, match="blocks 0..0"):
        viz.plot_attention(look, level=2, block=1)
    with pytest.raises(ValueError, match="choose a level"):
        viz.plot_attention(look, max_panels=4)


def test_activation_norms_one_panel_per_level_with_input_and_output(look):
    fig = viz.plot_activation_norms(look)
    assert len(fig.axes) == 3
    for level, ax in enumerate(fig.axes):
        assert tick_texts(ax) == look.labels[level]
        lines = {line.get_label(): line for line in ax.get_lines()}
        norms = look.hidden(level, "output").norm(dim=-1).numpy()
        assert (lines["output"].get_ydata() == norms).all()
    assert fig.axes[1].get_title(loc="left") == "level 1 (shortened 3x)"


def test_level_activation_heatmap_is_dims_by_positions(look):
    fig = viz.plot_level_activations(look, level=1, point="block0")
    heatmap = fig.axes[0].images[0].get_array()
    assert heatmap.shape == (32, len(look.labels[1]))
    assert "level 1" in fig.axes[0].get_title(loc="left")
    with pytest.raises(ValueError, match="no capture named"):
        viz.plot_level_activations(look, level=1, point="block7")


def test_pca_projects_each_level_and_colours_character_classes(look):
    fig = viz.plot_pca(look)
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert len(panels) == 3
    assert "% of variance" in panels[0].get_xlabel()
    counts = sum(len(c.get_offsets()) for c in panels[0].collections)
    assert counts == len(look.labels[0])
    legend_names = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"letter", "space", "punctuation", "newline"} <= legend_names


def test_principal_components_recover_a_line():
    direction = torch.tensor([3.0, 4.0]) / 5
    points = torch.linspace(-2, 2, 9)[:, None] * direction
    projected, explained = analysis.principal_components(points)
    assert torch.allclose(projected[:, 0].abs(), torch.linspace(-2, 2, 9).abs(), atol=1e-5)
    assert explained[0] > 0.999


def test_residual_similarity_matches_a_direct_computation(look):
    fig = viz.plot_residual_similarity(look)
    cosine_axes = [ax for ax in fig.axes if ax.get_ylabel() == "cosine"]
    assert len(cosine_axes) == 2  # level1 into level0, level2 into level1
    residual = look.get("level0.block0")  # level 0 has one pre block
    returned = look.get("level0.upsampled") - residual
    expected = torch.nn.functional.cosine_similarity(returned, residual, dim=-1).numpy()
    plotted = [line for line in cosine_axes[0].get_lines() if line.get_marker() == "o"][0]
    assert abs(plotted.get_ydata() - expected).max() < 1e-6
    assert tick_texts(cosine_axes[1]) == look.labels[1]


def test_dependency_matrix_causal_with_shift_leaks_without(model, tokenizer):
    tokens = torch.tensor([tokenizer.eot_id, *tokenizer.encode("the old pond, a frog")])
    leaky = without_shift(model)
    for method in ("perturbation", "gradient"):
        causal = analysis.dependency_matrix(model, tokens, method=method)
        leaking = analysis.dependency_matrix(leaky, tokens, method=method)
        assert causal.shape == (len(tokens), len(tokens))
        assert torch.equal(torch.triu(causal, diagonal=1), torch.zeros_like(causal))
        assert causal.diagonal().min() > 0  # every output reads its own input
        # without the shift, position 1 pools with 2 and 3 (k = 3): it sees its future
        assert leaking[1, 2] > 0 and leaking[1, 3] > 0
        assert torch.triu(leaking, diagonal=1).max() > 1e-3
    fig = viz.plot_dependency({"with shift": causal, "without shift": leaking},
                              labels=analysis.token_chars(tokenizer, tokens.tolist()))  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].endswith("0 future dependencies")
    assert not titles[1].endswith(" 0 future dependencies")
    assert tick_texts(fig.axes[0])[4] == "␣"


def test_dependency_matrix_works_for_any_function_and_rejects_bad_input():
    def cumulative(tokens):  # output t = one-hot sums of tokens <= t: causal by construction
        return torch.nn.functional.one_hot(tokens, 5).float().cumsum(1)

    matrix = analysis.dependency_matrix(cumulative, [1, 2, 3, 4])
    assert torch.equal(matrix > 0, torch.ones(4, 4).tril().bool())
    with pytest.raises(ValueError, match="method"):
        analysis.dependency_matrix(cumulative, [1, 2], method="guess")
    with pytest.raises(ValueError, match="nn.Module"):
        analysis.dependency_matrix(cumulative, [1, 2], method="gradient")
    with pytest.raises(ValueError, match="1-D"):
        analysis.dependency_matrix(cumulative, [[1, 2]])


def test_training_curves_several_runs_steps_and_wall_time():
    history = History()
    for step in range(10, 101, 10):
        history.append(step=step, elapsed=step * 0.2, train_loss=2.0 / step + 1.0,
                       train_bpc=(2.0 / step + 1.0) / math.log(2),
                       val_bpc=1.6 if step % 50 == 0 else None)  # fmt: skip
    plain = [{"step": s, "wall_time": s * 0.1, "train_loss": 1.2, "val_loss": 1.3}
             for s in (1, 2, 3)]  # fmt: skip
    fig = viz.plot_training_curves({"hourglass": history, "baseline": plain})
    steps_ax, time_ax = fig.axes[:2]
    assert steps_ax.get_xlabel() == "training step"
    assert time_ax.get_xlabel() == "wall-clock time (s)"
    assert steps_ax.get_ylabel() == "bits per character"
    labels = [line.get_label() for line in steps_ax.get_lines()]
    assert labels == ["hourglass (train)", "hourglass (val)", "baseline (train)", "baseline (val)"]
    val = steps_ax.get_lines()[1]
    assert list(val.get_xdata()) == [50.0, 100.0]
    baseline_val = steps_ax.get_lines()[3]
    assert math.isclose(baseline_val.get_ydata()[0], 1.3 / math.log(2))
    assert list(time_ax.get_lines()[0].get_xdata())[:2] == [2.0, 4.0]
    with pytest.raises(ValueError, match="at least one run"):
        viz.plot_training_curves({})
    with pytest.raises(ValueError, match="step"):
        viz.plot_training_curves({"x": [{"train_loss": 1.0}]})


def test_plot_history_one_run_against_steps_and_training_time():
    history = History()
    for step in range(10, 101, 10):
        history.append(step=step, elapsed=step * 0.5, train_bpc=3.0 - step / 100,
                       val_bpc=2.5 if step % 50 == 0 else None)  # fmt: skip
    fig = viz.plot_history(history, title="toy")
    assert isinstance(fig, Figure) and fig.get_suptitle() == "toy"
    steps_ax, time_ax = fig.axes
    assert steps_ax.get_xlabel() == "optimizer step"
    assert time_ax.get_xlabel() == "training time (s)"
    assert steps_ax.get_ylabel() == "bits per character"
    assert [line.get_label() for line in steps_ax.get_lines()] == ["train", "validation"]
    assert list(steps_ax.get_lines()[1].get_xdata()) == [50, 100]
    assert list(time_ax.get_lines()[0].get_xdata())[:2] == [5.0, 10.0]
    same = viz.plot_history(history.records)  # a list of record dicts works too
    assert list(same.axes[0].get_lines()[0].get_ydata()) == history.column("train_bpc")
    assert same.get_suptitle() == ""


def test_figures_do_not_touch_pyplot_state(look):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz.plot_activation_norms(look)
    viz.pooling_diagram()
    viz.plot_history([{"step": 1, "elapsed": 0.1, "train_bpc": 3.0}])
    assert plt.get_fignums() == before
    png = viz.figure_to_png(viz.pooling_diagram("ab cd", 2))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
