"""Measuring a language model: the loss, bits per character, and the history of a run.

Bits per character = mean cross-entropy in nats / ln 2. Every token counts as a character,
including `<eot>`, which the model must predict to end a document. `evaluate_bpc` measures it on a
fixed sample of random windows (quick, comparable across steps) or on the whole split, cut into
consecutive windows of `block_size` (so early positions of each window see little context).
`evaluate_bpc_long_context` scores the whole split with overlapping windows instead (the strided
sliding-window protocol), so that every scored character sees a stated amount of context.
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

from hourglass_edu.data import iter_eval_batches, sample_batch
from hourglass_edu.data.batches import IGNORE_INDEX
from hourglass_edu.devices import resolve_device
from hourglass_edu.lm import model_device
from hourglass_edu.sampling import shown_number
from hourglass_edu.training.precision import autocast_context, resolve_precision

__all__ = ["History", "evaluate_bpc", "evaluate_bpc_long_context", "language_model_loss"]

LN2 = math.log(2.0)


def language_model_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy in nats ("mean" over targets, or "sum"), computed in fp32 even
    under autocast. Targets equal to -100 (`batches.IGNORE_INDEX`) are skipped.

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
    _check_model_and_ids(model, ids, "evaluate_bpc")
    _check_counts(batch_size=batch_size, block_size=block_size, max_batches=max_batches)
    if ids.numel() < 2:
        raise ValueError("the evaluation split needs at least 2 tokens")
    device = _evaluation_device(model, device)
    precision = resolve_precision(precision, device)
    block_size = min(block_size, ids.numel() - 1)
    if max_batches is None:
        batches: Iterable = iter_eval_batches(ids, batch_size, block_size)
    else:
        generator = torch.Generator().manual_seed(seed)
        batches = (sample_batch(ids, batch_size, block_size, generator) for _ in range(max_batches))

    total_nats, total_tokens = _score(model, batches, device, precision)
    return total_nats / total_tokens / LN2


def _check_model_and_ids(model, ids, where: str) -> None:
    """A model to run and a 1-D stream of token ids, or a ValueError saying what to pass."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{where} takes the model first (a torch module), got "
                         f"{type(model).__name__}")
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{where} takes ids as a 1-D tensor of token ids, got "
                         f"{type(ids).__name__}; encode the text first: "
                         "tokenizer.encode_documents([text]) (or data.val_ids)")
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"ids must hold whole-number token ids (a long tensor), got dtype "
                         f"{ids.dtype}; tokenizer.encode_documents gives them")


def _check_counts(**counts) -> None:
    for name, value in counts.items():
        if value is None and name == "max_batches":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {shown_number(value)}")


def _evaluation_device(model, device) -> torch.device:
    """Where the evaluation runs: the model's own device (None), or `device`, which must be it
    (the model is not moved behind the caller's back)."""
    where = model_device(model)
    if where.type == "meta":
        raise ValueError("the model is on the meta device: it has shapes but no weights to "
                         "evaluate; load it on a real device (device='cpu' or 'cuda')")
    if device is None:
        return where
    device = resolve_device(device)
    same = device.type == where.type and device.index in (None, where.index)
    if not same:
        raise ValueError(f"the model is on {where} but device={str(device)!r} was asked for: move "
                         f"it first (model.to({str(device)!r})) or leave device=None to evaluate "
                         "where it is")
    return where


@torch.no_grad()
def _score(model, batches: Iterable, device, precision: str) -> tuple[float, int]:
    """Summed loss in nats and the number of scored targets (those not IGNORE_INDEX) over
    `batches` of (inputs, targets), in eval mode; the model's training mode is restored."""
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
    return total_nats, total_tokens


def long_context_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int]]:
    """The windows of the strided sliding-window protocol over a stream of `n_tokens` tokens.

    Returns `(start, skip)` pairs: the window's inputs are `ids[start : start + length]`, its
    targets `ids[start + 1 : start + length + 1]`, with `length = min(context, n_tokens - 1)`,
    and its first `skip` targets are not scored (an earlier window scored them). Windows start
    every `stride` tokens, so each window after the first scores at most its last `stride`
    targets, each of which sees at least `length - stride + 1` tokens; a last window ends exactly
    at the end of the stream. Every target (every token after the first) is scored exactly once.
    Only the first window's early targets see less context: nothing comes before them.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise ValueError(f"evaluation needs at least 2 tokens, the stream has {n_tokens}")
    _check_context_and_stride(context, stride)
    n_targets = n_tokens - 1
    length = min(context, n_targets)
    stride = min(stride, length)
    windows = [(0, 0)]
    covered = length  # targets 1 .. covered are scored so far
    while covered < n_targets:
        start = min(covered + stride, n_targets) - length
        windows.append((start, covered - start))
        covered = start + length
    return windows


def _check_context_and_stride(context: int, stride: int) -> None:
    for name, value in (("context", context), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number of characters, got {value!r}")
    if stride > context:
        raise ValueError(
            f"stride {stride} is larger than context {context}: characters between windows would "
            "never be scored; use a stride of at most the context (context // 2 is usual)")


@torch.no_grad()
def _checked_long_context(model, ids, context, stride, count_eot, eot_id) -> int:
    """The stride `evaluate_bpc_long_context` uses, once its arguments are known to be valid."""
    _check_model_and_ids(model, ids, "evaluate_bpc_long_context")
    if stride is None and isinstance(context, int) and not isinstance(context, bool):
        stride = max(1, context // 2)
    _check_context_and_stride(context, stride)
    max_length = getattr(getattr(model, "config", None), "max_length", None)
    if max_length is not None and context > max_length:
        raise ValueError(
            f"context {context} exceeds the model's max_length {max_length}: evaluate with a "
            f"context of at most {max_length} (the longest sequence the model was built for)")
    if not count_eot and eot_id is None:
        raise ValueError("count_eot=False needs eot_id (the tokenizer's eot_id) to know which "
                         "targets to leave out")
    return stride


def evaluate_bpc_long_context(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    context: int,
    stride: int | None = None,
    count_eot: bool = True,
    eot_id: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Bits per character of `model` on the whole token stream `ids`, with long context.

    Windows of `context` tokens slide by `stride` (default `context // 2`); each one scores only
    the targets no earlier window scored (its last `stride`), so every scored character is
    predicted from at least `context - stride` earlier characters (except in the first window,
    which has nothing before it), and every character after the first is scored exactly once
    (`long_context_windows`). `stride == context` is the plain whole-split evaluation,
    `evaluate_bpc(max_batches=None)`; `stride == 1` gives every character the full `context`,
    at `context` times the cost.

    `count_eot=False` leaves the `<eot>` targets (id `eot_id`, which is then required) out of the
    average, as in a corpus without document boundaries; they still serve as context.
    `context` may not exceed the model's `config.max_length`.
    """
    stride = _checked_long_context(model, ids, context, stride, count_eot, eot_id)
    _check_counts(batch_size=batch_size)
    windows = long_context_windows(ids.numel(), context, stride)
    length = min(context, ids.numel() - 1)
    device = _evaluation_device(model, device)
    precision = resolve_precision(precision, device)
    rows = ids.unfold(0, length + 1, 1)  # a view: row s is ids[s : s + length + 1]

    def batches():
        for first in range(0, len(windows), batch_size):
            batch = windows[first:first + batch_size]
            chosen = rows[[start for start, _ in batch]]
            inputs, targets = chosen[:, :-1].contiguous(), chosen[:, 1:].clone()
            for row, (_, skip) in enumerate(batch):
                targets[row, :skip] = IGNORE_INDEX  # scored by an earlier window
            if not count_eot:
                targets[targets == eot_id] = IGNORE_INDEX
            yield inputs, targets

    total_nats, total_tokens = _score(model, batches(), device, precision)
    if total_tokens == 0:
        raise ValueError("no target was scored: every target is <eot> and count_eot is False")
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
