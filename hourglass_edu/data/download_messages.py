"""Download messages: how each failure of a transfer is worded, for the retry line and the error.

A `TransferFailure` carries two wordings of one failure: `brief`, for the stderr line that
announces a retry ("no answer from HOST within 15 s, retrying 2/3"), and `message`, for the final
`DownloadError`, which names the URL and says what to do. The functions below turn what requests,
urllib3 and the server say (exceptions wrapped in layers, HTTP statuses, Retry-After) into those.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import sys
import time
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm.auto import tqdm

from hourglass_edu.data import download_settings as settings
from hourglass_edu.data.pinned_files import RemoteFile

__all__ = ["say", "reason"]


class TransferFailure(Exception):
    """Why one try of one file failed: `brief` for the line that announces a retry, `message`
    for the final error, and whether another try may help. (Not an OSError: atomic_writer
    renames those.)"""

    def __init__(self, brief: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.brief, self.message, self.retry = brief, message, retry
        self.pause = 0.0  # seconds the server asked us to wait before trying again


def say(line: str) -> None:
    """One line on stderr, above any progress bar."""
    tqdm.write(line, file=sys.stderr)


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def where_to_get_it(remote: RemoteFile, url: str) -> str:
    return (
        f"To use a copy you already have, set {settings.DATA_ENV} to a directory holding "
        f"{remote.path} (or pass data_dir=...); the file is {remote.size:,} bytes from {url}"
    )


def no_answer(host: str, seconds: float) -> TransferFailure:
    brief = f"no answer from {host} within {seconds:g} s"
    return TransferFailure(brief, f"{brief}: are you offline?", retry=True)


def host_of(url: str) -> str:
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


def request_failure(error: requests.RequestException, url: str) -> TransferFailure:
    """A failure before any byte of the body: no connection, a refused address, a bad answer."""
    host = host_of(url)
    if isinstance(error, requests.TooManyRedirects):
        last = error.response.headers.get("Location", "?") if error.response is not None else "?"
        return TransferFailure("", f"too many redirects (more than {settings.MAX_REDIRECTS}) "
                               f"from {url}, the last to {last}: the server sends it round in a "
                               f"loop; check the address", retry=False)
    if isinstance(error, (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidURL)):
        # raised for a redirect's target: "No connection adapters were found for 'ftp://...'"
        where = re.search(r"'([^']*)'", str(error))
        target = where.group(1) if where else "an address"
        return TransferFailure("", f"{url} leads to {target}, which is not an http:// or "
                               f"https:// address: it cannot be downloaded", retry=False)
    if isinstance(error, requests.exceptions.SSLError):
        return TransferFailure("", f"the secure connection to {host} failed ({reason(error)}): "
                               f"check the address (is it an http:// server?) and your system's "
                               f"certificates and clock", retry=False)
    if isinstance(error, requests.Timeout):
        return no_answer(host, settings.DOWNLOAD_TIMEOUT)
    cause = error.args[0] if error.args else None
    if isinstance(getattr(cause, "reason", cause), urllib3.exceptions.ProtocolError):
        return TransferFailure(f"{host} dropped the connection",  # it was reached: not "offline"
                               f"{host} dropped the connection without an answer "
                               f"({reason(error)})", retry=True)
    if isinstance(error, requests.ConnectionError):
        return TransferFailure(f"could not reach {host}",
                               f"could not reach {host} ({reason(error)}): are you offline?",
                               retry=True)
    return TransferFailure(f"{host} failed ({reason(error)})",
                           f"the request to {host} failed ({reason(error)})", retry=True)


def reason(error: Exception) -> str:
    """The cause that requests and urllib3 wrap in layers ("[Errno 111] Connection refused")."""
    cause = error.args[0] if error.args and isinstance(error.args[0], Exception) else error
    cause = getattr(cause, "reason", None) or cause  # urllib3's MaxRetryError
    if len(cause.args) == 2 and isinstance(cause.args[1], Exception):
        cause = cause.args[1]  # urllib3's ProtocolError("Connection aborted.", OSError(...))
    text = str(cause)
    return text.partition("Failed to establish a new connection: ")[2] or text


def status_failure(response: requests.Response, deadline_at: float) -> TransferFailure | None:
    """The failure an HTTP status of 400 or more says (None below that); a 429 or 503 that asks
    for a wait past the file's deadline is not retried."""
    status = response.status_code
    if status < 400:
        return None
    host = host_of(response.url)
    said = f"HTTP {status} {response.reason}".rstrip()
    retry = not 400 <= status < 500 or status in (408, 429)  # 4xx stays, except "try later"
    failure = TransferFailure(f"{host} answered {said}", said, retry)
    wait = _retry_after(response) if status in (429, 503) else None
    if wait is not None:
        if time.monotonic() + wait > deadline_at:
            failure.message += (f", and asks to wait {duration(wait)} before asking again; "
                                f"try again later")
            failure.retry = False
        failure.pause = wait
    return failure
