"""What train, finetune and demo share: their settings and the training run itself.

Each of them holds its run folder (--out) locked for the whole command (`run_folder_lock`), taken
before the corpus loads: an --out that is a file or cannot be written, or that another run is
training into, is refused at once. Ctrl-C or SIGTERM during training saves the checkpoint and
history.json, then ends the command with one line and the code a shell gives a process that
signal ended (130 for Ctrl-C, 143 for SIGTERM).

Under torchrun (`torchrun --nproc_per_node N -m hourglass_edu train ...`) each command runs in
`run_processes`: the processes join one process group and train data-parallel; process 0 alone
locks the run folder, prints, and writes the checkpoint and history files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from hourglass_edu.cli.options import device, given, positive_int, seed
from hourglass_edu.files import atomic_write, atomic_writer

__all__ = ["add_force", "add_run_settings", "check_precision",
           "check_val_fraction",
           "lock_run_folder", "run_processes", "run_training", "train_config"]


@contextlib.contextmanager
def run_processes(device: str | None) -> Iterator[bool]:
    """The block runs on every process torchrun started, joined in one process group (or alone,
    without torchrun). Yields whether this is the main process; the others print nothing to
    stdout (their errors still reach stderr)."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training.distributed import process_group

    with process_group(device or "auto") as ranks:
        if ranks is None or ranks.is_main:
            yield True
            return
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            yield False


def lock_run_folder(out, main: bool, force: bool = False):
    """`run_folder_lock(out)` on the main process, once `check_run_folder` has found that OUT
    may take a run (before anything is created there); the others write nothing there."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training.run_folders import check_run_folder, run_folder_lock

    check_run_folder(out, force=force)
    return run_folder_lock(out) if main else contextlib.nullcontext(Path(out))


def add_force(parser, what: str) -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"write into OUT even when it holds something else than {what} "
                        "(files of the same names are replaced, others left alone)")


def add_run_settings(parser, budget_help: str) -> None:
    """Settings shared by train, finetune and demo: budget, batch, optimizer, hardware, split."""
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training time budget in minutes ({budget_help})")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="optimizer steps budget (with --minutes: whichever ends first)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="windows per micro-batch (under torchrun: over all processes)")
    parser.add_argument("--grad-accum", type=positive_int, default=None,
                        help="micro-batches per optimizer step (default 1): a larger step "
                             "without the memory of a larger batch")
    parser.add_argument("--block-size", type=positive_int, default=None,
                        help="tokens per window")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default=None,
                        help="auto (default) = bf16 on GPUs with native bf16 (A100, L4, ...), "
                        "fp16 with loss scaling on older GPUs (T4), bf16 on CPUs with bf16 units, "
                        "else fp32; fp16 needs a GPU, bf16 a native one")
    parser.add_argument("--device", type=device, default=None,
                        help="auto (default), cpu, cuda, cuda:1, mps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=seed, default=None, help="seed of batches and init")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--data-dir", type=given, default=None,
                        help="corpus directory (default: $HOURGLASS_EDU_DATA, then the cache)")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of the documents held out for validation (default 0.05)")


def check_val_fraction(args) -> None:
    if not 0 < args.val_fraction < 1:
        raise ValueError(
            f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction:g}: "
            "training measures bits per character on held-out documents and learns from the rest"
        )


def check_precision(precision: str | None, device: str | None) -> None:
    """--precision against --device before the corpus loads (fp16 off CUDA, or bf16 on a GPU
    without it, would otherwise be refused only when the trainer starts)."""
    if precision is None:
        return
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.devices import resolve_device
    from hourglass_edu.training.precision import resolve_precision

    try:
        resolve_precision(precision, resolve_device(device or "auto"))
    except ValueError as error:
        raise ValueError(f"--precision {precision} with --device {device or 'auto'}: "
                         f"{error}") from None


def train_config(base, args, **changes):
    """`base` TrainConfig with the command line's settings applied."""
    if args.minutes is not None or args.steps is not None:
        changes.update(steps=args.steps, minutes=args.minutes)
    for name in ("batch_size", "grad_accum", "block_size", "lr", "precision", "device", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.compile:
        changes["compile"] = True
    if args.no_progress:
        changes["progress"] = False
    return base.replace(**changes)


def run_training(args, model, data, config, *, resume, overwrite=False, metadata=None):
    """Train into args.out, then write history.json / history.png and print the validation
    result. Returns (history, validation bits per character); data-parallel, only the main
    process writes and evaluates (the others return None for the bits per character)."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training import CHECKPOINT_NAME, evaluate_bpc, train
    from hourglass_edu.training.distributed import current_ranks
    from hourglass_edu.training.stopping import RunInterrupted

    ranks = current_ranks()
    main = ranks is None or ranks.is_main

    out = Path(args.out)
    structure = getattr(model.config, "structure", None)  # the related models have none
    shape = f"structure {structure!r}" if structure else type(model).__name__
    print(f"model: {model.num_parameters():,} parameters, {shape}, d_model "
          f"{model.config.d_model}; corpus {data.corpus.name}: "
          f"{data.train_ids.numel():,} training tokens")
    budget = " and ".join(part for part in (
        f"{config.steps} steps" if config.steps else "",
        f"{config.minutes:g} minutes" if config.minutes else "") if part)
    print(f"training for {budget} (whichever ends first); checkpoint: {out / CHECKPOINT_NAME}",
          flush=True)
    try:
        history = train(model, data, config, checkpoint_path=out / CHECKPOINT_NAME,
                        resume=resume, overwrite=overwrite, metadata=metadata)
    except KeyboardInterrupt as interrupt:  # a RunInterrupted knows the signal that stopped it
        signum = interrupt.stop_signal if isinstance(interrupt, RunInterrupted) else None
        _stop_after_interrupt(out, signum, can_resume=hasattr(args, "resume"), main=main)
    if not main:
        return history, None
    _write_history_json(out, history)
    _write_history_png(out, history, f"{data.corpus.name}, {structure or type(model).__name__}")
    last = history.records[-1]
    val_bpc = evaluate_bpc(model, data.val_ids, batch_size=config.batch_size,
                           block_size=config.block_size, device=config.device,
                           precision=config.precision)
    speed = last["tokens"] / max(last["elapsed"], 1e-9)
    print(f"done: {last['step']} steps, {last['tokens']:,} tokens, {last['elapsed']:.0f} s of "
          f"training ({speed:,.0f} tokens/s); validation: {val_bpc:.3f} bits per character "
          "(whole split)")
    return history, val_bpc


def _write_history_json(out: Path, history) -> None:
    atomic_write(out / "history.json", json.dumps(history.to_dict(), indent=1))


def _write_history_png(out: Path, history, title: str) -> None:
    """The curves as a picture, written atomically like every other file of a run: a run stopped
    mid-write keeps the picture before, never half a PNG."""
    from hourglass_edu import viz  # matplotlib

    with atomic_writer(out / "history.png") as handle:
        viz.plot_history(history, title=title).savefig(handle, format="png", dpi=100)


def _stop_after_interrupt(out: Path, signum: int | None, *, can_resume: bool,
                          main: bool = True) -> NoReturn:
    """After Ctrl-C or SIGTERM (the trainer has saved the checkpoint): write history.json from
    the saved checkpoint, say in one line where the run stands, and exit (data-parallel, the
    other processes only exit)."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training import CHECKPOINT_NAME, History, load_checkpoint

    name, code = ("SIGTERM", 143) if signum == signal.SIGTERM else ("Ctrl-C", 130)
    if not main:
        raise SystemExit(code)
    path = out / CHECKPOINT_NAME
    if path.is_file():
        checkpoint = load_checkpoint(path)
        _write_history_json(out, History.from_dict(checkpoint["history"]))
        where = f"{path} holds step {checkpoint['step']} and history.json its history"
    else:
        where = f"no checkpoint was written to {out} yet"
    then = ("run the same command with --resume to continue" if can_resume
            else "running the command again starts over")
    print(f"stopped by {name}: {where}; {then}", file=sys.stderr)
    raise SystemExit(code)
