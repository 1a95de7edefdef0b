"""The training loop: `Trainer` steps any language model on batches and keeps the run's state.

The loop knows nothing of the model class: it needs `model(tokens) -> logits` and, for
checkpoints, `model.config.to_dict()`. `Trainer.train_step` is the whole step on one screen:
draw the step's windows, forward and backward over its `grad_accum` micro-batches under the run's
precision (precision.py), clip the gradient norm, apply AdamW at the scheduled learning rate.
`Trainer.run` is the loop around it: the clock, the history, evaluation and the best checkpoint,
and everything about stopping (stopping.py: Ctrl-C / SIGTERM, the processes' agreement, a step
cut off by an interrupt, out of memory). Events go to `callbacks(trainer)` after every step.

Randomness has two private sources, both saved in checkpoints: a generator for batches and a
random state for dropout (swapped in around each step with `torch.random.fork_rng`), so training
never reseeds the process's global RNG and resuming replays exactly the same numbers.

Under fp16 an update the gradient scaler skips (an overflowed gradient) is not counted: `step`,
`tokens_seen` and the schedule stay, `skipped_steps` (in the history too) goes up by one.

Started by torchrun (in a `distributed.process_group()`), the same loop trains data-parallel:
the model is wrapped in DistributedDataParallel, each process trains on its rows of the global
batch, and only process 0 evaluates, shows progress and writes checkpoints (distributed.py says
how such a run relates to a one-process run).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hourglass_edu.data import sample_batch
from hourglass_edu.training.checkpoints import (
    best_checkpoint_path,
    data_fingerprint,
    save_checkpoint,
)
from hourglass_edu.training.config import TrainConfig, check_sizes, check_training_inputs
from hourglass_edu.training.distributed import DataParallel, current_ranks
from hourglass_edu.training.evaluation import LN2, History, evaluate_bpc, language_model_loss
from hourglass_edu.training.optimization import build_optimizer, learning_rate
from hourglass_edu.training.precision import (
    autocast_context,
    fast_fp32_matmuls,
    gradient_scaler,
    resolve_precision,
)
from hourglass_edu.training.randomness import RandomStates
from hourglass_edu.training.resuming import restore_run, run_checkpoint, run_differences
from hourglass_edu.training.run_state import RunState, empty_log_window
from hourglass_edu.training.stopping import (
    OUT_OF_MEMORY,
    RunInterrupted,
    StepUnderWay,
    StopRequests,
    TrainingDiverged,
    TrainingOutOfMemory,
    divergence_message,
    out_of_memory_message,
    save_after_interrupt,
)

__all__: list[str] = []  # no public names: the modules that use these import them by name

# Under fp16 a gradient that is still not finite once the scaler has lowered the loss scale below
# this (from 65536, about 26 halvings in a row) is not an overflow: the run has diverged.
MIN_LOSS_SCALE = 2.0**-10


@dataclass(frozen=True)
class StepResult:
    """What one call of `train_step` did: the step's loss (nats), its learning rate, and whether
    the fp16 scaler skipped the update (then nothing was counted)."""

    loss: float
    lr: float
    skipped: bool = False


class Trainer:
    """Runs one run: model, optimizer, scaler and random states, and the `RunState` (`state`:
    step, tokens, clock, history, ...) that checkpoints save and resuming loads.

    `train(...)` is the usual entry point; use a Trainer directly to step through a run or inspect
    its optimizer. `callbacks` are called as `callback(trainer)` after every step (under fp16 a
    skipped one too: `trainer.skipped_steps` counts those); one may set
    `trainer.stop_requested = True` (or call `trainer.stops.request()`) to stop the run as Ctrl-C
    would.
    Inside a process group (`distributed.process_group()`, torchrun) it trains data-parallel:
    `parallel` (a `distributed.DataParallel`) says where this process stands, and holds the DDP
    wrapper (`parallel.ddp`, else None).
    """

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None, *,
                 checkpoint_path: str | os.PathLike | None = None,
                 callbacks: Sequence[Callable[[Trainer], None]] = (),
                 metadata: dict[str, Any] | None = None) -> None:
        check_training_inputs(model, data, config)
        self.config = config = config if config is not None else TrainConfig()
        config.validate()
        self.data, self.tokenizer = data, data.tokenizer
        self.parallel = DataParallel(current_ranks())
        self.is_main = self.parallel.is_main
        # Before anything else can fail on one process only: all agree, or all refuse together.
        self.parallel.check_same_settings(self._settings(model))
        self.parallel.windows_per_process(config.batch_size)  # refused here if it cannot split
        self.device = self.parallel.device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        check_sizes(self.model, data, config)
        forward = self.parallel.wrap(self.model, self.device)
        self.forward = torch.compile(forward) if config.compile else forward
        self.optimizer = build_optimizer(self.model, config, self.device.type)
        self.scaler = gradient_scaler(self.precision, self.device)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.callbacks = list(callbacks)
        self.state = RunState(metadata=dict(metadata or {}))
        self.resumed_changes: list[str] = []  # budget / lr / batch split changes resume accepted
        self.stops = StopRequests()
        self.random = RandomStates(config.seed, self.device, rank=self.parallel.rank)
        self.under_way = StepUnderWay()

    def _settings(self, model: nn.Module) -> dict[str, Any]:
        """What every process of a data-parallel run must share (compared when it starts)."""
        model_config = getattr(model, "config", None)
        return {"model_class": type(model).__name__,
                "model": model_config.to_dict() if model_config is not None else {},
                "train": self.config.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                "data": data_fingerprint(self.data)}

    # The run's state, read where callbacks and callers look for it (`state` owns it).
    step = property(lambda self: self.state.step, doc="optimizer steps taken")
    tokens_seen = property(lambda self: self.state.tokens_seen, doc="tokens trained on")
    elapsed = property(lambda self: self.state.elapsed, doc="seconds of training")
    skipped_steps = property(lambda self: self.state.skipped_steps,
                             doc="fp16 updates the scaler skipped")
    history = property(lambda self: self.state.history, doc="the run's `History`")

    @property
    def stop_requested(self) -> bool:
        """Whether the run stops after this step (set it True to stop as Ctrl-C would)."""
        return self.stops.requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        if value:
            self.stops.request()
        else:
            self.stops.withdraw()

    @property
    def tokens_per_step(self) -> int:
        config = self.config
        return config.batch_size * config.grad_accum * config.block_size

    # ----- state: everything a checkpoint holds (resuming.py)
    def checkpoint(self, rng_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's state as plain containers and tensors (what `save_checkpoint` writes)."""
        return run_checkpoint(self, rng_state)

    def save(self, path: str | os.PathLike | None = None, rng_state=None) -> Path:
        """Write the checkpoint (in a data-parallel run, process 0 writes; the others only note
        the step: every process holds the same weights and optimizer state)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one to save() or to the Trainer")
        if self.is_main:
            save_checkpoint(path, self.checkpoint(rng_state))
        self.state.last_checkpoint_step = self.state.step
        return path

    def differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """How this run differs from a checkpoint in ways resuming cannot accept."""
        return run_differences(self, checkpoint)

    def resume(self, checkpoint: dict[str, Any] | str | os.PathLike) -> None:
        """Continue the run stored in `checkpoint` (a dict or a path); refuses (ValueError) a
        model, data or recipe change. A new budget (steps, minutes), learning rate or split of
        the step's windows into micro-batches is accepted and listed in `resumed_changes`."""
        self.state, self.resumed_changes = restore_run(self, checkpoint)

    # ----- the step
    def train_step(self) -> StepResult:
        """One optimizer step over the step's `grad_accum` micro-batches (minGPT's loop body)."""
        lr = self._set_learning_rate()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = self._step_batches()
        loss = torch.zeros((), device=self.device)
        with self.random.dropout():
            for index, (inputs, targets) in enumerate(micro_batches):
                with self.parallel.gradient_sync(index == len(micro_batches) - 1):
                    with autocast_context(self.precision, self.device):
                        logits = self.forward(inputs)
                    micro_loss = language_model_loss(logits, targets) / len(micro_batches)
                    self.scaler.scale(micro_loss).backward()
                loss += micro_loss.detach()
        self.parallel.mean_(loss)  # the global batch's loss: a NaN anywhere stops every process
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._max_norm)
        # One host-device sync per step: both numbers are checked before the update is applied.
        loss_value, norm_value = torch.stack([loss, grad_norm.float()]).tolist()
        overflowed = self._gradient_overflowed(loss_value, norm_value, lr)
        with self.under_way.weight_update():  # until the step is counted (see stopping.py)
            self.scaler.step(self.optimizer)  # skips the update when the gradient overflowed
            self.scaler.update()
            self.random.commit_dropout()
            if overflowed:
                self.state.skipped_steps += 1
            else:
                self.state.count_step(self.tokens_per_step)
        return StepResult(loss=loss_value, lr=lr, skipped=overflowed)

    @property
    def _max_norm(self) -> float:
        return self.config.grad_clip if self.config.grad_clip is not None else float("inf")

    def _set_learning_rate(self) -> float:
        lr = learning_rate(self.config, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _step_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's rows of each micro-batch of the step. The step's batch_size x grad_accum
        windows are drawn at once, so they do not depend on how they are split into micro-batches
        (or processes): every process draws the same ones and keeps its own rows."""
        config = self.config
        inputs, targets = sample_batch(self.data.train_ids, config.batch_size * config.grad_accum,
                                       config.block_size, self.random.batches)
        return [(inputs[row].to(self.device, non_blocking=True),
                 targets[row].to(self.device, non_blocking=True))
                for row in self.parallel.own_rows(len(inputs), config.batch_size)]

    def _gradient_overflowed(self, loss: float, norm: float, lr: float) -> bool:
        """True when the fp16 scaler will skip this update (an overflowed gradient); raises
        TrainingDiverged when the loss, or a gradient no loss scale explains, is not finite."""
        if math.isfinite(loss) and math.isfinite(norm):
            return False
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        if math.isfinite(loss) and scale is not None and scale >= MIN_LOSS_SCALE:
            return True
        saved = self.state.last_checkpoint_step
        kept = (f"the last good checkpoint ({self.checkpoint_path}, step {saved}) is kept "
                "unchanged" if saved is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(divergence_message(
            self.step + 1, loss, norm, lr, kept,
            loss_scale=scale if math.isfinite(loss) else None))

    # ----- the loop
    def finished(self) -> bool:
        config = self.config
        if config.steps is not None and self.step >= config.steps:
            return True
        return config.minutes is not None and self.elapsed >= 60.0 * config.minutes

    def evaluate(self) -> float:
        return evaluate_bpc(
            self.model, self.data.val_ids, batch_size=self.config.batch_size,
            block_size=self.config.block_size, max_batches=self.config.eval_batches,
            seed=self.config.seed + 1234, device=self.device, precision=self.precision,
        )

    def run(self) -> History:
        """Train until the budget is spent; returns the history (also at `self.history`)."""
        self._announce_data_parallel()
        bar = self._progress_bar()
        try:
            with self.stops.signals_finish_step(announce=self.is_main), \
                    fast_fp32_matmuls(self.device):
                while not self.finished():
                    self._step_that_fits(bar)
                    for callback in self.callbacks:
                        callback(self)
                    if self.stops.agree(self.parallel):
                        raise self.stops.interrupted()
                if (self.checkpoint_path is not None
                        and self.state.last_checkpoint_step != self.step):
                    self.save()
        except KeyboardInterrupt as interrupt:
            save_after_interrupt(self)
            if isinstance(interrupt, RunInterrupted):
                raise
            # From elsewhere (a notebook's interrupt, another handler): say which signal asked.
            raise self.stops.interrupted().with_traceback(interrupt.__traceback__) from None
        finally:
            bar.close()
        return self.history

    def _step_that_fits(self, bar) -> None:
        """`_timed_step`, with running out of device memory turned into one clear error. It is
        raised outside the `except`, so the failed step's tensors are freed first."""
        try:
            self._timed_step(bar)
            return
        except OUT_OF_MEMORY as error:
            saved = self.state.last_checkpoint_step
            kept = (f"The last checkpoint ({self.checkpoint_path}, step {saved}) is kept"
                    if saved is not None else "No checkpoint was written yet")
            message = out_of_memory_message(
                error, config=self.config, precision=self.precision, device=self.device,
                processes=self.parallel.processes, kept=kept)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrainingOutOfMemory(message)

    def _timed_step(self, bar) -> None:
        """One step, its clock, the progress bar, and a history record when one is due."""
        started = time.perf_counter()
        with self.under_way.step(self.random.state()):
            result = self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        seconds = self.parallel.slowest(self.elapsed, seconds)  # one clock for all processes
        self.state.elapsed += seconds
        window = self.state.log_window
        window["seconds"] += seconds
        if not result.skipped:  # a skipped update is no step: nothing to count or average
            window["loss"] += result.loss
            window["steps"] += 1
            window["tokens"] += self.tokens_per_step
        if self.config.steps is None:
            bar.n = min(round(self.elapsed), bar.total)
            bar.refresh()
        elif not result.skipped:
            bar.update(1)
        counted = not result.skipped
        evaluate = (counted and self.step % self.config.eval_every == 0) or self.finished()
        if window["steps"] and (evaluate or (counted and self.step % self.config.log_every == 0)):
            self._record(result.lr, evaluate, bar)

    def _record(self, lr: float, evaluate: bool, bar) -> None:
        window = self.state.log_window
        mean_loss = window["loss"] / window["steps"]
        best_so_far = self.history.best_val_bpc
        val_bpc = self.evaluate() if evaluate and self.is_main else None
        self.history.append(step=self.step, tokens=self.tokens_seen, elapsed=self.elapsed,
                            train_loss=mean_loss, train_bpc=mean_loss / LN2, val_bpc=val_bpc,
                            lr=lr, skipped_steps=self.skipped_steps)
        postfix = {"loss": f"{mean_loss:.3f}", "bpc": f"{mean_loss / LN2:.3f}", "lr": f"{lr:.2e}",
                   "tok/s": f"{window['tokens'] / max(window['seconds'], 1e-9):,.0f}"}
        if self.history.last_val_bpc is not None:
            postfix["val_bpc"] = f"{self.history.last_val_bpc:.3f}"
        if self.skipped_steps:
            postfix["skipped"] = str(self.skipped_steps)
        bar.set_postfix(postfix, refresh=False)
        self.state.log_window = empty_log_window()
        if self._should_checkpoint(evaluate):
            self.save()
        if val_bpc is not None and (best_so_far is None or val_bpc < best_so_far):
            self._save_best()

    def _save_best(self) -> None:
        """Validation improved: keep these weights beside the last ones (best.pt)."""
        if self.checkpoint_path is not None and self.is_main:
            save_checkpoint(best_checkpoint_path(self.checkpoint_path), self.checkpoint())

    def _should_checkpoint(self, evaluated: bool) -> bool:
        if self.checkpoint_path is None:
            return False
        if self.config.checkpoint_every is None:
            return evaluated
        return self.step % self.config.checkpoint_every == 0

    def _announce_data_parallel(self) -> None:
        summary = self.parallel.summary(self.device, self.config.batch_size,
                                        self.config.block_size)
        if summary is not None and self.is_main:
            print(summary, flush=True)

    def _progress_bar(self):
        from tqdm.auto import tqdm  # here: tqdm.auto imports IPython where it is installed

        config = self.config
        hidden = not (config.progress and self.is_main)
        if config.steps is not None:
            return tqdm(total=config.steps, initial=self.step, unit="step",
                        disable=hidden, dynamic_ncols=True)
        return tqdm(total=round(60 * config.minutes), initial=round(self.elapsed), unit="s",
                    disable=hidden, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s [{elapsed}{postfix}]")
