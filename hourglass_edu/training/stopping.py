"""How a training run stops: Ctrl-C and SIGTERM, the processes' agreement, and the errors it raises.

Everything here sits *around* the training step (trainer.py), never inside it:

- `StopRequests`: whether the run was asked to stop, and by which signal. While it trains
  (`signals_finish_step`), a first Ctrl-C (SIGINT) or SIGTERM (what clusters and hosted
  notebooks send before taking a machine away) asks the loop to stop after the current step;
  a second one interrupts at once. A callback asks with `request()`. In a data-parallel run
  every process learns after every step whether any of them was asked (`agree`: one tiny
  all-reduce of a "stop reason" integer), so they all stop after the same step.
- `RunInterrupted`: the KeyboardInterrupt a stopped run raises, carrying the signal that
  stopped it (None for a callback or an interrupt from elsewhere).
- `StepUnderWay`: where an interrupted step stood (the random state it began with, and whether
  it was inside the weight update), so the checkpoint `save_after_interrupt` writes on the way
  out is exact.
- `TrainingDiverged` and `TrainingOutOfMemory`: the two ways a step can fail, each with a message
  that says what to change.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["RunInterrupted", "TrainingDiverged", "TrainingOutOfMemory"]

# torch >= 2.5 names it torch.OutOfMemoryError; torch.cuda.OutOfMemoryError is the same class.
OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError",
                                             torch.cuda.OutOfMemoryError)

# A stop asked for by a callback (`trainer.stops.request()`) rather than by a signal:
# signal numbers are >= 1 too, so the agreement sends 1 for "a callback" and the signal otherwise.
CALLBACK_STOP = 1


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


class TrainingOutOfMemory(RuntimeError):
    """A training step did not fit in the device's memory (the message says what to change)."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C, SIGTERM or a callback, once its checkpoint is saved.
    `stop_signal` is the signal's number (None when no signal asked), so a caller can tell
    SIGTERM from Ctrl-C."""

    def __init__(self, stop_signal: int | None = None) -> None:
        super().__init__()
        self.stop_signal = stop_signal


class StepUnderWay:
    """What the loop must know about a step that an interrupt cut off."""

    def __init__(self) -> None:
        self.start_rng: dict[str, Any] | None = None  # the random state the step began with
        self.updating = False  # inside optimizer.step(): weights partly old, partly new

    @contextlib.contextmanager
    def step(self, start_rng: dict[str, Any]) -> Iterator[None]:
        """Around one step: an interrupt inside it replays the step from `start_rng`. A step that
        ends in an exception (an interrupt included) leaves its state for the handler to read."""
        self.start_rng = start_rng
        yield
        self.start_rng = None

    @contextlib.contextmanager
    def weight_update(self) -> Iterator[None]:
        self.updating = True
        yield
        self.updating = False


class StopRequests:
    """Whether the run was asked to stop after the current step, and by which signal (None: by a
    callback). Only this object's methods change it."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def request(self, signum: int | None = None) -> None:
        self.requested = True
        if signum is not None:
            self.signal = signum

    def withdraw(self) -> None:
        """Go on after all (a callback changed its mind; the signal, if any, is kept)."""
        self.requested = False

    def interrupted(self) -> RunInterrupted:
        """The exception a stopped run raises."""
        return RunInterrupted(self.signal)

    def agree(self, parallel) -> bool:
        """Whether to stop now: the largest stop reason of all processes (0 = go on; alone, this
        process's), so a Ctrl-C or SIGTERM that reached any process of a data-parallel run
        (`distributed.DataParallel`) stops them all after the same step, each knowing the
        signal."""
        agreed = parallel.any((self.signal or CALLBACK_STOP) if self.requested else 0)
        if agreed:
            self.request(agreed if self.signal is None and agreed > CALLBACK_STOP else None)
        return bool(agreed)

    @contextlib.contextmanager
    def signals_finish_step(self, announce: bool) -> Iterator[None]:
        """While training in the main thread, a first Ctrl-C (SIGINT) or SIGTERM is a request
        (the loop then saves a checkpoint and raises RunInterrupted); a second one interrupts at
        once. Signals someone else already handles are left alone. `announce`: say so."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        previous = {signum: signal.getsignal(signum) for signum in defaults}
        ours = [signum for signum, handler in previous.items() if handler is defaults[signum]]

        def handler(signum, frame):
            if self.requested:
                raise self.interrupted()  # carries the first signal, as a request would
            self.request(signum)
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if announce:
                print(f"\n{name}: stopping after this step and saving a checkpoint (again to "
                      "stop now)")

        for signum in ours:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum in ours:
                signal.signal(signum, previous[signum])


def save_after_interrupt(trainer) -> None:
    """After an interrupt: save the run where it stands, unless it stands nowhere."""
    if trainer.checkpoint_path is None:
        return
    if trainer.under_way.updating:
        # Cut off inside optimizer.step(): some weights may hold the new values and some the
        # old, which no step number describes. Keep the previous checkpoint instead.
        if trainer.is_main:
            print(f"interrupted during a weight update: kept {trainer.checkpoint_path} "
                  f"(step {trainer.state.last_checkpoint_step})")
        return
    # Between steps, or inside one before its update: weights and optimizer are exactly those
    # after `trainer.step` steps; a step under way is replayed from the random state it began
    # with (the loss window holds only finished steps).
    trainer.save(rng_state=trainer.under_way.start_rng)
    trainer.under_way.start_rng = None
    if trainer.is_main:
        print(f"interrupted: saved {trainer.checkpoint_path} at step {trainer.state.step}; "
              "resume to continue")


def divergence_message(step: int, loss: float, norm: float, lr: float, kept: str,
                       loss_scale: float | None = None) -> str:
    """Why the run stopped at `step` (1-based), and what to try."""
    cause = f"the loss became {loss} (gradient norm {norm})"
    if loss_scale is not None:
        cause = (f"the gradient was still not finite with the fp16 loss scale down to "
                 f"{loss_scale:g} (loss {loss})")
    return (f"training stopped at step {step}: {cause}; the update was not applied and {kept}. "
            f"Try a lower learning rate (now {lr:.3g}; on resume pass `lr`), `precision` fp32, "
            "or a smaller grad_clip")


def out_of_memory_message(error: BaseException, *, config, precision: str, processes: int,
                          device, kept: str) -> str:
    """One line: what did not fit, and the settings that keep the run the same but fit."""
    torch_says = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
    micro = config.batch_size // processes
    windows = config.batch_size * config.grad_accum
    where = f"{device}" + (f" (each of {processes} processes)" if processes > 1 else "")
    advice = "lower `block_size`, or use a smaller model (`d_model`, `structure`)"
    factor = next((f for f in (2, 3, 4, 5, 8) if micro % f == 0), None)
    if factor is not None:
        advice = (f"keep the global batch of {windows} windows and split it into more, smaller "
                  f"micro-batches: `batch_size` {config.batch_size // factor} `grad_accum` "
                  f"{config.grad_accum * factor} (the same steps and batches, in {factor}x as many "
                  f"forward passes; with "
                  f"`resume` the pair may change as long as their product stays {windows}); "
                  f"else {advice}")
    return (f"out of memory on {where} with micro-batches of {micro} windows x "
            f"{config.block_size} tokens ({precision}): {advice}. {kept}. "
            f"(torch: {torch_says})")
