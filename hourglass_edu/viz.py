"""Figures that let a learner watch each level of the hourglass work.

Every plotting function returns a `matplotlib.figure.Figure` built directly (not through pyplot),
so calling one has no side effects: nothing is shown twice, nothing piles up in pyplot's figure
registry. In a notebook, a Figure that is the last expression of a cell is displayed; elsewhere,
call `fig.savefig(path)`. All figures share one style (`STYLE`, applied while they are built).

Two kinds of input:
- plain data (`pooling_diagram`, `plot_training_curves`, `plot_dependency`): no model needed;
- an `Inspection`, made by `inspect_text(model, tokenizer, text)`: one forward pass with every
  capture point recorded, plus the labels that say which characters each position of each level
  holds. The attention, activation, PCA and residual figures all read from it, so a widget can
  redraw a different head or level without running the model again.

Labels for shortened levels account for the k-1 shift: with factor k, shortened position i pools
the (shifted) full-resolution positions i*k-(k-1) ... i*k, so its label is the characters at those
positions (positions before the start hold the shift fill and contribute no character).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import torch
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# ---------------------------------------------------------------------------------------------
# Style
# ---------------------------------------------------------------------------------------------

#: Colour-blind-safe palette (Okabe & Ito) used for runs, levels and character classes.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

#: Matplotlib settings every figure in this module is built under. Sizes suit a laptop screen and
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

#: How characters that would be invisible on an axis are drawn.
VISIBLE_GLYPHS = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}
#: Drawn for the end-of-text token and for the fill the k-1 shift inserts.
EOT_GLYPH = "◆"
FILL_GLYPH = "∅"

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


def visible_char(char: str) -> str:
    """How one character is written on an axis: spaces and newlines become visible glyphs."""
    return VISIBLE_GLYPHS.get(char, char)


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


# ---------------------------------------------------------------------------------------------
# Which characters each shortened position pools
# ---------------------------------------------------------------------------------------------


def pooled_spans(length: int, factors: Sequence[int], shift: bool = True) -> list[list[range]]:
    """For every level and position, the full-resolution positions whose characters it holds.

    Args:
        length: number of full-resolution positions (level 0).
        factors: shortening factor of each level relative to the one outside it, outermost
            first (for `"2@1 8@3 2@1"` this is `[3]`; for `"2@1 2@2 4@8 2@2 2@1"` it is `[2, 4]`).
        shift: whether each shortening is preceded by the k-1 right shift (the causal model).

    Returns:
        `spans[level][position]` is a `range` of level-0 positions (empty when the position holds
        only shift fill or end padding). Level 0 is `[range(t, t + 1) for t in range(length)]`;
        level i has `ceil(previous_length / k)` positions.
    """
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    for factor in factors:
        if int(factor) != factor or factor < 1:
            raise ValueError(f"shortening factors must be positive integers, got {list(factors)}")
    spans = [[range(t, t + 1) for t in range(length)]]
    for factor in factors:
        outer = spans[-1]
        inner = []
        for position in range(math.ceil(len(outer) / factor)):
            # With the shift, slot j of the shifted sequence holds outer position j - (k-1).
            first = position * factor - (factor - 1 if shift else 0)
            members = [q for q in range(first, first + factor) if 0 <= q < len(outer)]
            members = [q for q in members if len(outer[q])]
            if members:
                inner.append(range(outer[members[0]].start, outer[members[-1]].stop))
            else:
                inner.append(range(0))
        spans.append(inner)
    return spans


def span_label(chars: Sequence[str], span: range) -> str:
    """Tick label for a position holding `span` of the full-resolution characters."""
    if len(span) == 0:
        return FILL_GLYPH
    return "".join(visible_char(chars[t]) for t in span)


def pooling_labels(chars: Sequence[str], factors: Sequence[int], shift: bool = True) -> list[list[str]]:
    """Tick labels for every level: level 0 is the characters, shortened levels the pooled ones."""
    spans = pooled_spans(len(chars), factors, shift=shift)
    return [[span_label(chars, span) for span in level] for level in spans]


@styled
def pooling_diagram(text: str = "the old pond", factor: int = 3) -> Figure:
    """Which characters each shortened position pools, without and with the k-1 shift.

    Four rows per panel: the characters; the sequence that is pooled (shifted right by k-1, the
    gap filled with `FILL_GLYPH`, or unshifted); the shortened positions with the characters they
    pool; and the full-resolution positions each shortened vector is repeated back to. A served
    position is marked as a leak when the vector it receives pools a character that comes after
    it: the output at position t predicts character t+1, so seeing t+1 or later is cheating.
    """
    if factor < 2:
        raise ValueError(f"factor must be at least 2 to show pooling, got {factor}")
    if not text:
        raise ValueError("text must hold at least one character")
    if len(text) > 40:
        raise ValueError(f"text has {len(text)} characters; use at most 40 so the boxes stay readable")
    chars = list(text)
    n = len(chars)
    fig = new_figure(max(6.0, 0.42 * n + 2.2), 5.6)
    axes = fig.subplots(2, 1)
    rows = {"characters": 3.0, "pooled\nsequence": 2.0, "shortened": 1.0, "served\npositions": 0.0}
    for ax, shift in zip(axes, (False, True)):
        spans = pooled_spans(n, [factor], shift=shift)[1]
        leaks = 0
        for t, char in enumerate(chars):
            _box(ax, t, rows["characters"], 1, visible_char(char), "#F2F2F2")
            source = t - (factor - 1) if shift else t
            label = visible_char(chars[source]) if source >= 0 else FILL_GLYPH
            _box(ax, t, rows["pooled\nsequence"], 1, label, "#FFFFFF" if source >= 0 else "#DDDDDD")
            sees = spans[t // factor]
            leak = len(sees) > 0 and sees.stop - 1 > t
            leaks += leak
            _box(ax, t, rows["served\npositions"], 1, str(t), "#FBD5C5" if leak else "#D4EFE5",
                 edge=LEAK_COLOR if leak else SAFE_COLOR)
        for position, span in enumerate(spans):
            width = min(factor, n - position * factor)
            _box(ax, position * factor, rows["shortened"], width, span_label(chars, span),
                 PALETTE[position % 2 * 4] + "40")
            for edge in (position * factor, position * factor + width):
                ax.plot([edge, edge], [1.9, 2.1 + 0.8], color="#555555", lw=1.2)
        for name, y in rows.items():
            ax.text(-0.3, y + 0.4, name, ha="right", va="center", fontsize=9)
        ax.set_xlim(-2.6, n + 0.2)
        ax.set_ylim(-0.2, 4.0)
        ax.axis("off")
        if shift:
            title = f"with the k-1 shift (k = {factor}): no position sees its future"
        else:
            title = f"without the shift (k = {factor}): {leaks} of {n} positions see the future"
        ax.set_title(title, color=SAFE_COLOR if shift else LEAK_COLOR, loc="left")
    return fig


def _box(ax, x: float, y: float, width: float, label: str, face: str, edge: str = "#777777"):
    ax.add_patch(Rectangle((x + 0.05, y + 0.05), width - 0.1, 0.7, facecolor=face,
                           edgecolor=edge, lw=1))
    ax.text(x + width / 2, y + 0.4, label, ha="center", va="center", fontsize=10,
            family="DejaVu Sans Mono")


# ---------------------------------------------------------------------------------------------
# Dependency matrix: which inputs each output depends on
# ---------------------------------------------------------------------------------------------


def dependency_matrix(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor | Sequence[int],
    *,
    vocab_size: int | None = None,
    method: str = "perturbation",
    samples: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """How strongly each output position depends on each input position.

    Args:
        model: any function from tokens `(batch, length)` to logits `(batch, length, vocab)`;
            for `method="gradient"` it must be an `nn.Module` holding an `nn.Embedding` for tokens.
        tokens: the input sequence, shape `(length,)`.
        vocab_size: needed by `"perturbation"` (replacement tokens are drawn from it); read from
            the logits when omitted.
        method: `"perturbation"`: replace input token s by `samples` different random tokens and
            record how much each output's logits move (max absolute change), exact for any model;
            `"gradient"`: the norm of the gradient of a random projection of output t's logits
            with respect to input s's embedding.
        seed: seeds the replacement tokens / projection, so the matrix is reproducible.

    Returns:
        `(length, length)` float tensor `D`, `D[t, s]` = dependence of output t on input s.
        A causal model has `D[t, s] == 0` for every `s > t` (a lower-triangular matrix).
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"tokens must be a 1-D sequence of at least 2 ids, got shape {tuple(tokens.shape)}")
    if method not in ("perturbation", "gradient"):
        raise ValueError(f"method must be 'perturbation' or 'gradient', got {method!r}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()  # dropout would make every output "depend" on noise
    try:
        device = _device_of(model)
        tokens = tokens.to(device)
        generator = torch.Generator().manual_seed(seed)
        if method == "gradient":
            return _gradient_dependency(model, tokens, generator)
        return _perturbation_dependency(model, tokens, vocab_size, samples, generator, batch_size)
    finally:
        if module is not None:
            module.train(was_training)


def _device_of(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


@torch.no_grad()
def _perturbation_dependency(model, tokens, vocab_size, samples, generator, batch_size):
    length = tokens.numel()
    base = model(tokens[None]).float()[0]  # (length, vocab)
    vocab_size = vocab_size or base.shape[-1]
    if vocab_size < 2:
        raise ValueError("perturbation needs a vocabulary of at least 2 tokens")
    # Every (position, sample) pair becomes one sequence with that one token replaced; the offset in
    # 1..vocab-1 guarantees the replacement differs from the original.
    positions = torch.arange(length).repeat_interleave(samples)
    offsets = torch.randint(1, vocab_size, (positions.numel(),), generator=generator)
    batch = tokens.cpu().repeat(positions.numel(), 1)
    rows = torch.arange(positions.numel())
    batch[rows, positions] = (batch[rows, positions] + offsets) % vocab_size
    changes = []
    for chunk in batch.split(batch_size):
        logits = model(chunk.to(tokens.device)).float()
        changes.append((logits - base).abs().amax(dim=-1).cpu())  # (chunk, length)
    change = torch.cat(changes)  # (length * samples, length): [perturbed input, output]
    per_input = change.view(length, samples, length).amax(dim=1)
    return per_input.T.contiguous()  # [output, input]


def _gradient_dependency(model, tokens, generator):
    if not isinstance(model, torch.nn.Module):
        raise ValueError("method='gradient' needs an nn.Module; use method='perturbation'")
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    if not embeddings:
        raise ValueError("method='gradient' needs an nn.Embedding in the model; use 'perturbation'")
    captured = {}

    def keep_output(module, inputs, output):
        output.retain_grad()
        captured["embedded"] = output

    handle = embeddings[0].register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = model(tokens[None])[0].float()  # (length, vocab)
            embedded = captured["embedded"]
            direction = torch.randn(logits.shape[-1], generator=generator).to(logits.device)
            length = tokens.numel()
            rows = []
            for t in range(length):
                (grad,) = torch.autograd.grad(logits[t] @ direction, embedded, retain_graph=True)
                rows.append(grad[0].float().norm(dim=-1).cpu())  # (length,)
    finally:
        handle.remove()
    return torch.stack(rows)


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
    for ax, (title, matrix) in zip(axes, matrices.items()):
        matrix = torch.as_tensor(matrix).detach().float().cpu()
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix {title!r} must be square, got shape {tuple(matrix.shape)}")
        peak = float(matrix.max())
        depends = matrix > tolerance * peak if peak > 0 else torch.zeros_like(matrix, dtype=torch.bool)
        future = torch.triu(depends, diagonal=1)
        shown = torch.log10(matrix.clamp_min(max(peak, 1e-30) * 1e-6))
        image = ax.imshow(shown.numpy(), cmap="magma", vmin=float(shown.min()),
                          vmax=float(shown.max()) if peak > 0 else 0.0)
        outputs, inputs = torch.nonzero(future, as_tuple=True)
        for t, s in zip(outputs.tolist(), inputs.tolist()):
            ax.add_patch(Rectangle((s - 0.5, t - 0.5), 1, 1, fill=False, edgecolor=LEAK_COLOR, lw=1.2))
        ax.plot([-0.5, length - 0.5], [-0.5, length - 0.5], color="white", lw=0.6, ls=":")
        n_future = int(future.sum())
        ax.set_title(f"{title}\n{n_future} future dependencies",
                     color=LEAK_COLOR if n_future else "black")
        ax.set_xlabel("input position (changed)")
        ax.set_ylabel("output position")
        _char_ticks(ax, labels, length, axis="both")
        fig.colorbar(image, ax=ax, shrink=0.8, label="log10 dependence")
    return fig


def _char_ticks(ax, labels: Sequence[str] | None, length: int, axis: str = "both", max_ticks=80):
    """Label every position with its characters when there is room, else every few positions."""
    if labels is None:
        return
    if len(labels) != length:
        raise ValueError(f"got {len(labels)} labels for {length} positions")
    step = max(1, math.ceil(length / max_ticks))
    ticks = list(range(0, length, step))
    names = [labels[i] for i in ticks]
    if axis in ("x", "both"):
        ax.set_xticks(ticks, names, rotation=90, family="DejaVu Sans Mono")
    if axis in ("y", "both"):
        ax.set_yticks(ticks, names, family="DejaVu Sans Mono")


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------

_STEP_KEYS = ("step",)
_TIME_KEYS = ("wall_time", "time", "elapsed", "seconds")


def _records_of(run) -> list[dict]:
    """Training records as a list of dicts, from a History-like object, a list, or a dict of lists."""
    for attribute in ("records", "history"):
        if hasattr(run, attribute) and not isinstance(run, Mapping):
            run = getattr(run, attribute)
            break
    if hasattr(run, "to_records"):
        run = run.to_records()
    if isinstance(run, Mapping):
        keys = list(run)
        columns = [list(run[key]) for key in keys]
        if len({len(column) for column in columns}) > 1:
            raise ValueError("a dict of lists must hold lists of equal length")
        return [dict(zip(keys, values)) for values in zip(*columns)]
    records = [dict(vars(r)) if not isinstance(r, Mapping) and hasattr(r, "__dict__") else dict(r)
               for r in run]
    return records


def _first_key(records: list[dict], options: Sequence[str]) -> str | None:
    for key in options:
        if any(record.get(key) is not None for record in records):
            return key
    return None


def _series(records, x_key, y_key):
    pairs = [(r[x_key], r[y_key]) for r in records
             if r.get(x_key) is not None and r.get(y_key) is not None]
    pairs = [(float(x), float(y)) for x, y in pairs if math.isfinite(float(y))]
    return [x for x, _ in pairs], [y for _, y in pairs]


@styled
def plot_training_curves(runs: Mapping[str, object], *, log_steps: bool = False) -> Figure:
    """Bits per character against steps and against wall time, several runs on one plot.

    Args:
        runs: `{run name: history}`; a history is a `train.History`, a list of record dicts, or
            a dict of equal-length lists. Records carry `step`, a wall-clock time in seconds
            (`wall_time`), and losses in nats (`train_loss`, `val_loss`) and/or bits per character
            (`train_bpc`, `val_bpc`); whichever are missing are derived (bpc = loss / ln 2).

    The left axis is bits per character, the right axis the same curve in nats (cross-entropy
    loss): one number, two units. Training curves are thin, validation curves have markers.
    """
    if not runs:
        raise ValueError("give at least one run: {name: history}")
    fig = new_figure(10.5, 4.0)
    ax_steps, ax_time = fig.subplots(1, 2, sharey=True)
    plotted = 0
    for index, (name, run) in enumerate(runs.items()):
        records = _records_of(run)
        if not records:
            raise ValueError(f"run {name!r} has no records")
        for record in records:
            for split in ("train", "val"):
                loss, bpc = record.get(f"{split}_loss"), record.get(f"{split}_bpc")
                if bpc is None and loss is not None:
                    record[f"{split}_bpc"] = float(loss) / math.log(2)
        colour = PALETTE[index % len(PALETTE)]
        time_key = _first_key(records, _TIME_KEYS)
        if _first_key(records, _STEP_KEYS) is None:
            raise ValueError(f"run {name!r}: records need a 'step' entry")
        for ax, x_key in ((ax_steps, "step"), (ax_time, time_key)):
            if x_key is None:
                continue
            for split, style in (("train", dict(lw=1.0, alpha=0.55)),
                                 ("val", dict(lw=1.8, marker="o", ms=3.5))):
                xs, ys = _series(records, x_key, f"{split}_bpc")
                if xs:
                    ax.plot(xs, ys, color=colour, label=f"{name} ({split})", **style)
                    plotted += 1
    if plotted == 0:
        raise ValueError("no run has train_loss/val_loss/train_bpc/val_bpc values to plot")
    ax_steps.set_xlabel("training step")
    ax_time.set_xlabel("wall-clock time (s)")
    ax_steps.set_ylabel("bits per character")
    ax_steps.set_title("against steps", loc="left")
    ax_time.set_title("against wall time", loc="left")
    if log_steps:
        ax_steps.set_xscale("log")
    nats = ax_time.secondary_yaxis("right", functions=(lambda b: b * math.log(2),
                                                       lambda n: n / math.log(2)))
    nats.set_ylabel("loss (nats per character)")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3)
    ax_steps.legend(loc="upper right")
    return fig
