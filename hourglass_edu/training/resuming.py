"""What a running Trainer's checkpoint holds, and how a Trainer continues the run stored in one.

`run_checkpoint(trainer)` gathers the run's whole state (weights, optimizer, loss scaler, the
`RunState` of run_state.py, random states) as plain containers and tensors;
`restore_run(trainer, checkpoint)` puts it back after checking that the run is the same
(model, data, recipe), and that its optimizer, scaler and random states fit the run
(checkpoint_checks.py: one line naming the file and the entry, never torch's raw message).
Resuming may change what does not change the numbers a run computes (the
progress bar, the device, ...), the budget and the learning rate (checkpoints.RESUMABLE_CHANGES),
the model's dropout (RESUMABLE_MODEL_CHANGES: it has no weights),
and the split of each step's windows into micro-batches: `batch_size` and `grad_accum` together,
as long as their product stays (the step draws all its windows at once, so the batches stay the
same and the run continues identically up to float rounding). That is the way out of memory on
resume: half the batch size, twice the accumulation.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hourglass_edu.training.checkpoint_checks import (
    check_optimizer_settings,
    check_optimizer_state,
    check_random_states,
    damaged_entry,
)
from hourglass_edu.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    RESUMABLE_MODEL_CHANGES,
    config_differences,
    data_fingerprint,
    load_checkpoint,
    resumable_differences,
)
from hourglass_edu.training.run_state import RunState

__all__: list[str] = []  # no public names: the modules that use these import them by name

# Train settings that may change on resume as long as their product (the windows per step) stays.
BATCH_SPLIT = ("batch_size", "grad_accum")


def run_checkpoint(trainer, rng_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's state (what `save_checkpoint` writes). The model's own state dict: never the DDP
    wrapper's, whose names start with "module."."""
    model_config = getattr(trainer.model, "config", None)
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(trainer.model).__name__,
        "model_config": model_config.to_dict() if model_config is not None else {},
        "tokenizer": trainer.tokenizer.to_dict(),
        "train_config": trainer.config.to_dict(),
        "data": data_fingerprint(trainer.data),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        **trainer.state.to_dict(),  # step, tokens_seen, elapsed, history, metadata, ...
        "rng": rng_state if rng_state is not None else trainer.random.state(),
        "torch_version": str(torch.__version__),  # TorchVersion is not a plain str
    }


def same_windows_per_step(saved: dict[str, Any], config) -> bool:
    """Whether `config` splits each step into the same number of windows as the saved run."""
    return all(name in saved for name in BATCH_SPLIT) and (
        saved["batch_size"] * saved["grad_accum"] == config.batch_size * config.grad_accum)


def run_differences(trainer, checkpoint: dict[str, Any]) -> list[str]:
    """How the trainer's run differs from a checkpoint's in ways resuming cannot accept."""
    config, saved = trainer.config, checkpoint["train_config"]
    if same_windows_per_step(saved, config):  # another split of the same windows is accepted
        config = config.replace(**{name: saved[name] for name in BATCH_SPLIT})
    return resumable_differences(checkpoint, trainer.model, config, trainer.tokenizer,
                                 data_fingerprint(trainer.data))


def restore_run(trainer, checkpoint: dict[str, Any] | str | os.PathLike
                ) -> tuple[RunState, list[str]]:
    """Load `checkpoint`'s weights, optimizer, scaler and random states into `trainer`'s own
    objects, or refuse (ValueError, listing every difference, or naming the entry of the file
    that does not fit). Returns the saved `RunState` and the changed settings resume accepted."""
    where = "the checkpoint"
    if not isinstance(checkpoint, dict):
        where = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint)
    differences = run_differences(trainer, checkpoint)
    if differences:
        raise ValueError(
            "refusing to resume: this run's configuration differs from the checkpoint's:\n  "
            + "\n  ".join(differences)
            + "\nResume with the same settings, or start a new run in another directory."
        )
    changes = config_differences(
        checkpoint["train_config"], trainer.config.to_dict(), "",
        only=("steps", "minutes", "lr", *BATCH_SPLIT))
    model_config = getattr(trainer.model, "config", None)
    if model_config is not None:
        changes += config_differences(
            checkpoint["model_config"], model_config.to_dict(), "", only=RESUMABLE_MODEL_CHANGES)
    check_optimizer_state(checkpoint["optimizer"], trainer.optimizer, where)
    check_random_states(checkpoint["rng"], where)
    trainer.model.load_state_dict(checkpoint["model"])
    with damaged_entry(where, "optimizer"):
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    check_optimizer_settings(trainer.optimizer, where)
    if checkpoint.get("scaler"):
        with damaged_entry(where, "scaler"):
            trainer.scaler.load_state_dict(checkpoint["scaler"])
    state = RunState.from_dict(checkpoint)
    state.metadata.update(trainer.state.metadata)  # this run's own metadata wins
    with damaged_entry(where, "rng"):
        trainer.random.set_state(checkpoint["rng"], step=state.step)
    return state, changes
