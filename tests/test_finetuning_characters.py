"""`characters_to_add`: the characters fine-tuning adds come from the training documents only,
normalized as the base tokenizer normalizes, and `prepare_finetuning` adds exactly those."""

from __future__ import annotations

from hourglass_edu.data import CharTokenizer
from hourglass_edu.training import characters_to_add


def test_only_characters_the_vocabulary_lacks_are_added_sorted():
    base = CharTokenizer.from_documents(["the old pond"])
    assert characters_to_add(base, ["a frog", "the pond"]) == ["a", "f", "g", "r"]
    assert characters_to_add(base, ["the old pond"]) == []


def test_characters_are_normalized_as_the_tokenizer_normalizes():
    base = CharTokenizer.from_documents(["cafe"], normalize="NFC")
    decomposed = "cafe\u0301"  # e + combining acute: one character, é, once normalized
    assert characters_to_add(base, [decomposed]) == ["\u00e9"]
