"""Finding, downloading and reading corpora.

Downloads run against a real HTTP server on 127.0.0.1 (a thread serving a folder). Unit tests
register a tiny corpus of their own; only tests marked `corpus` touch the real files. No test
touches the user's cache: `isolated` points the cache at tmp_path and clears the env variables.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hourglass_edu import data
from hourglass_edu.data import CORPORA, CorpusSpec, DownloadError, RemoteFile, load_corpus
from hourglass_edu.data import download as download_module

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
    monkeypatch.setattr(download_module, "DOWNLOAD_RETRIES", 0)
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.delenv(data.BASE_URL_ENV, raising=False)
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
    return sorted(p for p in directory.rglob("*") if p.is_file())


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
        monkeypatch.setenv(data.BASE_URL_ENV, url + "/")
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


def test_a_server_sending_more_than_the_pinned_size_is_cut_off(mirror, isolated):
    (mirror / "tinypoems/poems.txt").write_bytes(POEMS.encode() + b"x" * 100_000)
    with serve(mirror) as url, pytest.raises(DownloadError, match=f"more than {len(POEMS)} bytes"):
        load_corpus("tinypoems", base_url=url)
    assert leftovers(isolated) == []


@pytest.mark.parametrize("failure", ["503", "corrupted"])
def test_failed_transfer_is_retried(mirror, isolated, monkeypatch, failure):
    monkeypatch.setattr(download_module, "DOWNLOAD_RETRIES", 1)
    flaky = type("Flaky", (_FlakyHandler,), {"failure": failure, "requests": []})
    with serve(mirror, flaky) as url:
        assert len(load_corpus("tinypoems", base_url=url).documents) == 3
    assert flaky.requests == ["/tinypoems/poems.txt"] * 2
    assert leftovers(isolated) == [isolated / "tinypoems/poems.txt"]


def test_http_404_names_the_url_and_is_not_retried(mirror, isolated, monkeypatch):
    monkeypatch.setattr(download_module, "DOWNLOAD_RETRIES", 2)
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
    monkeypatch.setenv(data.DATA_ENV, str(env_dir))
    assert load_corpus("tinypoems", download=False).sources == (env_dir / "tinypoems/poems.txt",)


def test_cache_is_used_when_env_directory_lacks_the_file(mirror, isolated, tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    copy_corpus(mirror, isolated, "tinypoems")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "env"))
    assert load_corpus("tinypoems", download=False).sources == (isolated / "tinypoems/poems.txt",)


def test_explicit_data_dir_is_the_only_place_used(mirror, isolated, tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    copy_corpus(mirror, env_dir, "tinypoems")
    monkeypatch.setenv(data.DATA_ENV, str(env_dir))
    explicit = tmp_path / "explicit"
    with serve(mirror) as url:
        corpus = load_corpus("tinypoems", data_dir=explicit, base_url=url)
    assert corpus.sources == (explicit / "tinypoems/poems.txt",)
    assert not isolated.exists()  # the cache was not touched


def test_env_variable_naming_a_missing_directory_is_an_error(isolated, tmp_path, monkeypatch,
                                                            mirror):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
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
    assert data.default_cache_dir() == Path(download_module.__file__).resolve().parents[2] / "data"


def test_default_cache_dir_of_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "__file__",
                        str(tmp_path / "site-packages/hourglass_edu/data/download.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "hourglass_edu"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "hourglass_edu"


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
    monkeypatch.setenv(data.DATA_ENV, str(corpus_dir))
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
    monkeypatch.setattr(download_module, "DOWNLOAD_RETRIES", 2)
    monkeypatch.setattr(download_module, "DOWNLOAD_TIMEOUT", 0.2)
    monkeypatch.setattr(download_module, "RETRY_PAUSE", 0.0)
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
    monkeypatch.setattr(download_module, "DOWNLOAD_RETRIES", 5)
    monkeypatch.setattr(download_module, "DOWNLOAD_TIMEOUT", 0.2)
    monkeypatch.setattr(download_module, "DOWNLOAD_DEADLINE", 0.0)  # no second try may start
    with silent_server() as url, pytest.raises(DownloadError):
        load_corpus("tinypoems", base_url=url)
    assert "retrying" not in capsys.readouterr().err
