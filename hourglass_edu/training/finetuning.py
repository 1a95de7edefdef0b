"""Fine-tuning: continue a trained model on another corpus, growing its vocabulary if needed."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hourglass_edu.data import CharTokenizer, load_corpus, split_documents
from hourglass_edu.data.corpora import PreparedData
from hourglass_edu.training.checkpoints import (
    load_checkpoint,
    model_checkpoint_file,
    model_from_checkpoint,
)
from hourglass_edu.training.evaluation import History

__all__ = ["characters_to_add", "extend_vocabulary", "prepare_finetuning"]


def characters_to_add(tokenizer, train_documents: Sequence[str]) -> list[str]:
    """The characters of `train_documents`, normalized as `tokenizer` normalizes text, that its
    vocabulary lacks, sorted. Give it the new corpus's *training* documents only: a character seen
    only in validation documents would be a peek at the held-out text."""
    seen = CharTokenizer.from_documents(train_documents, normalize=tokenizer.normalize).chars
    return sorted(set(seen) - set(tokenizer.chars))


def extend_vocabulary(model: nn.Module, tokenizer, new_chars: Sequence[str]):
    """Grow `tokenizer` and `model` by `new_chars`; returns `(model, tokenizer)` (new objects).

    Existing characters keep their ids, so everything the model learned stays where it was. The new
    characters get ids after the old ones; their embedding rows and output-layer rows start as the
    mean of the existing rows (an "average character": plausible, not random noise). The change is
    found without knowing layer names: every parameter whose size along some axis equals the old
    vocabulary size is grown along that axis.
    """
    new_chars = [c for c in dict.fromkeys(new_chars) if c not in set(tokenizer.chars)]
    if not new_chars:
        return model, tokenizer
    old_vocab = tokenizer.vocab_size
    values = tokenizer.to_dict()
    values["chars"] = list(tokenizer.chars) + new_chars
    grown_tokenizer = CharTokenizer.from_dict(values)
    old_ids = tokenizer.encode("".join(tokenizer.chars))
    for char, token_id in zip(tokenizer.chars, old_ids, strict=True):
        if grown_tokenizer.encode(char) != [token_id]:
            raise RuntimeError("extending the vocabulary moved an existing character's id")
    new_vocab = grown_tokenizer.vocab_size

    grown = type(model)(type(model.config).from_dict({**model.config.to_dict(),
                                                      "vocab_size": new_vocab}))
    old_state = model.state_dict()
    new_state = grown.state_dict()
    for name, new_value in new_state.items():
        old_value = old_state[name]
        if old_value.shape == new_value.shape:
            new_state[name] = old_value.clone()
            continue
        axes = [a for a in range(old_value.dim())
                if old_value.shape[a] == old_vocab and new_value.shape[a] == new_vocab]
        if len(axes) != 1:
            raise RuntimeError(f"cannot grow parameter {name}: {tuple(old_value.shape)} -> "
                               f"{tuple(new_value.shape)}")
        axis = axes[0]
        mean_row = old_value.mean(dim=axis, keepdim=True)
        extra = mean_row.expand(*[new_vocab - old_vocab if a == axis else s
                                  for a, s in enumerate(old_value.shape)])
        new_state[name] = torch.cat([old_value, extra], dim=axis)
    grown.load_state_dict(new_state)
    return grown, grown_tokenizer


@dataclass
class FineTuning:
    """What `prepare_finetuning` returns: a model and data ready for `train`.

    `added_chars`: characters of the new training documents that the base vocabulary lacked
    (now appended to it); `dropped_val_chars`: characters found only in the new validation
    documents, which the model cannot represent and which are left out of the validation text.
    """

    model: nn.Module
    data: PreparedData  # encoded with the (possibly grown) base tokenizer
    added_chars: list[str]
    base_checkpoint: dict[str, Any]
    dropped_val_chars: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Any]:
        base = self.base_checkpoint
        return {
            "finetuned_from": {
                "corpus": base.get("data", {}).get("corpus"),
                "step": base["step"],
                "val_bpc": History.from_dict(base["history"]).last_val_bpc,
            },
            "added_chars": "".join(self.added_chars),
        }


def prepare_finetuning(checkpoint, corpus, *, val_fraction: float = 0.05, seed: int = 0,
                       data_dir=None) -> FineTuning:
    """Load a trained model and get it ready to continue on another corpus.

    The new corpus is split as `prepare_data` splits it. Characters of its (normalized) training
    documents that the base vocabulary lacks are added (`extend_vocabulary`) and listed in
    `.added_chars`; every poem/story is still laid out `<eot> doc <eot> ...`, so a model
    fine-tuned on haiku learns to end a poem with `<eot>` and generation stops by itself.
    `checkpoint`: a dict from `load_checkpoint`, a file, or a run directory (its best.pt, the
    best validation, when it has one; name RUN/checkpoint.pt for the last weights).
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(model_checkpoint_file(checkpoint))
    model, tokenizer = model_from_checkpoint(checkpoint)
    if isinstance(corpus, (str, os.PathLike)):
        corpus = load_corpus(corpus, data_dir=data_dir)
    train_docs, val_docs = split_documents(corpus.documents, val_fraction, seed)
    try:  # a corpus of too many characters is refused before the model grows
        added = characters_to_add(tokenizer, train_docs)
        model, tokenizer = extend_vocabulary(model, tokenizer, added)
    except ValueError as error:
        raise ValueError(f"{corpus.label}: {error}") from None
    val_chars = CharTokenizer.from_documents(val_docs, normalize=tokenizer.normalize).chars
    dropped = [] if tokenizer.unk else sorted(set(val_chars) - set(tokenizer.chars))
    if dropped:  # characters only validation has: the model has no id for them
        unknown, form = set(dropped), tokenizer.normalize
        val_docs = ["".join(c for c in (unicodedata.normalize(form, doc) if form else doc)
                            if c not in unknown) for doc in val_docs]
    data = PreparedData(corpus, tokenizer, train_docs, val_docs,
                        tokenizer.encode_documents(train_docs),
                        tokenizer.encode_documents(val_docs), val_fraction, seed)
    return FineTuning(model=model.train(), data=data, added_chars=added,
                      base_checkpoint=checkpoint, dropped_val_chars=dropped)
