"""Pinned files: find each one on disk, or download it, and check it against its pinned sha256.

A `RemoteFile` names one file by its place in a data directory (`haiku/haiku.txt`), its exact size
and sha256, and the URL of those bytes. `locate_files` finds a corpus's files, in this order (each
file on its own, so an interrupted download resumes where it stopped):

1. `data_dir`, when you pass one: files are read from there and downloaded into it; nothing
   else is consulted.
2. `$HOURGLASS_EDU_DATA`: a directory laid out like the cache (`haiku/haiku.txt`,
   `lovecraft/*.txt`), for a copy you already have. It is only read, never written.
3. The cache directory (`default_cache_dir()`): `data/` in a source checkout, otherwise
   `$XDG_CACHE_HOME/hourglass_edu` (default `~/.cache/hourglass_edu`).
4. Download into the cache directory, unless `download=False`. Downloads come from the pinned
   upstream URLs, or from a mirror laid out like the cache when `base_url` (or
   `$HOURGLASS_EDU_BASE_URL`) is set: file `haiku/haiku.txt` is fetched from
   `{base_url}/haiku/haiku.txt`.

`read_verified` checks every file that is read against its pinned size and sha256. Hashing costs a
few milliseconds per megabyte and the bytes are read anyway, so there is no reason to trust a stale
or hand-edited copy: a mismatch raises an error that names the file instead of silently training
on different text.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from hourglass_edu.files import atomic_writer

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
    """`data/` beside the package in a source checkout, else the user's cache directory."""
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "pyproject.toml").is_file() and (repo_root / "data" / "README.md").is_file():
        return repo_root / "data"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hourglass_edu"


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
              desc: str, timeout: float = 30.0) -> None:
    """Fetch each file into target_dir, verified, atomically: a file appears under its final name
    only when its size and sha256 match; on any failure its partial download is removed."""
    with tqdm(total=sum(r.size for r in remotes), unit="B", unit_scale=True, desc=desc) as bar:
        for remote in remotes:
            url = _download_url(remote, base_url)
            with atomic_writer(target_dir / remote.path) as handle:
                _fetch_into(handle, remote, url, bar, timeout)


def _fetch_into(handle, remote: RemoteFile, url: str, bar, timeout: float) -> None:
    remedy = _where_to_get_it(remote, url)
    hasher = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            # Read at most one byte more than expected: enough to detect a wrong file without
            # letting a misbehaving server fill the disk.
            while received <= remote.size:
                chunk = response.read(min(1 << 16, remote.size + 1 - received))
                if not chunk:
                    break
                handle.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"downloading {url} failed: HTTP {error.code} {error.reason}. "
                            f"{remedy}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError,
            http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not download {url} ({reason}); are you offline? "
                            f"{remedy}") from error
    if received != remote.size:
        raise DownloadError(
            f"downloaded {url} but got {'more than ' if received > remote.size else ''}"
            f"{received:,} bytes, not the pinned {remote.size:,}; nothing was saved. {remedy}")
    digest = hasher.hexdigest()
    if digest != remote.sha256:
        raise DownloadError(
            f"downloaded {url} but its sha256 is {digest}, not the pinned {remote.sha256}; "
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
