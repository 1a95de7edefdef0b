"""Checkpoints: one file per run holding everything needed to resume it exactly, checked on load.

A checkpoint is a dict of plain containers and tensors: the model class and config, tokenizer,
train config, weights, optimizer, schedule position, history and random states. It is written
atomically (`files.atomic_writer`) and read with `torch.load(weights_only=True)`, so a file
cannot run code when it is loaded (torch's own check names what a crafted file would import),
after `loading.check_archive_sizes` has bounded what the load would inflate.
Before any model is built, `load_checkpoint` checks the schema (types, required keys, counters
and history: checkpoint_checks.py), the config (sized on the meta device by
`loading.model_shapes`, so a crafted file cannot ask for a huge allocation), the tokenizer
against the embedding, every tensor's name, shape and dtype against the config, and that every
weight is finite.

What a run folder may hold, and its lock: run_folders.py.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from hourglass_edu.data import CharTokenizer
from hourglass_edu.data.provenance import CORPUS_SOURCE_KEYS, corpus_source
from hourglass_edu.devices import resolve_device
from hourglass_edu.files import (
    atomic_writer,
    quoted,
    recover_folder_replacement,
)
from hourglass_edu.lm import check_weights
from hourglass_edu.loading import check_archive_sizes, check_finite_weights, record_tokenizer
from hourglass_edu.model_folders import WEIGHTS_NAME, is_model_folder, load_model_folder
from hourglass_edu.registry import build_model_from_config, model_shapes
from hourglass_edu.training.checkpoint_checks import check_entries, check_run_record

__all__ = [
    "CHECKPOINT_NAME",
    "load_checkpoint",
    "load_model",
    "model_checkpoint_file",
    "model_from_checkpoint",
    "model_source",
]

CHECKPOINT_FORMAT = "hourglass_edu.checkpoint"
CHECKPOINT_VERSION = 2  # 2 added "model_class"; version 1 files hold an HourglassLM
CHECKPOINT_NAME = "checkpoint.pt"
BEST_CHECKPOINT_NAME = "best.pt"  # beside checkpoint.pt: the weights of the best validation
DEFAULT_MODEL_CLASS = "HourglassLM"

# Train settings a resumed run may change: what is printed or how fast it runs, never which
# numbers it computes; and the budget and learning rate (a longer run, or a lower rate after a
# divergence: the schedule continues from where the run is, under the new values).
RESUMABLE_CHANGES = frozenset({"progress", "device", "compile", "log_every", "eval_every",
                               "checkpoint_every", "steps", "minutes", "lr"})
# Model settings a resumed run may change: dropout acts only while training and has no weights,
# so a run that has begun to learn its corpus by heart can continue with it (or without it).
RESUMABLE_MODEL_CHANGES = frozenset({"dropout"})

def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically: a crash leaves either the old file or the new."""
    with atomic_writer(path) as handle:
        torch.save(checkpoint, handle)
    return Path(path)


def _unsafe_globals(path: Path) -> list[str]:
    """The `module.name`s a torch.save file would import beyond tensors and plain containers,
    read without unpickling it (torch >= 2.5; older torch cannot tell, and says nothing)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return list(finder(path))
    except Exception:  # not a torch.save zip file: torch.load's refusal says the rest
        return []


def _read(path: Path, map_location) -> Any:
    """`torch.load(weights_only=True)` with one clear ValueError for every way it can refuse."""
    check_archive_sizes(path)  # first: even torch's look at the imports inflates data.pkl
    imports = _unsafe_globals(path)
    if imports:
        raise ValueError(
            f"refused to load {path}: it asks to import {', '.join(dict.fromkeys(imports))}, "
            "which could run code when unpickled. hourglass_edu checkpoints hold only tensors "
            "and plain containers; only open files from sources you trust"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we say it better
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # unpickling, zip, EOF or decoding errors
        raise ValueError(f"{path} is not a checkpoint (truncated, damaged, not a PyTorch file, "
                         "or a pickle of more than tensors and plain containers)") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint written by `train`. A directory means DIR/checkpoint.pt.

    Raises FileNotFoundError for a missing file and ValueError (saying what is wrong) for a
    truncated, foreign, unsafe or inconsistent one.
    """
    path = Path(path)
    _refuse_model_folder(path)
    if path.is_dir():
        if path.name == CHECKPOINT_NAME and not (path / CHECKPOINT_NAME).exists():
            raise ValueError(f"{path} is a folder, not a checkpoint file: a training run writes "
                             f"OUT/{CHECKPOINT_NAME} as a file; pass the run folder or that file")
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "missing"
        raise FileNotFoundError(f"no checkpoint at {path} ({what}): a training run writes "
                                f"OUT/{CHECKPOINT_NAME}; check the path")
    try:
        checkpoint = _read(path, map_location)
        validate_checkpoint(checkpoint, where=str(path))
    except ValueError as error:
        other = _other_checkpoint(path)
        if not other:
            raise
        raise ValueError(f"{error}{other}") from None
    return checkpoint


def _other_checkpoint(path: Path) -> str:
    """For a refused best.pt: the run's last checkpoint beside it may still be good."""
    last = path.with_name(CHECKPOINT_NAME)
    if path.name != BEST_CHECKPOINT_NAME or not last.is_file():
        return ""
    return (f" (the run's last checkpoint, {last}, may still be good: name that file to use "
            "it)")


def _refuse_model_folder(path: Path) -> None:
    """A model folder (or a file in one) where a checkpoint is needed: say what it is."""
    folder = path if path.is_dir() else path.parent
    if is_model_folder(folder) and not (path.is_file() and path.suffix == ".pt"):
        raise ValueError(
            f"{path} is a model folder (export writes them: weights, config and card, without "
            "the optimizer state and history of a training run); sample or evaluate it as it is "
            f"(`load_model`, or `ckpt` {folder}), and to fine-tune or resume, pass the run folder "
            "it was exported from"
        )


def _check_schema(checkpoint: Any, where: str) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        held = f"a {type(checkpoint).__name__}" if not isinstance(checkpoint, dict) else "a dict"
        raise ValueError(f"{where} is a PyTorch file but not an hourglass_edu checkpoint (it "
                         f"holds {held} without a 'format': {CHECKPOINT_FORMAT!r} entry)")
    version = checkpoint.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: 'version' must be a positive integer, got {quoted(version)}")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{where} has checkpoint version {version:,}, newer than this library "
                         f"reads ({CHECKPOINT_VERSION}); upgrade hourglass_edu")
    check_entries(checkpoint, where)


def validate_checkpoint(checkpoint: Any, where: str = "checkpoint") -> None:
    """Schema, counters, config, tokenizer, tensor names, shapes and dtypes, checked without
    allocating the model; then every weight's values are finite."""
    _check_schema(checkpoint, where)
    check_run_record(checkpoint, where)
    class_name = checkpoint.get("model_class", DEFAULT_MODEL_CLASS)
    shapes = model_shapes(class_name, checkpoint["model_config"], where)
    try:
        tokenizer = CharTokenizer.from_dict(checkpoint["tokenizer"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}: {type(error).__name__}: {quoted(error, 300)}") from None
    vocab_size = shapes.config.vocab_size
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} entries but the "
                         f"model's embedding {vocab_size} rows; the file is damaged")
    check_weights(shapes, checkpoint["model"], where)
    check_finite_weights(checkpoint["model"], where)


def model_from_checkpoint(checkpoint: dict | str | os.PathLike, device: str = "cpu"):
    """Rebuild `(model, tokenizer)` from a checkpoint (a dict from `load_checkpoint`, or a path).

    Works for every model class of the package; the model is in eval mode on `device`.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    model = build_model_from_config(checkpoint.get("model_class", DEFAULT_MODEL_CLASS),
                                    checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    tokenizer = CharTokenizer.from_dict(checkpoint["tokenizer"])
    record_tokenizer(model, tokenizer)
    return model.to(resolve_device(device)).eval(), tokenizer


def best_checkpoint_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where a run keeps its best-validation checkpoint: RUN/best.pt beside RUN/checkpoint.pt
    (NAME.best.pt beside any other checkpoint file name)."""
    path = Path(checkpoint_path)
    if path.name == CHECKPOINT_NAME:
        return path.with_name(BEST_CHECKPOINT_NAME)
    return path.with_name(f"{path.stem}.best{path.suffix}")


def model_checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint whose *model* a run directory stands for: its best.pt (the best validation)
    when it has one, else its checkpoint.pt (the last step). A file path names itself, so
    RUN/checkpoint.pt chooses the last weights."""
    path = Path(path)
    if path.is_dir() and (path / BEST_CHECKPOINT_NAME).is_file():
        return path / BEST_CHECKPOINT_NAME
    return path


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """`(model, tokenizer)` ready to sample from, out of a checkpoint file, a run directory
    (DIR/best.pt, else DIR/checkpoint.pt) or a model folder (`export_model_folder`); which file
    a path means: `model_source`."""
    source = model_source(path)
    if is_model_folder(source):
        return load_model_folder(source, device=device)
    device = resolve_device(device)  # checked before the file is read
    return model_from_checkpoint(load_checkpoint(source), device=device)


def model_source(path: str | os.PathLike) -> Path:
    """What `path` loads as a model: a model folder, or a checkpoint (a run folder: its best.pt,
    else checkpoint.pt). A folder that holds both an export and a run's checkpoint gives the one
    written last, with a warning naming both; an export killed mid-swap is put back first."""
    path = Path(path)
    if not os.path.lexists(path) and (recovered := recover_folder_replacement(path)):
        warnings.warn(recovered, stacklevel=3)
    if path.name == WEIGHTS_NAME and is_model_folder(path.parent):
        return path.parent  # the export, named
    checkpoint = model_checkpoint_file(path)
    if not is_model_folder(path):
        return checkpoint
    if not checkpoint.is_file():
        checkpoint = path / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return path
    exported, trained = (path / WEIGHTS_NAME).stat().st_mtime, checkpoint.stat().st_mtime
    newer, older = ((path / WEIGHTS_NAME, checkpoint) if exported > trained
                    else (checkpoint, path / WEIGHTS_NAME))
    warnings.warn(f"{path} holds both an exported model ({WEIGHTS_NAME}, {_when(exported)}) and "
                  f"a training run ({checkpoint.name}, {_when(trained)}): loading {newer.name}, "
                  f"the newer; name {older} to load the other", stacklevel=3)
    return path if newer.name == WEIGHTS_NAME else newer


def _when(timestamp: float) -> str:
    return time.strftime("written %Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def config_differences(saved: dict, current: dict, prefix: str, *, ignore: Iterable[str] = (),
                       only: Iterable[str] | None = None) -> list[str]:
    """Lines `PREFIXkey: checkpoint OLD, now NEW` for the keys whose values differ."""
    keys = set(only) if only is not None else set(saved) | set(current)
    lines = []
    for key in sorted(keys - set(ignore)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"{prefix}{key}: checkpoint {quoted(old)}, now {quoted(new)}")
    return lines


def data_fingerprint(data) -> dict[str, Any]:
    """What identifies the training data of a run (a resumed run must see the same), and where
    it came from (`corpus_source`: what `evaluate` scores and checks by default)."""
    corpus = getattr(data, "corpus", None)
    return {
        "corpus": getattr(corpus, "name", None),
        "train_tokens": int(data.train_ids.numel()),
        "val_tokens": int(data.val_ids.numel()),
        "train_sum": int(data.train_ids.sum()),
        **corpus_source(corpus),
    }


def resumable_differences(checkpoint: dict, model, train_config, tokenizer,
                          fingerprint: dict) -> list[str]:
    """What keeps a run from resuming `checkpoint`: another model, recipe, vocabulary or data."""
    saved_class = checkpoint.get("model_class", DEFAULT_MODEL_CLASS)
    lines = [] if saved_class == type(model).__name__ else [
        f"model class: checkpoint {saved_class}, now {type(model).__name__}"]
    model_config = getattr(model, "config", None)
    lines += config_differences(checkpoint["model_config"],
                                model_config.to_dict() if model_config is not None else {},
                                "model.", ignore=RESUMABLE_MODEL_CHANGES)
    lines += config_differences(checkpoint["train_config"], train_config.to_dict(), "train.",
                                ignore=RESUMABLE_CHANGES)
    if checkpoint["tokenizer"] != tokenizer.to_dict():
        lines.append("tokenizer: the vocabularies differ")
    lines += config_differences(checkpoint.get("data", {}), fingerprint, "data.",
                                ignore=CORPUS_SOURCE_KEYS)  # the same tokens may move
    return lines
