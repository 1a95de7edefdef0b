"""The document split, prepare_data, and the training/evaluation batches."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hourglass_edu.data import (
    CharTokenizer,
    iter_eval_batches,
    prepare_data,
    sample_batch,
    split_documents,
)
from hourglass_edu.data.batches import IGNORE_INDEX
from hourglass_edu.data.corpora import Corpus
from hourglass_edu.data.tokenizer import UNK

DOCS = [f"document number {i}" for i in range(200)]


# --- split ----------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_ordered_and_sized():
    train, val = split_documents(DOCS, val_fraction=0.1, seed=0)
    assert len(val) == 20 and len(train) == 180
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(DOCS)
    assert train == [d for d in DOCS if d in set(train)]  # corpus order kept
    assert val == [d for d in DOCS if d in set(val)]


def test_split_is_deterministic_and_depends_on_the_seed():
    assert split_documents(DOCS, 0.1, seed=3) == split_documents(list(DOCS), 0.1, seed=3)
    assert split_documents(DOCS, 0.1, seed=3)[1] != split_documents(DOCS, 0.1, seed=4)[1]


def test_split_does_not_depend_on_the_order_of_the_documents():
    assert set(split_documents(DOCS, 0.1)[1]) == set(split_documents(DOCS[::-1], 0.1)[1])


@given(st.lists(st.sampled_from("abcdefghij"), min_size=2, max_size=40),
       st.floats(0.01, 0.9), st.integers(0, 1000))
def test_duplicates_never_straddle_the_split(docs, fraction, seed):
    if len(set(docs)) < 2:
        with pytest.raises(ValueError, match="several documents"):
            split_documents(docs, fraction, seed)
        return
    train, val = split_documents(docs, fraction, seed)
    assert set(train).isdisjoint(val)
    assert Counter(train) + Counter(val) == Counter(docs)
    assert train and val


def test_split_edge_cases():
    assert split_documents(DOCS, 0.0) == (DOCS, [])
    assert len(split_documents(DOCS[:3], 0.01)[1]) == 1  # never an empty validation set
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            split_documents(DOCS, bad)
    with pytest.raises(ValueError, match="no documents"):
        split_documents([], 0.1)


# --- prepare_data ---------------------------------------------------------------------------------


def test_prepare_data_encodes_both_splits_with_a_train_vocabulary():
    corpus = Corpus("tiny", [f"doc {i}" for i in range(40)] + ["zebra"])
    data = prepare_data(corpus, val_fraction=0.25, seed=1)
    tok = data.tokenizer
    assert tok.decode(data.train_ids) == "<eot>" + "<eot>".join(data.train_docs) + "<eot>"
    assert set(tok.chars) == set("".join(data.train_docs))
    in_val_only = set("".join(data.val_docs)) - set(tok.chars)
    assert (tok.unk_id is not None) == bool(in_val_only)  # unk added exactly when needed
    if in_val_only:
        assert UNK in tok.decode(data.val_ids)
    assert "documents:   41" in data.describe()


def test_prepare_data_adds_unk_only_when_validation_needs_it():
    docs = ["aaa", "aab", "aba", "baa", "ccc"]
    for seed in range(20):
        data = prepare_data(Corpus("t", docs), val_fraction=0.2, seed=seed)
        needs_unk = bool(set("".join(data.val_docs)) - set("".join(data.train_docs)))
        assert (data.tokenizer.unk_id is not None) == needs_unk
    forced = prepare_data(Corpus("t", docs), val_fraction=0.2, unk=False, seed=0)
    assert forced.tokenizer.unk_id is None or "c" not in "".join(forced.val_docs)


def test_prepare_data_with_a_given_tokenizer():
    tok = CharTokenizer.from_documents(DOCS)
    data = prepare_data(Corpus("t", DOCS), tokenizer=tok)
    assert data.tokenizer is tok
    with pytest.raises(ValueError, match="belong to the tokenizer"):
        prepare_data(Corpus("t", DOCS), tokenizer=tok, unk=True)


# --- training batches -----------------------------------------------------------------------------


def test_sample_batch_windows_are_consecutive_and_shifted():
    ids = torch.arange(100)
    x, y = sample_batch(ids, 16, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 10) and x.dtype == torch.long
    assert torch.equal(x - x[:, :1], torch.arange(10).expand(16, 10))  # consecutive tokens
    assert torch.equal(y, x + 1)  # y is x shifted by one


def test_sample_batch_is_reproducible():
    ids = torch.randint(50, (1000,), generator=torch.Generator().manual_seed(1))
    a = sample_batch(ids, 8, 32, torch.Generator().manual_seed(7))
    b = sample_batch(ids, 8, 32, torch.Generator().manual_seed(7))
    c = sample_batch(ids, 8, 32, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_sample_batch_reaches_every_start_including_the_last():
    ids = torch.arange(12)
    x, _ = sample_batch(ids, 2000, 5, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(12 - 5))  # starts 0..6; start 6 ends at token 11


def test_sample_batch_rejects_bad_input():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="block_size \\+ 1"):
        sample_batch(torch.arange(5), 2, 5, generator)
    with pytest.raises(ValueError, match="1-D integer"):
        sample_batch(torch.zeros(2, 10, dtype=torch.long), 2, 3, generator)
    with pytest.raises(ValueError, match=">= 1"):
        sample_batch(torch.arange(10), 0, 3, generator)


# --- evaluation batches ---------------------------------------------------------------------------


@given(st.integers(2, 300), st.integers(1, 9), st.integers(1, 40))
def test_eval_batches_score_every_target_exactly_once(length, batch_size, block_size):
    ids = torch.arange(length)  # token value == its position in the stream
    scored = []
    batches = list(iter_eval_batches(ids, batch_size, block_size))
    for i, (x, y) in enumerate(batches):
        block = min(block_size, length - 1)
        assert x.shape == y.shape and x.shape[1] == block and 1 <= x.shape[0] <= batch_size
        assert i == len(batches) - 1 or x.shape[0] == batch_size  # only the last batch is short
        assert torch.equal(x - x[:, :1], torch.arange(block).expand_as(x))
        kept = y != IGNORE_INDEX
        assert torch.equal(y[kept], (x + 1)[kept])  # every scored target follows its input
        scored += y[kept].tolist()
    assert sorted(scored) == list(range(1, length))


def test_eval_batches_last_window_ends_at_the_stream_end():
    batches = list(iter_eval_batches(torch.arange(26), batch_size=10, block_size=10))
    (x, y), = batches
    assert x[:, 0].tolist() == [0, 10, 15]
    assert y[2].tolist() == [IGNORE_INDEX] * 5 + [21, 22, 23, 24, 25]


def test_eval_batches_reject_a_stream_without_targets():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        list(iter_eval_batches(torch.arange(1), 4, 8))
