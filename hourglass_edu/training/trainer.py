"""The training loop: `Trainer` steps any language model on batches and keeps the run's state.

The loop knows nothing of the model class: it needs `model(tokens) -> logits` and, for
checkpoints, `model.config.to_dict()`. Each step draws `grad_accum` batches of random windows,
runs the forward pass under the run's precision (see precision.py), clips the gradient norm and
applies AdamW at the scheduled learning rate. Events go to `callbacks(trainer)` after every step.

Randomness has two private sources, both saved in checkpoints: a generator for batches and a
random state for dropout (swapped in around each step with `torch.random.fork_rng`), so training
never reseeds the process's global RNG and resuming replays exactly the same numbers.
Ctrl-C (or SIGTERM, which clusters and hosted notebooks send before taking a machine away) stops
after the current step and saves a checkpoint; a second one interrupts at once.

Started by torchrun (in a `distributed.process_group()`), the same loop trains data-parallel:
the model is wrapped in DistributedDataParallel, each process trains on its slice of the global
batch, and only process 0 evaluates, shows progress and writes the checkpoint (distributed.py
says how such a run relates to a one-process run).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hourglass_edu.data import sample_batch
from hourglass_edu.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    config_differences,
    data_fingerprint,
    load_checkpoint,
    resumable_differences,
    run_folder_lock,
    save_checkpoint,
)
from hourglass_edu.training.config import TrainConfig, check_sizes
from hourglass_edu.training.distributed import (
    check_same_settings,
    current_ranks,
    per_process_batch,
    rank_device,
)
from hourglass_edu.training.evaluation import LN2, History, evaluate_bpc, language_model_loss
from hourglass_edu.training.optimization import learning_rate, parameter_groups
from hourglass_edu.training.precision import (
    autocast_context,
    gradient_scaler,
    resolve_precision,
)
from hourglass_edu.training.randomness import RandomStates

__all__ = ["Trainer", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


class Trainer:
    """Owns the state of one run: model, optimizer, schedule position, history, random states.

    `train(...)` is the usual entry point; use a Trainer directly to step through a run or inspect
    its optimizer. `callbacks` are called as `callback(trainer)` after every optimizer step.
    Inside a process group (`distributed.process_group()`, torchrun) it trains data-parallel:
    `ranks` says where this process stands and `data_parallel` is the DDP wrapper (else None).
    """

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None, *,
                 checkpoint_path: str | os.PathLike | None = None,
                 callbacks: Sequence[Callable[[Trainer], None]] = (),
                 metadata: dict[str, Any] | None = None) -> None:
        self.config = config = config if config is not None else TrainConfig()
        config.validate()
        self.data = data
        self.tokenizer = data.tokenizer
        self.ranks = current_ranks()
        self.is_main = self.ranks is None or self.ranks.is_main
        # Before anything else can fail on one process only: all agree, or all refuse together.
        check_same_settings(self._settings(model), self.ranks)
        per_process_batch(config.batch_size, self.ranks)
        self.device = rank_device(config.device, self.ranks)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        check_sizes(self.model, data, config)
        # This process's windows of each global batch (all of them when training alone).
        self.batch_rows = slice(None)
        self.data_parallel: DistributedDataParallel | None = None
        if self.ranks is not None:
            share = per_process_batch(config.batch_size, self.ranks)
            self.batch_rows = slice(self.ranks.rank * share, (self.ranks.rank + 1) * share)
            # Copies process 0's weights to the others, and averages gradients from then on.
            self.data_parallel = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        forward = self.data_parallel if self.data_parallel is not None else self.model
        self.forward = torch.compile(forward) if config.compile else forward
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config.weight_decay),
                                           lr=config.lr, betas=(config.beta1, config.beta2))
        self.scaler = gradient_scaler(self.precision, self.device)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.callbacks = list(callbacks)
        self.metadata = dict(metadata or {})
        self.history = History()
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        # What the next history record averages: loss sum, steps, tokens and seconds since the
        # last record (saved in checkpoints, so a resumed run logs the same means).
        self.log_window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        self.last_checkpoint_step: int | None = None
        self.resumed_changes: list[str] = []  # budget / lr changes accepted by resume()
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.random = RandomStates(config.seed, self.device,
                                   rank=self.ranks.rank if self.ranks is not None else 0)
        # Set while a step is under way: the random state it began with, and whether the weights
        # are being updated (see _save_after_interrupt).
        self._step_start_rng: dict[str, Any] | None = None
        self._updating = False

    def _settings(self, model: nn.Module) -> dict[str, Any]:
        """What every process of a data-parallel run must share (compared when it starts)."""
        model_config = getattr(model, "config", None)
        return {"model_class": type(model).__name__,
                "model": model_config.to_dict() if model_config is not None else {},
                "train": self.config.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                "data": data_fingerprint(self.data)}

    # ----- state: everything a checkpoint holds
    def checkpoint(self, rng_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's state as plain containers and tensors (what `save_checkpoint` writes).
        The model's own state dict: never the DDP wrapper's, whose names start with "module."."""
        model_config = getattr(self.model, "config", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_class": type(self.model).__name__,
            "model_config": model_config.to_dict() if model_config is not None else {},
            "tokenizer": self.tokenizer.to_dict(),
            "train_config": self.config.to_dict(),
            "data": data_fingerprint(self.data),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "log_window": dict(self.log_window),
            "history": self.history.to_dict(),
            "rng": rng_state if rng_state is not None else self.random.state(),
            "metadata": dict(self.metadata),
            "torch_version": str(torch.__version__),  # TorchVersion is not a plain str
        }

    def save(self, path: str | os.PathLike | None = None, rng_state=None) -> Path:
        """Write the checkpoint (in a data-parallel run, process 0 writes; the others only note
        the step: every process holds the same weights and optimizer state)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one to save() or to the Trainer")
        if self.is_main:
            save_checkpoint(path, self.checkpoint(rng_state))
        self.last_checkpoint_step = self.step
        return path

    def differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """How this run differs from a checkpoint in ways resuming cannot accept."""
        return resumable_differences(checkpoint, self.model, self.config, self.tokenizer,
                                     data_fingerprint(self.data))

    def resume(self, checkpoint: dict[str, Any] | str | os.PathLike) -> None:
        """Continue the run stored in `checkpoint`; refuses (ValueError) a model, data or recipe
        change. A new budget (steps, minutes) or learning rate is accepted and listed in
        `resumed_changes`."""
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint)
        differences = self.differences(checkpoint)
        if differences:
            raise ValueError(
                "refusing to resume: this run's configuration differs from the checkpoint's:\n  "
                + "\n  ".join(differences)
                + "\nResume with the same settings, or start a new run in another directory."
            )
        self.resumed_changes = config_differences(
            checkpoint["train_config"], self.config.to_dict(), "", only=("steps", "minutes", "lr"))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = checkpoint["step"]
        self.tokens_seen = checkpoint["tokens_seen"]
        self.elapsed = checkpoint["elapsed"]
        self.log_window = dict(checkpoint.get("log_window", self.log_window))
        self.history = History.from_dict(checkpoint["history"])
        self.metadata = {**checkpoint.get("metadata", {}), **self.metadata}
        self.random.set_state(checkpoint["rng"], step=self.step)
        self.last_checkpoint_step = self.step

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

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `grad_accum` micro-batches; returns (loss in nats, lr)."""
        config = self.config
        self._step_start_rng = self.random.state()
        lr = learning_rate(config, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        with self.random.dropout():
            for micro_step in range(config.grad_accum):
                # Every process draws the same global batch and trains on its own rows of it.
                inputs, targets = sample_batch(self.data.train_ids, config.batch_size,
                                               config.block_size, self.random.batches)
                inputs = inputs[self.batch_rows].to(self.device, non_blocking=True)
                targets = targets[self.batch_rows].to(self.device, non_blocking=True)
                with self._gradient_sync(micro_step == config.grad_accum - 1):
                    with autocast_context(self.precision, self.device):
                        logits = self.forward(inputs)
                    loss = language_model_loss(logits, targets) / config.grad_accum
                    self.scaler.scale(loss).backward()
                total_loss += loss.detach()
        if self.ranks is not None:
            # The global batch's loss, the same on every process: a NaN anywhere stops them all.
            self.ranks.mean_(total_loss)
        self.scaler.unscale_(self.optimizer)
        max_norm = config.grad_clip if config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # One host-device sync per step: both numbers must be finite before the update is applied
        # (under fp16 an infinite gradient only means the loss scale was too high: the scaler
        # skips that update and lowers the scale).
        loss_value, norm_value = torch.stack([total_loss, grad_norm.float()]).tolist()
        scaled = self.scaler.is_enabled()
        if not math.isfinite(loss_value) or not (scaled or math.isfinite(norm_value)):
            raise TrainingDiverged(self._divergence_message(loss_value, norm_value, lr))
        self._updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.random.commit_dropout()
        self.step += 1
        self.tokens_seen += config.batch_size * config.block_size * config.grad_accum
        self._updating = False
        self._step_start_rng = None
        return loss_value, lr

    def _gradient_sync(self, last_micro_step: bool):
        """Data-parallel gradient accumulation: the all-reduce only runs after the last
        micro-batch's backward pass (DDP's `no_sync` keeps the others local)."""
        if self.data_parallel is None or last_micro_step:
            return contextlib.nullcontext()
        return self.data_parallel.no_sync()

    def _divergence_message(self, loss: float, norm: float, lr: float) -> str:
        kept = (
            f"the last good checkpoint ({self.checkpoint_path}, step {self.last_checkpoint_step}) "
            "is kept unchanged"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        return (
            f"training stopped at step {self.step + 1}: the loss became {loss} (gradient norm "
            f"{norm}); the update was not applied and {kept}. Try a lower learning rate (now "
            f"{lr:.3g}; on resume pass --lr), precision='fp32', or a smaller grad_clip"
        )

    def _should_checkpoint(self, evaluated: bool) -> bool:
        if self.checkpoint_path is None:
            return False
        if self.config.checkpoint_every is None:
            return evaluated
        return self.step % self.config.checkpoint_every == 0

    def _progress_bar(self):
        from tqdm.auto import tqdm

        config = self.config
        hidden = not (config.progress and self.is_main)
        if config.steps is not None:
            return tqdm(total=config.steps, initial=self.step, unit="step",
                        disable=hidden, dynamic_ncols=True)
        return tqdm(total=round(60 * config.minutes), initial=round(self.elapsed), unit="s",
                    disable=hidden, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s [{elapsed}{postfix}]")

    def run(self) -> History:
        """Train until the budget is spent; returns the history (also at `self.history`)."""
        if self.ranks is not None and self.is_main:
            share = per_process_batch(self.config.batch_size, self.ranks)
            processes = f"{self.ranks.world_size} process" + "es" * (self.ranks.world_size > 1)
            print(f"data parallel: {processes} ({self.device.type}), "
                  f"global batch {self.config.batch_size} windows = {self.ranks.world_size} x "
                  f"{share} per process, of {self.config.block_size} tokens", flush=True)
        bar = self._progress_bar()
        try:
            with _stop_signals_finish_step(self):
                while not self.finished():
                    self._timed_step(bar)
                    for callback in self.callbacks:
                        callback(self)
                    if self._stop_agreed():
                        raise KeyboardInterrupt
                if self.checkpoint_path is not None and self.last_checkpoint_step != self.step:
                    self.save()
        except KeyboardInterrupt as interrupt:
            interrupt.stop_signal = self.stop_signal  # so a caller can tell SIGTERM from Ctrl-C
            self._save_after_interrupt()
            raise
        finally:
            bar.close()
        return self.history

    def _stop_agreed(self) -> bool:
        """Whether to stop now. Data-parallel processes agree after every step (one tiny
        all-reduce): a Ctrl-C or SIGTERM that reached any of them stops them all."""
        if self.ranks is None:
            return self.stop_requested
        mine = (self.stop_signal or 1) if self.stop_requested else 0  # 1: asked by a callback
        agreed = self.ranks.any(mine)
        if agreed:
            self.stop_requested = True
            if self.stop_signal is None and agreed > 1:
                self.stop_signal = agreed
        return bool(agreed)

    def _timed_step(self, bar) -> None:
        """One step, its clock, the progress bar, and a history record when one is due."""
        config = self.config
        started = time.perf_counter()
        loss, lr = self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        if self.ranks is not None:
            # One clock for all processes (the slowest one's), so a time budget ends for all of
            # them at the same step and the learning rate follows the same schedule.
            seconds = self.ranks.max(self.elapsed + seconds) - self.elapsed
        self.elapsed += seconds
        window = self.log_window
        window["loss"] += loss
        window["steps"] += 1
        window["tokens"] += config.batch_size * config.block_size * config.grad_accum
        window["seconds"] += seconds
        if config.steps is not None:
            bar.update(1)
        else:
            bar.n = min(round(self.elapsed), bar.total)
            bar.refresh()
        evaluate = self.step % config.eval_every == 0 or self.finished()
        if evaluate or self.step % config.log_every == 0:
            self._record(lr, evaluate, bar)

    def _record(self, lr: float, evaluate: bool, bar) -> None:
        window = self.log_window
        mean_loss = window["loss"] / window["steps"]
        val_bpc = self.evaluate() if evaluate and self.is_main else None
        self.history.append(step=self.step, tokens=self.tokens_seen, elapsed=self.elapsed,
                            train_loss=mean_loss, train_bpc=mean_loss / LN2, val_bpc=val_bpc,
                            lr=lr)
        postfix = {"loss": f"{mean_loss:.3f}", "bpc": f"{mean_loss / LN2:.3f}", "lr": f"{lr:.2e}",
                   "tok/s": f"{window['tokens'] / max(window['seconds'], 1e-9):,.0f}"}
        if self.history.last_val_bpc is not None:
            postfix["val_bpc"] = f"{self.history.last_val_bpc:.3f}"
        bar.set_postfix(postfix, refresh=False)
        self.log_window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        if self._should_checkpoint(evaluate):
            self.save()

    def _save_after_interrupt(self) -> None:
        if self.checkpoint_path is None:
            return
        if self._updating:
            # Cut off inside optimizer.step(): some weights may hold the new values and some the
            # old, which no step number describes. Keep the previous checkpoint instead.
            if self.is_main:
                print(f"interrupted during a weight update: kept {self.checkpoint_path} "
                      f"(step {self.last_checkpoint_step})")
            return
        # Between steps, or inside one before its update: weights and optimizer are exactly those
        # after `self.step` steps; a step under way is replayed from the random state it began
        # with (the loss window holds only finished steps).
        self.save(rng_state=self._step_start_rng)
        self._step_start_rng = None
        if self.is_main:
            print(f"interrupted: saved {self.checkpoint_path} at step {self.step}; resume to "
                  "continue")


@contextlib.contextmanager
def _stop_signals_finish_step(trainer: Trainer):
    """While training in the main thread, a first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop
    after the current step (it then saves a checkpoint and raises KeyboardInterrupt); a second one
    interrupts at once. Signals someone else already handles are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {signum: signal.getsignal(signum) for signum in defaults}
    ours = [signum for signum, handler in previous.items() if handler is defaults[signum]]

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        trainer.stop_signal = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if trainer.is_main:
            print(f"\n{name}: stopping after this step and saving a checkpoint (again to stop "
                  "now)")

    for signum in ours:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])


def train(model: nn.Module, data, config: TrainConfig | None = None, *,
          checkpoint_path: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, callbacks: Sequence[Callable[[Trainer], None]] = (),
          metadata: dict[str, Any] | None = None) -> History:
    """Train `model` (in place) on `data` (a `PreparedData`: tokenizer, train_ids, val_ids).

    checkpoint_path: where to keep the run's checkpoint (written at every evaluation, or every
        `config.checkpoint_every` steps, at the end and on Ctrl-C); None trains without saving.
        Its folder is locked for the whole run: a second run into it is refused.
    resume: continue the run stored at `checkpoint_path` (same model, data and recipe; a new
        budget or learning rate is accepted and printed).
    overwrite: allow a fresh run to replace an existing checkpoint at `checkpoint_path`.

    Returns the `History`. Raises `TrainingDiverged` if the loss stops being finite. After Ctrl-C
    or SIGTERM it saves the checkpoint and raises KeyboardInterrupt, whose `stop_signal` is the
    signal's number (None when the interrupt came from elsewhere).

    Data-parallel (called inside `distributed.process_group()` on every process torchrun
    started): `config.batch_size` is the global batch, split evenly across the processes; only
    process 0 locks the folder, evaluates and writes; the other processes' histories hold the
    training losses only (no val_bpc).
    """
    if checkpoint_path is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_path")
        return Trainer(model, data, config, callbacks=callbacks, metadata=metadata).run()
    main = current_ranks() is None or current_ranks().is_main
    with run_folder_lock(Path(checkpoint_path).parent) if main else contextlib.nullcontext():
        trainer = Trainer(model, data, config, checkpoint_path=checkpoint_path,
                          callbacks=callbacks, metadata=metadata)
        exists = Path(checkpoint_path).exists()
        if resume:
            if not exists:
                raise FileNotFoundError(f"nothing to resume: no checkpoint at {checkpoint_path}")
            trainer.resume(checkpoint_path)
            for change in trainer.resumed_changes if main else ():
                print(f"resuming with a changed setting: {change}")
        elif exists and not overwrite:
            raise ValueError(
                f"{checkpoint_path} already holds a checkpoint: resume it (resume=True / --resume) "
                "or choose another path (overwrite=True replaces it)"
            )
        return trainer.run()
