"""Checkpoints: one file per run holding everything needed to resume it exactly, checked on load.

A checkpoint is a dict of plain containers and tensors: the model class and config, tokenizer,
train config, weights, optimizer, schedule position, history and random states. It is written
atomically (`files.atomic_writer`) and read with `torch.load(weights_only=True)`, so a file
cannot run code when it is loaded. Before any model is built, `load_checkpoint` checks the schema
(types, required keys), the config (with size limits, so a crafted file cannot ask for a huge
allocation), the tokenizer against the embedding, and every tensor's shape against the config.
"""

from __future__ import annotations

import contextlib
import os
import pickletools
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from hourglass_edu.data import CharTokenizer
from hourglass_edu.files import atomic_writer
from hourglass_edu.lm import build_model_from_config, check_weights
from hourglass_edu.model_folders import is_model_folder, load_model_folder
from hourglass_edu.training.precision import resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "BEST_CHECKPOINT_NAME",
    "RESUMABLE_CHANGES",
    "best_checkpoint_path",
    "config_differences",
    "data_fingerprint",
    "load_checkpoint",
    "load_model",
    "model_checkpoint_file",
    "model_from_checkpoint",
    "resumable_differences",
    "run_folder_lock",
    "save_checkpoint",
    "validate_checkpoint",
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

# Each required entry and the type it must have.
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str, "version": int, "model_config": dict, "tokenizer": dict, "train_config": dict,
    "model": dict, "optimizer": dict, "step": int, "tokens_seen": int, "elapsed": (int, float),
    "history": dict, "rng": dict,
}


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically: a crash leaves either the old file or the new."""
    with atomic_writer(path) as handle:
        torch.save(checkpoint, handle)
    return Path(path)


def _pickled_imports(path: Path) -> list[str]:
    """The `module.name`s a plain pickle file would import, read without running it
    (`pickletools` only parses opcodes). Empty when the file is not a readable pickle."""
    names, strings = [], []
    try:
        for opcode, argument, _position in pickletools.genops(path.read_bytes()):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(argument).replace(" ", "."))
            elif "UNICODE" in opcode.name:
                strings.append(str(argument))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle, or a damaged one: nothing to name
        return names
    return names


def _read(path: Path, map_location) -> Any:
    """`torch.load(weights_only=True)` with one clear ValueError for every way it can refuse."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we say it better
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling, zip, EOF or decoding errors
        refused = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", str(error), re.I)
        imports = [refused.group(1)] if refused else _pickled_imports(path)
    if imports:
        raise ValueError(
            f"refused to load {path}: it asks to import {', '.join(dict.fromkeys(imports))}, "
            "which could run code when unpickled. hourglass_edu checkpoints hold only tensors "
            "and plain containers; only open files from sources you trust"
        )
    raise ValueError(f"{path} is not a checkpoint (truncated, damaged or not a PyTorch file)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint written by `train`. A directory means DIR/checkpoint.pt.

    Raises FileNotFoundError for a missing file and ValueError (saying what is wrong) for a
    truncated, foreign, unsafe or inconsistent one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: a training run writes OUT/{CHECKPOINT_NAME}; check the path"
        )
    checkpoint = _read(path, map_location)
    validate_checkpoint(checkpoint, where=str(path))
    return checkpoint


def _check_schema(checkpoint: Any, where: str) -> None:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where} is a PyTorch file but not an hourglass_edu checkpoint (it has "
                         f"no 'format': {CHECKPOINT_FORMAT!r} entry)")
    version = checkpoint.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: 'version' must be a positive integer, got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{where} has checkpoint version {version}, newer than this library "
                         f"reads ({CHECKPOINT_VERSION}); upgrade hourglass_edu")
    missing = [key for key in SCHEMA if key not in checkpoint]
    if missing:
        raise ValueError(f"{where} is an incomplete hourglass_edu checkpoint: missing {missing}")
    for key, kind in SCHEMA.items():
        value = checkpoint[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{where}: entry {key!r} should be {getattr(kind, '__name__', kind)}"
                             f", got {type(value).__name__}; the file is damaged")
    if not isinstance(checkpoint.get("model_class", DEFAULT_MODEL_CLASS), str):
        raise ValueError(f"{where}: 'model_class' must be a class name string")


def validate_checkpoint(checkpoint: Any, where: str = "checkpoint") -> None:
    """Schema, config, tokenizer and tensor shapes, checked without allocating the model."""
    _check_schema(checkpoint, where)
    class_name = checkpoint.get("model_class", DEFAULT_MODEL_CLASS)
    try:
        shapes = build_model_from_config(class_name, checkpoint["model_config"], device="meta")
        tokenizer = CharTokenizer.from_dict(checkpoint["tokenizer"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}: {type(error).__name__}: {error}") from None
    vocab_size = shapes.config.vocab_size
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} entries but the "
                         f"model's embedding {vocab_size} rows; the file is damaged")
    check_weights(shapes, checkpoint["model"], where)


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
    (DIR/best.pt, else DIR/checkpoint.pt) or a model folder (`export_model_folder`)."""
    if is_model_folder(path):
        return load_model_folder(path, device=resolve_device(device))
    return model_from_checkpoint(load_checkpoint(model_checkpoint_file(path)), device=device)


def config_differences(saved: dict, current: dict, prefix: str, *, ignore: Iterable[str] = (),
                       only: Iterable[str] | None = None) -> list[str]:
    """Lines `PREFIXkey: checkpoint OLD, now NEW` for the keys whose values differ."""
    keys = set(only) if only is not None else set(saved) | set(current)
    lines = []
    for key in sorted(keys - set(ignore)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"{prefix}{key}: checkpoint {old!r}, now {new!r}")
    return lines


def data_fingerprint(data) -> dict[str, Any]:
    """What identifies the training data of a run (a resumed run must see the same)."""
    corpus = getattr(data, "corpus", None)
    return {
        "corpus": getattr(corpus, "name", None),
        "train_tokens": int(data.train_ids.numel()),
        "val_tokens": int(data.val_ids.numel()),
        "train_sum": int(data.train_ids.sum()),
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
                                "model.")
    lines += config_differences(checkpoint["train_config"], train_config.to_dict(), "train.",
                                ignore=RESUMABLE_CHANGES)
    if checkpoint["tokenizer"] != tokenizer.to_dict():
        lines.append("tokenizer: the vocabularies differ")
    lines += config_differences(checkpoint.get("data", {}), fingerprint, "data.")
    return lines


# The run folders this process holds locked (so that a nested `run_folder_lock` on the same folder,
# e.g. the command line's around `train`'s own, does not refuse its own process).
_HELD_FOLDERS: set[Path] = set()


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on a run folder (created if needed) while a run writes into it.

    Raises ValueError at once, before any training, when the folder cannot be a run folder (it
    is a file, or cannot be created or written) or when another process holds its lock. Inside a
    block that already holds the folder's lock, it holds it on (re-entrant within a process).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the run folder {folder} is a file: choose another --out")
    key = folder.resolve()
    if key in _HELD_FOLDERS:
        yield folder
        return
    lock = FileLock(folder / ".lock")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        if not (folder / ".lock").exists():  # so no one holds it: the folder is not writable
            raise ValueError(f"cannot write into the run folder {folder}: choose another "
                             "--out") from None
        raise ValueError(
            f"another run is training into {folder} right now: wait for it to finish and continue "
            "it with --resume, or choose another --out"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot write into the run folder {folder} ({error.strerror or error}): "
                         "choose another --out") from None
    _HELD_FOLDERS.add(key)
    try:
        yield folder
    finally:
        _HELD_FOLDERS.discard(key)
        lock.release()
