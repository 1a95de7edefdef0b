"""A run's private randomness: a generator for batches and a random state for dropout.

Dropout draws from torch's global generator, which a library must not reseed behind its user's
back. So the run keeps its own dropout state and swaps it in only while a step runs
(`torch.random.fork_rng` restores the caller's state afterwards). Both states start from the run's
seed and are saved in checkpoints, so a resumed run draws exactly the numbers it would have drawn.

In a data-parallel run (distributed.py) every process holds the same batch generator (they all
draw the same global batch, then take their own slice of it), but each continues its own dropout
state: process r's starts from the seed and r, and process 0's is the one-process run's. A
checkpoint keeps process 0's; the others restart theirs from the seed, their rank and the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__: list[str] = []  # no public names: the modules that use these import them by name


class RandomStates:
    """`batches`: a `torch.Generator` for batch sampling; `dropout()`: a context in which torch's
    global generator continues the run's own dropout sequence."""

    def __init__(self, seed: int, device: torch.device, rank: int = 0):
        self.device = device
        self.seed, self.rank = seed, rank
        self._cuda = [device] if device.type == "cuda" else []
        self.batches = torch.Generator().manual_seed(seed)
        self._dropout = self._seeded_dropout(step=0)
        self._pending: dict[str, torch.Tensor] | None = None

    def _seeded_dropout(self, step: int) -> dict[str, torch.Tensor]:
        """A fresh dropout state: seed + 1 for process 0 (and a run alone); for process r > 0
        one of its own, away from every other process's and step's."""
        seed = self.seed + 1 if self.rank == 0 else self.seed + 1 + (self.rank << 32) + step
        with torch.random.fork_rng(devices=self._cuda):
            torch.manual_seed(seed)  # seeds the CUDA generators too
            return self._current()

    def _current(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self._cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def dropout(self) -> Iterator[None]:
        """Run a step's forward and backward passes with the run's dropout state; the advanced
        state is kept aside until `commit_dropout` (an abandoned step leaves no trace)."""
        with torch.random.fork_rng(devices=self._cuda):
            torch.set_rng_state(self._dropout["cpu"])
            if self._cuda and "cuda" in self._dropout:
                torch.cuda.set_rng_state(self._dropout["cuda"], self.device)
            yield
            self._pending = self._current()

    def commit_dropout(self) -> None:
        if self._pending is not None:
            self._dropout, self._pending = self._pending, None

    def state(self) -> dict[str, Any]:
        return {"batch": self.batches.get_state(), "dropout": dict(self._dropout)}

    def set_state(self, state: dict[str, Any], step: int = 0) -> None:
        """Restore `state()` output (checkpoints of version 1 kept dropout in "torch_cpu").
        Processes other than 0 of a data-parallel run take a fresh dropout state for `step`."""
        self.batches.set_state(state["batch"])
        if self.rank > 0:
            self._dropout = self._seeded_dropout(step)
        elif "dropout" in state:
            self._dropout = dict(state["dropout"])
        else:
            self._dropout = {"cpu": state["torch_cpu"]}
        self._pending = None
