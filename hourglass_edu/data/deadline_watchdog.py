"""The deadline watchdog: a thread beside each try of a download that ends it when time is up.

requests' timeouts bound each wait for the next bytes, not a whole answer, so a server that trickles
its headers or its body could keep a download alive for hours. `DeadlineWatchdog` watches the clock
beside one try: it says on stderr when the server keeps us waiting (more than `NOTICE_AFTER`
seconds), or when the file will not make its deadline at the rate it comes, and when the try's time
is up it shuts the try's sockets, which wakes the blocked read at once. `WatchedAdapter` shows it
every socket that requests opens or reuses; `watched_session` is a requests session built on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import requests
import requests.adapters

from hourglass_edu.data import download_settings as settings
from hourglass_edu.data.download_messages import TransferFailure, duration, no_answer, say
from hourglass_edu.data.download_settings import DEADLINE_ENV
from hourglass_edu.data.pinned_files import RemoteFile

__all__: list[str] = []  # no public names: the modules that use these import them by name

_TICK = 0.05  # seconds between the watchdog's looks at the clock


class DeadlineWatchdog:
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
        self.reason: TransferFailure | None = None  # set when it stopped the transfer
        self._sockets: list[socket.socket] = []
        self._said_waiting = self._said_slow = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)

    def __enter__(self) -> DeadlineWatchdog:
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
                self._fire(TransferFailure(
                    f"{self.host} took longer than the deadline",
                    self._deadline_message(now), retry=False))
            elif self.answered_at is None:
                if now >= self.answer_by:
                    self._fire(no_answer(self.host, settings.DOWNLOAD_TIMEOUT))
                elif now - self.started >= settings.NOTICE_AFTER and not self._said_waiting:
                    self._said_waiting = True
                    say(f"waiting for {self.host} to answer ({duration(now - self.started)} "
                        f"so far; giving up after {duration(self.answer_by - self.started)})")
            elif now - self.answered_at >= settings.NOTICE_AFTER and not self._said_slow:
                self._say_if_slow(now)

    def _say_if_slow(self, now: float) -> None:
        """Once: the file will not make its deadline at the rate it is coming."""
        elapsed = now - self.answered_at
        rate = self.received / elapsed
        left = self.remote.size - self.received
        if rate > 0 and now + left / rate <= self.deadline_at:
            return
        self._said_slow = True
        eta = f"at this rate it needs {duration(left / rate)} more" if rate > 0 else "so far"
        say(f"{self.host} is slow: {self.received:,} of {self.remote.size:,} bytes of "
            f"{self.remote.path} in {duration(elapsed)} ({eta}); it is given up "
            f"{duration(self.deadline_at - now)} from now (set {DEADLINE_ENV}=SECONDS to wait "
            f"longer)")

    def _deadline_message(self, now: float) -> str:
        overridden = settings.deadline_override() is not None
        allowance = (f"{DEADLINE_ENV}={self.deadline:g}" if overridden else
                     f"{settings.DOWNLOAD_GRACE:g} s + {self.remote.size:,} bytes at "
                     f"{settings.DOWNLOAD_MIN_RATE:,} bytes/s")
        return (f"gave up on {self.remote.path} after {duration(self.deadline)}, its deadline "
                f"({allowance}): {self.host} had sent {self.received:,} of "
                f"{self.remote.size:,} bytes; set {DEADLINE_ENV}=SECONDS to allow longer")

    def _fire(self, reason: TransferFailure) -> None:
        self.reason = reason
        for sock in list(self._sockets):
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also under TLS: it wakes the blocked read at once
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' HTTP adapter (no retries of its own: they are done and said here), which shows
    the socket of every connection it opens, or reuses, to the current try's watchdog. (The
    socket itself: a connection drops its reference once an answer that closes it arrives, while
    the body is still being read from it.)"""

    def __init__(self) -> None:
        self.watchdog: DeadlineWatchdog | None = None
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


def watched_session() -> tuple[requests.Session, WatchedAdapter]:
    session = requests.Session()
    session.max_redirects = settings.MAX_REDIRECTS
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter
