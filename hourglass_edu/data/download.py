"""Pinned files: find each one on disk, or download it, and check it against its pinned sha256.

A `RemoteFile` names one file by its place in a data directory (`haiku/haiku.txt`), its exact size
and sha256, and the URL of those bytes. `locate_files` finds a corpus's files, in this order (each
file on its own, so an interrupted download resumes where it stopped):

1. `data_dir`, when you pass one: files are read from there and downloaded into it; nothing
   else is consulted.
2. `$HOURGLASS_EDU_DATA`: a directory laid out like the cache (`haiku/haiku.txt`,
   `lovecraft/*.txt`), for a copy you already have. It is only read, never written.
3. The cache directory (`default_cache_dir()`): `data/` in a source checkout, otherwise the
   user's cache folder from platformdirs (`~/.cache/hourglass_edu` on Linux).
4. Download into the cache directory with requests, unless `download=False`. Downloads come from
   the pinned upstream URLs, or from a mirror laid out like the cache when `base_url` (or
   `$HOURGLASS_EDU_BASE_URL`, http:// or https://) is set: file `haiku/haiku.txt` is fetched
   from `{base_url}/haiku/haiku.txt`.

Every download has a deadline and says why it fails; the parts live in modules of their own:

* `pinned_files`: `RemoteFile`, `DownloadError`, `read_verified` (every file that is read is
  checked against its pinned size and sha256);
* `download_settings`: the environment variables, each file's deadline, retries, the mirror;
* `corpus_folders`: the places above, what may stand where a file belongs, the download lock
  (one process at a time per corpus folder) and the leftovers of killed downloads;
* `http_transfer`: one file over HTTP, checked as it arrives, retried within its deadline;
* `deadline_watchdog`: the thread that ends a try when its time is up, and says when it waits;
* `download_messages`: how each failure is worded.

This module's public names are the ones the rest of the package and its users import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from hourglass_edu.data.corpus_folders import (
    default_cache_dir,
    download_lock,
    env_data_dir,
    file_is_there,
    remove_leftovers,
)
from hourglass_edu.data.deadline_watchdog import watched_session
from hourglass_edu.data.download_messages import where_to_get_it
from hourglass_edu.data.download_settings import (
    check_base_url,
    deadline,
    deadline_override,
    download_url,
)
from hourglass_edu.data.http_transfer import fetch_file
from hourglass_edu.data.pinned_files import RemoteFile

__all__: list[str] = []  # no public names: the modules that use these import them by name


def _download(remotes: Sequence[RemoteFile], target_dir: Path, base_url: str | None,
              desc: str, still_missing: Callable[[RemoteFile], bool]) -> None:
    """Fetch each file into target_dir, one corpus folder at a time under its download lock
    (`still_missing` says, once it is held, which files another process has not fetched)."""
    check_base_url(base_url)
    deadline_override()  # a bad value is said before anything starts
    folders: dict[Path, list[RemoteFile]] = {}
    for remote in remotes:
        folders.setdefault((target_dir / remote.path).parent, []).append(remote)
    session, adapter = watched_session()
    with session:
        for folder, group in folders.items():
            budget = sum(deadline(remote) for remote in group)
            with download_lock(folder, budget):
                remove_leftovers(folder, group)
                group = [remote for remote in group if still_missing(remote)]  # another process?
                if not group:
                    continue
                with tqdm(total=sum(r.size for r in group), unit="B", unit_scale=True,
                          desc=desc) as bar:
                    for remote in group:
                        url = download_url(remote, base_url)
                        fetch_file(session, adapter, remote, url, target_dir / remote.path, bar)


def locate_files(name: str, remotes: Sequence[RemoteFile], data_dir: str | Path | None = None,
                 download: bool = True, base_url: str | None = None) -> list[Path]:
    """Where each of corpus `name`'s files is on disk (see the module docstring for the search
    order), downloading the missing ones."""
    if data_dir is not None:
        search, target = [Path(data_dir).expanduser()], Path(data_dir).expanduser()
    else:
        env_dir = env_data_dir()
        target = default_cache_dir()
        search = ([env_dir] if env_dir is not None else []) + [target]

    def find(remote: RemoteFile) -> Path | None:
        for directory in search:
            if file_is_there(directory / remote.path, remote):
                return directory / remote.path
        return None

    found = {remote.path: find(remote) for remote in remotes}
    missing = [r for r in remotes if found[r.path] is None]
    if missing:
        if not download:
            first = missing[0]
            url = download_url(first, base_url)
            raise FileNotFoundError(
                f"corpus {name!r}: {len(missing)} file(s) missing, e.g. {first.path}, "
                f"looked in {', '.join(str(d) for d in search)} and download=False. "
                f"Allow the download or: {where_to_get_it(first, url)}")
        _download(missing, target, base_url, desc=f"downloading {name}",
                  still_missing=lambda remote: find(remote) is None)
        found.update({r.path: find(r) or target / r.path for r in missing})
    return [found[remote.path] for remote in remotes]
