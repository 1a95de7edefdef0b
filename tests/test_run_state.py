"""A run's state and its stops: `RunState` in checkpoints, `StopRequests` and `RunInterrupted`,
`DataParallel` alone, and library errors that name arguments (the command line's flags)."""

from __future__ import annotations

import argparse
import ast
import os
import re
import signal
from pathlib import Path

import pytest
import torch

import hourglass_edu.training as training_package
from hourglass_edu.cli import as_flags
from hourglass_edu.training import TrainConfig, load_checkpoint, train
from hourglass_edu.training.distributed import DataParallel
from hourglass_edu.training.evaluation import History
from hourglass_edu.training.run_state import RunState, empty_log_window
from hourglass_edu.training.stopping import RunInterrupted, StopRequests

# What every checkpoint of CHECKPOINT_VERSION 2 holds: RunState must write these and no others.
CHECKPOINT_KEYS = {"format", "version", "model_class", "model_config", "tokenizer",
                   "train_config", "data", "model", "optimizer", "scaler", "step", "tokens_seen",
                   "elapsed", "skipped_steps", "log_window", "history", "rng", "metadata",
                   "torch_version"}


def _config(**changes) -> TrainConfig:
    values = dict(steps=4, batch_size=4, block_size=32, lr=3e-3, warmup_steps=2, eval_every=2,
                  eval_batches=2, log_every=1, precision="fp32", progress=False, device="cpu")
    return TrainConfig(**{**values, **changes})


def test_run_state_reads_back_what_it_writes_and_stands_at_its_checkpoint():
    history = History()
    history.append(step=3, tokens=96, elapsed=1.5, train_loss=2.0, train_bpc=2.9, val_bpc=None,
                   lr=1e-3, skipped_steps=1)
    state = RunState(step=3, tokens_seen=96, elapsed=1.5, skipped_steps=1, history=history,
                     log_window={"loss": 1.0, "steps": 1, "tokens": 32, "seconds": 0.5},
                     metadata={"written_by": "test"}, last_checkpoint_step=2)
    back = RunState.from_dict(state.to_dict())
    assert back.to_dict() == state.to_dict()
    assert back.last_checkpoint_step == 3  # a resumed run stands at its checkpoint


def test_a_checkpoint_without_the_optional_state_entries_starts_them_afresh():
    state = RunState.from_dict({"step": 2, "tokens_seen": 64, "elapsed": 1.0,
                                "history": History().to_dict()})
    assert (state.skipped_steps, state.log_window, state.metadata) == (0, empty_log_window(), {})


def test_checkpoints_keep_the_keys_of_their_format(toy_data, make_tiny_hourglass, tmp_path):
    model = make_tiny_hourglass(toy_data.tokenizer.vocab_size)
    train(model, toy_data, _config(steps=2), checkpoint_path=tmp_path / "checkpoint.pt",
          metadata={"note": "kept"})
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert (checkpoint["step"], checkpoint["metadata"]) == (2, {"note": "kept"})


def _train_stopped_by(callback, toy_data, model, path: Path) -> RunInterrupted:
    with pytest.raises(RunInterrupted) as stopped:
        train(model, toy_data, _config(), checkpoint_path=path, callbacks=[callback])
    return stopped.value


def test_a_callback_stop_raises_a_keyboard_interrupt_without_a_signal(
        toy_data, make_tiny_hourglass, tmp_path):
    def stop_at_2(trainer):
        trainer.stop_requested = trainer.step == 2

    interrupt = _train_stopped_by(stop_at_2, toy_data,
                                  make_tiny_hourglass(toy_data.tokenizer.vocab_size),
                                  tmp_path / "checkpoint.pt")
    assert isinstance(interrupt, KeyboardInterrupt) and interrupt.stop_signal is None
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="Ctrl-C is handled by someone else here: the trainer leaves it alone")
def test_the_interrupt_carries_the_signal_that_stopped_the_run(
        toy_data, make_tiny_hourglass, tmp_path):
    def ctrl_c_at_1(trainer):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    interrupt = _train_stopped_by(ctrl_c_at_1, toy_data,
                                  make_tiny_hourglass(toy_data.tokenizer.vocab_size),
                                  tmp_path / "checkpoint.pt")
    assert interrupt.stop_signal == signal.SIGINT
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


def test_an_interrupt_from_elsewhere_saves_and_becomes_a_run_interrupted(
        toy_data, make_tiny_hourglass, tmp_path):
    def interrupt_at_1(trainer):
        if trainer.step == 1:
            raise KeyboardInterrupt

    interrupt = _train_stopped_by(interrupt_at_1, toy_data,
                                  make_tiny_hourglass(toy_data.tokenizer.vocab_size),
                                  tmp_path / "checkpoint.pt")
    assert interrupt.stop_signal is None
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


class _OtherProcessAsked:
    """A DataParallel stand-in whose other process received SIGTERM."""

    def any(self, value: int) -> int:
        return max(value, int(signal.SIGTERM))


def test_stop_requests_agree_on_the_signal_another_process_received():
    stops = StopRequests()
    assert not stops.agree(DataParallel(None))  # alone and not asked: go on
    assert stops.agree(_OtherProcessAsked())
    assert stops.requested and stops.interrupted().stop_signal == signal.SIGTERM


def test_data_parallel_alone_gives_the_one_process_answers():
    alone, model, loss = DataParallel(None), torch.nn.Linear(2, 2), torch.tensor(3.0)
    assert (alone.is_main, alone.rank, alone.processes) == (True, 0, 1)
    assert alone.own_rows(8, 4) == [slice(0, 4), slice(4, 8)]
    assert alone.wrap(model, torch.device("cpu")) is model and alone.ddp is None
    assert alone.mean_(loss) is loss and loss.item() == 3.0
    assert alone.slowest(10.0, 0.5) == 0.5 and alone.summary(torch.device("cpu"), 8, 32) is None


def test_the_command_line_words_the_library_arguments_as_its_flags():
    args = argparse.Namespace(command="train", run=None, batch_size=None, grad_accum=None,
                              out="runs/x", force=False)
    message = ("lower `batch_size` 8 (`grad_accum` 2), choose another `folder` or pass "
               "`overwrite`; `grad_clip` and `command` are not options")
    assert as_flags(message, args) == (
        "lower --batch-size 8 (--grad-accum 2), choose another --out or pass --force; "
        "`grad_clip` and `command` are not options")


def test_training_messages_name_arguments_not_command_line_flags():
    flag = re.compile(r"(?<![\w'-])--[a-z]")
    found = []
    for path in sorted(Path(training_package.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and flag.search(node.value.replace("torchrun's --", ""))):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)
