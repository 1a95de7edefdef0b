"""Finding, downloading and reading corpora.

Downloads run against a real HTTP server on 127.0.0.1 (a thread serving a folder). Unit tests
register a tiny corpus of their own; only tests marked `corpus` touch the real files. No test
touches the user's cache: `isolated` points the cache at tmp_path and clears the env variables.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hourglass_edu.data import (
    CORPORA,
    corpus_folders,
    deadline_watchdog,
    download_settings,
    load_corpus,
)
from hourglass_edu.data import download as download_module
from hourglass_edu.data.corpora import CorpusSpec
from hourglass_edu.data.pinned_files import DownloadError, RemoteFile

POEMS = "old pond\na frog jumps in\nsplash\n\nautumn moon\n\nfirst snow\non the stone\n"
STORY_A = "THE FIRST\n\nIt was dark.\n"
STORY_B = "THE SECOND\n\nIt was darker still. Ä\n"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


class _FlakyHandler(_QuietHandler):
    """Records every request in `requests`; answers the first one for each path badly when
    `failure` is set, later ones normally."""

    failure: str | None = None  # "503", or "corrupted": the right size, the wrong bytes
    requests: list[str] = []

    def do_GET(self) -> None:
        first = self.path not in self.requests
        self.requests.append(self.path)
        if not first or self.failure is None:
            return super().do_GET()
        if self.failure == "503":
            return self.send_error(503, "try later")
        body = Path(self.translate_path(self.path)).read_bytes().swapcase()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve(directory: Path, handler_class: type = _QuietHandler):
    """Serve `directory` over HTTP on a free port of 127.0.0.1; yields the base URL."""
    handler = functools.partial(handler_class, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def remote(path: str, content: bytes) -> RemoteFile:
    return RemoteFile(path, len(content), hashlib.sha256(content).hexdigest(),
                      url=f"https://example.invalid/pinned/{path}")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No env overrides, no retries (each waits a second or more; test_failed_transfer_is_retried
    covers them), and a cache directory inside tmp_path; returns that cache directory."""
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 0)
    monkeypatch.delenv(download_settings.DATA_ENV, raising=False)
    monkeypatch.delenv(download_settings.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(download_settings.DEADLINE_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(download_module, "default_cache_dir", lambda: cache)
    return cache


@pytest.fixture
def mirror(tmp_path, monkeypatch, isolated) -> Path:
    """A folder laid out like a data directory holding two tiny corpora, registered as
    `tinypoems` (blank-line documents) and `tinystories` (one document per file)."""
    root = tmp_path / "mirror"
    files = {"tinypoems/poems.txt": POEMS.encode(), "tinystories/a.txt": STORY_A.encode(),
             "tinystories/b.txt": STORY_B.encode()}
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    monkeypatch.setitem(CORPORA, "tinypoems", CorpusSpec(
        "tinypoems", "test poems", "blank_lines",
        (remote("tinypoems/poems.txt", files["tinypoems/poems.txt"]),)))
    monkeypatch.setitem(CORPORA, "tinystories", CorpusSpec(
        "tinystories", "test stories", "one_per_file",
        tuple(remote(p, files[p]) for p in ("tinystories/a.txt", "tinystories/b.txt"))))
    return root


def leftovers(directory: Path) -> list[Path]:
    """The files under `directory`, but the download lock (older filelock versions keep it)."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.name != corpus_folders.LOCK_NAME)


# --- downloads ----------------------------------------------------------------------------------


def test_download_fetches_verifies_and_caches(mirror, isolated):
    with serve(mirror) as url:
        corpus = load_corpus("tinypoems", base_url=url)
    assert corpus.documents == ["old pond\na frog jumps in\nsplash", "autumn moon",
                                "first snow\non the stone"]
    assert leftovers(isolated) == [isolated / "tinypoems/poems.txt"]  # no partial files
    # The server is gone: the second load must come from the cache without downloading.
    again = load_corpus("tinypoems", download=False)
    assert again.documents == corpus.documents
    assert again.sources == (isolated / "tinypoems/poems.txt",)


def test_multi_file_corpus_downloads_only_what_is_missing(mirror, isolated):
    (isolated / "tinystories").mkdir(parents=True)
    (isolated / "tinystories/a.txt").write_bytes(STORY_A.encode())
    (mirror / "tinystories/a.txt").unlink()  # a request for it would now fail with 404
    with serve(mirror) as url:
        corpus = load_corpus("tinystories", base_url=url)
    assert corpus.documents == [STORY_A.strip(), STORY_B.strip()]


def test_base_url_env_variable_selects_the_mirror(mirror, isolated, monkeypatch):
    with serve(mirror) as url:
        monkeypatch.setenv(download_settings.BASE_URL_ENV, url + "/")
        assert len(load_corpus("tinypoems").documents) == 3


@pytest.mark.parametrize("tamper", ["same_size", "truncated"])
def test_checksum_mismatch_removes_partial_and_leaves_cache_untouched(mirror, isolated, tamper):
    (isolated / "tinystories").mkdir(parents=True)
    cached = isolated / "tinystories/a.txt"
    cached.write_bytes(STORY_A.encode())
    before = {p: p.read_bytes() for p in leftovers(isolated)}
    good = STORY_B.encode()
    bad = good.replace(b"darker", b"DARKER") if tamper == "same_size" else good[:-5]
    (mirror / "tinystories/b.txt").write_bytes(bad)
    with serve(mirror) as url, pytest.raises(DownloadError) as caught:
        load_corpus("tinystories", base_url=url)
    message = str(caught.value)
    assert f"{url}/tinystories/b.txt" in message
    assert ("sha256" in message) if tamper == "same_size" else ("bytes" in message)
    assert "HOURGLASS_EDU_DATA" in message
    assert {p: p.read_bytes() for p in leftovers(isolated)} == before  # nothing added or changed


@pytest.mark.parametrize("length", ["announced", "unannounced"])
def test_a_server_sending_more_than_the_pinned_size_is_cut_off(mirror, isolated, length):
    too_much = POEMS.encode() + b"x" * 100_000
    if length == "announced":  # refused on its Content-Length, before the body
        expected = (f"announces {len(too_much):,} bytes (Content-Length), not the pinned "
                    f"{len(POEMS)}")
        (mirror / "tinypoems/poems.txt").write_bytes(too_much)
        server = serve(mirror)
    else:  # no Content-Length: cut off when the pinned size is passed
        expected = f"sent more than the pinned {len(POEMS)} bytes"
        server = raw_server(lambda connection, line, stopped: connection.sendall(
            b"HTTP/1.0 200 OK\r\n\r\n" + too_much))
    with server as url, pytest.raises(DownloadError, match=re.escape(expected)):
        load_corpus("tinypoems", base_url=url if isinstance(url, str) else url[0])
    assert leftovers(isolated) == []


@pytest.mark.parametrize("failure", ["503", "corrupted"])
def test_failed_transfer_is_retried(mirror, isolated, monkeypatch, failure):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 1)
    flaky = type("Flaky", (_FlakyHandler,), {"failure": failure, "requests": []})
    with serve(mirror, flaky) as url:
        assert len(load_corpus("tinypoems", base_url=url).documents) == 3
    assert flaky.requests == ["/tinypoems/poems.txt"] * 2
    assert leftovers(isolated) == [isolated / "tinypoems/poems.txt"]


def test_http_404_names_the_url_and_is_not_retried(mirror, isolated, monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    (mirror / "tinypoems/poems.txt").unlink()
    counting = type("Counting", (_FlakyHandler,), {"requests": []})
    with serve(mirror, counting) as url, pytest.raises(DownloadError, match="HTTP 404") as caught:
        load_corpus("tinypoems", base_url=url)
    assert f"{url}/tinypoems/poems.txt" in str(caught.value)
    assert counting.requests == ["/tinypoems/poems.txt"]  # a missing file stays missing
    assert leftovers(isolated) == []


def test_offline_error_names_the_env_variable_and_the_url(mirror, isolated):
    url = closed_port_url()
    with pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    message = str(caught.value)
    assert "HOURGLASS_EDU_DATA" in message and f"{url}/tinypoems/poems.txt" in message
    assert "offline" in message
    assert leftovers(isolated) == []


def test_missing_with_download_disabled_names_the_env_variable_and_pinned_url(mirror, isolated):
    with pytest.raises(FileNotFoundError) as caught:
        load_corpus("tinypoems", download=False)
    message = str(caught.value)
    assert "HOURGLASS_EDU_DATA" in message
    assert "https://example.invalid/pinned/tinypoems/poems.txt" in message


# --- where files are found ----------------------------------------------------------------------


def copy_corpus(mirror: Path, target: Path, corpus: str) -> None:
    for source in (mirror / corpus).iterdir():
        (target / corpus).mkdir(parents=True, exist_ok=True)
        (target / corpus / source.name).write_bytes(source.read_bytes())


def test_env_directory_comes_before_the_cache(mirror, isolated, tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    copy_corpus(mirror, env_dir, "tinypoems")
    copy_corpus(mirror, isolated, "tinypoems")
    monkeypatch.setenv(download_settings.DATA_ENV, str(env_dir))
    assert load_corpus("tinypoems", download=False).sources == (env_dir / "tinypoems/poems.txt",)


def test_cache_is_used_when_env_directory_lacks_the_file(mirror, isolated, tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    copy_corpus(mirror, isolated, "tinypoems")
    monkeypatch.setenv(download_settings.DATA_ENV, str(tmp_path / "env"))
    assert load_corpus("tinypoems", download=False).sources == (isolated / "tinypoems/poems.txt",)


def test_explicit_data_dir_is_the_only_place_used(mirror, isolated, tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    copy_corpus(mirror, env_dir, "tinypoems")
    monkeypatch.setenv(download_settings.DATA_ENV, str(env_dir))
    explicit = tmp_path / "explicit"
    with serve(mirror) as url:
        corpus = load_corpus("tinypoems", data_dir=explicit, base_url=url)
    assert corpus.sources == (explicit / "tinypoems/poems.txt",)
    assert not isolated.exists()  # the cache was not touched


def test_env_variable_naming_a_missing_directory_is_an_error(isolated, tmp_path, monkeypatch,
                                                            mirror):
    monkeypatch.setenv(download_settings.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="HOURGLASS_EDU_DATA"):
        load_corpus("tinypoems")


@pytest.mark.parametrize("change", [b"X", b""], ids=["longer", "same_size"])
def test_a_found_file_that_differs_from_the_pinned_one_is_rejected(mirror, isolated, change):
    copy_corpus(mirror, isolated, "tinypoems")
    path = isolated / "tinypoems/poems.txt"
    content = path.read_bytes()
    path.write_bytes(content + change if change else content.replace(b"frog", b"FROG"))
    with pytest.raises(ValueError, match="bytes" if change else "sha256"):
        load_corpus("tinypoems", download=False)
    assert path.exists()  # the user's file is reported, never deleted


def test_default_cache_dir_is_data_folder_in_a_checkout():
    repository = Path(corpus_folders.__file__).resolve().parents[2]
    assert corpus_folders.default_cache_dir() == repository / "data"


def test_default_cache_dir_of_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_folders, "__file__",
                        str(tmp_path / "site-packages/hourglass_edu/data/corpus_folders.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus_folders.default_cache_dir() == tmp_path / "xdg" / "hourglass_edu"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpus_folders.default_cache_dir() == tmp_path / "home" / ".cache" / "hourglass_edu"


# --- reading local text -------------------------------------------------------------------------


def test_unknown_name_lists_the_known_corpora(isolated):
    with pytest.raises(ValueError, match="known: haiku, lovecraft"):
        load_corpus("shakespeare")


def test_local_file_is_cut_at_blank_lines_with_tidy_whitespace(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"\xef\xbb\xbf\r\nfirst  \r\npoem\t\r\n \t \r\n\r\nsecond\rpoem\n\n\n"
                     b"  indented\n\xc2\xa0\xc2\xa0\ngap kept\n")
    corpus = load_corpus(path)
    assert corpus.name == "mine"
    assert corpus.documents == ["first\npoem", "second\npoem", "  indented\n\ngap kept"]


def test_local_folder_gives_one_document_per_txt_file_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n\nstill bee\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    assert load_corpus(str(tmp_path)).documents == ["ay", "bee\n\nstill bee"]


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n\n"], ids=["empty", "whitespace"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="no text"):
        load_corpus(path)
    (tmp_path / "full.txt").write_text("text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt"):  # in a folder too, naming the file
        load_corpus(tmp_path)


def test_non_utf8_file_is_an_error_naming_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        load_corpus(path)


def test_folder_without_txt_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no .txt files"):
        load_corpus(tmp_path)


# --- the real corpora ---------------------------------------------------------------------------


@pytest.mark.corpus
def test_registry_matches_the_manifest(corpus_dir):
    manifest = corpus_dir / "manifest.tsv"
    if not manifest.is_file():
        pytest.skip("no manifest.tsv beside the corpora")
    rows = [line.split("\t") for line in manifest.read_text().splitlines()[1:] if line]
    expected = {(c, p, int(n), sha, url) for c, p, n, sha, url in rows}
    registered = {(spec.name, f.path, f.size, f.sha256, f.url)
                  for spec in CORPORA.values() for f in spec.files}
    assert registered == expected
    assert [len(CORPORA[name].files) for name in ("haiku", "lovecraft")] == [1, 67]


@pytest.mark.corpus
def test_real_corpora_download_from_a_local_mirror(corpus_dir, isolated, tmp_path):
    with serve(corpus_dir) as url:
        haiku = load_corpus("haiku", data_dir=tmp_path / "dl", base_url=url)
        lovecraft = load_corpus("lovecraft", data_dir=tmp_path / "dl", base_url=url)
    assert len(haiku.documents) == 60_835
    assert len(lovecraft.documents) == 67
    for spec in (CORPORA["haiku"], CORPORA["lovecraft"]):
        for f in spec.files:
            assert hashlib.sha256((tmp_path / "dl" / f.path).read_bytes()).hexdigest() == f.sha256
    expected = {tmp_path / "dl" / f.path for name in ("haiku", "lovecraft")
                for f in CORPORA[name].files}
    assert set(leftovers(tmp_path / "dl")) == expected  # no temporary files left behind


@pytest.mark.corpus
def test_real_corpora_from_the_env_directory(corpus_dir, isolated, monkeypatch):
    monkeypatch.setenv(download_settings.DATA_ENV, str(corpus_dir))
    haiku = load_corpus("haiku", download=False)
    assert haiku.documents[0] == "sun-bleached billboard\nthe gravel road ends\nat peaches"
    assert all(doc and doc == doc.strip("\n") and "\r" not in doc for doc in haiku.documents)
    lovecraft = load_corpus("lovecraft", download=False)
    assert [p.name for p in lovecraft.sources] == sorted(p.name for p in lovecraft.sources)
    assert lovecraft.documents[0].startswith("AT THE MOUNTAINS OF MADNESS")
    assert lovecraft.num_characters > 2_800_000


@contextlib.contextmanager
def silent_server():
    """A server on 127.0.0.1 that accepts every connection and never answers; yields its URL.
    It stops by itself when the block ends (the sockets close, the thread is a daemon)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    accepted, stop = [], threading.Event()

    def accept_and_say_nothing() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_silent_server_is_retried_aloud_and_given_up_in_bounded_time(mirror, isolated,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    monkeypatch.setattr(download_settings, "DOWNLOAD_TIMEOUT", 0.2)
    monkeypatch.setattr(download_settings, "RETRY_PAUSE", 0.0)
    with silent_server() as url, pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    host = url.removeprefix("http://")
    err = capsys.readouterr().err
    assert f"no answer from {host} within 0.2 s, retrying 2/3" in err
    assert f"no answer from {host} within 0.2 s, retrying 3/3" in err
    assert "retrying 4/3" not in err
    assert f"{url}/tinypoems/poems.txt" in str(caught.value)
    assert leftovers(isolated) == []


def test_retries_stop_at_the_deadline(mirror, isolated, monkeypatch, capsys):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 5)
    monkeypatch.setattr(download_settings, "DOWNLOAD_TIMEOUT", 0.2)
    # no second try (after a 1 s pause) may start
    monkeypatch.setenv(download_settings.DEADLINE_ENV, "0.5")
    with silent_server() as url, pytest.raises(DownloadError):
        load_corpus("tinypoems", base_url=url)
    assert "retrying" not in capsys.readouterr().err


# --- hostile servers (issue 32) -----------------------------------------------------------------


@contextlib.contextmanager
def raw_server(respond):
    """A server on 127.0.0.1 that reads each request's head, records its first line, and hands
    the connection to `respond(connection, request_line, stopped)`, a function that writes what
    it likes (waiting with `stopped.wait(seconds)`, which is true once the block has ended).
    Yields (its URL, the request lines seen)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stopped, seen, threads = threading.Event(), [], []

    def answer(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                part = connection.recv(4096)
                if not part:
                    return
                head += part
            line = head.split(b"\r\n")[0].decode()
            seen.append(line)
            respond(connection, line, stopped)

    def accept() -> None:
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                thread = threading.Thread(target=answer, args=(listener.accept()[0],),
                                          daemon=True)
                thread.start()
                threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stopped.set()
        acceptor.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)
        listener.close()


def head_of(content: bytes, **headers) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(content)}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def trickle(data: bytes, every: float, connection: socket.socket, stopped) -> None:
    for i in range(len(data)):
        if stopped.wait(every):
            return
        connection.sendall(data[i:i + 1])


@pytest.fixture
def quick(monkeypatch):
    """Timeouts and notices in fractions of a second, retries without a pause."""
    monkeypatch.setattr(download_settings, "DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(download_settings, "NOTICE_AFTER", 0.1)
    monkeypatch.setattr(download_settings, "RETRY_PAUSE", 0.0)


@pytest.mark.timeout(20)
def test_a_trickling_body_is_given_up_at_the_deadline_with_a_word(mirror, isolated, quick,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv(download_settings.DEADLINE_ENV, "0.8")
    content = POEMS.encode()

    def two_hundred_bytes_a_second(connection, line, stopped):
        connection.sendall(head_of(content))
        trickle(content, 0.05, connection, stopped)  # each byte well within the read timeout

    started = time.monotonic()
    with raw_server(two_hundred_bytes_a_second) as (url, _), \
            pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "gave up on tinypoems/poems.txt after 0.8 s" in message
    assert f"{download_settings.DEADLINE_ENV}=0.8" in message and "nothing was saved" in message
    assert "is slow" in capsys.readouterr().err  # said while it happened
    assert leftovers(isolated) == []


def test_the_default_deadline_scales_with_the_pinned_size(monkeypatch):
    monkeypatch.delenv(download_settings.DEADLINE_ENV, raising=False)
    small, large = remote("a.txt", b"x"), remote("b.txt", b"x" * 1_000_000)
    grace, rate = download_settings.DOWNLOAD_GRACE, download_settings.DOWNLOAD_MIN_RATE
    assert download_settings.deadline(small) == pytest.approx(grace + 1 / rate)
    assert download_settings.deadline(large) == pytest.approx(grace + 1_000_000 / rate)
    monkeypatch.setenv(download_settings.DEADLINE_ENV, "600")
    assert download_settings.deadline(large) == 600


@pytest.mark.timeout(20)
def test_the_default_deadline_applies_without_the_variable(mirror, isolated, quick, monkeypatch):
    monkeypatch.delenv(download_settings.DEADLINE_ENV, raising=False)
    monkeypatch.setattr(download_settings, "DOWNLOAD_GRACE", 0.5)
    monkeypatch.setattr(download_settings, "DOWNLOAD_MIN_RATE", 10**9)
    content = POEMS.encode()

    def trickling(connection, line, stopped):
        connection.sendall(head_of(content))
        trickle(content, 0.05, connection, stopped)

    with raw_server(trickling) as (url, _), pytest.raises(DownloadError, match="gave up") as caught:
        load_corpus("tinypoems", base_url=url)
    assert f"0.5 s + {len(content)} bytes at 1,000,000,000 bytes/s" in str(caught.value)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_deadline_variable_is_refused_naming_it(mirror, isolated, monkeypatch, value):
    monkeypatch.setenv(download_settings.DEADLINE_ENV, value)
    name = download_settings.DEADLINE_ENV
    with pytest.raises(ValueError, match=f"{name}='{value}' is not a number"):
        load_corpus("tinypoems", base_url=closed_port_url())


@pytest.mark.timeout(20)
def test_trickled_headers_are_said_within_moments_and_given_up(mirror, isolated, quick, capsys):
    def trickled_headers(connection, line, stopped):
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        trickle(b"a" * 10_000, 0.01, connection, stopped)

    started = time.monotonic()
    with raw_server(trickled_headers) as (url, seen), pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    assert time.monotonic() - started < 5
    host = url.removeprefix("http://")
    assert f"no answer from {host} within 0.5 s" in str(caught.value)
    assert f"waiting for {host} to answer" in capsys.readouterr().err
    assert leftovers(isolated) == []


@pytest.mark.timeout(20)
def test_a_slow_first_byte_then_a_fast_body_is_said_and_succeeds(mirror, isolated, quick,
                                                                   capsys):
    content = POEMS.encode()

    def slow_then_fast(connection, line, stopped):
        if not stopped.wait(0.3):
            connection.sendall(head_of(content) + content)

    with raw_server(slow_then_fast) as (url, _):
        assert len(load_corpus("tinypoems", base_url=url).documents) == 3
    assert "waiting for" in capsys.readouterr().err


def test_stale_temporaries_are_removed_on_the_next_attempt(mirror, isolated, capsys):
    folder = isolated / "tinypoems"
    folder.mkdir(parents=True)
    ours = [folder / ".poems.txt.x1y2z3.tmp", folder / "tmpab_cd123"]  # ours, and pooch's
    kept = [folder / "notes.tmp", folder / ".other.txt.x1y2z3.tmp", folder / "tmp-notes"]
    for path in ours + kept:
        path.write_bytes(b"partial")
    with serve(mirror) as url:
        load_corpus("tinypoems", base_url=url)
    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in kept)  # not ours: never touched
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kill -9 is POSIX")
def test_a_killed_download_leaves_nothing_the_next_attempt_keeps(mirror, isolated, tmp_path):
    content = POEMS.encode()

    def endless(connection, line, stopped):
        connection.sendall(head_of(content))
        trickle(content, 0.2, connection, stopped)

    script = ("import sys; from hourglass_edu.data import download\n"
              "from hourglass_edu.data.pinned_files import RemoteFile\n"
              f"remote = RemoteFile('tinypoems/poems.txt', {len(content)}, "
              f"{hashlib.sha256(content).hexdigest()!r}, 'x')\n"
              "download.locate_files('tinypoems', [remote], data_dir=sys.argv[1], "
              "base_url=sys.argv[2])\n")
    folder = isolated / "tinypoems"
    with raw_server(endless) as (url, _):
        child = subprocess.Popen([sys.executable, "-c", script, str(isolated), url],
                                 cwd=Path(__file__).parents[1])
        try:
            for _ in range(300):
                if any(folder.glob(".poems.txt.*.tmp")):
                    break
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=10)
    assert any(folder.glob(".poems.txt.*.tmp"))  # what kill -9 leaves
    with serve(mirror) as url:
        load_corpus("tinypoems", base_url=url)
    assert leftovers(isolated) == [folder / "poems.txt"]


@pytest.mark.timeout(20)
def test_a_truncated_transfer_says_how_many_bytes_came(mirror, isolated, quick, monkeypatch,
                                                       capsys):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 1)
    content = POEMS.encode()

    def cut_short(connection, line, stopped):
        connection.sendall(head_of(content) + content[:30])

    with raw_server(cut_short) as (url, seen), pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    message = str(caught.value)
    assert f"got 30 of {len(content)} bytes" in message
    assert "sha256" not in message and "offline" not in message
    host = url.removeprefix("http://")
    assert (f"got 30 of {len(content)} bytes: {host} closed the connection, retrying 2/2"
            in capsys.readouterr().err)
    assert len(seen) == 2
    assert leftovers(isolated) == []


class _RedirectLoop(_QuietHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_loop_is_named_and_not_retried(mirror, isolated, quick, monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    looping = type("Looping", (_RedirectLoop,), {"requests": []})
    with serve(mirror, looping) as url, pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    message = str(caught.value)
    assert f"too many redirects (more than 10) from {url}/tinypoems/poems.txt" in message
    assert "sha256" not in message and "offline" not in message
    assert len(looping.requests) == 11  # one try: the loop will not end by itself


@pytest.mark.parametrize("base", ["ftp://127.0.0.1/corpora", "file:///srv/corpora",
                                  "127.0.0.1:8000/corpora", "http://"])
@pytest.mark.parametrize("where", ["argument", "variable"])
def test_a_base_url_that_is_not_http_is_refused_at_once(mirror, isolated, monkeypatch, base,
                                                        where):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    named = "base_url" if where == "argument" else download_settings.BASE_URL_ENV
    if where == "variable":
        monkeypatch.setenv(download_settings.BASE_URL_ENV, base)
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=base if where == "argument" else None)
    assert time.monotonic() - started < 2.5  # no retries: their pauses alone take 3 s
    assert str(caught.value).startswith(f"{named}={base!r}: a mirror must be an http:// or "
                                        "https:// address")
    assert not isolated.exists()


class _RedirectToFtp(_FlakyHandler):
    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(301)
        self.send_header("Location", "ftp://127.0.0.1" + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_to_ftp_is_refused_without_retrying(mirror, isolated, quick, monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    redirecting = type("Redirecting", (_RedirectToFtp,), {"requests": []})
    with serve(mirror, redirecting) as url, \
            pytest.raises(DownloadError, match="leads to ftp://127.0.0.1/tinypoems/poems.txt, "):
        load_corpus("tinypoems", base_url=url)
    assert len(redirecting.requests) == 1


def test_https_to_a_plain_http_server_is_said_and_not_retried(mirror, isolated, quick,
                                                               monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    counting = type("Counting", (_FlakyHandler,), {"requests": []})
    with serve(mirror, counting) as url, \
            pytest.raises(DownloadError, match="the secure connection to 127.0.0.1"):
        load_corpus("tinypoems", base_url=url.replace("http://", "https://"))


@pytest.mark.parametrize("where", ["cache", "env", "data_dir"])
def test_a_corpus_path_that_is_a_directory_is_refused_not_downloaded(mirror, isolated, tmp_path,
                                                                     monkeypatch, where):
    root = {"cache": isolated, "env": tmp_path / "env", "data_dir": tmp_path / "mine"}[where]
    (root / "tinypoems/poems.txt").mkdir(parents=True)
    if where == "env":
        monkeypatch.setenv(download_settings.DATA_ENV, str(root))
    counting = type("Counting", (_FlakyHandler,), {"requests": []})
    for download in (True, False):
        with serve(mirror, counting) as url, \
                pytest.raises(ValueError, match="poems.txt is a directory, not the corpus file"):
            load_corpus("tinypoems", base_url=url, download=download,
                        data_dir=root if where == "data_dir" else None)
    assert counting.requests == []  # nothing downloaded
    assert (root / "tinypoems/poems.txt").is_dir()


def test_the_command_line_says_a_directory_in_one_line(mirror, isolated, capsys):
    from hourglass_edu.cli import main

    (isolated / "tinypoems/poems.txt").mkdir(parents=True)
    assert main(["corpus", "tinypoems"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err and "Traceback" not in err


def test_the_command_line_refuses_an_ftp_mirror_in_one_line(mirror, isolated, capsys,
                                                            monkeypatch):
    from hourglass_edu.cli import main

    monkeypatch.setenv(download_settings.BASE_URL_ENV, "ftp://127.0.0.1/corpora")
    assert main(["corpus", "tinypoems"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and download_settings.BASE_URL_ENV in err


# --- the audit: more hostile servers and paths -----------------------------------------------


@pytest.mark.timeout(20)
def test_a_content_length_that_is_not_the_pinned_size_is_refused_at_once(mirror, isolated,
                                                                         quick):
    content = POEMS.encode()

    def announces_more_then_hangs(connection, line, stopped):
        connection.sendall(head_of(content + b"??") + content)
        stopped.wait(30)

    started = time.monotonic()
    with raw_server(announces_more_then_hangs) as (url, seen), \
            pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    assert time.monotonic() - started < 2
    assert (f"announces {len(content) + 2} bytes (Content-Length), not the pinned {len(content)}"
            in str(caught.value))
    assert len(seen) == 1


def test_a_compressed_body_is_not_mistaken_for_a_wrong_size(mirror, isolated):
    content = POEMS.encode()
    packed = gzip.compress(content)

    def gzipped(connection, line, stopped):
        connection.sendall(head_of(packed, Content_Encoding="gzip") + packed)

    with raw_server(gzipped) as (url, _):
        assert len(load_corpus("tinypoems", base_url=url).documents) == 3


@pytest.mark.parametrize("length", ["announced", "unannounced"])
def test_a_web_page_instead_of_the_file_is_said_and_not_retried(mirror, isolated, quick,
                                                               monkeypatch, length):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)
    page = b"<html><body>Please log in to use this network</body></html>"

    def captive_portal(connection, line, stopped):
        head = head_of(page, Content_Type="text/html")
        if length == "unannounced":
            head = head.replace(f"Content-Length: {len(page)}\r\n".encode(), b"")
        connection.sendall(head + page)

    with raw_server(captive_portal) as (url, seen), pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    assert "web page" in str(caught.value) and "captive portal" in str(caught.value)
    assert len(seen) == 1
    assert leftovers(isolated) == []


@pytest.mark.timeout(20)
def test_http_500_is_retried_and_named(mirror, isolated, quick, monkeypatch, capsys):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 1)

    def broken(connection, line, stopped):
        connection.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")

    with raw_server(broken) as (url, seen), \
            pytest.raises(DownloadError, match="HTTP 500 Internal Server Error"):
        load_corpus("tinypoems", base_url=url)
    assert len(seen) == 2
    assert "answered HTTP 500 Internal Server Error, retrying 2/2" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_http_429_is_retried_after_the_pause_it_asks_for(mirror, isolated, quick, monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 1)
    content = POEMS.encode()

    def busy_once(connection, line, stopped):
        if len(seen) == 1:
            connection.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
                               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            connection.sendall(head_of(content) + content)

    started = time.monotonic()
    with raw_server(busy_once) as (url, seen):
        assert len(load_corpus("tinypoems", base_url=url).documents) == 3
    assert time.monotonic() - started >= 1  # it waited as asked (RETRY_PAUSE is 0 here)


def test_http_429_asking_for_longer_than_the_deadline_gives_up_at_once(mirror, isolated, quick,
                                                                       monkeypatch):
    monkeypatch.setattr(download_settings, "DOWNLOAD_RETRIES", 2)

    def come_back_in_an_hour(connection, line, stopped):
        connection.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\n"
                           b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    with raw_server(come_back_in_an_hour) as (url, seen), \
            pytest.raises(DownloadError, match="asks to wait 60 min before asking again"):
        load_corpus("tinypoems", base_url=url)
    assert len(seen) == 1


@pytest.mark.timeout(20)
def test_a_body_that_stalls_says_after_how_many_bytes(mirror, isolated, quick):
    content = POEMS.encode()

    def stalls(connection, line, stopped):
        connection.sendall(head_of(content) + content[:20])
        stopped.wait(30)

    with raw_server(stalls) as (url, _), pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    assert f"sent nothing for 0.5 s after 20 of {len(content)} bytes" in str(caught.value)


def test_a_file_where_the_corpus_folder_belongs_is_refused(mirror, isolated):
    isolated.mkdir(parents=True)
    (isolated / "tinypoems").write_text("a file where the corpus folder belongs")
    with pytest.raises(ValueError, match="a file is in the way"):
        load_corpus("tinypoems", base_url=closed_port_url())


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_cache_is_said_in_one_line(mirror, isolated):
    isolated.mkdir(parents=True)
    isolated.chmod(0o500)
    try:
        with pytest.raises(DownloadError, match=f"cannot download into {isolated}"):
            load_corpus("tinypoems", base_url=closed_port_url())
    finally:
        isolated.chmod(0o700)


def test_a_cache_folder_that_is_not_writable_is_said_in_one_line(mirror, isolated, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(isolated / "tinypoems"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=closed_port_url())
    message = str(caught.value)
    assert f"cannot download into {isolated / 'tinypoems'} (Permission denied)" in message
    assert download_settings.DATA_ENV in message and "--data-dir" in message


def test_a_dangling_link_at_the_corpus_path_is_refused_and_kept(mirror, isolated):
    (isolated / "tinypoems").mkdir(parents=True)
    link = isolated / "tinypoems/poems.txt"
    link.symlink_to(isolated / "moved-away.txt")
    with pytest.raises(ValueError, match="which does not exist; fix or remove the link"):
        load_corpus("tinypoems", base_url=closed_port_url())
    assert link.is_symlink()


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_at_the_corpus_path_is_refused_not_read(mirror, isolated):
    (isolated / "tinypoems").mkdir(parents=True)
    os.mkfifo(isolated / "tinypoems/poems.txt")
    with pytest.raises(ValueError, match="is not a regular file"):
        load_corpus("tinypoems", download=False)


def test_a_huge_file_at_the_corpus_path_is_refused_before_it_is_read(mirror, isolated,
                                                                     monkeypatch):
    (isolated / "tinypoems").mkdir(parents=True)
    with open(isolated / "tinypoems/poems.txt", "wb") as handle:
        handle.truncate(20 * 2**30)  # sparse: 20 GB that take no disk
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read {self}"))
    with pytest.raises(ValueError, match="has 21,474,836,480 bytes but the pinned"):
        load_corpus("tinypoems", download=False)


@pytest.mark.timeout(20)
def test_a_second_download_waits_for_the_first_and_uses_its_file(mirror, isolated, capsys):
    from filelock import FileLock

    folder = isolated / "tinypoems"
    folder.mkdir(parents=True)
    other = FileLock(folder / corpus_folders.LOCK_NAME, thread_local=False)
    other.acquire()

    def the_other_process_finishes() -> None:
        time.sleep(0.3)
        (folder / "poems.txt").write_bytes(POEMS.encode())
        other.release()

    counting = type("Counting", (_FlakyHandler,), {"requests": []})
    finisher = threading.Thread(target=the_other_process_finishes)
    with serve(mirror, counting) as url:
        finisher.start()
        corpus = load_corpus("tinypoems", base_url=url)
        finisher.join()
    assert len(corpus.documents) == 3
    assert counting.requests == []  # it did not download the file a second time
    assert "another process is downloading into" in capsys.readouterr().err


def test_a_server_that_hangs_up_without_answering_is_not_called_offline(mirror, isolated,
                                                                        quick):
    def hang_up(connection, line, stopped):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with raw_server(hang_up) as (url, _), pytest.raises(DownloadError) as caught:
        load_corpus("tinypoems", base_url=url)
    host = url.removeprefix("http://")
    assert f"{host} dropped the connection without an answer" in str(caught.value)
    assert "offline" not in str(caught.value)


@pytest.mark.timeout(20)
def test_the_deadline_holds_where_sockets_cannot_be_watched(mirror, isolated, quick,
                                                            monkeypatch):
    # Another urllib3, whose connection pools cannot be watched: checked between pieces instead.
    monkeypatch.setattr(deadline_watchdog.WatchedAdapter, "_watch_pools", lambda self, m: None)
    monkeypatch.setenv(download_settings.DEADLINE_ENV, "0.5")
    content = POEMS.encode()

    def trickling(connection, line, stopped):
        connection.sendall(head_of(content))
        trickle(content, 0.05, connection, stopped)

    started = time.monotonic()
    with raw_server(trickling) as (url, _), pytest.raises(DownloadError, match="gave up"):
        load_corpus("tinypoems", base_url=url)
    assert time.monotonic() - started < 3  # the whole trickle takes 3.75 s
