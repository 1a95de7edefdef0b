"""Measuring a language model: the loss, bits per character, and the history of a run.

Bits per character = mean cross-entropy in nats / ln 2. Every token counts as a character,
including `<eot>`, which the model must predict to end a document. `evaluate_bpc` measures it on a
fixed sample of random windows (quick, comparable across steps) or on the whole split, cut into
consecutive windows of `block_size` (so early positions of each window see little context).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hourglass_edu.data import IGNORE_INDEX, iter_eval_batches, sample_batch
from hourglass_edu.training.precision import autocast_context, resolve_device, resolve_precision

__all__ = ["LN2", "History", "evaluate_bpc", "language_model_loss"]

LN2 = math.log(2.0)


def language_model_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy in nats ("mean" over targets, or "sum"), computed in fp32 even
    under autocast. Targets equal to -100 (`data.IGNORE_INDEX`) are skipped.

    logits: (batch, length, vocab); targets: (batch, length).
    """
    return F.cross_entropy(
        rearrange(logits.float(), "batch length vocab -> (batch length) vocab"),
        rearrange(targets, "batch length -> (batch length)"),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


@torch.no_grad()
def evaluate_bpc(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    batch_size: int = 32,
    block_size: int = 256,
    max_batches: int | None = None,
    seed: int = 1234,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Bits per character of `model` on the token stream `ids` (1-D).

    `max_batches=None` covers the whole split once (`iter_eval_batches`); an integer draws that many
    batches of random windows from a generator seeded with `seed`, so the sample is the same at
    every call (comparable across steps and runs) and no other random state is touched.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise ValueError("the evaluation split needs at least 2 tokens")
    if device is None:
        device = next(model.parameters()).device
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    block_size = min(block_size, ids.numel() - 1)
    if max_batches is None:
        batches: Iterable = iter_eval_batches(ids, batch_size, block_size)
    else:
        generator = torch.Generator().manual_seed(seed)
        batches = (sample_batch(ids, batch_size, block_size, generator) for _ in range(max_batches))

    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast_context(precision, device):
                logits = model(inputs)
            total_nats += language_model_loss(logits, targets, reduction="sum").item()
            total_tokens += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total_nats / total_tokens / LN2



@dataclass
class History:
    """What a run measured: one record (a dict) per logged step.

    Record keys: `step` (optimizer steps done), `tokens` (training tokens seen), `elapsed`
    (training seconds, evaluation excluded), `train_loss` (nats, mean since the previous record),
    `train_bpc`, `val_bpc` (None where no evaluation ran), `lr`.
    `pandas.DataFrame(history.records)` gives a table.
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, **record: Any) -> None:
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def column(self, key: str) -> list:
        return [record[key] for record in self.records if record.get(key) is not None]

    @property
    def last_val_bpc(self) -> float | None:
        values = self.column("val_bpc")
        return values[-1] if values else None

    @property
    def best_val_bpc(self) -> float | None:
        values = self.column("val_bpc")
        return min(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dict(record) for record in self.records]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        return cls(records=[dict(record) for record in values["records"]])
