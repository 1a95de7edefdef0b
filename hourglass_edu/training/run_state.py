"""A run's state: where a training run stands, owned by one object that checkpoints save and load.

`RunState` holds the counters (optimizer steps, tokens read, seconds of training, fp16 updates
the scaler skipped), the history, the log window (what the next history record averages), the
run's metadata and the step of the last checkpoint written. The trainer changes it as it steps;
`to_dict` gives the checkpoint's entries for it and `from_dict` reads them back (entries an
older checkpoint lacks take their starting values). Weights, optimizer, scaler and random states
belong to their own objects (resuming.py gathers everything a checkpoint holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hourglass_edu.training.evaluation import History

__all__ = ["RunState"]


def empty_log_window() -> dict[str, Any]:
    """What the next history record averages: loss sum, steps, tokens and seconds since the
    last record (saved in checkpoints, so a resumed run logs the same means)."""
    return {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}


@dataclass
class RunState:
    """Where a run stands. `last_checkpoint_step` is not saved: a run resumed from a checkpoint
    stands at that checkpoint's step."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training (the clock a time budget and its schedule follow)
    skipped_steps: int = 0  # fp16 updates the gradient scaler skipped (not counted in `step`)
    history: History = field(default_factory=History)
    log_window: dict[str, Any] = field(default_factory=empty_log_window)
    metadata: dict[str, Any] = field(default_factory=dict)
    last_checkpoint_step: int | None = None

    def count_step(self, tokens: int) -> None:
        self.step += 1
        self.tokens_seen += tokens

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entries for the run's state (plain containers)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                "skipped_steps": self.skipped_steps, "log_window": dict(self.log_window),
                "history": self.history.to_dict(), "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any]) -> RunState:
        """The state a checkpoint (validated by `load_checkpoint`) saved; it was checkpointed at
        its own step."""
        return cls(step=checkpoint["step"], tokens_seen=checkpoint["tokens_seen"],
                   elapsed=checkpoint["elapsed"],
                   skipped_steps=checkpoint.get("skipped_steps", 0),
                   history=History.from_dict(checkpoint["history"]),
                   log_window={**empty_log_window(), **checkpoint.get("log_window", {})},
                   metadata=dict(checkpoint.get("metadata", {})),
                   last_checkpoint_step=checkpoint["step"])
