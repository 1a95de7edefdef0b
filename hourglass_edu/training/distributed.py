"""Data parallelism: the same run on several processes, each computing part of every batch.

`torchrun --nproc_per_node N -m hourglass_edu train ...` starts N copies of the command and tells
each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK). `process_group()` joins
them with `torch.distributed` (nccl between GPUs, gloo on CPUs); the trainer then wraps the model
in `torch.nn.parallel.DistributedDataParallel`, which averages the gradients of all processes
during the backward pass (an all-reduce), so every process applies the same update.

How a data-parallel run relates to a one-process run with the same settings:

- `batch_size` is the global batch. Each step all processes draw the same random window starts
  from the run's one batch generator (seeded by `seed`), and process r trains on slice r of that
  global batch (`batch_size / N` windows; N must divide it). Steps, tokens per step and the
  learning-rate schedule are those of the one-process run, and the gradient is the same average
  over the same windows, up to the order in which floats are summed.
- Dropout is the one thing each process draws for itself: process r continues its own random
  state, derived from the seed and r (process 0's is the one-process run's).
- Only process 0 evaluates, logs, shows progress and writes files. Stopping (Ctrl-C, SIGTERM,
  the time budget, a NaN loss) is agreed on by all processes after every step.
- A checkpoint holds the model's own weights (not the DDP wrapper's "module."-prefixed ones), the
  shared batch generator and process 0's dropout state, so any number of processes resumes it.
  What "exact resume" means here: the same batches, learning rates and step count as the run
  that was not interrupted, and its losses up to float rounding (an all-reduce sums in another
  order than one process does); processes other than 0 restart their dropout states, so with
  dropout the resumed run is an equally valid continuation, not the same numbers.

Without torchrun none of this runs: `process_group()` yields None and training is unchanged.
The trainer asks all of it of one `DataParallel` object, whose every answer alone is the
one-process one, so the loop never tests where it runs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hourglass_edu.devices import resolve_device

__all__ = ["current_ranks", "process_group"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: `rank` among `world_size` processes, and
    `local_rank` among those on this machine (which GPU it takes)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Process 0: the one that evaluates, prints and writes files."""
        return self.rank == 0

    def any(self, value: int) -> int:
        """The largest of every process's `value` (0 = nothing to report): how the processes
        agree on stopping. One tiny all-reduce."""
        return int(self.max(float(value)))

    def max(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average `tensor` over the processes, in place (gloo has no AVG: sum, then divide)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.div_(self.world_size)

    def _device(self) -> torch.device:
        # nccl moves only GPU tensors; gloo takes CPU tensors.
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current_ranks() -> Ranks | None:
    """This process's `Ranks` while it is in a process group; None when it trains alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def rank_device(device: str | torch.device, ranks: Ranks | None) -> torch.device:
    """The device a process trains on: under data parallelism "auto" and "cuda" mean
    cuda:LOCAL_RANK (one GPU per process); alone, `resolve_device`'s choice."""
    if ranks is None:
        return resolve_device(device)
    requested = str(device)
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(
            f"device {requested!r} names one device, but each of the {ranks.world_size} "
            "processes takes its own (cuda:LOCAL_RANK): pass `device` cuda, auto or cpu, and "
            "choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use `device` cpu")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process {ranks.rank} needs GPU {ranks.local_rank}, but torch sees "
            f"{torch.cuda.device_count()}: start at most that many processes per machine "
            "(torchrun's --nproc_per_node)"
        )
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def process_group(device: str = "auto",
                  timeout: datetime.timedelta | None = None) -> Iterator[Ranks | None]:
    """Join the process group torchrun announced, for the block: nccl when the processes train on
    GPUs, gloo on CPUs. Yields this process's `Ranks`, or None when not started by torchrun (or
    when a group is already set up by the caller, which then owns it).

    On the way out the processes wait for each other (so that process 0 finishes writing its
    files before torchrun sees the others exit), unless the block failed with an error.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield current_ranks()
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    on_gpu = str(device) != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)  # before the group: nccl binds to the current GPU
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout)
    failed = False
    try:
        yield current_ranks()
    except (KeyboardInterrupt, SystemExit):
        raise  # a stop all processes agreed on: they still leave together
    except BaseException:
        failed = True  # maybe on this process only: waiting for the others could hang
        raise
    finally:
        if not failed:
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()


def per_process_batch(batch_size: int, ranks: Ranks | None) -> int:
    """How many windows of the global batch each process takes; N must divide `batch_size`."""
    if ranks is None:
        return batch_size
    processes = ranks.world_size
    if batch_size < processes:
        raise ValueError(
            f"`batch_size` {batch_size} (the global batch, in windows) is smaller than the "
            f"{processes} processes (torchrun's --nproc_per_node): each process needs at least "
            f"one window. Raise `batch_size` to a multiple of {processes}, or start fewer "
            "processes"
        )
    if batch_size % processes:
        lower = batch_size - batch_size % processes
        upper = lower + processes
        raise ValueError(
            f"`batch_size` {batch_size} is the global batch and must split evenly across the "
            f"{processes} processes: use {lower} or {upper}, or another number of processes"
        )
    return batch_size // processes


def data_parallel_summary(ranks: Ranks, device: torch.device, batch_size: int,
                          block_size: int) -> str:
    """The line process 0 prints when a data-parallel run starts: how the global batch splits."""
    processes = f"{ranks.world_size} process" + "es" * (ranks.world_size > 1)
    return (f"data parallel: {processes} ({device.type}), global batch {batch_size} windows = "
            f"{ranks.world_size} x {per_process_batch(batch_size, ranks)} per process, of "
            f"{block_size} tokens")


def check_same_settings(settings: dict[str, Any], ranks: Ranks | None) -> None:
    """Refuse (ValueError, raised by every process) when the processes were started with
    different settings: each sends a hash of `settings` (plain containers) to all the others,
    and on a mismatch the settings themselves, so the message lists what differs."""
    if ranks is None:
        return
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digests: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) == 1:
        return
    everyone: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(everyone, settings)
    lines = [line for rank in range(1, ranks.world_size)
             for line in _differences(everyone[0], everyone[rank], rank)]
    raise ValueError(
        "the processes of this run were started with different settings:\n  "
        + "\n  ".join(lines)
        + "\nStart every process with the same command, corpus and model (one torchrun command "
        "per machine, the same files on every machine)"
    )


class DataParallel:
    """What the trainer asks of data parallelism, one call each. `ranks` None (alone): every call
    gives the one-process answer. `ddp` is the DistributedDataParallel wrapper once `wrap` made
    it (else None)."""

    def __init__(self, ranks: Ranks | None) -> None:
        self.ranks = ranks
        self.ddp: DistributedDataParallel | None = None

    @property
    def is_main(self) -> bool:
        return self.ranks is None or self.ranks.is_main

    @property
    def rank(self) -> int:
        return self.ranks.rank if self.ranks is not None else 0

    @property
    def processes(self) -> int:
        return self.ranks.world_size if self.ranks is not None else 1

    def check_same_settings(self, settings: dict[str, Any]) -> None:
        check_same_settings(settings, self.ranks)

    def device(self, requested: str | torch.device) -> torch.device:
        return rank_device(requested, self.ranks)

    def windows_per_process(self, batch_size: int) -> int:
        return per_process_batch(batch_size, self.ranks)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module a step runs forward: DDP around `model` (it copies process 0's weights to
        the others, and averages gradients from then on), or alone the model itself."""
        if self.ranks is None:
            return model
        self.ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        return self.ddp

    def own_rows(self, windows: int, batch_size: int) -> list[slice]:
        """This process's rows of each micro-batch of `batch_size` windows among `windows`."""
        share = self.windows_per_process(batch_size)
        own = self.rank * share
        return [slice(start + own, start + own + share) for start in range(0, windows, batch_size)]

    def gradient_sync(self, last_micro_batch: bool):
        """Gradient accumulation: the all-reduce runs only after the last micro-batch's backward
        pass (DDP's `no_sync` keeps the others local)."""
        if self.ddp is None or last_micro_batch:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` averaged over the processes, in place (alone: unchanged)."""
        return self.ranks.mean_(tensor) if self.ranks is not None else tensor

    def any(self, value: int) -> int:
        """The largest of every process's `value` (alone: `value`)."""
        return self.ranks.any(value) if self.ranks is not None else value

    def slowest(self, elapsed: float, seconds: float) -> float:
        """A step's `seconds` on one clock for all processes (the slowest one's), so a time
        budget ends for all of them at the same step and the schedule stays the same."""
        if self.ranks is None:
            return seconds
        return self.ranks.max(elapsed + seconds) - elapsed

    def summary(self, device: torch.device, batch_size: int, block_size: int) -> str | None:
        """The line to print when a data-parallel run starts (None alone)."""
        if self.ranks is None:
            return None
        return data_parallel_summary(self.ranks, device, batch_size, block_size)


def _differences(first: dict[str, Any], other: dict[str, Any], rank: int,
                 prefix: str = "") -> list[str]:
    """Lines "train.seed: process 0 has 0, process 1 has 1", one per differing setting."""
    lines = []
    for key in sorted(set(first) | set(other)):
        mine, theirs = first.get(key, "<absent>"), other.get(key, "<absent>")
        if isinstance(mine, dict) and isinstance(theirs, dict):
            lines += _differences(mine, theirs, rank, f"{prefix}{key}.")
        elif mine != theirs:
            lines.append(f"{prefix}{key}: process 0 has {mine!r}, process {rank} has {theirs!r}")
    return lines
