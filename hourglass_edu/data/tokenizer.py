"""The character tokenizer: `CharTokenizer` maps each character to an integer id and back.

Ids: `<eot>` (end of text, `EOT`) is 0, `<unk>` (`UNK`, only with unk=True) is 1, then one id per
character. `encode_documents` lays documents out as `<eot> doc1 <eot> doc2 <eot> ...`, so a model
learns where a document starts and where it ends. A tokenizer saves to, and loads from, JSON.

`vocabulary_sha256` fingerprints the id -> token table: a model trained with one tokenizer reads
garbage through another whose table differs, even at the same size, so loaders record it on the
model and generation compares it (`loading.check_tokenizer_matches`).
"""

from __future__ import annotations

import hashlib
import json
import operator
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from hourglass_edu.files import atomic_write

__all__ = ["EOT", "CharTokenizer"]

EOT = "<eot>"  # end of text: separates documents; how `decode` renders it
UNK = "<unk>"  # unknown character, only in tokenizers built with unk=True
NORMALIZATION_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# The most entries a vocabulary may have (specials included): as many as Unicode's Basic
# Multilingual Plane has code points. Text in any language uses a few thousand characters; a
# file with more is not text a character model can learn (binary data, a list of every code
# point), and its embedding, output head and logits would take gigabytes.
MAX_VOCABULARY = 1 << 16


def _check_vocabulary_size(characters: int, unk: bool, source: str) -> None:
    """Raise ValueError when `characters` and the special tokens pass `MAX_VOCABULARY`."""
    if characters + 1 + bool(unk) > MAX_VOCABULARY:
        raise ValueError(
            f"{source} holds {characters:,} different characters or more, beyond the "
            f"{MAX_VOCABULARY:,} vocabulary entries a character model of this library takes "
            "(text in any language uses a few thousand); is it text? Use a text file, or a "
            "tokenizer built from representative text with unk=True "
            "(prepare_data(..., tokenizer=...)), so that rare characters become <unk>"
        )


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
        if not isinstance(chars, Iterable):
            raise ValueError(f"chars must be the vocabulary's characters (a string or a list of "
                             f"single characters), got {type(chars).__name__}")
        if not isinstance(unk, bool):
            raise ValueError(f"unk must be True or False, got {unk!r:.40}")
        chars = tuple(chars)
        _check_vocabulary_size(len(chars), unk, "the tokenizer's list of characters")
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
            _check_text(doc, "from_documents")
            seen.update(unicodedata.normalize(normalize, doc) if normalize else doc)
            # stop at once: the set of a million characters alone takes ~100 MB
            _check_vocabulary_size(len(seen), unk, "the text")
        return cls(sorted(seen), unk=unk, normalize=normalize)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @cached_property
    def vocabulary_sha256(self) -> str:
        """The sha256 of the id -> token table (specials, then characters): equal for two
        tokenizers exactly when every id means the same token in both."""
        table = json.dumps({"specials": list(self.specials), "chars": list(self.chars)},
                           ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(table.encode("ascii")).hexdigest()

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
        _check_text(text, "encode")
        return self._encode_array(self._normalized(text)).tolist()

    def encode_documents(self, documents: Iterable[str]) -> torch.Tensor:
        """Documents -> one 1-D LongTensor laid out as `<eot> d1 <eot> d2 <eot> ... dn <eot>`
        (just `<eot>` for no documents)."""
        if isinstance(documents, str):  # would be read as one document per character
            raise ValueError("encode_documents takes a list of documents (strings), got one "
                             "string; pass [text] for a single document")
        docs = [self._normalized(_check_text(doc, "encode_documents")) for doc in documents]
        body = self._encode_array("".join(docs))
        boundaries = np.cumsum([0] + [len(doc) for doc in docs])
        return torch.from_numpy(np.insert(body, boundaries, self.eot_id))

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = False) -> str:
        """Ids -> text. Special tokens appear as "<eot>" / "<unk>", or are dropped with
        skip_special=True. So decode(encode(text)) == text for any text the vocabulary covers
        (after normalisation)."""
        ids = _token_ids(ids)
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
        if not isinstance(d, dict):
            raise ValueError(f"a tokenizer is read from a dict, got {type(d).__name__}")
        if d.get("format") != cls.FORMAT or d.get("version") != cls.VERSION:
            raise ValueError(f"not a {cls.FORMAT} version {cls.VERSION} dict: format="
                             f"{d.get('format')!r}, version={d.get('version')!r}")
        missing = [key for key in ("chars", "unk", "normalize") if key not in d]
        if missing:
            raise ValueError(f"the tokenizer dict is missing {missing}; it is damaged")
        if not isinstance(d["chars"], (list, tuple)) or not isinstance(d["unk"], bool):
            raise ValueError("the tokenizer dict needs 'chars' as a list of characters and 'unk' "
                             f"as True or False, got {type(d['chars']).__name__} and "
                             f"{d['unk']!r}; it is damaged")
        tokenizer = cls(d["chars"], unk=d["unk"], normalize=d["normalize"])
        if "specials" in d and list(d["specials"]) != list(tokenizer.specials):
            raise ValueError(f"specials {d['specials']!r} do not match unk={d['unk']}")
        return tokenizer

    def save(self, path: str | Path) -> None:
        """Write as UTF-8 JSON, atomically (a crash leaves the old file or none, never half)."""
        atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _check_text(text, method: str) -> str:
    if not isinstance(text, str):
        hint = "; to turn ids back into text use decode" if method == "encode" else ""
        raise ValueError(f"{method} takes text (a str), got {type(text).__name__}{hint}")
    return text


def _token_ids(ids) -> list[int]:
    """`ids` (a list of ints, or a 1-D integer tensor or array) as a list of ints; ValueError
    saying what decode takes otherwise."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if isinstance(ids, torch.Tensor):
            integer = ids.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
        else:
            integer = np.issubdtype(ids.dtype, np.integer)
        if ids.ndim != 1 or not integer:
            raise ValueError(f"decode takes one sequence of whole-number ids (1-D), got a "
                             f"{ids.dtype} {type(ids).__name__} of shape {tuple(ids.shape)}")
        return ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"decode takes token ids (a list of ints or a 1-D tensor), got "
                         f"{type(ids).__name__}; to turn text into ids use encode")
    ids = list(ids)
    try:
        return [_whole_number(value) for value in ids]
    except TypeError:
        bad = next(value for value in ids if not _is_whole_number(value))
        raise ValueError(f"decode takes whole-number token ids, got {bad!r} "
                         f"({type(bad).__name__}) among them") from None


def _whole_number(value) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a token id")
    return operator.index(value)


def _is_whole_number(value) -> bool:
    try:
        _whole_number(value)
    except TypeError:
        return False
    return True
