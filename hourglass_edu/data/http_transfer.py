"""One file over HTTP: each try checked as its bytes arrive, retried within the file's deadline.

`fetch_file` fetches one pinned file with requests into its final name, through
`hourglass_edu.files.atomic_writer`: the name holds the file only when its size and sha256 match.
Each try runs beside a `DeadlineWatchdog`. What may pass (a dropped connection, a timeout, a
damaged transfer, HTTP 5xx, HTTP 429 after the wait the server asks for) is tried again, saying
why on stderr; what will not (HTTP 404, a file of another size, a web page instead of the file)
raises a `DownloadError` at once, and nothing of a failed try is left behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3
from tqdm.auto import tqdm

from hourglass_edu.data import download_settings as settings
from hourglass_edu.data.deadline_watchdog import DeadlineWatchdog, WatchedAdapter
from hourglass_edu.data.download_messages import (
    TransferFailure,
    duration,
    host_of,
    reason,
    request_failure,
    say,
    status_failure,
    where_to_get_it,
)
from hourglass_edu.data.pinned_files import DownloadError, RemoteFile
from hourglass_edu.files import atomic_writer

__all__: list[str] = []  # no public names: the modules that use these import them by name


def _announced_size(response: requests.Response) -> int | None:
    """The body's size in the Content-Length header, when it is the file's size (no
    Content-Encoding: a compressed body has a length of its own)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    length = response.headers.get("Content-Length", "")
    if encoding not in ("", "identity") or not length.strip().isdigit():
        return None
    return int(length)


def _fetch_once(session: requests.Session, remote: RemoteFile, url: str, target: Path,
                bar: tqdm, watch: DeadlineWatchdog) -> None:
    """One try: the file's bytes from `url` into `target` (atomically), checked on the way."""
    host = host_of(url)
    try:
        timeout = settings.DOWNLOAD_TIMEOUT
        response = session.get(url, stream=True, timeout=(timeout, timeout))
    except requests.RequestException as error:
        raise watch.reason or request_failure(error, url) from error
    with response:
        watch.answered_at = time.monotonic()
        failure = status_failure(response, watch.deadline_at)
        if failure is not None:
            raise failure
        web_page = "html" in response.headers.get("Content-Type", "").lower()
        announced = _announced_size(response)
        if announced is not None and announced != remote.size:
            raise TransferFailure("", f"{host} announces {announced:,} bytes (Content-Length), "
                                  f"not the pinned {remote.size:,}: it holds another file"
                                  + (" (a web page: a login page or captive portal?)" if web_page
                                     else ""), retry=False)
        digest = hashlib.sha256()
        try:
            with atomic_writer(target) as handle:
                for chunk in _body(response, watch):
                    if watch.reason is not None:  # where its socket could not be shut
                        raise watch.reason
                    if watch.received + len(chunk) > remote.size:
                        raise TransferFailure("", f"{host} sent more than the pinned "
                                              f"{remote.size:,} bytes: it holds another file",
                                              retry=False)
                    handle.write(chunk)
                    digest.update(chunk)
                    watch.received += len(chunk)
                    bar.update(len(chunk))
                if watch.received < remote.size:
                    got = f"got {watch.received:,} of {remote.size:,} bytes"
                    raise watch.reason or TransferFailure(
                        got, f"{got}: {host} ended the transfer there", retry=not web_page)
                if digest.hexdigest() != remote.sha256:
                    raise TransferFailure(
                        f"what {host} sent was damaged (sha256 mismatch)",
                        f"its sha256 is {digest.hexdigest()}, not the pinned {remote.sha256}",
                        retry=not web_page)
        except TransferFailure as failure:
            if web_page and not failure.retry:
                failure.message += (f"; {host} sent a web page (text/html), not the file: a "
                                    f"login page or captive portal? Open {url} in a browser")
            raise


def _body(response: requests.Response, watch: DeadlineWatchdog) -> Iterator[bytes]:
    """The body, in pieces of what has arrived (urllib3's read1: a slow server still moves the
    progress bar, and a failure knows how many bytes came; older urllib3: fixed chunks). A
    broken transfer becomes a TransferFailure here, inside atomic_writer's block, where a
    requests error (an OSError) would be renamed."""
    read1 = getattr(response.raw, "read1", None)
    try:
        if read1 is None:
            yield from response.iter_content(settings.CHUNK_BYTES)
        else:
            while chunk := read1(settings.CHUNK_BYTES, decode_content=True):
                yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        if watch.reason is not None:
            raise watch.reason from error
        remote, host = watch.remote, host_of(response.url)
        text = str(error)
        got = f"got {watch.received:,} of {remote.size:,} bytes"
        if "timed out" in text.lower():
            brief = f"{host} sent nothing for {settings.DOWNLOAD_TIMEOUT:g} s after {got[4:]}"
            message = brief
        elif "IncompleteRead" in text or "prematurely" in text:
            brief = message = f"{got}: {host} closed the connection"
        else:
            brief, message = got, f"{got}: the connection to {host} broke ({reason(error)})"
        raise TransferFailure(brief, message, retry=True) from error


def fetch_file(session: requests.Session, adapter: WatchedAdapter, remote: RemoteFile, url: str,
               target: Path, bar: tqdm) -> None:
    """One file, tried 1 + DOWNLOAD_RETRIES times within its deadline; each retry says on stderr
    why ("no answer from HOST within 15 s, retrying 2/3")."""
    tries = 1 + settings.DOWNLOAD_RETRIES
    started = time.monotonic()
    deadline = settings.deadline(remote)
    deadline_at = started + deadline
    for attempt in range(1, tries + 1):
        now = time.monotonic()
        answer_by = min(now + settings.DOWNLOAD_TIMEOUT, deadline_at)
        with DeadlineWatchdog(host_of(url), remote, answer_by, deadline_at, deadline) as watch:
            adapter.watchdog = watch
            try:
                _fetch_once(session, remote, url, target, bar, watch)
                return
            except TransferFailure as failure:
                bar.update(-watch.received)  # the next try starts the count over
                pause = max(settings.RETRY_PAUSE * attempt, failure.pause)
                said = failure.message + ("; nothing was saved" if watch.received else "")
                if (not failure.retry or attempt == tries
                        or time.monotonic() + pause >= deadline_at):
                    end = "" if said.endswith("?") else "."
                    raise DownloadError(f"could not download {url}: {said}{end} "
                                        f"{where_to_get_it(remote, url)}") from None
                brief = failure.brief
            finally:
                adapter.watchdog = None
        asked = (f" in {duration(pause)}, as asked" if pause > settings.RETRY_PAUSE * attempt
                 else "")
        say(f"{brief}, retrying {attempt + 1}/{tries}{asked}")
        time.sleep(pause)
