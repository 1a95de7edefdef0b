"""The one tiny model and the one toy corpus the tests build on.

tests/conftest.py serves them as fixtures (`make_tiny_hourglass`, `toy_corpus`, `toy_data`); a
module-level helper, a hypothesis test or the torchrun worker (tests/distributed_worker.py)
imports them from here. A test that needs another model or corpus calls these with arguments
(another vocabulary, structure, size, seed), never a copy of its own.
"""

from __future__ import annotations

import random

import torch

from hourglass_edu import HourglassConfig, HourglassLM, related
from hourglass_edu.data import prepare_data
from hourglass_edu.data.corpora import Corpus
from hourglass_edu.training import TrainConfig

TOY_WORDS = "the old pond a frog jumps in sound of water moon over mountain quiet night".split()


def toy_documents(count: int = 120, seed: int = 0, extra_words=(), *, lines: int = 3,
                  words_per_line: tuple[int, int] = (2, 4), suffix: str = "") -> list[str]:
    """`count` "poems" of `lines` lines of 2-4 (`words_per_line`) words drawn from TOY_WORDS
    (+ `extra_words`), each ending in `suffix`."""
    rng = random.Random(seed)
    words = TOY_WORDS + list(extra_words)
    return ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(*words_per_line)))
                      for _ in range(lines)) + suffix
            for _ in range(count)]


def toy_corpus(count: int = 120, seed: int = 0, *, name: str = "toy", **options) -> Corpus:
    """A Corpus of `toy_documents(count, seed, **options)`: 120 toy poems are enough for a tiny
    model to learn something in a few steps, in no time."""
    return Corpus(name=name, documents=toy_documents(count, seed, **options))


def toy_data(**options):
    """`toy_corpus(**options)` split (10% validation, seed 0) and tokenized; `.tokenizer`..."""
    return prepare_data(toy_corpus(**options), val_fraction=0.1, seed=0)


def tiny_hourglass(vocab_size: int = 11, *, seed: int = 0, **changes) -> HourglassLM:
    """A random HourglassLM small enough for a fast test: d_model 32, 2 heads, `1@1 1@2 1@1`,
    max_length 64, no dropout; `changes` override any HourglassConfig field."""
    fields = dict(d_model=32, n_heads=2, structure="1@1 1@2 1@1", max_length=64, dropout=0.0)
    fields.update(changes)
    torch.manual_seed(seed)
    return HourglassLM(HourglassConfig(vocab_size=vocab_size, **fields))


def tiny_related(class_name: str, vocab_size: int, **fields):
    """A related model (`LongShortLM`, `HTransformerLM`, `SimpleHierarchicalLM`) at the tiny
    model's sizes: d_model 32, 2 heads, 2 layers, max_length 64; `fields` add or override config
    fields. It draws from the global random state without seeding it, so that several built in a
    row after one `torch.manual_seed` differ."""
    sizes = dict(d_model=32, n_heads=2, n_layers=2, max_length=64)
    model_class = getattr(related, class_name)
    return model_class(model_class.config_class(vocab_size=vocab_size, **{**sizes, **fields}))


def tiny_train_config(**changes) -> TrainConfig:
    """A TrainConfig for the tiny model on the toy corpus: 8 fp32 steps of 4 windows of 32 on the
    CPU, evaluated every 4; `changes` override any field."""
    values = dict(steps=8, batch_size=4, block_size=32, lr=3e-3, warmup_steps=2, eval_every=4,
                  eval_batches=2, log_every=1, precision="fp32", progress=False, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


def losses(history) -> list[float]:
    """The training loss of each step a History recorded."""
    return [record["train_loss"] for record in history.records]
