"""Checkpoint contents: what each entry of a checkpoint must hold, checked as the file is read.

`check_entries` checks every entry's type (the required ones and those a checkpoint may lack);
`check_run_record` the run's recipe (`train_config`), counters (`step`, `tokens_seen`,
`elapsed`, ...), history and log window, which commands print and model cards record. What
only a resumed run uses (optimizer, loss scaler, random states) is checked against the run it is
loaded into: `check_optimizer_state`, and `damaged_entry` around each load. Every refusal is
one line naming the file and the entry, quoting at most a short piece of what it holds.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from hourglass_edu.files import quoted
from hourglass_edu.training.config import TrainConfig

__all__: list[str] = []  # no public names: the modules that use these import them by name

# Each required entry and the type it must have.
REQUIRED_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "format": str, "version": int, "model_config": dict, "tokenizer": dict, "train_config": dict,
    "model": dict, "optimizer": dict, "step": int, "tokens_seen": int, "elapsed": (int, float),
    "history": dict, "rng": dict,
}
# Entries a checkpoint may lack (older versions, or a run that never used them).
OPTIONAL_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "model_class": str, "data": dict, "scaler": dict, "skipped_steps": int, "log_window": dict,
    "metadata": dict, "torch_version": str,
}
# The largest count a checkpoint may hold: the largest whole number a JSON reader keeps exact
# (model cards are JSON), and more steps or seconds than any run could take.
MAX_COUNT = 2**53
LOG_WINDOW_KEYS = ("loss", "steps", "tokens", "seconds")


def check_entries(checkpoint: dict[str, Any], where: str) -> None:
    """Raise ValueError for a missing required entry, or any entry of the wrong type."""
    missing = [key for key in REQUIRED_ENTRIES if key not in checkpoint]
    if missing:
        raise ValueError(f"{where} is an incomplete hourglass_edu checkpoint: missing {missing}")
    for key, kind in {**REQUIRED_ENTRIES, **OPTIONAL_ENTRIES}.items():
        if key not in checkpoint:
            continue
        value = checkpoint[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{where}: entry {key!r} should be {getattr(kind, '__name__', kind)}"
                             f", got {type(value).__name__}; the file is damaged")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_counters(checkpoint: dict[str, Any], config: TrainConfig, where: str) -> None:
    for key in ("step", "tokens_seen", "skipped_steps", "elapsed"):
        value = checkpoint.get(key, 0)
        if not _number(value) or not 0 <= value <= MAX_COUNT:
            raise ValueError(f"{where}: entry {key!r} is {quoted(value)}, not a count from 0 to "
                             f"{MAX_COUNT:,}; the file is damaged")
    per_step = config.batch_size * config.grad_accum * config.block_size
    step, tokens = checkpoint["step"], checkpoint["tokens_seen"]
    if tokens != step * per_step:
        raise ValueError(f"{where}: entry 'tokens_seen' is {tokens:,}, but {step:,} steps of "
                         f"{per_step:,} tokens (its train_config) make {step * per_step:,}; "
                         "the file is damaged")


def _check_history(history: dict[str, Any], where: str) -> None:
    records = history.get("records")
    if not isinstance(records, list):
        raise ValueError(f"{where}: entry 'history' should hold a list of 'records', got "
                         f"{type(records).__name__}; the file is damaged")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not all(
                isinstance(key, str) and (value is None or _number(value))
                for key, value in record.items()):
            raise ValueError(f"{where}: history record {index} should map names to numbers, got "
                             f"{quoted(record)}; the file is damaged")


def check_run_record(checkpoint: dict[str, Any], where: str) -> None:
    """The run's recipe, counters, history and log window (its entries' types already checked)."""
    try:
        config = TrainConfig.from_dict(checkpoint["train_config"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: entry 'train_config' is damaged ({quoted(error)})") from None
    _check_counters(checkpoint, config, where)
    _check_history(checkpoint["history"], where)
    data = checkpoint.get("data", {})
    if not isinstance(data.get("corpus"), (str, type(None))) or not all(
            isinstance(key, str) and (value is None or isinstance(value, str) or _number(value))
            for key, value in data.items()):
        raise ValueError(f"{where}: entry 'data' should map names to text or numbers (the "
                         f"corpus and its counts), got {quoted(data)}; the file is damaged")
    window = checkpoint.get("log_window", {})
    if not (set(window) <= set(LOG_WINDOW_KEYS) and all(_number(v) for v in window.values())):
        raise ValueError(f"{where}: entry 'log_window' should map {list(LOG_WINDOW_KEYS)} to "
                         f"numbers, got {quoted(window)}; the file is damaged")
    scaler = checkpoint.get("scaler", {})  # GradScaler.state_dict(): its scale and counters
    if not all(isinstance(key, str) and _number(value) for key, value in scaler.items()):
        raise ValueError(f"{where}: entry 'scaler' should map names to numbers, got "
                         f"{quoted(scaler)}; the file is damaged")


def check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer,
                          where: str) -> None:
    """Raise ValueError unless `saved` (an optimizer's state dict) fits `optimizer`: the same
    groups of parameters, and every state tensor the shape of its parameter
    (`Optimizer.load_state_dict` checks the counts only, and a wrong shape fails mid-step)."""
    groups, state = saved.get("param_groups"), saved.get("state")
    current = optimizer.param_groups
    if not (isinstance(groups, list) and isinstance(state, dict) and len(groups) == len(current)
            and all(isinstance(group, dict) and isinstance(group.get("params"), list)
                    and len(group["params"]) == len(now["params"])
                    and all(isinstance(index, int) for index in group["params"])
                    for group, now in zip(groups, current, strict=False))):
        raise ValueError(f"{where}: entry 'optimizer' does not hold the state of this model's "
                         "optimizer (its parameter groups differ); the file is damaged")
    for group, now in zip(groups, current, strict=True):
        for saved_id, parameter in zip(group["params"], now["params"], strict=True):
            entry = state.get(saved_id, {})
            if not isinstance(entry, dict) or not all(
                    isinstance(value, (torch.Tensor, int, float)) for value in entry.values()):
                raise ValueError(f"{where}: entry 'optimizer' holds {quoted(entry)} as the state "
                                 "of a parameter, not a dict of tensors; the file is damaged")
            for name, value in entry.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and (
                        value.shape != parameter.shape):
                    raise ValueError(f"{where}: optimizer state {name!r} of a parameter of shape "
                                     f"{tuple(parameter.shape)} has shape {tuple(value.shape)}; "
                                     "the file is damaged")


def _byte_state(state: Any, size: int | None = None) -> bool:
    return (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1
            and (size is None or state.numel() == size))


def check_random_states(rng: dict[str, Any], where: str) -> None:
    """The batch generator's and dropout's saved states (randomness.py) are byte tensors of the
    size torch's CPU generator takes; dropout's is set only as a step starts, so a damaged one
    would fail there, mid-run, without this."""
    dropout = rng.get("dropout", {"cpu": rng.get("torch_cpu")})  # version 1 kept "torch_cpu"
    size = torch.get_rng_state().numel()
    if not (_byte_state(rng.get("batch"), size) and isinstance(dropout, dict)
            and _byte_state(dropout.get("cpu"), size)
            and all(_byte_state(state) for state in dropout.values())):
        raise ValueError(f"{where}: entry 'rng' should hold the batch and dropout random states "
                         f"(byte tensors of {size:,} for the CPU), got {quoted(rng)}; the file "
                         "is damaged: resume from another copy of the run, or start a new run")


def check_optimizer_settings(optimizer: torch.optim.Optimizer, where: str) -> None:
    """After `load_state_dict` (which fills the settings newer torch versions added): every
    group holds every setting of its optimizer, or a step would fail on a missing key."""
    for group in optimizer.param_groups:
        missing = sorted(set(optimizer.defaults) - set(group))
        if missing:
            raise ValueError(f"{where}: entry 'optimizer' lacks the settings {missing} of a "
                             "parameter group; the file is damaged: resume from another copy "
                             "of the run, or start a new run")


@contextlib.contextmanager
def damaged_entry(where: str, entry: str) -> Iterator[None]:
    """Loading entry `entry` into a run: an error there (torch's, or a missing key) becomes one
    line naming the file and the entry, and what to do."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise ValueError(f"{where}: entry {entry!r} cannot be loaded into this run "
                         f"({type(error).__name__}: {quoted(error)}); the file is damaged: "
                         "resume from another copy of the run, or start a new run") from None
