"""Pinned files: a file's place, exact size, sha256 and URL; the check that bytes on disk are it.

`read_verified` checks every file that is read against its pinned size and sha256. Hashing costs a
few milliseconds per megabyte and the bytes are read anyway, so there is no reason to trust a stale
or hand-edited copy: a mismatch raises an error that names the file instead of silently training
on different text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__: list[str] = []  # no public names: the modules that use these import them by name


@dataclass(frozen=True)
class RemoteFile:
    """One pinned file: its place in a data directory, its exact bytes, where to get them."""

    path: str  # relative to a data directory, e.g. "haiku/haiku.txt"
    size: int  # bytes
    sha256: str
    url: str  # the exact bytes at a fixed upstream commit


class DownloadError(RuntimeError):
    """A corpus file could not be fetched, or what arrived is not the pinned file."""


def read_verified(remote: RemoteFile, path: Path) -> bytes:
    """The bytes of `path`, after checking that they are the pinned `remote` file."""
    remedy = "delete it (or fix the directory it came from) and load again"
    size = path.stat().st_size
    if size != remote.size:  # checked before reading: a wrong file may be huge
        raise ValueError(
            f"{path} has {size:,} bytes but the pinned {remote.path} has {remote.size:,}; "
            f"{remedy}"
        )
    content = path.read_bytes()
    if len(content) != remote.size:  # changed since the stat
        raise ValueError(f"{path} changed while it was read; load again")
    digest = hashlib.sha256(content).hexdigest()
    if digest != remote.sha256:
        raise ValueError(
            f"{path} has sha256 {digest}, not the pinned {remote.sha256} of {remote.path}; {remedy}"
        )
    return content
