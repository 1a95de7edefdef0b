"""Corpus folders on disk: where files are looked for and downloaded to, and the download lock.

The places, in the order `download.locate_files` looks (each file on its own, so an interrupted
download resumes where it stopped):

1. `data_dir`, when you pass one: files are read from there and downloaded into it; nothing
   else is consulted.
2. `$HOURGLASS_EDU_DATA` (`env_data_dir`): a directory laid out like the cache
   (`haiku/haiku.txt`, `lovecraft/*.txt`), for a copy you already have. Only read, never written.
3. The cache directory (`default_cache_dir()`): `data/` in a source checkout, otherwise the
   user's cache folder from platformdirs (`~/.cache/hourglass_edu` on Linux).

Something else where a corpus file belongs (a folder, a named pipe, a link to nothing) is refused,
never replaced (`file_is_there`). One process at a time downloads into a corpus folder
(`download_lock`, a lock file beside the corpus files); under that lock, the temporary files that
a killed download left are removed (`remove_leftovers`), and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import platformdirs
from filelock import FileLock, Timeout

from hourglass_edu.data.download_messages import duration, say
from hourglass_edu.data.download_settings import DATA_ENV
from hourglass_edu.data.pinned_files import DownloadError, RemoteFile

__all__: list[str] = []  # no public names: the modules that use these import them by name

LOCK_NAME = ".download.lock"
# pooch (which downloaded the corpora before) named its temporary files so, beside the target.
_POOCH_TEMPORARY = re.compile(r"tmp[a-z0-9_]{8}")


def default_cache_dir() -> Path:
    """`data/` beside the package in a source checkout, else the user's cache directory, from
    platformdirs: `$XDG_CACHE_HOME/hourglass_edu` (default `~/.cache/hourglass_edu`) on Linux,
    `~/Library/Caches/hourglass_edu` on macOS, `%LOCALAPPDATA%\\hourglass_edu\\Cache` on Windows."""
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "pyproject.toml").is_file() and (repo_root / "data" / "README.md").is_file():
        return repo_root / "data"
    return Path(platformdirs.user_cache_dir("hourglass_edu", appauthor=False))


def env_data_dir() -> Path | None:
    """The directory `$HOURGLASS_EDU_DATA` names, None when it is unset or empty."""
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"{DATA_ENV}={value!r} is not a directory; point it at a directory holding "
            f"haiku/haiku.txt and lovecraft/*.txt, or unset it"
        )
    return path


def file_is_there(path: Path, remote: RemoteFile) -> bool:
    """True when a regular file (or a link to one) is at `path`, False when nothing is. Anything
    else there is refused, since a download would replace it or hide it: a folder, a named pipe
    (reading it would wait forever), a link to nothing, a file where a folder belongs."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ValueError(
                f"{path} is a link to {os.readlink(path)}, which does not exist; fix or remove "
                f"the link (it stands where the corpus file {remote.path} belongs)") from None
        return False
    except NotADirectoryError:
        raise ValueError(
            f"a file is in the way of {path}: {remote.path} needs a folder there; move that "
            f"file away") from None
    if stat.S_ISREG(mode):
        return True
    kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    raise ValueError(
        f"{path} is {kind}, not the corpus file {remote.path}; move it away or rename it "
        f"(nothing was downloaded)")


@contextlib.contextmanager
def download_lock(folder: Path, budget: float) -> Iterator[None]:
    """Hold the download lock of `folder` (created if missing): one process at a time downloads
    into it (under torchrun every process loads the corpus), and under it every temporary file
    of ours there is a leftover, safe to remove. The OS drops a killed holder's lock."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            say(f"another process is downloading into {folder}; waiting for it (at most "
                f"{duration(budget)})")
            try:
                lock.acquire(timeout=budget)
            except Timeout:
                raise DownloadError(
                    f"another process has been downloading into {folder} for "
                    f"{duration(budget)}; wait for it to finish, or stop it, and load "
                    f"again") from None
    except OSError as error:
        raise DownloadError(
            f"cannot download into {folder} ({error.strerror or error}); set {DATA_ENV} to a "
            f"directory holding the corpus files, or pass a data_dir (--data-dir) you can "
            f"write to") from None
    try:
        yield
    finally:
        lock.release()


def remove_leftovers(folder: Path, remotes: Sequence[RemoteFile]) -> None:
    """Under the folder's download lock: delete the temporary files that killed downloads left
    (`.NAME.*.tmp` of atomic_writer for the files of `remotes`, and pooch's `tmpXXXXXXXX` from
    versions before), and say so. Nothing else there is touched."""
    names = {Path(remote.path).name for remote in remotes}
    stale = [path for path in sorted(folder.iterdir()) if path.is_file() and not path.is_symlink()
             and (_POOCH_TEMPORARY.fullmatch(path.name) or any(
                 path.name.startswith(f".{name}.") and path.name.endswith(".tmp")
                 for name in names))]
    size = 0
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            size += path.stat().st_size
            path.unlink()
    if stale:
        say(f"removed {len(stale)} temporary file(s) that an interrupted download left in "
            f"{folder} ({size:,} bytes)")
