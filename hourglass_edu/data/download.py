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

Every download has a deadline: each file gets `DOWNLOAD_GRACE` seconds plus its pinned size at
`DOWNLOAD_MIN_RATE` bytes per second (about 3 minutes for haiku.txt), or the seconds in
`$HOURGLASS_EDU_DOWNLOAD_DEADLINE`. The deadline covers everything (connecting, the server's
answer, the body, the retries), so a server that trickles its headers or its body is given up
with a message, not waited on for hours; a wait of more than `NOTICE_AFTER` seconds is said on
stderr as it happens. A file reaches its final name only when its size and sha256 match (written
through `hourglass_edu.files.atomic_writer`); a failure that may pass (a dropped connection, a
timeout, a damaged transfer, HTTP 5xx) is tried again, saying why, and what fails for good
leaves nothing behind. One process at a time downloads into a corpus folder (a lock beside the
files); under that lock, the temporary files that a killed download left are removed.

`read_verified` checks every file that is read against its pinned size and sha256. Hashing costs a
few milliseconds per megabyte and the bytes are read anyway, so there is no reason to trust a stale
or hand-edited copy: a mismatch raises an error that names the file instead of silently training
on different text.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import math
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
import requests
import requests.adapters
import urllib3
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from hourglass_edu.files import atomic_writer

__all__ = [
    "DATA_ENV",
    "BASE_URL_ENV",
    "DEADLINE_ENV",
    "RemoteFile",
    "DownloadError",
    "default_cache_dir",
    "locate_files",
    "read_verified",
]

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
LOCK_NAME = ".download.lock"
_TICK = 0.05  # seconds between the watchdog's looks at the clock
# pooch (which this module used before) named its temporary files like this, beside the target.
_POOCH_TEMPORARY = re.compile(r"tmp[a-z0-9_]{8}")


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


def _base_url(base_url: str | None) -> tuple[str | None, str]:
    """The mirror's address (None: the pinned URLs) and where it was set, for messages."""
    if base_url is not None:
        return base_url, "base_url"
    return os.environ.get(BASE_URL_ENV) or None, BASE_URL_ENV


def _download_url(remote: RemoteFile, base_url: str | None) -> str:
    base, _ = _base_url(base_url)
    if base:
        return base.rstrip("/") + "/" + remote.path
    return remote.url


def _check_base_url(base_url: str | None) -> None:
    """Refuse, before anything is asked of a network, a mirror address requests cannot fetch
    from (ftp://, file://, no scheme or no host): no retry would change that."""
    base, where = _base_url(base_url)
    if not base:
        return
    parts = urlsplit(base)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise DownloadError(
            f"{where}={base!r}: a mirror must be an http:// or https:// address "
            f"(like https://example.org/corpora); for files on disk, set {DATA_ENV} to their "
            f"directory instead")


def _deadline_override() -> float | None:
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


def _deadline(remote: RemoteFile) -> float:
    """Seconds that fetching `remote` may take, all tries together."""
    override = _deadline_override()
    return override if override is not None else DOWNLOAD_GRACE + remote.size / DOWNLOAD_MIN_RATE


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _where_to_get_it(remote: RemoteFile, url: str) -> str:
    return (
        f"To use a copy you already have, set {DATA_ENV} to a directory holding "
        f"{remote.path} (or pass data_dir=...); the file is {remote.size:,} bytes from {url}"
    )


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Files on disk
# ----------------------------------------------------------------------------------------------


def _is_there(path: Path, remote: RemoteFile) -> bool:
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


@contextlib.contextmanager
def _download_lock(folder: Path, budget: float) -> Iterator[None]:
    """Hold the download lock of `folder` (created if missing): one process at a time downloads
    into it (under torchrun every process loads the corpus), and under it every temporary file
    of ours there is a leftover, safe to remove. The OS drops a killed holder's lock."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _say(f"another process is downloading into {folder}; waiting for it (at most "
                 f"{_duration(budget)})")
            try:
                lock.acquire(timeout=budget)
            except Timeout:
                raise DownloadError(
                    f"another process has been downloading into {folder} for "
                    f"{_duration(budget)}; wait for it to finish, or stop it, and load "
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


def _remove_leftovers(folder: Path, remotes: Sequence[RemoteFile]) -> None:
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
        _say(f"removed {len(stale)} temporary file(s) that an interrupted download left in "
             f"{folder} ({size:,} bytes)")


# ----------------------------------------------------------------------------------------------
# One transfer
# ----------------------------------------------------------------------------------------------


class _Failure(Exception):
    """Why one try of one file failed: `brief` for the line that announces a retry, `message`
    for the final error, and whether another try may help. (Not an OSError: atomic_writer
    renames those.)"""

    def __init__(self, brief: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.brief, self.message, self.retry = brief, message, retry
        self.pause = 0.0  # seconds the server asked us to wait before trying again


class _Watchdog:
    """Runs beside one try of one file. It says on stderr when the server keeps us waiting, and
    when the try's time is up (no complete answer within DOWNLOAD_TIMEOUT, or the file's
    deadline) it shuts down the sockets of the try's connections. That is the only way to end a
    read that a trickling server keeps alive: requests' timeouts bound each wait for the next
    bytes, not a whole answer."""

    def __init__(self, host: str, remote: RemoteFile, answer_by: float, deadline_at: float,
                 deadline: float) -> None:
        self.host, self.remote = host, remote
        self.started = time.monotonic()
        self.answer_by, self.deadline_at, self.deadline = answer_by, deadline_at, deadline
        self.answered_at: float | None = None
        self.received = 0
        self.reason: _Failure | None = None  # set when it stopped the transfer
        self._sockets: list[socket.socket] = []
        self._said_waiting = self._said_slow = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        if self.reason is not None:
            self._shut(sock)

    def _run(self) -> None:
        while not self._stop.wait(_TICK):
            now = time.monotonic()
            if self.reason is not None:
                for sock in list(self._sockets):  # one opened since it fired
                    self._shut(sock)
            elif now >= self.deadline_at:
                self._fire(_Failure(
                    f"{self.host} took longer than the deadline",
                    self._deadline_message(now), retry=False))
            elif self.answered_at is None:
                if now >= self.answer_by:
                    self._fire(_no_answer(self.host, DOWNLOAD_TIMEOUT))
                elif now - self.started >= NOTICE_AFTER and not self._said_waiting:
                    self._said_waiting = True
                    _say(f"waiting for {self.host} to answer ({_duration(now - self.started)} "
                         f"so far; giving up after {_duration(self.answer_by - self.started)})")
            elif now - self.answered_at >= NOTICE_AFTER and not self._said_slow:
                self._say_if_slow(now)

    def _say_if_slow(self, now: float) -> None:
        """Once: the file will not make its deadline at the rate it is coming."""
        elapsed = now - self.answered_at
        rate = self.received / elapsed
        left = self.remote.size - self.received
        if rate > 0 and now + left / rate <= self.deadline_at:
            return
        self._said_slow = True
        eta = f"at this rate it needs {_duration(left / rate)} more" if rate > 0 else "so far"
        _say(f"{self.host} is slow: {self.received:,} of {self.remote.size:,} bytes of "
             f"{self.remote.path} in {_duration(elapsed)} ({eta}); it is given up "
             f"{_duration(self.deadline_at - now)} from now (set {DEADLINE_ENV}=SECONDS to wait "
             f"longer)")

    def _deadline_message(self, now: float) -> str:
        overridden = _deadline_override() is not None
        allowance = (f"{DEADLINE_ENV}={self.deadline:g}" if overridden else
                     f"{DOWNLOAD_GRACE:g} s + {self.remote.size:,} bytes at "
                     f"{DOWNLOAD_MIN_RATE:,} bytes/s")
        return (f"gave up on {self.remote.path} after {_duration(self.deadline)}, its deadline "
                f"({allowance}): {self.host} had sent {self.received:,} of "
                f"{self.remote.size:,} bytes; set {DEADLINE_ENV}=SECONDS to allow longer")

    def _fire(self, reason: _Failure) -> None:
        self.reason = reason
        for sock in list(self._sockets):
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also under TLS: it wakes the blocked read at once
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' HTTP adapter (no retries of its own: they are done and said here), which shows
    the socket of every connection it opens, or reuses, to the current try's watchdog. (The
    socket itself: a connection drops its reference once an answer that closes it arrives, while
    the body is still being read from it.)"""

    def __init__(self) -> None:
        self.watchdog: _Watchdog | None = None
        self._watched_managers: set[int] = set()
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        self._watch_pools(manager)
        return manager

    def show(self, sock: socket.socket | None) -> None:
        if sock is not None and self.watchdog is not None:
            self.watchdog.watch(sock)

    def _watch_pools(self, manager) -> None:
        classes = getattr(manager, "pool_classes_by_scheme", None)
        if id(manager) in self._watched_managers or not isinstance(classes, dict):
            return  # (another urllib3: the deadline is then checked between chunks only)
        self._watched_managers.add(id(manager))
        adapter = self

        def watched(pool_class):
            class WatchedPool(pool_class):
                def _new_conn(self):
                    connection = super()._new_conn()
                    open_socket = getattr(connection, "_new_conn", None)
                    if open_socket is not None:  # urllib3's "open the TCP socket" step
                        def open_and_show():
                            sock = open_socket()
                            adapter.show(sock)
                            return sock
                        connection._new_conn = open_and_show
                    return connection

                def _get_conn(self, *args, **kwargs):
                    connection = super()._get_conn(*args, **kwargs)
                    adapter.show(getattr(connection, "sock", None))  # kept alive from before
                    return connection
            return WatchedPool

        manager.pool_classes_by_scheme = {scheme: watched(pool_class)
                                          for scheme, pool_class in classes.items()}


def _session() -> tuple[requests.Session, _WatchedAdapter]:
    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter


def _no_answer(host: str, seconds: float) -> _Failure:
    brief = f"no answer from {host} within {seconds:g} s"
    return _Failure(brief, f"{brief}: are you offline?", retry=True)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _retry_after(response: requests.Response) -> float | None:
    """Seconds a 429 or 503 answer asks us to wait (Retry-After: seconds, or a date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _request_failure(error: requests.RequestException, url: str) -> _Failure:
    """A failure before any byte of the body: no connection, a refused address, a bad answer."""
    host = _host(url)
    if isinstance(error, requests.TooManyRedirects):
        last = error.response.headers.get("Location", "?") if error.response is not None else "?"
        return _Failure("", f"too many redirects (more than {MAX_REDIRECTS}) from {url}, the "
                        f"last to {last}: the server sends it round in a loop; check the "
                        f"address", retry=False)
    if isinstance(error, (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidURL)):
        # raised for a redirect's target: "No connection adapters were found for 'ftp://...'"
        where = re.search(r"'([^']*)'", str(error))
        target = where.group(1) if where else "an address"
        return _Failure("", f"{url} leads to {target}, which is not an http:// or https:// "
                        f"address: it cannot be downloaded", retry=False)
    if isinstance(error, requests.exceptions.SSLError):
        return _Failure("", f"the secure connection to {host} failed ({_reason(error)}): check "
                        f"the address (is it an http:// server?) and your system's "
                        f"certificates and clock", retry=False)
    if isinstance(error, requests.Timeout):
        return _no_answer(host, DOWNLOAD_TIMEOUT)
    cause = error.args[0] if error.args else None
    if isinstance(getattr(cause, "reason", cause), urllib3.exceptions.ProtocolError):
        return _Failure(f"{host} dropped the connection",  # it was reached: not "offline"
                        f"{host} dropped the connection without an answer ({_reason(error)})",
                        retry=True)
    if isinstance(error, requests.ConnectionError):
        return _Failure(f"could not reach {host}",
                        f"could not reach {host} ({_reason(error)}): are you offline?",
                        retry=True)
    return _Failure(f"{host} failed ({_reason(error)})",
                    f"the request to {host} failed ({_reason(error)})", retry=True)


def _reason(error: Exception) -> str:
    """The cause that requests and urllib3 wrap in layers ("[Errno 111] Connection refused")."""
    cause = error.args[0] if error.args and isinstance(error.args[0], Exception) else error
    cause = getattr(cause, "reason", None) or cause  # urllib3's MaxRetryError
    if len(cause.args) == 2 and isinstance(cause.args[1], Exception):
        cause = cause.args[1]  # urllib3's ProtocolError("Connection aborted.", OSError(...))
    text = str(cause)
    return text.partition("Failed to establish a new connection: ")[2] or text


def _status_failure(response: requests.Response, deadline_at: float) -> _Failure | None:
    status = response.status_code
    if status < 400:
        return None
    host = _host(response.url)
    said = f"HTTP {status} {response.reason}".rstrip()
    retry = not 400 <= status < 500 or status in (408, 429)  # 4xx stays, except "try later"
    failure = _Failure(f"{host} answered {said}", said, retry)
    wait = _retry_after(response) if status in (429, 503) else None
    if wait is not None:
        if time.monotonic() + wait > deadline_at:
            failure.message += (f", and asks to wait {_duration(wait)} before asking again; "
                                f"try again later")
            failure.retry = False
        failure.pause = wait
    return failure


def _announced_size(response: requests.Response) -> int | None:
    """The body's size in the Content-Length header, when it is the file's size (no
    Content-Encoding: a compressed body has a length of its own)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    length = response.headers.get("Content-Length", "")
    if encoding not in ("", "identity") or not length.strip().isdigit():
        return None
    return int(length)


def _fetch_once(session: requests.Session, remote: RemoteFile, url: str, target: Path,
                bar: tqdm, watch: _Watchdog) -> None:
    """One try: the file's bytes from `url` into `target` (atomically), checked on the way."""
    host = _host(url)
    try:
        response = session.get(url, stream=True, timeout=(DOWNLOAD_TIMEOUT, DOWNLOAD_TIMEOUT))
    except requests.RequestException as error:
        raise watch.reason or _request_failure(error, url) from error
    with response:
        watch.answered_at = time.monotonic()
        failure = _status_failure(response, watch.deadline_at)
        if failure is not None:
            raise failure
        web_page = "html" in response.headers.get("Content-Type", "").lower()
        announced = _announced_size(response)
        if announced is not None and announced != remote.size:
            raise _Failure("", f"{host} announces {announced:,} bytes (Content-Length), not "
                           f"the pinned {remote.size:,}: it holds another file"
                           + (" (a web page: a login page or captive portal?)" if web_page
                              else ""), retry=False)
        digest = hashlib.sha256()
        try:
            with atomic_writer(target) as handle:
                for chunk in _body(response, watch):
                    if watch.reason is not None:  # where its socket could not be shut
                        raise watch.reason
                    if watch.received + len(chunk) > remote.size:
                        raise _Failure("", f"{host} sent more than the pinned "
                                       f"{remote.size:,} bytes: it holds another file",
                                       retry=False)
                    handle.write(chunk)
                    digest.update(chunk)
                    watch.received += len(chunk)
                    bar.update(len(chunk))
                if watch.received < remote.size:
                    got = f"got {watch.received:,} of {remote.size:,} bytes"
                    raise watch.reason or _Failure(
                        got, f"{got}: {host} ended the transfer there", retry=not web_page)
                if digest.hexdigest() != remote.sha256:
                    raise _Failure(
                        f"what {host} sent was damaged (sha256 mismatch)",
                        f"its sha256 is {digest.hexdigest()}, not the pinned {remote.sha256}",
                        retry=not web_page)
        except _Failure as failure:
            if web_page and not failure.retry:
                failure.message += (f"; {host} sent a web page (text/html), not the file: a "
                                    f"login page or captive portal? Open {url} in a browser")
            raise


def _body(response: requests.Response, watch: _Watchdog) -> Iterator[bytes]:
    """The body, in pieces of what has arrived (urllib3's read1: a slow server still moves the
    progress bar, and a failure knows how many bytes came; older urllib3: fixed chunks). A
    broken transfer becomes a _Failure here, inside atomic_writer's block, where a requests
    error (an OSError) would be renamed."""
    read1 = getattr(response.raw, "read1", None)
    try:
        if read1 is None:
            yield from response.iter_content(CHUNK_BYTES)
        else:
            while chunk := read1(CHUNK_BYTES, decode_content=True):
                yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        if watch.reason is not None:
            raise watch.reason from error
        remote, host = watch.remote, _host(response.url)
        text = str(error)
        got = f"got {watch.received:,} of {remote.size:,} bytes"
        if "timed out" in text.lower():
            brief = f"{host} sent nothing for {DOWNLOAD_TIMEOUT:g} s after {got[4:]}"
            message = brief
        elif "IncompleteRead" in text or "prematurely" in text:
            brief = message = f"{got}: {host} closed the connection"
        else:
            brief, message = got, f"{got}: the connection to {host} broke ({_reason(error)})"
        raise _Failure(brief, message, retry=True) from error


def _fetch(session: requests.Session, adapter: _WatchedAdapter, remote: RemoteFile, url: str,
           target: Path, bar: tqdm) -> None:
    """One file, tried 1 + DOWNLOAD_RETRIES times within its deadline; each retry says on stderr
    why ("no answer from HOST within 15 s, retrying 2/3")."""
    tries = 1 + DOWNLOAD_RETRIES
    started = time.monotonic()
    deadline = _deadline(remote)
    deadline_at = started + deadline
    for attempt in range(1, tries + 1):
        now = time.monotonic()
        answer_by = min(now + DOWNLOAD_TIMEOUT, deadline_at)
        with _Watchdog(_host(url), remote, answer_by, deadline_at, deadline) as watch:
            adapter.watchdog = watch
            try:
                _fetch_once(session, remote, url, target, bar, watch)
                return
            except _Failure as failure:
                bar.update(-watch.received)  # the next try starts the count over
                pause = max(RETRY_PAUSE * attempt, failure.pause)
                said = failure.message + ("; nothing was saved" if watch.received else "")
                if (not failure.retry or attempt == tries
                        or time.monotonic() + pause >= deadline_at):
                    end = "" if said.endswith("?") else "."
                    raise DownloadError(f"could not download {url}: {said}{end} "
                                        f"{_where_to_get_it(remote, url)}") from None
                brief = failure.brief
            finally:
                adapter.watchdog = None
        asked = f" in {_duration(pause)}, as asked" if pause > RETRY_PAUSE * attempt else ""
        _say(f"{brief}, retrying {attempt + 1}/{tries}{asked}")
        time.sleep(pause)


def _download(remotes: Sequence[RemoteFile], target_dir: Path, base_url: str | None,
              desc: str, still_missing: Callable[[RemoteFile], bool]) -> None:
    """Fetch each file into target_dir, one corpus folder at a time under its download lock
    (`still_missing` says, once it is held, which files another process has not fetched)."""
    _check_base_url(base_url)
    _deadline_override()  # a bad value is said before anything starts
    folders: dict[Path, list[RemoteFile]] = {}
    for remote in remotes:
        folders.setdefault((target_dir / remote.path).parent, []).append(remote)
    session, adapter = _session()
    with session:
        for folder, group in folders.items():
            budget = sum(_deadline(remote) for remote in group)
            with _download_lock(folder, budget):
                _remove_leftovers(folder, group)
                group = [remote for remote in group if still_missing(remote)]  # another process?
                if not group:
                    continue
                with tqdm(total=sum(r.size for r in group), unit="B", unit_scale=True,
                          desc=desc) as bar:
                    for remote in group:
                        url = _download_url(remote, base_url)
                        _fetch(session, adapter, remote, url, target_dir / remote.path, bar)


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

    def find(remote: RemoteFile) -> Path | None:
        for directory in search:
            if _is_there(directory / remote.path, remote):
                return directory / remote.path
        return None

    found = {remote.path: find(remote) for remote in remotes}
    missing = [r for r in remotes if found[r.path] is None]
    if missing:
        if not download:
            first = missing[0]
            url = _download_url(first, base_url)
            raise FileNotFoundError(
                f"corpus {name!r}: {len(missing)} file(s) missing, e.g. {first.path}, "
                f"looked in {', '.join(str(d) for d in search)} and download=False. "
                f"Allow the download or: {_where_to_get_it(first, url)}")
        _download(missing, target, base_url, desc=f"downloading {name}",
                  still_missing=lambda remote: find(remote) is None)
        found.update({r.path: find(r) or target / r.path for r in missing})
    return [found[remote.path] for remote in remotes]
