"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `add_NAME(subparsers)` declares its arguments and
`run_NAME(args)` does the work. One module per group of subcommands: `data` (corpus), `sampling`
(sample), `training` (train, finetune, demo; their run folders in `runs`), `evaluation`
(evaluate) and `models` (models, export). Library code stays in the library modules; this package
only parses arguments, calls them, and prints.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from hourglass_edu.cli.data import add_corpus
from hourglass_edu.cli.evaluation import add_evaluate
from hourglass_edu.cli.models import add_export, add_models
from hourglass_edu.cli.sampling import add_sample
from hourglass_edu.cli.training import add_demo, add_finetune, add_train

__all__ = ["build_parser", "main"]

_SUBCOMMANDS: list = [add_corpus, add_sample, add_train, add_finetune, add_demo, add_evaluate,
                      add_models, add_export]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a bad option said in one line (argparse prints the whole usage
    first, which buries the line that matters); subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return int(args.run(args) or 0)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            # Library errors already say what to change; a traceback would only hide that. A
            # FileNotFoundError with an errno comes from the system, not from a library message.
            line = (os_error_line(error) if isinstance(error, OSError) and error.errno
                    else _error_line(error, args.command))
            print(f"{_process_prefix()}error: {line}", file=sys.stderr)
            return 2
        except OSError as error:  # the disk, not the input: full, read-only, not a folder
            print(f"{_process_prefix()}error: {os_error_line(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Ctrl-C outside a training loop (say, while a corpus loads): nothing is
            # half-written, since every file is written atomically. Training loops handle their
            # own (runs.py).
            print("interrupted (Ctrl-C); files written before it are unchanged", file=sys.stderr)
            return 130


# What to do about each way the operating system refuses a file operation.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or choose a folder on another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or choose another folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EEXIST: "something that is not a folder is in the way: choose another path",
    errno.EISDIR: "that is a folder where a file is needed: choose another path",
    errno.EACCES: "you may not write there: choose a folder you own, or change its permissions",
    errno.EPERM: "you may not write there: choose a folder you own, or change its permissions",
    errno.EROFS: "that file system is read-only: choose a folder on another disk",
}


def os_error_line(error: OSError) -> str:
    """One line for an OSError: the file, what happened, what to do; files written before it
    are whole (every write is atomic), so say that too."""
    where = f"{error.filename}: " if error.filename else ""
    what = error.strerror or str(error)
    advice = _OS_ADVICE.get(error.errno, "check the path and try again")
    return f"{where}{what}; {advice} (files written before are unchanged)"


def _error_line(error: Exception, command: str) -> str:
    """The library's message; for an allocation that failed (torch raises a RuntimeError of
    several lines on either device), its first line and what to change."""
    text = str(error)
    if "out of memory" not in text.lower() and "can't allocate memory" not in text:
        return text
    first = text.strip().splitlines()[0] if text.strip() else "out of memory"
    if command in ("train", "finetune", "demo"):
        return (f"{first}; lower --batch-size (with --grad-accum to keep the same batch per "
                "step) or --block-size")
    if command == "evaluate":
        return f"{first}; lower --batch-size or --context"
    return f"{first}; use a smaller model, or another --device"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings the library gives (say, a model card without a sha256), as one line each."""
    print(f"{_process_prefix()}warning: {message}", file=file or sys.stderr)


def _process_prefix() -> str:
    """Under torchrun every process reports its own errors: the others than 0 say which they are
    (a problem that only one process meets is then easy to place)."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return "" if rank == "0" else f"process {rank}: "
