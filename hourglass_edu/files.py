"""Atomic file writes: a file is either its old self or its complete new self, never half-written.

Every file the library writes that a user would hate to lose or find truncated (checkpoints,
downloads, tokenizers, model folders, benchmark tables) goes through `atomic_writer`: the bytes go
to a temporary file in the same folder, are flushed to disk, and the temporary file is renamed
over the target (`os.replace`, atomic on POSIX and Windows). A crash or Ctrl-C at any moment
leaves the old file (or none) and no stray temporary file.
"""

from __future__ import annotations

import contextlib
import os
import reprlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_writer", "describe_contents", "quoted",
           "remove_stale_temporaries", "stale_temporaries"]

# mkstemp makes owner-only files; a finished file gets the usual permissions (0o666 minus the
# umask), as open() would have given it. os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary handle whose contents replace `path` only when the block ends normally.

        with atomic_writer("model.pt") as handle:
            torch.save(state, handle)

    The parent folder is created if missing. On an exception the target is left untouched and the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except OSError as error:
        raise _naming(error, path) from None
    except RuntimeError as error:  # torch.save wraps the OSError of a failed write
        if isinstance(error.__context__, OSError):
            raise _naming(error.__context__, path) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with the target's name when it has none (a failed write() names no file)."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def atomic_write(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write `content` (bytes, or str as UTF-8) to `path` atomically; returns the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporary files (`.NAME.*.tmp`) that interrupted atomic writes left in `folder`: a
    `kill -9` mid-write leaves one, since no `finally` runs."""
    folder = Path(folder)
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def remove_stale_temporaries(folder: str | os.PathLike) -> str | None:
    """Delete `stale_temporaries(folder)` (only call it while nothing writes there, e.g. under a
    folder lock); returns a line saying what was removed, or None when there was nothing."""
    stale = stale_temporaries(folder)
    if not stale:
        return None
    size = 0
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir():
                size += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path)
            else:
                size += path.stat().st_size
                path.unlink()
    names = ", ".join(path.name for path in stale[:3]) + (", ..." if len(stale) > 3 else "")
    return (f"removed {len(stale)} temporary file(s) of interrupted writes from {folder} "
            f"({size / 1e6:.1f} MB: {names})")


def describe_contents(folder: str | os.PathLike, limit: int = 4) -> str:
    """What a folder holds, for a refusal: 'README.md, config.json and 3 more entries'."""
    names = sorted(path.name for path in Path(folder).iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more entries" if len(names) > limit else "")


_QUOTE = reprlib.Repr()  # what an error quotes from a file: a few items of each container
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = _QUOTE.maxset = 6
_QUOTE.maxlevel = 3


def quoted(value: object, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters, for an error line that quotes a file: a
    damaged file may hold a 140 KB string where a number belongs, and the line must stay one
    readable line. Longer text (an exception's message) is cut too, to its first line."""
    if isinstance(value, BaseException):
        lines = str(value).strip().splitlines()
        text = lines[0] if lines else type(value).__name__
    else:
        text = _QUOTE.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
