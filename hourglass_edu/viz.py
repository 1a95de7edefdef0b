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

import dataclasses
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
VISIBLE_GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
#: Drawn for the end-of-text token and for the fill the k-1 shift inserts.
EOT_GLYPH = "◆"
FILL_GLYPH = "∅"

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


def pooling_labels(
    chars: Sequence[str], factors: Sequence[int], shift: bool = True
) -> list[list[str]]:
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
        raise ValueError(
            f"text has {len(text)} characters; use at most 40 so the boxes stay readable"
        )
    chars = list(text)
    n = len(chars)
    fig = new_figure(max(6.0, 0.42 * n + 2.2), 5.6)
    axes = fig.subplots(2, 1)
    rows = {"characters": 3.0, "pooled\nsequence": 2.0, "shortened": 1.0, "served\npositions": 0.0}
    for ax, shift in zip(axes, (False, True), strict=False):
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
            _box(
                ax,
                t,
                rows["served\npositions"],
                1,
                str(t),
                "#FBD5C5" if leak else "#D4EFE5",
                edge=LEAK_COLOR if leak else SAFE_COLOR,
            )
        for position, span in enumerate(spans):
            width = min(factor, n - position * factor)
            _box(
                ax,
                position * factor,
                rows["shortened"],
                width,
                span_label(chars, span),
                PALETTE[position % 2 * 4] + "40",
            )
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
        raise ValueError(
            f"tokens must be a 1-D sequence of at least 2 ids, got shape {tuple(tokens.shape)}"
        )
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
    if vocab_size is None:
        vocab_size = model(tokens[None]).shape[-1]
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
    for chunk in batch.split(max(1, batch_size - 1)):
        # The unchanged sequence rides along as row 0 of every chunk: the same kernels then
        # compute it and its perturbed copies, so an output that truly does not depend on the
        # changed token comes out bit-identical (a separate batch-of-one run can differ in the
        # last bits, which would blur the exact zeros of the causal triangle).
        logits = model(torch.cat([tokens.cpu()[None], chunk]).to(tokens.device)).float()
        changes.append((logits[1:] - logits[:1]).abs().amax(dim=-1).cpu())  # (chunk, length)
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
        captured["embedded"] = output

    handle = embeddings[0].register_forward_hook(keep_output)
    length = tokens.numel()
    try:
        with torch.enable_grad():
            # One copy of the sequence per output position: row t backpropagates only from output
            # t, so a single backward pass gives the whole Jacobian's row norms (rows of a batch
            # never mix in a language model).
            logits = model(tokens[None].expand(length, -1)).float()  # (length, length, vocab)
            direction = torch.randn(logits.shape[-1], generator=generator).to(logits.device)
            rows = torch.arange(length, device=logits.device)
            chosen = logits[rows, rows] @ direction  # (length,): output t of copy t
            (grad,) = torch.autograd.grad(chosen.sum(), captured["embedded"])
    finally:
        handle.remove()
    return grad.float().norm(dim=-1).cpu()  # (output copy t, input s, dim) -> (t, s)


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
    names = [visible_char(labels[i]) for i in ticks]
    if axis in ("x", "both"):
        ax.set_xticks(ticks, names, rotation=90, family=MONO)
    if axis in ("y", "both"):
        ax.set_yticks(ticks, names, family=MONO)


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------

_STEP_KEYS = ("step",)
_TIME_KEYS = ("wall_time", "time", "elapsed", "seconds")


def _records_of(run) -> list[dict]:
    """Training records as dicts, from a History-like object, a list, or a dict of lists."""
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
        return [dict(zip(keys, values, strict=False)) for values in zip(*columns, strict=False)]
    records = [
        dict(vars(r)) if not isinstance(r, Mapping) and hasattr(r, "__dict__") else dict(r)
        for r in run
    ]
    return records


def _first_key(records: list[dict], options: Sequence[str]) -> str | None:
    for key in options:
        if any(record.get(key) is not None for record in records):
            return key
    return None


def _series(records, x_key, y_key):
    pairs = [
        (r[x_key], r[y_key])
        for r in records
        if r.get(x_key) is not None and r.get(y_key) is not None
    ]
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
            for split, style in (
                ("train", dict(lw=1.0, alpha=0.55)),
                ("val", dict(lw=1.8, marker="o", ms=3.5)),
            ):
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
    nats = ax_time.secondary_yaxis(
        "right", functions=(lambda b: b * math.log(2), lambda n: n / math.log(2))
    )
    nats.set_ylabel("loss (nats per character)")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3)
    ax_steps.legend(loc="upper right")
    return fig


# ---------------------------------------------------------------------------------------------
# Looking inside a model: one captured forward pass
# ---------------------------------------------------------------------------------------------


def model_levels(model) -> tuple[list[int], list[int], list[int], bool]:
    """`(factors, pre_blocks, post_blocks, shift)` of an HourglassLM, read from its config.

    `factors[i]` is how much level i+1 shortens level i; `shift` is False only for a model built
    with `unsafe_disable_shift=True` (the leak demonstration).
    """
    config = getattr(model, "config", None)
    levels = getattr(config, "levels", None)
    if levels is None:
        raise ValueError("expected an HourglassLM (a model whose .config has .levels)")
    factors = [spec.factor for spec in levels[:-1]]
    pre = [spec.pre_layers for spec in levels]
    post = [spec.post_layers for spec in levels]
    shift = not getattr(config, "unsafe_disable_shift", False)
    return factors, pre, post, shift


def without_shift(model):
    """A copy of an HourglassLM with the same weights but the k-1 shift switched off.

    For teaching only: the copy leaks the future (see `dependency_matrix` / `plot_dependency`).
    """
    config = dataclasses.replace(model.config, unsafe_disable_shift=True)
    leaky = type(model)(config)
    leaky.load_state_dict(model.state_dict())
    return leaky.to(_device_of(model)).train(model.training)


def token_chars(tokenizer, ids: Sequence[int]) -> list[str]:
    """One display character per token id (`EOT_GLYPH` for the end-of-text token)."""
    chars = []
    for token in ids:
        if token == tokenizer.eot_id:
            chars.append(EOT_GLYPH)
        else:
            chars.append(tokenizer.decode([int(token)]))
    return chars


@dataclass
class Inspection:
    """One forward pass of an HourglassLM on a text, with every capture point recorded.

    Attributes:
        text: the text as given; the model sees `<eot>` + text (the start of a document).
        tokens: `(length,)` token ids, `<eot>` first.
        chars: one display character per token.
        factors, pre_blocks, post_blocks, shift: the model's level layout.
        spans: `spans[level][position]`: the level-0 positions whose characters it holds.
        labels: `labels[level][position]`: those characters, for tick labels.
        cache: capture name -> tensor with the batch dimension removed (float, CPU).
        logits: `(length, vocab)`.
    """

    text: str
    tokens: torch.Tensor
    chars: list[str]
    factors: list[int]
    pre_blocks: list[int]
    post_blocks: list[int]
    shift: bool
    spans: list[list[range]]
    labels: list[list[str]]
    cache: dict[str, torch.Tensor] = field(repr=False)
    logits: torch.Tensor = field(repr=False)

    @property
    def n_levels(self) -> int:
        return len(self.factors) + 1

    def blocks(self, level: int) -> int:
        """Number of transformer blocks at a level (pre blocks first, then post blocks)."""
        self._check_level(level)
        return self.pre_blocks[level] + self.post_blocks[level]

    def heads(self) -> int:
        for name, value in self.cache.items():
            if name.endswith(".attn"):
                return value.shape[0]
        raise ValueError("no attention weights were captured (use attention_impl='explicit'?)")

    def get(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            known = ", ".join(sorted(self.cache)[:12])
            raise ValueError(f"no capture named {name!r}; known names include: {known} ...")
        return self.cache[name]

    def hidden(self, level: int, point: str = "output") -> torch.Tensor:
        """`(length_at_level, dim)` hidden states: point is 'input', 'output' or 'block{j}'."""
        self._check_level(level)
        return self.get(f"level{level}.{point}")

    def residual(self, level: int) -> torch.Tensor:
        """What a level keeps for the residual before shortening: its last pre block's output."""
        pre = self.pre_blocks[level]
        return self.hidden(level, f"block{pre - 1}" if pre else "input")

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in 0..{self.n_levels - 1}, got {level}")


@torch.no_grad()
def inspect_text(model, tokenizer, text: str) -> Inspection:
    """Run `model.run_with_cache` on `<eot>` + text and collect what the figures need."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    factors, pre, post, shift = model_levels(model)
    try:
        ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    except ValueError as error:
        raise ValueError(
            f"the text has characters the model's vocabulary lacks: {error}"
        ) from error
    limit = getattr(model.config, "max_length", None)
    if limit is not None and len(ids) > limit:
        raise ValueError(f"text is {len(ids) - 1} characters; the model takes at most {limit - 1}")
    tokens = torch.tensor(ids, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        logits, cache = model.run_with_cache(tokens[None].to(_device_of(model)))
    finally:
        model.train(was_training)
    cache = {name: value[0].detach().float().cpu() for name, value in cache.items()}
    chars = token_chars(tokenizer, ids)
    spans = pooled_spans(len(ids), factors, shift=shift)
    for level, level_spans in enumerate(spans):
        captured = cache.get(f"level{level}.input")
        if captured is not None and captured.shape[0] != len(level_spans):
            raise RuntimeError(
                f"level {level} has {captured.shape[0]} positions but the labels expect "
                f"{len(level_spans)}: the model's shortening differs from pooled_spans"
            )
    labels = [[span_label(chars, span) for span in level] for level in spans]
    return Inspection(
        text,
        tokens,
        chars,
        factors,
        pre,
        post,
        shift,
        spans,
        labels,
        cache,
        logits[0].detach().float().cpu(),
    )


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
        look: from `inspect_text` (the model must use `attention_impl="explicit"`).
        level, block: restrict to one level and/or one block (None: all that were captured).
        head: one head index, `"mean"` (average over heads), or None for every head.
        max_panels: refuse grids larger than this (a big model has hundreds of maps).

    Rows are queries, columns keys; both are labelled by the characters each position holds (at
    shortened levels, the characters it pools, after the k-1 shift).
    """
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
            "no attention weights captured for that choice; build the model with "
            "attention_impl='explicit' so run_with_cache records them"
        )
    n_heads = rows[0][2].shape[0]
    if head is None:
        heads = list(range(n_heads))
    elif head == "mean":
        heads = ["mean"]
    elif isinstance(head, int) and 0 <= head < n_heads:
        heads = [head]
    else:
        raise ValueError(f"head must be in 0..{n_heads - 1}, 'mean' or None, got {head!r}")
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
            _char_ticks(ax, labels, matrix.shape[0], axis="both", max_ticks=60)
            head_name = "mean of heads" if hd == "mean" else f"head {hd}"
            ax.set_title(f"level {lv} · block {bj} · {head_name}", fontsize=10)
            if c == 0:
                ax.set_ylabel("query")
            if r == len(rows) - 1:
                ax.set_xlabel("key")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


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
        _char_ticks(ax, look.labels[level], length, axis="x")
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
    _char_ticks(ax_norm, look.labels[level], length, axis="x")
    return fig


def principal_components(points: torch.Tensor, count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project `(n, dim)` points onto their top principal components (exact, via SVD).

    Returns `(projected (n, count), explained variance fraction (count,))`. Signs are fixed so
    that each component's largest loading is positive, which makes the picture reproducible.
    """
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"need at least 2 points of shape (n, dim), got {tuple(points.shape)}")
    centred = points.double() - points.double().mean(0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    directions = directions[:count]  # (count, dim)
    largest = directions.abs().argmax(dim=1)
    signs = torch.sign(directions[torch.arange(len(directions)), largest])
    directions = directions * signs[:, None]
    variance = singular.pow(2)
    explained = variance[:count] / variance.sum().clamp_min(1e-30)
    projected = centred @ directions.T
    if projected.shape[1] < count:  # fewer points/dims than components: pad with zeros
        pad = count - projected.shape[1]
        projected = torch.cat([projected, projected.new_zeros(len(projected), pad)], 1)
        explained = torch.cat([explained, explained.new_zeros(pad)])
    return projected.float(), explained.float()


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
        _char_ticks(ax, look.labels[level], length, axis="x")
        lines, names = ax.get_legend_handles_labels()
        more_lines, more_names = twin.get_legend_handles_labels()
        ax.legend(lines + more_lines, names + more_names, loc="lower right", ncols=2)
    axes[-1].set_xlabel("position (labelled by the characters it holds)")
    return fig
