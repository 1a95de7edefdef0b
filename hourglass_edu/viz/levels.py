"""What each level of a trained hourglass does, drawn from one `analysis.Inspection`: attention
weights, activation norms and heatmaps, PCA of the hidden states, and what a shortened level adds
to the residual it returns into.

Positions are labelled by the characters they hold; at shortened levels that is the characters
they pool, after the k-1 shift (see `analysis.pooled_spans`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from hourglass_edu.analysis import Inspection, principal_components
from hourglass_edu.viz.style import (
    ATTENTION_CMAP,
    CHAR_CLASSES,
    MONO,
    PALETTE,
    SIGNED_CMAP,
    char_class,
    char_ticks,
    new_figure,
    styled,
)

__all__ = [
    "plot_activation_norms",
    "plot_attention",
    "plot_level_activations",
    "plot_pca",
    "plot_residual_similarity",
]


def _level_title(look: Inspection, level: int) -> str:
    total = math.prod(look.factors[:level])
    return "level 0 (full resolution)" if level == 0 else f"level {level} (shortened {total}x)"


def _panel_size(length: int) -> float:
    return min(6.0, max(2.4, 0.11 * length + 1.0))


@styled
def plot_attention(
    look: Inspection,
    level: int | None = None,
    block: int | None = None,
    head: int | str | None = None,
    *,
    max_panels: int = 48,
) -> Figure:
    """Attention weights as heatmaps: one row per (level, block), one column per head.

    Args:
        look: from `inspect_text` (any attention_impl: `run_with_cache` always takes the
            weights from the explicit path).
        level, block: restrict to one level and/or one block (None: all that were captured).
        head: one head index, `"mean"` (average over heads), or None for every head.
        max_panels: refuse grids larger than this (a big model has hundreds of maps).

    Rows are queries, columns keys; both are labelled by the characters each position holds (at
    shortened levels, the characters it pools, after the k-1 shift).
    """
    rows = _attention_rows(look, level, block)
    heads = _attention_heads(rows[0][2].shape[0], head)
    if len(rows) * len(heads) > max_panels:
        raise ValueError(
            f"that is {len(rows) * len(heads)} heatmaps (more than max_panels={max_panels}); "
            "choose a level, a block or a head"
        )
    size = _panel_size(max(r[2].shape[-1] for r in rows))
    if len(rows) == 1 and len(heads) == 1:
        size = max(size, 5.0)
    fig = new_figure(size * len(heads) + 1.0, size * len(rows) + 0.4)
    axes = fig.subplots(len(rows), len(heads), squeeze=False)
    for r, (lv, bj, weights) in enumerate(rows):
        labels = look.labels[lv]
        for c, hd in enumerate(heads):
            ax = axes[r, c]
            matrix = weights.mean(0) if hd == "mean" else weights[hd]
            image = ax.imshow(
                matrix.numpy(), cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            char_ticks(ax, labels, matrix.shape[0], axis="both", max_ticks=60)
            head_name = "mean of heads" if hd == "mean" else f"head {hd}"
            ax.set_title(f"level {lv} · block {bj} · {head_name}", fontsize=10)
            if c == 0:
                ax.set_ylabel("query")
            if r == len(rows) - 1:
                ax.set_xlabel("key")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


def _attention_rows(look: Inspection, level: int | None, block: int | None) -> list[tuple]:
    """`(level, block, weights (heads, query, key))` for every chosen block that was captured."""
    levels = range(look.n_levels) if level is None else [level]
    rows = []
    for lv in levels:
        look._check_level(lv)
        blocks = range(look.blocks(lv)) if block is None else [block]
        for bj in blocks:
            if not 0 <= bj < look.blocks(lv):
                raise ValueError(f"level {lv} has blocks 0..{look.blocks(lv) - 1}, got {block}")
            name = f"level{lv}.block{bj}.attn"
            if name in look.cache:
                rows.append((lv, bj, look.cache[name]))
    if not rows:
        raise ValueError(
            "no attention weights captured for that choice: pick a level and block the model "
            "has (look.blocks(level) counts them)"
        )
    return rows


def _attention_heads(n_heads: int, head: int | str | None) -> list:
    """The heads `plot_attention` draws: every index, one index, or `"mean"`."""
    if head is None:
        return list(range(n_heads))
    if head == "mean":
        return ["mean"]
    if isinstance(head, int) and 0 <= head < n_heads:
        return [head]
    raise ValueError(f"head must be in 0..{n_heads - 1}, 'mean' or None, got {head!r}")


@styled
def plot_activation_norms(look: Inspection, points: Sequence[str] = ("input", "output")) -> Figure:
    """Per-position norm of each level's input and output along the text, one panel per level."""
    fig = new_figure(10.5, 2.3 * look.n_levels + 0.4)
    axes = fig.subplots(look.n_levels, 1, squeeze=False)[:, 0]
    for level, ax in enumerate(axes):
        length = len(look.labels[level])
        for index, point in enumerate(points):
            norms = look.hidden(level, point).norm(dim=-1)
            ax.plot(
                range(length),
                norms.numpy(),
                marker="o",
                ms=3,
                lw=1.4,
                color=PALETTE[index % len(PALETTE)],
                label=point,
            )
        ax.set_title(_level_title(look, level), loc="left")
        ax.set_ylabel("norm")
        ax.set_xlim(-0.5, length - 0.5)
        ax.grid(alpha=0.3)
        char_ticks(ax, look.labels[level], length, axis="x")
    axes[0].legend(loc="upper right", ncols=len(points))
    axes[-1].set_xlabel("position (labelled by the characters it holds)")
    return fig


@styled
def plot_level_activations(look: Inspection, level: int, point: str = "output") -> Figure:
    """One level's hidden states for the text: a heatmap (dimension x position) and the norms."""
    hidden = look.hidden(level, point)  # (length, dim)
    length, dim = hidden.shape
    fig = new_figure(max(6.5, min(11.0, 0.16 * length + 2.5)), 5.2)
    ax_map, ax_norm = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    limit = float(hidden.abs().quantile(0.99)) or 1.0
    image = ax_map.imshow(
        hidden.T.numpy(),
        aspect="auto",
        cmap=SIGNED_CMAP,
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    ax_map.set_ylabel("hidden dimension")
    ax_map.set_title(f"{_level_title(look, level)} · {point} · {dim} dimensions", loc="left")
    fig.colorbar(image, ax=ax_map, shrink=0.9, label="value")
    ax_norm.plot(range(length), hidden.norm(dim=-1).numpy(), marker="o", ms=3, color=PALETTE[0])
    ax_norm.set_ylabel("norm")
    ax_norm.grid(alpha=0.3)
    ax_norm.set_xlabel("position (labelled by the characters it holds)")
    char_ticks(ax_norm, look.labels[level], length, axis="x")
    return fig


@styled
def plot_pca(look: Inspection, point: str = "output", annotate: int = 60) -> Figure:
    """Each level's hidden states projected to 2-D (PCA), coloured by character class.

    A position at a shortened level is coloured by the newest character it pools (the one whose
    prediction it serves first). Points are annotated with their characters when a level has at
    most `annotate` positions.
    """
    fig = new_figure(4.0 * look.n_levels + 0.6, 4.3)
    axes = fig.subplots(1, look.n_levels, squeeze=False)[0]
    colours = dict(
        zip(CHAR_CLASSES, (PALETTE[0], PALETTE[1], PALETTE[5], PALETTE[2], "#999999"), strict=False)
    )
    for level, ax in enumerate(axes):
        hidden = look.hidden(level, point)
        projected, explained = principal_components(hidden)
        classes = [
            char_class(look.chars[span.stop - 1]) if len(span) else "other"
            for span in look.spans[level]
        ]
        for name in CHAR_CLASSES:
            chosen = [i for i, c in enumerate(classes) if c == name]
            if chosen:
                ax.scatter(
                    projected[chosen, 0].numpy(),
                    projected[chosen, 1].numpy(),
                    s=22,
                    color=colours[name],
                    label=name,
                    alpha=0.8,
                    edgecolors="none",
                )
        if len(classes) <= annotate:
            for i, label in enumerate(look.labels[level]):
                ax.annotate(
                    label,
                    (float(projected[i, 0]), float(projected[i, 1])),
                    fontsize=7,
                    xytext=(3, 2),
                    textcoords="offset points",
                    family=MONO,
                )
        ax.set_title(_level_title(look, level), loc="left")
        ax.set_xlabel(f"PC 1 ({100 * float(explained[0]):.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * float(explained[1]):.0f}% of variance)")
        ax.grid(alpha=0.3)
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=False):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="outside lower center", ncols=len(names))
    return fig


@styled
def plot_residual_similarity(look: Inspection) -> Figure:
    """How what a shortened level returns compares with the full-resolution residual it joins.

    For each level i that has an inner level, along the positions of level i: the cosine
    similarity between the returned signal (`level{i}.upsampled` minus the residual, i.e. what the
    shortened path adds, brought back to length) and the residual level i kept before shortening,
    and the ratio of their norms. A cosine near 0 with a sizeable ratio means the shortened level
    adds something new rather than echoing the residual.
    """
    if look.n_levels < 2:
        raise ValueError("the model has no shortened level (structure like '12@1')")
    outer_levels = range(look.n_levels - 1)
    fig = new_figure(10.5, 2.6 * len(outer_levels) + 0.5)
    axes = fig.subplots(len(outer_levels), 1, squeeze=False)[:, 0]
    for ax, level in zip(axes, outer_levels, strict=True):
        residual = look.residual(level)  # (n_level, dim)
        returned = look.get(f"level{level}.upsampled") - residual
        cosine = torch.nn.functional.cosine_similarity(returned, residual, dim=-1)
        ratio = returned.norm(dim=-1) / residual.norm(dim=-1).clamp_min(1e-12)
        length = len(cosine)
        ax.axhline(0.0, color="#888888", lw=0.8)
        ax.plot(range(length), cosine.numpy(), marker="o", ms=3, color=PALETTE[0],
                label="cosine(returned, residual)")  # fmt: skip
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("cosine")
        twin = ax.twinx()
        twin.plot(range(length), ratio.numpy(), lw=1.2, ls="--", color=PALETTE[1],
                  label="|returned| / |residual|")  # fmt: skip
        twin.set_ylabel("norm ratio")
        twin.spines["right"].set_visible(True)
        twin.set_ylim(bottom=0)
        factor = look.factors[level]
        for edge in range(0, length, factor):
            ax.axvline(edge - 0.5, color="#DDDDDD", lw=0.6, zorder=0)
        ax.set_xlim(-0.5, length - 0.5)
        ax.set_title(f"level {level + 1} returned into level {level} (groups of {factor})",
                     loc="left")  # fmt: skip
        char_ticks(ax, look.labels[level], length, axis="x")
        lines, names = ax.get_legend_handles_labels()
        more_lines, more_names = twin.get_legend_handles_labels()
        ax.legend(lines + more_lines, names + more_names, loc="lower right", ncols=2)
    axes[-1].set_xlabel("position (labelled by the characters it holds)")
    return fig
