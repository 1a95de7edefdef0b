"""Checkpoints: one file per run holding everything needed to resume it exactly, checked on load.

A checkpoint is a dict of plain containers and tensors: the model class and config, tokenizer,
train config, weights, optimizer, schedule position, history and random states. It is written
atomically (`files.atomic_writer`) and read with `torch.load(weights_only=True)`, so a file
cannot run code when it is loaded (torch's own check names what a crafted file would import).
Before any model is built, `load_checkpoint` checks the schema (types, required keys), the config
(sized on the meta device by `loading.model_shapes`, so a crafted file cannot ask for a huge
allocation), the tokenizer against the embedding, and every tensor's shape against the config.

A run folder holds one run: `check_run_folder` refuses, before any work, a folder that holds
anything else (unless forced), and `run_folder_lock` removes the temporary files that killed
writes left behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from hourglass_edu.data import CharTokenizer
from hourglass_edu.data.provenance import CORPUS_SOURCE_KEYS, corpus_source
from hourglass_edu.files import atomic_writer, describe_contents, remove_stale_temporaries
from hourglass_edu.lm import build_model_from_config, check_weights
from hourglass_edu.loading import model_shapes, resolve_device
from hourglass_edu.model_folders import WEIGHTS_NAME, is_model_folder, load_model_folder

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "BEST_CHECKPOINT_NAME",
    "RESUMABLE_CHANGES",
    "RESUMABLE_MODEL_CHANGES",
    "best_checkpoint_path",
    "check_run_folder",
    "config_differences",
    "data_fingerprint",
    "load_checkpoint",
    "load_model",
    "model_checkpoint_file",
    "model_from_checkpoint",
    "resumable_differences",
    "run_folder_lock",
    "run_folder_state",
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
# Model settings a resumed run may change: dropout acts only while training and has no weights,
# so a run that has begun to learn its corpus by heart can continue with it (or without it).
RESUMABLE_MODEL_CHANGES = frozenset({"dropout"})

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
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: a training run writes OUT/{CHECKPOINT_NAME}; check the path"
        )
    checkpoint = _read(path, map_location)
    validate_checkpoint(checkpoint, where=str(path))
    return checkpoint


def _refuse_model_folder(path: Path) -> None:
    """A model folder (or a file in one) where a checkpoint is needed: say what it is."""
    folder = path if path.is_dir() else path.parent
    if is_model_folder(folder) and not (path.is_file() and path.suffix == ".pt"):
        raise ValueError(
            f"{path} is a model folder (export writes them: weights, config and card, without "
            "the optimizer state and history of a training run); sample or evaluate it with "
            f"--ckpt {folder}, and to fine-tune or resume, pass the run folder it was exported "
            "from"
        )


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
    shapes = model_shapes(class_name, checkpoint["model_config"], where)
    try:
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
    path = Path(path)
    if is_model_folder(path):
        return load_model_folder(path, device=device)
    if path.name == WEIGHTS_NAME and is_model_folder(path.parent):
        return load_model_folder(path.parent, device=device)
    device = resolve_device(device)  # checked before the file is read
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
        _report_stale_temporaries(folder)
        yield folder
    finally:
        _HELD_FOLDERS.discard(key)
        lock.release()


def _report_stale_temporaries(folder: Path) -> None:
    """Under the lock no write of ours is under way, so a `.NAME.*.tmp` file is left from one that
    was killed (`kill -9`, a power cut): remove it, and say so."""
    removed = remove_stale_temporaries(folder)
    if removed:
        print(removed, file=sys.stderr)


# What a run folder of this library holds (the lock, checkpoints, the history and its figure).
RUN_FILES = frozenset({".lock", CHECKPOINT_NAME, "best.pt", "history.json", "history.png"})


def run_folder_state(folder: str | os.PathLike) -> str:
    """"empty" (missing, or only a lock and temporary files), "run" (a run of this library: a
    checkpoint and nothing but run files) or "other" (anything else)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "other" if folder.exists() else "empty"
    names = {path.name for path in folder.iterdir()
             if not (path.name.startswith(".") and path.name.endswith(".tmp"))}
    if names <= {".lock"}:
        return "empty"
    has_checkpoint = (folder / CHECKPOINT_NAME).is_file() or (folder / "best.pt").is_file()
    return "run" if has_checkpoint and names <= RUN_FILES else "other"


def check_run_folder(folder: str | os.PathLike, *, force: bool = False) -> None:
    """Raise ValueError, before any work, unless `folder` can take a run: missing, empty, or a run
    of this library (whether to resume or replace it is the trainer's rule); with `force` any
    folder (the run's files replace those of the same names, the others stay)."""
    if not os.fspath(folder).strip():  # Path("") would be the current folder
        raise ValueError("--out is empty: name the run folder (e.g. runs/NAME)")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the run folder {folder} is a file: choose another --out")
    if force or run_folder_state(folder) != "other":
        return
    kind = "a model folder" if is_model_folder(folder) else "files that are not a run of ours"
    if (folder / "history.json").exists() and not (folder / CHECKPOINT_NAME).exists():
        kind = "a history.json without a checkpoint (not a run of hourglass_edu)"
    raise ValueError(f"{folder} holds {kind} ({describe_contents(folder)}); a run writes only "
                     "into an empty folder or one of its own runs: choose another --out, or "
                     "pass --force to write into it (checkpoint.pt, history.json and "
                     "history.png there are replaced, other files left alone)")
