"""Batches: fixed-length windows of a token stream, random for training, exhaustive for evaluation.

`sample_batch` draws random windows for training; `iter_eval_batches` walks the validation stream
once, scoring every token exactly once (targets it must not score again are `IGNORE_INDEX`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["sample_batch", "iter_eval_batches"]

IGNORE_INDEX = -100  # target value that losses skip (F.cross_entropy's default ignore_index)


def _check_stream(ids: torch.Tensor, batch_size: int, block_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.is_floating_point():
        raise ValueError("ids must be a 1-D integer tensor (e.g. PreparedData.train_ids)")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size}, "
                         f"{block_size}")


def sample_batch(ids: torch.Tensor, batch_size: int, block_size: int,
                 generator: torch.Generator, *, device: str | torch.device | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: x, y of shape (batch, block), cut from one window of
    block_size + 1 consecutive tokens, so y[:, t] is the token that follows x[:, t] (y is x
    shifted left by one). Every start position
    0 .. len(ids) - block_size - 1 is equally likely; the same generator state gives the same
    batch. `generator` must live on the CPU; the result goes to `device` (default: ids.device).
    """
    _check_stream(ids, batch_size, block_size)
    if len(ids) < block_size + 1:
        raise ValueError(f"a window needs block_size + 1 = {block_size + 1} tokens but the "
                         f"stream has {len(ids)}; use a smaller block_size")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    windows = ids.unfold(0, block_size + 1, 1)[starts.to(ids.device)]  # (batch, block + 1)
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def iter_eval_batches(ids: torch.Tensor, batch_size: int, block_size: int, *,
                      device: str | torch.device | None = None,
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk the stream once, so that every token after the first is a target exactly once.

    Yields x, y of shape (rows, block) with rows <= batch_size (only the last batch is short);
    the windows are consecutive and do not overlap. The tail that does not fill a whole window
    is scored in one last full-length window that ends at the stream's end (so its tokens still
    get a full context); the targets in it that earlier windows already scored are set to
    IGNORE_INDEX (-100). Sum the loss over `y != IGNORE_INDEX` (F.cross_entropy skips -100 by
    default) and divide by the count of such targets, len(ids) - 1. A stream shorter than
    block_size + 1 gives one window of len(ids) - 1 tokens.
    """
    _check_stream(ids, batch_size, block_size)
    if len(ids) < 2:
        raise ValueError(f"evaluation needs at least 2 tokens, the stream has {len(ids)}")
    n_targets = len(ids) - 1
    block = min(block_size, n_targets)
    starts = list(range(0, n_targets - block + 1, block))
    covered = starts[-1] + block  # targets 1 .. covered are scored by the full windows
    skips = [0] * len(starts)
    if covered < n_targets:
        starts.append(n_targets - block)
        skips.append(covered - (n_targets - block))
    windows = ids.unfold(0, block + 1, 1)  # view: (n_targets - block + 1, block + 1)
    for first in range(0, len(starts), batch_size):
        rows = windows[starts[first:first + batch_size]]
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].clone()
        for row, skip in enumerate(skips[first:first + batch_size]):
            y[row, :skip] = IGNORE_INDEX
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y
