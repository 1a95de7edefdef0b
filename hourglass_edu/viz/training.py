"""How training went: bits per character against optimizer steps and against time, for one run
(`plot_history`) or several runs on one plot (`plot_training_curves`), and against training
FLOPs for the compute frontier's runs (`plot_frontier`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from hourglass_edu.viz.style import PALETTE, new_figure, styled

__all__ = ["plot_frontier", "plot_history", "plot_training_curves"]

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


@styled
def plot_history(history, title: str | None = None) -> Figure:
    """One run: bits per character against optimizer steps (left) and training time (right).

    Args:
        history: a `train.History`, anything with `.records`, or a list of record dicts. Records
            carry `step`, `elapsed` (training seconds), and `train_bpc` and/or `val_bpc` (None
            where not measured); the training curve is a line, validation has markers.
        title: drawn above both panels.
    """
    records = _records_of(history)
    train = [r for r in records if r.get("train_bpc") is not None]
    val = [r for r in records if r.get("val_bpc") is not None]
    fig = new_figure(10.0, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x_key, x_label in (
        (axes[0], "step", "optimizer step"),
        (axes[1], "elapsed", "training time (s)"),
    ):
        ax.plot([r[x_key] for r in train], [r["train_bpc"] for r in train], label="train",
                alpha=0.8)  # fmt: skip
        ax.plot([r[x_key] for r in val], [r["val_bpc"] for r in val], "o-", label="validation")
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits per character")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return fig


@styled
def plot_frontier(frontier: Mapping) -> Figure:
    """The compute frontier (benchmarks/frontier.py's json, `hourglass_edu.results.load_frontier`):
    each run's bits per character on its fixed validation sample against the training FLOPs spent,
    on a log axis, one panel per window length. Hourglass and plain in two colours, wider models
    darker, the second seed dotted."""
    runs = frontier["runs"]
    lengths = sorted({run["length"] for run in runs})
    widest = max(run["d_model"] for run in runs)
    fig = new_figure(5.5 * len(lengths), 4.0)
    axes = fig.subplots(1, len(lengths), squeeze=False)[0]
    for ax, length in zip(axes, lengths, strict=True):
        for run in sorted(runs, key=lambda r: (r["arch"], r["d_model"], r["seed"])):
            if run["length"] != length:
                continue
            ax.plot([p["flops"] for p in run["curve"]], [p["sample_bpc"] for p in run["curve"]],
                    "o-" if run["seed"] == 0 else "o:", markersize=3,
                    color=PALETTE[0] if run["arch"] == "hourglass" else PALETTE[1],
                    alpha=0.35 + 0.65 * run["d_model"] / widest,
                    label=f"{run['arch']} d{run['d_model']} seed {run['seed']}")
        ax.set(xscale="log", xlabel="training FLOPs (3 x forward, useful work)",
               ylabel="bits per character (validation sample)",
               title=f"windows of {length:,} characters")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig
