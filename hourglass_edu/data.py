"""Text in, token tensors out: corpora, the document split, the character tokenizer, batches.

The pipeline, in the order notebook 00 builds it:

1. `load_corpus("haiku" | "lovecraft" | path)` finds the raw text (or downloads it, checking every
   byte against a pinned sha256) and cuts it into documents: one poem, one story, one file.
2. `split_documents` puts each document wholly in train or in validation, reproducibly.
3. `CharTokenizer` maps each character to an integer id. Documents are laid out as
   `<eot> doc1 <eot> doc2 <eot> ...`, so a model learns where a document starts and where it ends.
4. `sample_batch` draws random windows for training; `iter_eval_batches` walks the validation
   stream once, scoring every token exactly once.

`prepare_data` runs steps 1-3 in one call.

Where corpus files are looked for, in order (each file on its own, so an interrupted download
resumes where it stopped):

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

Every file that is read is checked against its pinned size and sha256. Hashing costs a few
milliseconds per megabyte and the bytes are read anyway, so there is no reason to trust a stale
or hand-edited copy: a mismatch raises an error that names the file instead of silently training
on different text.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import statistics
import tempfile
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hourglass_edu._manifest import FILES as _MANIFEST_ROWS

__all__ = [
    "EOT",
    "UNK",
    "IGNORE_INDEX",
    "CORPORA",
    "DATA_ENV",
    "BASE_URL_ENV",
    "RemoteFile",
    "CorpusSpec",
    "Corpus",
    "DownloadError",
    "default_cache_dir",
    "load_corpus",
    "split_documents",
    "CharTokenizer",
    "PreparedData",
    "prepare_data",
    "sample_batch",
    "iter_eval_batches",
]

EOT = "<eot>"  # end of text: separates documents; how `decode` renders it
UNK = "<unk>"  # unknown character, only in tokenizers built with unk=True
IGNORE_INDEX = -100  # target value that losses skip (F.cross_entropy's default ignore_index)
DATA_ENV = "HOURGLASS_EDU_DATA"
BASE_URL_ENV = "HOURGLASS_EDU_BASE_URL"
NORMALIZATION_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One pinned file: its place in a data directory, its exact bytes, where to get them."""

    path: str  # relative to a data directory, e.g. "haiku/haiku.txt"
    size: int  # bytes
    sha256: str
    url: str  # the exact bytes at a fixed upstream commit


@dataclass(frozen=True)
class CorpusSpec:
    """A registered corpus. `layout` says how its text becomes documents:
    "blank_lines" = documents are separated by blank lines; "one_per_file" = each file is one."""

    name: str
    description: str
    layout: str
    files: tuple[RemoteFile, ...]


_DESCRIPTIONS = {
    "haiku": ("60,835 modern English haiku, one document per poem", "blank_lines"),
    "lovecraft": ("67 stories by H. P. Lovecraft, one document per story", "one_per_file"),
}


def _build_registry() -> dict[str, CorpusSpec]:
    registry = {}
    for name, (description, layout) in _DESCRIPTIONS.items():
        files = sorted(
            (RemoteFile(path, size, sha, url) for corpus, path, size, sha, url in _MANIFEST_ROWS
             if corpus == name),
            key=lambda f: f.path,  # stories in filename order
        )
        registry[name] = CorpusSpec(name, description, layout, tuple(files))
    return registry


CORPORA: dict[str, CorpusSpec] = _build_registry()


# ----------------------------------------------------------------------------------------------
# Finding and downloading files
# ----------------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """A corpus file could not be fetched, or what arrived is not the pinned file."""


def default_cache_dir() -> Path:
    """`data/` beside the package in a source checkout, else the user's cache directory."""
    repo_root = Path(__file__).resolve().parent.parent
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


def _check_bytes(content: bytes, remote: RemoteFile, path: Path, remedy: str) -> None:
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


def _download(remotes: Sequence[RemoteFile], target_dir: Path, base_url: str | None,
              desc: str, timeout: float = 30.0) -> None:
    """Fetch each file into target_dir, verified, atomically: a file appears under its final name
    only when its size and sha256 match; on any failure its partial download is removed."""
    with tqdm(total=sum(r.size for r in remotes), unit="B", unit_scale=True, desc=desc) as bar:
        for remote in remotes:
            url = _download_url(remote, base_url)
            final = target_dir / remote.path
            final.parent.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(
                dir=final.parent, prefix=f".{final.name}.", suffix=".part", delete=False)
            try:
                with handle:
                    _fetch_into(handle, remote, url, bar, timeout)
                os.replace(handle.name, final)
            except BaseException:
                Path(handle.name).unlink(missing_ok=True)
                raise


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


def _resolve_files(spec: CorpusSpec, data_dir: str | Path | None, download: bool,
                   base_url: str | None) -> list[tuple[RemoteFile, Path]]:
    """Where each of the corpus's files is on disk, downloading the missing ones."""
    if data_dir is not None:
        search, target = [Path(data_dir).expanduser()], Path(data_dir).expanduser()
    else:
        env_dir = _env_data_dir()
        target = default_cache_dir()
        search = ([env_dir] if env_dir is not None else []) + [target]

    found: dict[str, Path] = {}
    for remote in spec.files:
        for directory in search:
            if (directory / remote.path).is_file():
                found[remote.path] = directory / remote.path
                break
    missing = [r for r in spec.files if r.path not in found]
    if missing:
        if not download:
            first = missing[0]
            url = _download_url(first, base_url)
            raise FileNotFoundError(
                f"corpus {spec.name!r}: {len(missing)} file(s) missing, e.g. {first.path}, "
                f"looked in {', '.join(str(d) for d in search)} and download=False. "
                f"Allow the download or: {_where_to_get_it(first, url)}")
        _download(missing, target, base_url, desc=f"downloading {spec.name}")
        found.update({r.path: target / r.path for r in missing})
    return [(remote, found[remote.path]) for remote in spec.files]


# ----------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Documents ready to split and tokenize. `sources` are the files they were read from."""

    name: str
    documents: list[str]
    sources: tuple[Path, ...] = ()

    @property
    def num_characters(self) -> int:
        return sum(len(doc) for doc in self.documents)

    def __repr__(self) -> str:
        return (f"Corpus(name={self.name!r}, documents={len(self.documents):,}, "
                f"characters={self.num_characters:,})")


def _decode_text(content: bytes, path: Path) -> str:
    """UTF-8 (a leading byte-order mark is dropped), with newlines normalised to \\n."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not valid UTF-8 (byte {content[error.start]:#04x} at offset "
            f"{error.start}); convert it first, e.g. `iconv -f latin1 -t utf-8`") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _tidy(lines: list[str]) -> str:
    """Strip trailing whitespace from every line (invisible, it would only add noise tokens) and
    drop leading and trailing empty lines."""
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _split_blank_lines(text: str) -> list[str]:
    """Documents separated by lines that are empty or hold only spaces and tabs. (A line of other
    invisible characters, like the no-break spaces one haiku uses as a gap, stays inside its
    document as an empty line.)"""
    documents, current = [], []
    for line in text.split("\n") + [""]:
        if line.strip(" \t"):
            current.append(line)
        elif current:
            documents.append(_tidy(current))
            current = []
    return [doc for doc in documents if doc]


def _documents_from(files: Iterable[tuple[Path, bytes]], layout: str) -> list[str]:
    documents = []
    for path, content in files:
        text = _decode_text(content, path)
        found = _split_blank_lines(text) if layout == "blank_lines" else [_tidy(text.split("\n"))]
        if not any(found):
            raise ValueError(f"{path} holds no text (it is empty or only whitespace)")
        documents.extend(found)
    return documents


def load_corpus(source: str | os.PathLike, data_dir: str | Path | None = None,
                download: bool = True, *, base_url: str | None = None) -> Corpus:
    """Load a registered corpus by name, or your own text from a path.

    source: a name in `CORPORA` ("haiku": one document per poem; "lovecraft": one per story), or
        a path. A `.txt` file (any single file) is cut into documents at blank lines, like the
        haiku; a folder contributes each of its `*.txt` files, sorted by name, as one document
        (not recursive). A name is looked up in the registry first; pass a `Path` (or a string
        with a slash, like "./haiku") to read a local file of the same name.
    data_dir, download, base_url: where registered corpora are found and fetched from (see the
        module docstring); ignored for paths.

    Raises ValueError for an unknown name, an empty or non-UTF-8 file, or a file that does not
    match its pinned checksum; FileNotFoundError when a file is missing and download=False;
    DownloadError (a RuntimeError) when a download fails.
    """
    if isinstance(source, str) and source in CORPORA:
        spec = CORPORA[source]
        located = _resolve_files(spec, data_dir, download, base_url)
        files = []
        for remote, path in located:
            content = path.read_bytes()
            _check_bytes(content, remote, path,
                         remedy="delete it (or fix the directory it came from) and load again")
            files.append((path, content))
        return Corpus(spec.name, _documents_from(files, spec.layout),
                      tuple(path for _, path in located))

    path = Path(source).expanduser()
    if path.is_file():
        return Corpus(path.stem, _documents_from([(path, path.read_bytes())], "blank_lines"),
                      (path,))
    if path.is_dir():
        paths = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not paths:
            raise ValueError(f"folder {path} holds no .txt files; each .txt file is a document")
        return Corpus(path.name, _documents_from(((p, p.read_bytes()) for p in paths),
                                                 "one_per_file"), tuple(paths))
    raise ValueError(
        f"unknown corpus {str(source)!r}: not a registered name (known: "
        f"{', '.join(sorted(CORPORA))}) and no file or folder at {path}")


def split_documents(documents: Sequence[str], val_fraction: float = 0.05,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Split documents into (train, validation), each document wholly on one side.

    A document's side is decided by a hash of (seed, its text), so the split is the same on
    every machine and library version, and identical documents always land on the same side:
    duplicates cannot leak from train into validation. Each side keeps the corpus order. The
    validation side gets round(val_fraction * n) documents, at least one when val_fraction > 0
    (slightly more when duplicates sit at the boundary), and train is never empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    documents = list(documents)
    if not documents:
        raise ValueError("no documents to split")
    if val_fraction == 0:
        return documents, []
    if len(set(documents)) < 2:
        raise ValueError("need at least two distinct documents to make both a train and a "
                         "validation split; use val_fraction=0 to train on everything")
    wanted = max(1, round(val_fraction * len(documents)))

    def key(doc: str) -> bytes:
        return hashlib.blake2b(f"{seed}\x00{doc}".encode("utf-8", "surrogatepass"),
                               digest_size=16).digest()

    counts = Counter(documents)
    val_texts: set[str] = set()
    taken = 0
    for doc in sorted(counts, key=key):
        if taken >= wanted or len(val_texts) == len(counts) - 1:
            break
        val_texts.add(doc)
        taken += counts[doc]
    train = [doc for doc in documents if doc not in val_texts]
    val = [doc for doc in documents if doc in val_texts]
    return train, val


# ----------------------------------------------------------------------------------------------
# The character tokenizer
# ----------------------------------------------------------------------------------------------


class CharTokenizer:
    """Characters <-> integer ids, plus special tokens.

    Ids: `<eot>` is 0, `<unk>` is 1 when present, then one id per character in `chars` order.
    `normalize` ("NFC", "NFD", "NFKC", "NFKD" or None) is applied to all text before encoding,
    so e.g. "e" + combining acute and the single character "é" become the same id under "NFC".
    The text "<eot>" inside a string is just five characters; only the id is end-of-text.
    """

    FORMAT = "hourglass_edu.CharTokenizer"
    VERSION = 1

    def __init__(self, chars: Iterable[str], *, unk: bool = False, normalize: str | None = None):
        chars = tuple(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"chars must be single characters, got {bad[:10]!r}")
        duplicates = sorted(c for c, n in Counter(chars).items() if n > 1)
        if duplicates:
            raise ValueError(f"chars lists these characters more than once: {duplicates!r}")
        if normalize is not None and normalize not in NORMALIZATION_FORMS:
            raise ValueError(f"normalize must be None or one of {NORMALIZATION_FORMS}, "
                             f"got {normalize!r}")
        self.chars = chars
        self.unk = bool(unk)
        self.normalize = normalize
        self.specials = (EOT, UNK) if unk else (EOT,)
        self.eot_id = 0
        self.unk_id = 1 if unk else None
        self.tokens = self.specials + chars  # id -> how decode renders it
        # Vectorised lookup: sorted code points, and the id of each.
        codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(codepoints, kind="stable")
        self._sorted_codepoints = codepoints[order]
        self._sorted_ids = order + len(self.specials)

    @classmethod
    def from_documents(cls, documents: Iterable[str], unk: bool = False,
                       normalize: str | None = None) -> CharTokenizer:
        """The vocabulary is every character in the (normalised) documents, in code point order."""
        if normalize is not None and normalize not in NORMALIZATION_FORMS:
            raise ValueError(f"normalize must be None or one of {NORMALIZATION_FORMS}, "
                             f"got {normalize!r}")
        seen: set[str] = set()
        for doc in documents:
            seen.update(unicodedata.normalize(normalize, doc) if normalize else doc)
        return cls(sorted(seen), unk=unk, normalize=normalize)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"CharTokenizer(vocab_size={self.vocab_size}, specials={self.specials}, "
                f"normalize={self.normalize!r})")

    # -- encoding ------------------------------------------------------------------------------

    def _normalized(self, text: str) -> str:
        return unicodedata.normalize(self.normalize, text) if self.normalize else text

    def _encode_array(self, text: str) -> np.ndarray:
        """(length,) int64 ids of an already normalised text."""
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"),
                                   dtype="<u4").astype(np.int64)
        if len(self._sorted_codepoints) == 0:
            found = np.zeros(len(codepoints), dtype=bool)
            ids = np.zeros(len(codepoints), dtype=np.int64)
        else:
            slot = np.searchsorted(self._sorted_codepoints, codepoints)
            slot = np.minimum(slot, len(self._sorted_codepoints) - 1)
            found = self._sorted_codepoints[slot] == codepoints
            ids = self._sorted_ids[slot]
        if not found.all():
            if self.unk_id is None:
                unknown = Counter(chr(c) for c in codepoints[~found].tolist())
                listed = ", ".join(f"{c!r} (U+{ord(c):04X}) x{n}"
                                   for c, n in unknown.most_common(20))
                more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
                raise ValueError(
                    f"{len(unknown)} character(s) not in the vocabulary: {listed}{more}. Build the "
                    f"tokenizer from text that contains them, or with unk=True to map them to "
                    f"{UNK}")
            ids = np.where(found, ids, self.unk_id)
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Unknown characters raise ValueError listing them (or become unk_id)."""
        return self._encode_array(self._normalized(text)).tolist()

    def encode_documents(self, documents: Iterable[str]) -> torch.Tensor:
        """Documents -> one 1-D LongTensor laid out as `<eot> d1 <eot> d2 <eot> ... dn <eot>`
        (just `<eot>` for no documents)."""
        docs = [self._normalized(doc) for doc in documents]
        body = self._encode_array("".join(docs))
        boundaries = np.cumsum([0] + [len(doc) for doc in docs])
        return torch.from_numpy(np.insert(body, boundaries, self.eot_id))

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = False) -> str:
        """Ids -> text. Special tokens appear as "<eot>" / "<unk>", or are dropped with
        skip_special=True. So decode(encode(text)) == text for any text the vocabulary covers
        (after normalisation)."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids outside the vocabulary [0, {self.vocab_size}): {bad[:10]}")
        first_char = len(self.specials)
        if skip_special:
            return "".join(self.tokens[i] for i in ids if i >= first_char)
        return "".join(self.tokens[i] for i in ids)

    # -- saving --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": self.VERSION, "chars": list(self.chars),
                "unk": self.unk, "normalize": self.normalize, "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("format") != cls.FORMAT or d.get("version") != cls.VERSION:
            raise ValueError(f"not a {cls.FORMAT} version {cls.VERSION} dict: format="
                             f"{d.get('format')!r}, version={d.get('version')!r}")
        tokenizer = cls(d["chars"], unk=d["unk"], normalize=d["normalize"])
        if "specials" in d and list(d["specials"]) != list(tokenizer.specials):
            raise ValueError(f"specials {d['specials']!r} do not match unk={d['unk']}")
        return tokenizer

    def save(self, path: str | Path) -> None:
        """Write as UTF-8 JSON, atomically (a crash leaves the old file or none, never half)."""
        _atomic_write_bytes(Path(path), json.dumps(self.to_dict(), ensure_ascii=False,
                                                   indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _atomic_write_bytes(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            handle.write(content)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """A corpus split, a tokenizer, and both splits as 1-D LongTensors `<eot> d1 <eot> ...`."""

    corpus: Corpus
    tokenizer: CharTokenizer
    train_docs: list[str]
    val_docs: list[str]
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    val_fraction: float = 0.05
    seed: int = 0

    def describe(self) -> str:
        """A few lines of statistics (what `python -m hourglass_edu corpus NAME` prints)."""
        lengths = [len(doc) for doc in self.corpus.documents]
        tok = self.tokenizer
        specials = " + ".join(tok.specials)
        lines = [
            f"corpus:      {self.corpus.name}",
            f"documents:   {len(lengths):,}",
            f"characters:  {sum(lengths):,}",
            f"doc length:  mean {statistics.fmean(lengths):,.1f}, median "
            f"{statistics.median(lengths):,g}, min {min(lengths):,}, max {max(lengths):,} "
            f"characters",
            f"vocabulary:  {tok.vocab_size} tokens ({len(tok.chars)} characters + {specials})",
            f"split:       seed {self.seed}, val_fraction {self.val_fraction:g}",
            f"  train:     {len(self.train_docs):,} documents, {len(self.train_ids):,} tokens",
            f"  val:       {len(self.val_docs):,} documents, {len(self.val_ids):,} tokens",
        ]
        return "\n".join(lines)


def prepare_data(source: str | os.PathLike | Corpus, val_fraction: float = 0.05, seed: int = 0,
                 tokenizer: CharTokenizer | None = None, *, data_dir: str | Path | None = None,
                 download: bool = True, unk: bool | None = None,
                 normalize: str | None = None) -> PreparedData:
    """Load (unless given a Corpus), split, build or reuse a tokenizer, and encode both splits.

    A new tokenizer's vocabulary comes from the training documents only. unk=None (default)
    adds an `<unk>` token exactly when the validation documents hold characters the training
    ones lack, so validation still encodes; unk=True/False forces it. With a given tokenizer,
    unk and normalize must stay None (they are the tokenizer's), and unknown characters raise.
    """
    corpus = source if isinstance(source, Corpus) else load_corpus(
        source, data_dir=data_dir, download=download)
    train_docs, val_docs = split_documents(corpus.documents, val_fraction, seed)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_documents(train_docs, unk=bool(unk), normalize=normalize)
        if unk is None:
            val_chars = CharTokenizer.from_documents(val_docs, normalize=normalize).chars
            if set(val_chars) - set(tokenizer.chars):
                tokenizer = CharTokenizer(tokenizer.chars, unk=True, normalize=normalize)
    elif unk is not None or normalize is not None:
        raise ValueError("unk and normalize belong to the tokenizer you passed; leave them None")
    return PreparedData(corpus, tokenizer, train_docs, val_docs,
                        tokenizer.encode_documents(train_docs),
                        tokenizer.encode_documents(val_docs), val_fraction, seed)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def _check_stream(ids: torch.Tensor, batch_size: int, block_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.is_floating_point():
        raise ValueError("ids must be a 1-D integer tensor (e.g. PreparedData.train_ids)")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size}, "
                         f"{block_size}")


def sample_batch(ids: torch.Tensor, batch_size: int, block_size: int,
                 generator: torch.Generator, *, device: str | torch.device | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: x, y of shape (batch, block), cut from one window of
    block_size + 1 consecutive tokens, so y[:, t] is the token that follows x[:, t] (y is x
    shifted left by one). Every start position
    0 .. len(ids) - block_size - 1 is equally likely; the same generator state gives the same
    batch. `generator` must live on the CPU; the result goes to `device` (default: ids.device).
    """
    _check_stream(ids, batch_size, block_size)
    if len(ids) < block_size + 1:
        raise ValueError(f"a window needs block_size + 1 = {block_size + 1} tokens but the "
                         f"stream has {len(ids)}; use a smaller block_size")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    windows = ids.unfold(0, block_size + 1, 1)[starts.to(ids.device)]  # (batch, block + 1)
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def iter_eval_batches(ids: torch.Tensor, batch_size: int, block_size: int, *,
                      device: str | torch.device | None = None,
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk the stream once, so that every token after the first is a target exactly once.

    Yields x, y of shape (rows, block) with rows <= batch_size (only the last batch is short);
    the windows are consecutive and do not overlap. The tail that does not fill a whole window
    is scored in one last full-length window that ends at the stream's end (so its tokens still
    get a full context); the targets in it that earlier windows already scored are set to
    IGNORE_INDEX (-100). Sum the loss over `y != IGNORE_INDEX` (F.cross_entropy skips -100 by
    default) and divide by the count of such targets, len(ids) - 1. A stream shorter than
    block_size + 1 gives one window of len(ids) - 1 tokens.
    """
    _check_stream(ids, batch_size, block_size)
    if len(ids) < 2:
        raise ValueError(f"evaluation needs at least 2 tokens, the stream has {len(ids)}")
    n_targets = len(ids) - 1
    block = min(block_size, n_targets)
    starts = list(range(0, n_targets - block + 1, block))
    covered = starts[-1] + block  # targets 1 .. covered are scored by the full windows
    skips = [0] * len(starts)
    if covered < n_targets:
        starts.append(n_targets - block)
        skips.append(covered - (n_targets - block))
    windows = ids.unfold(0, block + 1, 1)  # view: (n_targets - block + 1, block + 1)
    for first in range(0, len(starts), batch_size):
        rows = windows[starts[first:first + batch_size]]
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].clone()
        for row, skip in enumerate(skips[first:first + batch_size]):
            y[row, :skip] = IGNORE_INDEX
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y
