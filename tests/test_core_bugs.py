"""Fast tests for the core's contracts that the deliberate-bug table in CONTRIBUTING.md found no
other fast test pinning: each test here failed on the bug it names before it was kept.

They go through the public API only (HourglassLM, `train`, the history it returns), so a
refactoring of the code underneath leaves them standing.
"""

from __future__ import annotations

import math

import pytest

from hourglass_edu.training import TrainConfig, train


def tiny_run(steps: int = 3) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, block_size=32, lr=3e-3, warmup_steps=1,
                       eval_every=steps, eval_batches=1, log_every=1, precision="fp32",
                       progress=False, device="cpu")


# --- bits per character: nats over ln 2 -----------------------------------------------------------


def test_training_history_gives_bits_per_character_as_the_loss_over_ln2(make_tiny_hourglass,
                                                                        toy_data):
    history = train(make_tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_run())
    assert len(history) == 3
    for record in history.records:
        assert record["train_bpc"] == pytest.approx(record["train_loss"] / math.log(2), rel=1e-9)
