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
4. Download into the cache directory with pooch, unless `download=False`. Downloads come from the
   pinned upstream URLs, or from a mirror laid out like the cache when `base_url` (or
   `$HOURGLASS_EDU_BASE_URL`) is set: file `haiku/haiku.txt` is fetched from
   `{base_url}/haiku/haiku.txt`. A file reaches its final name only when its size and sha256
   match; a failed transfer is tried again (each retry says why, within a bounded wait), and
   what fails for good leaves nothing behind.

`read_verified` checks every file that is read against its pinned size and sha256. Hashing costs a
few milliseconds per megabyte and the bytes are read anyway, so there is no reason to trust a stale
or hand-edited copy: a mismatch raises an error that names the file instead of silently training
on different text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
import pooch
import requests  # pooch's own HTTP client (a dependency of pooch): its errors are caught here
from tqdm.auto import tqdm

__all__ = [
    "DATA_ENV",
    "BASE_URL_ENV",
    "RemoteFile",
    "DownloadError",
    "default_cache_dir",
    "locate_files",
    "read_verified",
]

DATA_ENV = "HOURGLASS_EDU_DATA"
BASE_URL_ENV = "HOURGLASS_EDU_BASE_URL"
DOWNLOAD_RETRIES = 2  # more tries after a dropped connection, a timeout or a corrupted transfer
DOWNLOAD_TIMEOUT = 15.0  # seconds to wait for the server to connect or send the next bytes
DOWNLOAD_DEADLINE = 60.0  # no try of a file starts after this many seconds spent on it
RETRY_PAUSE = 1.0  # seconds before the first retry (twice that before the second, ...)


@dataclass(frozen=True)
class RemoteFile:
    """One pinned file: its place in a data directory, its exact bytes, where to get them."""

    path: str  # relative to a data directory, e.g. "haiku/haiku.txt"
    size: int  # bytes
    sha256: str
    url: str  # the exact bytes at a fixed upstream commit


class DownloadError(RuntimeError):
    """A corpus file could not be fetched, or what arrived is not the pinned file."""


def default_cache_dir() -> Path:
    """`data/` beside the package in a source checkout, else the user's cache directory, from
    platformdirs: `$XDG_CACHE_HOME/hourglass_edu` (default `~/.cache/hourglass_edu`) on Linux,
    `~/Library/Caches/hourglass_edu` on macOS, `%LOCALAPPDATA%\\hourglass_edu\\Cache` on Windows."""
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "pyproject.toml").is_file() and (repo_root / "data" / "README.md").is_file():
        return repo_root / "data"
    return Path(platformdirs.user_cache_dir("hourglass_edu", appauthor=False))


def _env_data_dir() -> Path | None:
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


def _download_url(remote: RemoteFile, base_url: str | None) -> str:
    base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if base_url:
        return base_url.rstrip("/") + "/" + remote.path
    return remote.url


def _where_to_get_it(remote: RemoteFile, url: str) -> str:
    return (
        f"To use a copy you already have, set {DATA_ENV} to a directory holding "
        f"{remote.path} (or pass data_dir=...); the file is {remote.size:,} bytes from {url}"
    )


def read_verified(remote: RemoteFile, path: Path) -> bytes:
    """The bytes of `path`, after checking that they are the pinned `remote` file."""
    content = path.read_bytes()
    remedy = "delete it (or fix the directory it came from) and load again"
    if len(content) != remote.size:
        raise ValueError(
            f"{path} has {len(content):,} bytes but the pinned {remote.path} has {remote.size:,}; "
            f"{remedy}"
        )
    digest = hashlib.sha256(content).hexdigest()
    if digest != remote.sha256:
        raise ValueError(
            f"{path} has sha256 {digest}, not the pinned {remote.sha256} of {remote.path}; {remedy}"
        )
    return content


def _download(remotes: Sequence[RemoteFile], target_dir: Path, base_url: str | None,
              desc: str) -> None:
    """Fetch each file into target_dir with pooch. pooch streams a file into a temporary file beside
    its target and moves it into place only when its sha256 matches, deleting it otherwise, so a
    failed or wrong download leaves nothing behind; a failed transfer is tried again
    DOWNLOAD_RETRIES times. Every failure is raised as a DownloadError that says what to do."""
    urls = {remote.path: _download_url(remote, base_url) for remote in remotes}
    fetcher = pooch.create(
        path=target_dir, base_url="", urls=urls, retry_if_failed=0,  # retried here, and said
        registry={remote.path: f"sha256:{remote.sha256}" for remote in remotes},
        allow_updates=False,  # never overwrite a file that is there (only missing ones come here)
    )
    total = sum(remote.size for remote in remotes)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar, _quiet_pooch():
        for remote in remotes:
            _fetch_with_retries(fetcher, remote, bar, urls[remote.path])


def _fetch_with_retries(fetcher: pooch.Pooch, remote: RemoteFile, bar: tqdm, url: str) -> None:
    """One file, tried 1 + DOWNLOAD_RETRIES times within DOWNLOAD_DEADLINE seconds; each retry
    says on stderr why ("no answer from HOST, retrying 2/3"), so a silent server is not a
    progress bar frozen at 0% for minutes."""
    tries = 1 + DOWNLOAD_RETRIES
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            fetcher.fetch(remote.path, downloader=_PinnedDownloader(remote, bar))
            return
        except (ValueError, requests.RequestException) as error:
            pause = RETRY_PAUSE * attempt
            spent = time.monotonic() - started
            if attempt == tries or spent + pause > DOWNLOAD_DEADLINE:
                raise _download_error(error, remote, url) from error
            tqdm.write(f"{_failure_in_brief(error, url)}, retrying {attempt + 1}/{tries}",
                       file=sys.stderr)
            time.sleep(pause)


def _failure_in_brief(error: Exception, url: str) -> str:
    host = urlsplit(url).netloc or url
    if isinstance(error, requests.Timeout):
        return f"no answer from {host} within {DOWNLOAD_TIMEOUT:g} s"
    if isinstance(error, requests.ConnectionError):
        return f"could not reach {host}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"{host} answered HTTP {error.response.status_code}"
    return f"what {host} sent was damaged (sha256 mismatch)"


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Silence pooch's INFO lines ("Downloading file ... from ... to ...", one per file) while the
    progress bar, which says the same, is up: lovecraft alone would print 67 of them."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _PinnedDownloader:
    """A pooch downloader for one pinned file: pooch's HTTPDownloader does the HTTP, and hands each
    chunk to `write` here, which moves the corpus-wide progress bar and stops a download that
    outgrows the pinned size.

    Kept by hand because pooch checks nothing until the whole body has arrived, and then only the
    hash: without the size check a misbehaving server could fill the disk, and a short file would
    be reported as a hash mismatch. pooch's own progress bar is per file (67 bars for lovecraft).
    """

    def __init__(self, remote: RemoteFile, bar: tqdm) -> None:
        self.remote, self.bar = remote, bar
        self.http = pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT)
        self.received, self.url, self.handle = 0, "", None

    def __call__(self, url: str, output_file: str, fetcher: pooch.Pooch,
                 check_only: bool = False) -> bool | None:
        if check_only:
            return self.http(url, output_file, fetcher, check_only=True)
        self.bar.update(-self.received)  # pooch is trying again: start the count over
        self.received, self.url = 0, url
        try:
            with open(output_file, "wb") as self.handle:
                self.http(url, self, fetcher)  # HTTPDownloader writes into `self`
        except requests.HTTPError as error:
            if _asking_again_is_useless(error):  # pooch would retry even a 404
                raise _download_error(error, self.remote, url) from error
            raise
        if self.received != self.remote.size:
            raise self._size_error(f"{self.received:,}")
        return None

    def write(self, chunk: bytes) -> int:
        if self.received + len(chunk) > self.remote.size:
            raise self._size_error(f"more than {self.remote.size:,}")
        self.handle.write(chunk)
        self.received += len(chunk)
        self.bar.update(len(chunk))
        return len(chunk)

    def flush(self) -> None:
        self.handle.flush()

    def _size_error(self, got: str) -> DownloadError:
        return DownloadError(
            f"downloaded {self.url} but got {got} bytes, not the pinned {self.remote.size:,}; "
            f"nothing was saved. {_where_to_get_it(self.remote, self.url)}")


def _asking_again_is_useless(error: requests.HTTPError) -> bool:
    """A 4xx answer (the file is not there, or not for us) will be the same next time, except 408
    (request timeout) and 429 (too many requests), which mean: try later."""
    status = error.response.status_code if error.response is not None else 0
    return 400 <= status < 500 and status not in (408, 429)


def _download_error(error: Exception, remote: RemoteFile, url: str) -> DownloadError:
    """What pooch or requests raised, as a DownloadError that names the URL and the remedy."""
    remedy = _where_to_get_it(remote, url)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        response = error.response
        return DownloadError(f"downloading {url} failed: HTTP {response.status_code} "
                             f"{response.reason}. {remedy}")
    if isinstance(error, requests.RequestException):
        # requests wraps the cause (e.g. "[Errno 111] Connection refused") in a long message.
        reason = getattr(error.args[0] if error.args else None, "reason", None) or error
        return DownloadError(f"could not download {url} ({reason}); are you offline? {remedy}")
    # pooch raises ValueError when the bytes that arrived do not have the pinned sha256 (its
    # message, with the digest they do have, stays attached as the cause).
    return DownloadError(f"downloaded {url} but its sha256 is not the pinned {remote.sha256}; "
                         f"nothing was saved. {remedy}")


def locate_files(name: str, remotes: Sequence[RemoteFile], data_dir: str | Path | None = None,
                 download: bool = True, base_url: str | None = None) -> list[Path]:
    """Where each of corpus `name`'s files is on disk (see the module docstring for the search
    order), downloading the missing ones."""
    if data_dir is not None:
        search, target = [Path(data_dir).expanduser()], Path(data_dir).expanduser()
    else:
        env_dir = _env_data_dir()
        target = default_cache_dir()
        search = ([env_dir] if env_dir is not None else []) + [target]

    found: dict[str, Path] = {}
    for remote in remotes:
        for directory in search:
            if (directory / remote.path).is_file():
                found[remote.path] = directory / remote.path
                break
    missing = [r for r in remotes if r.path not in found]
    if missing:
        if not download:
            first = missing[0]
            url = _download_url(first, base_url)
            raise FileNotFoundError(
                f"corpus {name!r}: {len(missing)} file(s) missing, e.g. {first.path}, "
                f"looked in {', '.join(str(d) for d in search)} and download=False. "
                f"Allow the download or: {_where_to_get_it(first, url)}")
        _download(missing, target, base_url, desc=f"downloading {name}")
        found.update({r.path: target / r.path for r in missing})
    return [found[remote.path] for remote in remotes]
