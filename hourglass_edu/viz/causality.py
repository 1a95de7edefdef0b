"""What each position may see: which characters a shortened position pools with and without the
k-1 shift, and dependency matrices that show whether any output depends on a future input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hourglass_edu.analysis import pooled_spans
from hourglass_edu.glyphs import FILL_GLYPH, span_label, visible_char
from hourglass_edu.viz.style import (
    LEAK_COLOR,
    MONO,
    PALETTE,
    SAFE_COLOR,
    char_ticks,
    new_figure,
    styled,
)

__all__ = ["plot_dependency", "pooling_diagram"]


@styled
def pooling_diagram(text: str = "the old pond", factor: int = 3) -> Figure:
    """Which characters each shortened position pools, without and with the k-1 shift.

    Four rows per panel: the characters; the input to pooling (labelled "shifted input": the
    characters shifted right by k-1, the gap filled with `FILL_GLYPH`; or "unshifted input"); the
    shortened positions with the characters they pool; and the full-resolution positions each
    shortened vector is repeated back to. A served position is marked as a leak when the vector it
    receives pools a character that comes after it: the output at position t predicts character
    t+1, so seeing t+1 or later is cheating.
    """
    if factor < 2:
        raise ValueError(f"factor must be at least 2 to show pooling, got {factor}")
    if not text:
        raise ValueError("text must hold at least one character")
    if len(text) > 40:
        raise ValueError(
            f"text has {len(text)} characters; use at most 40 so the boxes stay readable"
        )
    chars = list(text)
    fig = new_figure(max(6.0, 0.42 * len(chars) + 2.2), 5.6)
    for ax, shift in zip(fig.subplots(2, 1), (False, True), strict=False):
        _pooling_panel(ax, chars, factor, shift)
    return fig


#: The pooling diagram's rows, top to bottom: name -> y.
_POOLING_ROWS = {
    "characters": 3.0,
    "pooling input": 2.0,
    "shortened": 1.0,
    "served\npositions": 0.0,
}


def _pooling_panel(ax, chars: Sequence[str], factor: int, shift: bool) -> None:
    """One panel of `pooling_diagram`: the four rows of boxes for one choice of shift."""
    rows = _POOLING_ROWS
    n = len(chars)
    spans = pooled_spans(n, [factor], shift=shift)[1]
    leaks = 0
    for t, char in enumerate(chars):
        _box(ax, t, rows["characters"], 1, visible_char(char), "#F2F2F2")
        source = t - (factor - 1) if shift else t
        label = visible_char(chars[source]) if source >= 0 else FILL_GLYPH
        _box(ax, t, rows["pooling input"], 1, label, "#FFFFFF" if source >= 0 else "#DDDDDD")
        sees = spans[t // factor]
        leak = len(sees) > 0 and sees.stop - 1 > t
        leaks += leak
        _box(ax, t, rows["served\npositions"], 1, str(t), "#FBD5C5" if leak else "#D4EFE5",
             edge=LEAK_COLOR if leak else SAFE_COLOR)  # fmt: skip
    for position, span in enumerate(spans):
        width = min(factor, n - position * factor)
        _box(ax, position * factor, rows["shortened"], width, span_label(chars, span),
             PALETTE[position % 2 * 4] + "40")  # fmt: skip
        for edge in (position * factor, position * factor + width):
            ax.plot([edge, edge], [1.9, 2.1 + 0.8], color="#555555", lw=1.2)
    # The second row is what the pooling reads: the shifted input, not a pooled result.
    names = {**{name: name for name in rows},
             "pooling input": "shifted\ninput" if shift else "unshifted\ninput"}
    for name, y in rows.items():
        ax.text(-0.3, y + 0.4, names[name], ha="right", va="center", fontsize=9)
    ax.set_xlim(-2.6, n + 0.2)
    ax.set_ylim(-0.2, 4.0)
    ax.axis("off")
    if shift:
        title = f"with the k-1 shift (k = {factor}): no position sees its future"
    else:
        title = f"without the shift (k = {factor}): {leaks} of {n} positions see the future"
    ax.set_title(title, color=SAFE_COLOR if shift else LEAK_COLOR, loc="left")


def _box(ax, x: float, y: float, width: float, label: str, face: str, edge: str = "#777777"):
    ax.add_patch(
        Rectangle((x + 0.05, y + 0.05), width - 0.1, 0.7, facecolor=face, edgecolor=edge, lw=1)
    )
    ax.text(
        x + width / 2,
        y + 0.4,
        label,
        ha="center",
        va="center",
        fontsize=10,
        family=MONO,
    )


@styled
def plot_dependency(
    matrices: Mapping[str, torch.Tensor] | torch.Tensor,
    labels: Sequence[str] | None = None,
    *,
    tolerance: float = 1e-6,
) -> Figure:
    """Draw one or more dependency matrices side by side, future dependencies outlined.

    Args:
        matrices: `{title: (length, length) matrix}` from `dependency_matrix` (or one matrix).
        labels: tick labels for the positions (for example the characters).
        tolerance: a dependence counts when it exceeds `tolerance * matrix.max()`.

    Each panel shows log10 of the dependence (rows: outputs, columns: inputs). Cells above the
    diagonal that count as dependences are outlined in the leak colour and counted in the title.
    """
    if isinstance(matrices, torch.Tensor):
        matrices = {"dependency": matrices}
    if not matrices:
        raise ValueError("give at least one matrix")
    count = len(matrices)
    length = next(iter(matrices.values())).shape[0]
    size = min(5.2, max(3.6, 0.12 * length + 2))
    fig = new_figure(size * count + 0.8, size + 0.6)
    axes = np.atleast_1d(fig.subplots(1, count, squeeze=False)[0])
    for ax, (title, matrix) in zip(axes, matrices.items(), strict=False):
        matrix = torch.as_tensor(matrix).detach().float().cpu()
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix {title!r} must be square, got shape {tuple(matrix.shape)}")
        peak = float(matrix.max())
        depends = (
            matrix > tolerance * peak if peak > 0 else torch.zeros_like(matrix, dtype=torch.bool)
        )
        future = torch.triu(depends, diagonal=1)
        shown = torch.log10(matrix.clamp_min(max(peak, 1e-30) * 1e-6))
        image = ax.imshow(
            shown.numpy(),
            cmap="magma",
            vmin=float(shown.min()),
            vmax=float(shown.max()) if peak > 0 else 0.0,
        )
        outputs, inputs = torch.nonzero(future, as_tuple=True)
        for t, s in zip(outputs.tolist(), inputs.tolist(), strict=False):
            ax.add_patch(
                Rectangle((s - 0.5, t - 0.5), 1, 1, fill=False, edgecolor=LEAK_COLOR, lw=1.2)
            )
        ax.plot([-0.5, length - 0.5], [-0.5, length - 0.5], color="white", lw=0.6, ls=":")
        n_future = int(future.sum())
        ax.set_title(
            f"{title}\n{n_future} future dependencies", color=LEAK_COLOR if n_future else "black"
        )
        ax.set_xlabel("input position (changed)")
        ax.set_ylabel("output position")
        char_ticks(ax, labels, length, axis="both")
        fig.colorbar(image, ax=ax, shrink=0.8, label="log10 dependence")
    return fig
