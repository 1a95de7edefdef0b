"""What each process does in tests/test_distributed.py, started by torchrun with two processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT

In one process group, three runs of the library's `train` on a toy corpus, in this order:
1. each process with another seed: every process must refuse, naming the setting;
2. a global batch of 1 window for 2 processes: every process must refuse;
3. `reference_config()` for 5 steps, each process with its own checkpoint folder (only process 0
   may write one). Process 0 then writes OUT/result.json: the refusals' messages, the losses and
   the validation bits per character.

The test runs the same `reference_config()` in one process and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tiny import tiny_hourglass, toy_data

from hourglass_edu import HourglassLM
from hourglass_edu.training import TrainConfig, train
from hourglass_edu.training.distributed import process_group


def tiny_model(vocab_size: int) -> HourglassLM:
    """The shared tiny model, built without touching this process's random state."""
    with torch.random.fork_rng(devices=[]):
        return tiny_hourglass(vocab_size)


def reference_config(**changes) -> TrainConfig:
    """8 windows per step in 2 micro-batches: 2 processes take 2 windows each per micro-batch."""
    values = dict(steps=5, batch_size=4, grad_accum=2, block_size=32, lr=3e-3, warmup_steps=1,
                  eval_every=5, eval_batches=2, log_every=1, precision="fp32", progress=False,
                  device="cpu")
    return TrainConfig(**{**values, **changes})


def refusal(data, config) -> str:
    try:
        train(tiny_model(data.tokenizer.vocab_size), data, config)
    except ValueError as error:
        return str(error)
    return "not refused"


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data = toy_data()
    with process_group("cpu") as ranks:
        assert ranks is not None and ranks.world_size == 2, ranks
        result = {
            "mismatch": refusal(data, reference_config(seed=ranks.rank)),
            "batch_too_small": refusal(data, reference_config(batch_size=1)),
        }
        history = train(tiny_model(data.tokenizer.vocab_size), data, reference_config(),
                        checkpoint_path=out / f"rank{ranks.rank}" / "checkpoint.pt")
        if ranks.is_main:
            result["losses"] = history.column("train_loss")
            result["val_bpc"] = history.column("val_bpc")
            (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
