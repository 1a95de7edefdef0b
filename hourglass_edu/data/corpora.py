"""Corpora: named text collections, read as documents, split for validation, prepared as tokens.

1. `load_corpus("haiku" | "lovecraft" | path)` finds the raw text (a registered corpus is found
   on disk or downloaded, every byte checked against a pinned sha256: see
   `hourglass_edu.data.download`) and cuts it into documents: one poem, one story, one file.
2. `split_documents` puts each document wholly in train or in validation, reproducibly.
3. `prepare_data` runs both, builds a `CharTokenizer` from the training documents and encodes
   both splits.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hourglass_edu.data._manifest import FILES as _MANIFEST_ROWS
from hourglass_edu.data.download import locate_files
from hourglass_edu.data.pinned_files import RemoteFile, read_verified
from hourglass_edu.data.tokenizer import CharTokenizer

__all__ = ["CORPORA", "load_corpus", "split_documents", "prepare_data"]


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


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
# Documents
# ----------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Documents ready to split and tokenize. `sources` are the files they were read from."""

    name: str
    documents: list[str]
    sources: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        """How a message names the corpus: its file when it was read from one file."""
        return str(self.sources[0]) if len(self.sources) == 1 else f"corpus {self.name!r}"

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
        `hourglass_edu.data.download`); ignored for paths.

    Raises ValueError for an unknown name, an empty or non-UTF-8 file, or a file that does not
    match its pinned checksum; FileNotFoundError when a file is missing and download=False;
    DownloadError (a RuntimeError) when a download fails.
    """
    if isinstance(source, str) and source in CORPORA:
        spec = CORPORA[source]
        paths = locate_files(spec.name, spec.files, data_dir, download, base_url)
        files = [(path, read_verified(remote, path))
                 for remote, path in zip(spec.files, paths, strict=True)]
        return Corpus(spec.name, _documents_from(files, spec.layout), tuple(paths))

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
        raise ValueError(
            f"the corpus holds {'one document' if len(documents) == 1 else 'only copies of one'}"
            ", but training holds whole documents out to measure validation bits per character: "
            "split the text into several documents (in a .txt file, separate them with blank "
            "lines; or use a folder with one .txt file per document)")
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


def _vocabulary_of(corpus: Corpus, train_docs: list[str], val_docs: list[str],
                   unk: bool | None, normalize: str | None) -> CharTokenizer:
    """A new tokenizer of the training documents (see `prepare_data`); a vocabulary too large
    to build is refused naming the corpus (its file when it has one)."""
    try:
        tokenizer = CharTokenizer.from_documents(train_docs, unk=bool(unk), normalize=normalize)
        if unk is None:
            val_chars = CharTokenizer.from_documents(val_docs, normalize=normalize).chars
            if set(val_chars) - set(tokenizer.chars):
                tokenizer = CharTokenizer(tokenizer.chars, unk=True, normalize=normalize)
    except ValueError as error:
        raise ValueError(f"{corpus.label}: {error}") from None
    return tokenizer


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
        tokenizer = _vocabulary_of(corpus, train_docs, val_docs, unk, normalize)
    elif unk is not None or normalize is not None:
        raise ValueError("unk and normalize belong to the tokenizer you passed; leave them None")
    return PreparedData(corpus, tokenizer, train_docs, val_docs,
                        tokenizer.encode_documents(train_docs),
                        tokenizer.encode_documents(val_docs), val_fraction, seed)

