"""Run folders: a run folder holds one run, and one process at a time writes into it.

`check_run_folder` refuses, before any work, a folder that holds anything else (unless forced);
`run_folder_lock` holds the folder's `.lock` while a run writes, and removes the temporary files
that killed writes left behind; `start_fresh_run` refuses to replace another run's checkpoint
unless told to, and removes an earlier run's best.pt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from hourglass_edu.files import describe_contents, remove_stale_temporaries
from hourglass_edu.model_folders import is_model_folder
from hourglass_edu.training.checkpoints import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    best_checkpoint_path,
)

__all__ = ["check_run_folder", "run_folder_lock"]

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
        raise ValueError(f"the run folder {folder} is a file: choose another `folder`")
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
                             "`folder`") from None
        raise ValueError(
            f"another run is training into {folder} right now: wait for it to finish and continue "
            "it with `resume`, or choose another `folder`"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot write into the run folder {folder} ({error.strerror or error}): "
                         "choose another `folder`") from None
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
RUN_FILES = frozenset({".lock", CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, "history.json",
                       "history.png"})


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
    has_checkpoint = any((folder / name).is_file()
                         for name in (CHECKPOINT_NAME, BEST_CHECKPOINT_NAME))
    return "run" if has_checkpoint and names <= RUN_FILES else "other"


def check_run_folder(folder: str | os.PathLike, *, force: bool = False) -> None:
    """Raise ValueError, before any work, unless `folder` can take a run: missing, empty, or a run
    of this library (whether to resume or replace it is the trainer's rule); with `force` any
    folder (the run's files replace those of the same names, the others stay)."""
    if not os.fspath(folder).strip():  # Path("") would be the current folder
        raise ValueError("`folder` is empty: name the run folder (e.g. runs/NAME)")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the run folder {folder} is a file: choose another `folder`")
    if force or run_folder_state(folder) != "other":
        return
    kind = "a model folder" if is_model_folder(folder) else "files that are not a run of ours"
    if (folder / "history.json").exists() and not (folder / CHECKPOINT_NAME).exists():
        kind = "a history.json without a checkpoint (not a run of hourglass_edu)"
    raise ValueError(f"{folder} holds {kind} ({describe_contents(folder)}); a run writes only "
                     "into an empty folder or one of its own runs: choose another `folder`, or "
                     "pass `force` to write into it (checkpoint.pt, history.json and "
                     "history.png there are replaced, other files left alone)")


def start_fresh_run(checkpoint_path: Path, *, overwrite: bool, main: bool) -> None:
    """A new run into `checkpoint_path`: refuse to replace another run's files unless told to,
    and remove an earlier run's best.pt (it would otherwise pass for this run's best)."""
    best = best_checkpoint_path(checkpoint_path)
    found = [path for path in (checkpoint_path, best) if path.exists()]
    if found and not overwrite:
        raise ValueError(
            f"{found[0]} already holds a checkpoint: resume it (`resume`) "
            "or choose another path (`overwrite` replaces it)"
        )
    if main and best.exists():
        best.unlink()
