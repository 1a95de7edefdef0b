"""`train(model, data, config)`: one training run, from scratch or from its checkpoint.

It locks the run folder for the whole run (a second run into it is refused), starts fresh
(run_folders.py: an earlier run's best.pt is removed, so it never passes for this run's) or
resumes (resuming.py says what may change), and runs a `Trainer` (trainer.py) to the end of its
budget. Beside the run's checkpoint it keeps `best.pt`, the weights of the best validation so
far.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hourglass_edu.loading import record_tokenizer
from hourglass_edu.training.config import TrainConfig, check_training_inputs
from hourglass_edu.training.distributed import current_ranks
from hourglass_edu.training.evaluation import History
from hourglass_edu.training.run_folders import run_folder_lock, start_fresh_run
from hourglass_edu.training.trainer import Trainer

__all__ = ["train"]
def train(model: nn.Module, data, config: TrainConfig | None = None, *,
          checkpoint_path: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, callbacks: Sequence[Callable[[Trainer], None]] = (),
          metadata: dict[str, Any] | None = None) -> History:
    """Train `model` (in place) on `data` (a `PreparedData`: tokenizer, train_ids, val_ids).
    The model then belongs to `data.tokenizer` (`loading.record_tokenizer`): generation refuses
    another vocabulary.

    checkpoint_path: where to keep the run's checkpoint (written at every evaluation, or every
        `config.checkpoint_every` steps, at the end and on Ctrl-C); None trains without saving.
        Beside it, `best.pt` keeps the weights of the best validation so far (same format).
        Its folder is locked for the whole run: a second run into it is refused.
    resume: continue the run stored at `checkpoint_path` (same model, data and recipe; a new
        budget, learning rate or batch_size x grad_accum split of the same windows is accepted
        and printed).
    overwrite: allow a fresh run to replace an existing checkpoint at `checkpoint_path`.

    Returns the `History`. Raises `TrainingDiverged` if the loss stops being finite and
    `TrainingOutOfMemory` (saying which settings fit) if a step does not fit in memory. After
    Ctrl-C or SIGTERM it saves the checkpoint and raises `stopping.RunInterrupted` (a
    KeyboardInterrupt), whose `stop_signal` is the signal's number (None when no signal asked).

    Data-parallel (called inside `distributed.process_group()` on every process torchrun
    started): `config.batch_size` is the global batch, split evenly across the processes; only
    process 0 locks the folder, evaluates and writes; the other processes' histories hold the
    training losses only (no val_bpc).
    """
    check_training_inputs(model, data, config)  # before a run folder is locked or created
    if checkpoint_path is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_path")
        trainer = Trainer(model, data, config, callbacks=callbacks, metadata=metadata)
        record_tokenizer(model, data.tokenizer)  # the model learns this vocabulary's ids
        return trainer.run()
    main = current_ranks() is None or current_ranks().is_main
    with run_folder_lock(Path(checkpoint_path).parent) if main else contextlib.nullcontext():
        trainer = Trainer(model, data, config, checkpoint_path=checkpoint_path,
                          callbacks=callbacks, metadata=metadata)
        record_tokenizer(model, data.tokenizer)
        if resume:
            if not Path(checkpoint_path).exists():
                raise FileNotFoundError(f"nothing to resume: no checkpoint at {checkpoint_path}")
            trainer.resume(checkpoint_path)
            for change in trainer.resumed_changes if main else ():
                print(f"resuming with a changed setting: {change}")
        else:
            start_fresh_run(Path(checkpoint_path), overwrite=overwrite, main=main)
        return trainer.run()
