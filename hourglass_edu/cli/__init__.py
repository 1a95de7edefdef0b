"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `add_NAME(subparsers)` declares its arguments and
`run_NAME(args)` does the work. One module per group of subcommands: `data` (corpus), `sampling`
(sample), `training` (train, finetune, demo; their run folders in `runs`), `evaluation`
(evaluate) and `models` (models, export). Library code stays in the library modules; this package
only parses arguments, calls them, and prints.
"""

from __future__ import annotations

import argparse
import os
import sys

from hourglass_edu.cli.data import add_corpus
from hourglass_edu.cli.evaluation import add_evaluate
from hourglass_edu.cli.models import add_export, add_models
from hourglass_edu.cli.sampling import add_sample
from hourglass_edu.cli.training import add_demo, add_finetune, add_train

__all__ = ["build_parser", "main"]

_SUBCOMMANDS: list = [add_corpus, add_sample, add_train, add_finetune, add_demo, add_evaluate,
                      add_models, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hourglass_edu",
        description="Hourglass transformer course: corpora, training, sampling.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors already say what to change; a traceback would only hide that.
        print(f"{_process_prefix()}error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop (say, while a corpus loads): nothing is half-written,
        # since every file is written atomically. Training loops handle their own (runs.py).
        print("interrupted (Ctrl-C); files written before it are unchanged", file=sys.stderr)
        return 130


def _process_prefix() -> str:
    """Under torchrun every process reports its own errors: the others than 0 say which they are
    (a problem that only one process meets is then easy to place)."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return "" if rank == "0" else f"process {rank}: "
