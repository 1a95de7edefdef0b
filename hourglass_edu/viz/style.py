"""The one look every figure shares: palette, Matplotlib settings, colour maps, fonts, and the
helpers that build a pyplot-free figure under them and label positions with characters."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence

import matplotlib
from cycler import cycler
from matplotlib.figure import Figure

from hourglass_edu.glyphs import EOT_GLYPH, visible_char

__all__ = [
    "ATTENTION_CMAP",
    "CHAR_CLASSES",
    "LEAK_COLOR",
    "MONO",
    "PALETTE",
    "SAFE_COLOR",
    "SIGNED_CMAP",
    "STYLE",
    "char_class",
    "char_ticks",
    "figure_to_png",
    "new_figure",
    "styled",
]

#: Colour-blind-safe palette (Okabe & Ito) used for runs, levels and character classes.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

#: Matplotlib settings every figure in `viz` is built under. Sizes suit a laptop screen and
#: Colab's default output width (about 10 inches at 100 dpi).
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=PALETTE),
    "image.cmap": "viridis",
    "figure.facecolor": "white",
}

#: Heatmap colour maps: attention weights (0..1) and signed activations.
ATTENTION_CMAP = "viridis"
SIGNED_CMAP = "RdBu_r"
LEAK_COLOR = "#D55E00"
SAFE_COLOR = "#009E73"

#: Tick labels use a monospaced font, falling back to a wider one for rare glyphs.
MONO = ["DejaVu Sans Mono", "DejaVu Sans"]

#: Character classes used to colour PCA scatter plots.
CHAR_CLASSES = ("letter", "space", "punctuation", "newline", "other")


def styled(function: Callable) -> Callable:
    """Decorator: build the figure under `STYLE` (and leave global settings untouched)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free Figure with constrained layout (call inside a `styled` function)."""
    return Figure(figsize=(width, height), layout="constrained")


def figure_to_png(fig: Figure, dpi: int | None = None) -> bytes:
    """Render a figure to PNG bytes (what the widgets show in an `ipywidgets.Image`)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def char_class(char: str) -> str:
    """One of `CHAR_CLASSES` for a single character (the end-of-text token counts as newline)."""
    if char == "\n" or char == EOT_GLYPH:
        return "newline"
    if char.isalpha():
        return "letter"
    if char.isspace():
        return "space"
    if char.isdigit():
        return "other"
    if not char.isalnum() and char.isprintable():
        return "punctuation"
    return "other"


def char_ticks(ax, labels: Sequence[str] | None, length: int, axis: str = "both", max_ticks=80):
    """Label every position with its characters when there is room, else every few positions."""
    if labels is None:
        return
    if len(labels) != length:
        raise ValueError(f"got {len(labels)} labels for {length} positions")
    step = max(1, math.ceil(length / max_ticks))
    ticks = list(range(0, length, step))
    names = [visible_char(labels[i]) for i in ticks]
    if axis in ("x", "both"):
        ax.set_xticks(ticks, names, rotation=90, family=MONO)
    if axis in ("y", "both"):
        ax.set_yticks(ticks, names, family=MONO)
