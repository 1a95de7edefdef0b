"""Where a corpus came from: its file or folder and the sha256 of its documents.

A checkpoint records both (`corpus_source`, under its "data" entry), so that `evaluate` scores
the very corpus a run was trained on: your own `small.txt` by its path, not by a name no registry
knows; and a file of your own called `haiku.txt` is never mistaken for the registered haiku
corpus, because the documents' digest (`corpus_sha256`) would differ. A registered corpus is
recorded by name only (its files are pinned, and lie in another folder on every machine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from hourglass_edu.data.corpora import CORPORA, Corpus

__all__ = ["CORPUS_SOURCE_KEYS", "corpus_sha256"]

CORPUS_SOURCE_KEYS = ("corpus_path", "corpus_sha256")


def corpus_source(corpus: Corpus | None) -> dict[str, str | None]:
    """`corpus_path`: the file or folder your own corpus was read from, absolute (None for a
    registered corpus); `corpus_sha256`: `corpus_sha256` of its documents (None without one)."""
    documents = getattr(corpus, "documents", None)
    if documents is None:
        return dict.fromkeys(CORPUS_SOURCE_KEYS)
    sources = [Path(source) for source in getattr(corpus, "sources", ())]
    path = None
    if sources and not _is_registered(corpus.name, sources):
        path = sources[0] if len(sources) == 1 else sources[0].parent  # a file, or its folder
        path = str(path.resolve())
    return {"corpus_path": path, "corpus_sha256": corpus_sha256(documents)}


def corpus_sha256(documents: Iterable[str]) -> str:
    """The sha256 of a corpus's documents as read (newlines normalized, blank lines cut), each
    preceded by its length: the same text cut into the same documents gives the same digest
    wherever its file lies."""
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _is_registered(name: str, sources: list[Path]) -> bool:
    """Whether `sources` are the pinned files of registered corpus `name` (a file of your own
    called haiku.txt is not: the registered one lies at haiku/haiku.txt in a data folder)."""
    spec = CORPORA.get(name)
    return spec is not None and len(sources) == len(spec.files) and all(
        source.as_posix().endswith(f"/{remote.path}") or source.as_posix() == remote.path
        for source, remote in zip(sources, spec.files, strict=True))
