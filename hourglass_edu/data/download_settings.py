"""Download settings: the environment variables, each file's deadline, retries, the mirror address.

Every number here is read at the moment it is used (`download_settings.DOWNLOAD_TIMEOUT`, never a
copy taken at import), so a test or a maintainer can change it in one place.

A file's deadline covers everything (connecting, the server's answer, the body, the retries): it is
`DOWNLOAD_GRACE` seconds plus its pinned size at `DOWNLOAD_MIN_RATE` bytes per second (about 3
minutes for haiku.txt), or the seconds in `$HOURGLASS_EDU_DOWNLOAD_DEADLINE`. A mirror
(`base_url`, or `$HOURGLASS_EDU_BASE_URL`) is an http:// or https:// address laid out like the
cache: file `haiku/haiku.txt` is fetched from `{base_url}/haiku/haiku.txt`.
"""

from __future__ import annotations

import math
import os
from urllib.parse import urlsplit

from hourglass_edu.data.pinned_files import DownloadError, RemoteFile

__all__ = ["deadline"]

DATA_ENV = "HOURGLASS_EDU_DATA"
BASE_URL_ENV = "HOURGLASS_EDU_BASE_URL"
DEADLINE_ENV = "HOURGLASS_EDU_DOWNLOAD_DEADLINE"  # seconds per file, instead of the default
DOWNLOAD_RETRIES = 2  # more tries after a dropped connection, a timeout or a damaged transfer
DOWNLOAD_TIMEOUT = 15.0  # seconds to connect, to get a whole answer's headers, or the next bytes
DOWNLOAD_MIN_RATE = 25_000  # bytes/s: a file's default deadline lets it come this slowly, plus...
DOWNLOAD_GRACE = 60.0  # ...this many seconds (connecting, retries)
RETRY_PAUSE = 1.0  # seconds before the first retry (twice that before the second, ...)
NOTICE_AFTER = 3.0  # seconds of waiting on a server before saying so
MAX_REDIRECTS = 10
CHUNK_BYTES = 65536  # at most, per read


def deadline_override() -> float | None:
    """The seconds in `$HOURGLASS_EDU_DOWNLOAD_DEADLINE`, None when it is unset or empty."""
    value = os.environ.get(DEADLINE_ENV)
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{DEADLINE_ENV}={value!r} is not a number of seconds above 0: set it "
                         f"to the seconds one corpus file may take (e.g. 600), or unset it")
    return seconds


def deadline(remote: RemoteFile) -> float:
    """Seconds that fetching `remote` may take, all tries together."""
    override = deadline_override()
    return override if override is not None else DOWNLOAD_GRACE + remote.size / DOWNLOAD_MIN_RATE


def mirror_address(base_url: str | None) -> tuple[str | None, str]:
    """The mirror's address (None: the pinned URLs) and where it was set, for messages."""
    if base_url is not None:
        return base_url, "base_url"
    return os.environ.get(BASE_URL_ENV) or None, BASE_URL_ENV


def download_url(remote: RemoteFile, base_url: str | None) -> str:
    base, _ = mirror_address(base_url)
    if base:
        return base.rstrip("/") + "/" + remote.path
    return remote.url


def check_base_url(base_url: str | None) -> None:
    """Refuse, before anything is asked of a network, a mirror address requests cannot fetch
    from (ftp://, file://, no scheme or no host): no retry would change that."""
    base, where = mirror_address(base_url)
    if not base:
        return
    parts = urlsplit(base)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise DownloadError(
            f"{where}={base!r}: a mirror must be an http:// or https:// address "
            f"(like https://example.org/corpora); for files on disk, set {DATA_ENV} to their "
            f"directory instead")
