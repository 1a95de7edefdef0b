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
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_writer"]

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
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def atomic_write(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write `content` (bytes, or str as UTF-8) to `path` atomically; returns the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)
