"""CharTokenizer: round trips, the document layout, unknown characters, normalisation, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import documents, texts

from hourglass_edu.data import EOT, CharTokenizer
from hourglass_edu.data.tokenizer import UNK


@given(documents)
def test_encode_decode_round_trip(docs):
    tok = CharTokenizer.from_documents(docs)
    for doc in docs:
        ids = tok.encode(doc)
        assert len(ids) == len(doc)
        assert all(len(tok.specials) <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == doc


@given(documents)
def test_encode_documents_layout(docs):
    tok = CharTokenizer.from_documents(docs, unk=True)
    ids = tok.encode_documents(docs)
    assert ids.dtype == torch.long and ids.ndim == 1
    expected = [tok.eot_id]
    for doc in docs:
        expected += tok.encode(doc) + [tok.eot_id]
    assert ids.tolist() == expected  # the vectorised path agrees with encoding one by one
    assert tok.decode(ids) == EOT + EOT.join(docs) + EOT
    assert tok.decode(ids, skip_special=True) == "".join(docs)


def test_ids_of_special_tokens_and_characters():
    tok = CharTokenizer.from_documents(["ba", "ab\n"])
    assert tok.chars == ("\n", "a", "b")
    assert (tok.eot_id, tok.unk_id, tok.vocab_size, len(tok)) == (0, None, 4, 4)
    assert tok.encode("ab\n") == [2, 3, 1]
    with_unk = CharTokenizer.from_documents(["ba"], unk=True)
    assert (with_unk.eot_id, with_unk.unk_id, with_unk.tokens) == (0, 1, (EOT, UNK, "a", "b"))
    assert tok.encode_documents([]).tolist() == [0]
    assert tok.encode("") == []


def test_literal_eot_text_is_characters_not_the_token():
    tok = CharTokenizer.from_documents(["<eot>"])
    assert tok.eot_id not in tok.encode("<eot>")


def test_unknown_characters_are_listed_in_the_error():
    tok = CharTokenizer.from_documents(["hello"])
    with pytest.raises(ValueError) as caught:
        tok.encode("hello, wörld!!")
    message = str(caught.value)
    for char in [",", " ", "w", "ö", "r", "d", "!"]:
        assert repr(char) in message
    assert "U+00F6" in message and "x2" in message  # code point, and "!" appears twice
    assert "unk=True" in message


def test_unknown_characters_map_to_unk_when_asked():
    tok = CharTokenizer.from_documents(["hello"], unk=True)
    ids = tok.encode("hex")
    assert ids[2] == tok.unk_id and tok.decode(ids) == "he" + UNK
    assert tok.decode(ids, skip_special=True) == "he"


def test_empty_vocabulary_rejects_every_character_clearly():
    tok = CharTokenizer([])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("a")
    assert CharTokenizer([], unk=True).encode("ab") == [1, 1]


def test_normalization_merges_composed_and_decomposed_forms():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    tok = CharTokenizer.from_documents([decomposed], normalize="NFC")
    assert "\u00e9" in tok.chars and "\u0301" not in tok.chars
    assert tok.encode(composed) == tok.encode(decomposed)
    raw = CharTokenizer.from_documents([decomposed])
    with pytest.raises(ValueError, match=r"U\+00E9"):
        raw.encode(composed)
    with pytest.raises(ValueError, match="NFKC"):
        CharTokenizer.from_documents(["a"], normalize="nfc")


@pytest.mark.parametrize("chars, match", [(["a", "a"], "more than once"), (["ab"], "single")])
def test_constructor_validates_chars(chars, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars)


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_documents(["ab"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode(torch.tensor([-1]))


@pytest.mark.parametrize("text, hint", [(None, "encode takes text"), (b"ab", "use decode"),
                                        ([1, 2], "use decode")])
def test_encode_says_it_takes_text(text, hint):
    with pytest.raises(ValueError, match=hint):
        CharTokenizer("ab").encode(text)


@pytest.mark.parametrize("ids, hint", [
    ("abc", "token ids .* use encode"),
    (5, "token ids"),
    ([1, 2.0], r"whole-number token ids, got 2.0 \(float\)"),
    ([1, True], "whole-number token ids, got True"),
    (torch.tensor([[1, 2]]), r"1-D\), got a torch.int64 Tensor of shape \(1, 2\)"),
    (torch.tensor([1.0, 2.0]), "torch.float32"),
    (np.array([1.5]), "float64"),
])
def test_decode_says_it_takes_ids(ids, hint):
    with pytest.raises(ValueError, match=hint):
        CharTokenizer("ab").decode(ids)


def test_decode_takes_ids_of_every_integer_kind():
    tok = CharTokenizer("ab")
    for ids in ([1, 2], (1, 2), iter([1, 2]), [np.int64(1), torch.tensor(2)],
                torch.tensor([1, 2], dtype=torch.int32), np.array([1, 2], dtype=np.uint8)):
        assert tok.decode(ids) == "ab"


def test_encode_documents_refuses_one_string_that_would_become_one_document_per_character():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"pass \[text\]"):
        tok.encode_documents("ab")
    with pytest.raises(ValueError, match="encode_documents takes text"):
        tok.encode_documents(["ab", None])
    assert tok.encode_documents(["ab"]).tolist() == [0, 1, 2, 0]


def test_the_constructor_refuses_what_it_would_misread():
    with pytest.raises(ValueError, match="unk must be True or False, got 'no'"):
        CharTokenizer("ab", unk="no")  # bool("no") is True: a tokenizer with <unk>
    with pytest.raises(ValueError, match="chars must be the vocabulary's characters"):
        CharTokenizer(None)
    with pytest.raises(ValueError, match="from_documents takes text"):
        CharTokenizer.from_documents(["ab", None])


@given(documents, st.booleans(), st.sampled_from([None, "NFC", "NFKD"]))
def test_dict_round_trip(docs, unk, normalize):
    tok = CharTokenizer.from_documents(docs, unk=unk, normalize=normalize)
    again = CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok
    assert again.tokens == tok.tokens and again.normalize == normalize


def test_save_and_load_json_atomically(tmp_path):
    tok = CharTokenizer.from_documents(["héllo wörld\n", "\u2603"], unk=True, normalize="NFC")
    path = tmp_path / "sub" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text("old contents", encoding="utf-8")
    tok.save(path)
    assert CharTokenizer.load(path) == tok
    assert json.loads(path.read_text(encoding="utf-8"))["chars"][-1] == "\u2603"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temp left


def test_from_dict_rejects_other_formats():
    with pytest.raises(ValueError, match="CharTokenizer"):
        CharTokenizer.from_dict({"format": "something-else", "version": 1})
    good = CharTokenizer.from_documents(["ab"]).to_dict()
    with pytest.raises(ValueError, match="specials"):
        CharTokenizer.from_dict({**good, "specials": [EOT, UNK]})


@given(texts)
def test_round_trip_with_unk_never_raises(text):
    tok = CharTokenizer.from_documents(["abc"], unk=True)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    decoded = tok.decode(ids)
    assert decoded.replace(UNK, "") == "".join(c for c in text if c in "abc")
