"""What the command-line folder tests share (tests/test_cli_folders.py, tests/test_cli_export.py):
the command line run in this process, a folder's contents, and a two-step run of the tiny model.
"""

from __future__ import annotations

from pathlib import Path

from tiny import tiny_hourglass, toy_documents

from hourglass_edu.cli import main
from hourglass_edu.data import prepare_data
from hourglass_edu.data.corpora import Corpus
from hourglass_edu.training import TrainConfig, train


def documents(count: int, seed: int = 0) -> list[str]:
    """`count` one-line toy documents of 3-8 words."""
    return toy_documents(count, seed, lines=1, words_per_line=(3, 8))


def tiny_run(folder: Path, seed: int = 0, structure: str = "1@1 1@2 1@1", **metadata) -> Path:
    """A two-step run of a tiny hourglass, written to FOLDER/checkpoint.pt."""
    data = prepare_data(Corpus("toy", documents(60, seed)), val_fraction=0.1)
    model = tiny_hourglass(data.tokenizer.vocab_size, seed=seed, d_model=16, structure=structure,
                           max_length=32)
    config = TrainConfig(steps=2, batch_size=2, block_size=16, warmup_steps=1, eval_every=50,
                         eval_batches=1, precision="fp32", progress=False, device="cpu")
    train(model, data, config, checkpoint_path=folder / "checkpoint.pt", metadata=metadata)
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    """`main(argv)` in this process: (exit code, stdout, stderr), never a traceback."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
