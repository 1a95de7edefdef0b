"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `add_NAME(subparsers)` declares its arguments and
`run_NAME(args)` does the work. One module per group of subcommands: `data` (corpus), `sampling`
(sample), `training` (train, finetune, demo; their run folders in `runs`), `evaluation`
(evaluate) and `models` (models, export). Library code stays in the library modules; this package
only parses arguments, calls them, and prints. A `run_NAME` imports the library inside the
function: the library imports torch (a second or two), and `--help`, a bad option or a Ctrl-C
must be answered before torch loads (tests/test_cli_inputs.py).

Exit codes: 0 when the command did its work; 1 when `models` finds no shipped model or a damaged
card; 2 for a refused option or input, a library error or an output that cannot be written (one
line each, no traceback); 130 after Ctrl-C, and 143 after SIGTERM during training (training
saves its checkpoint first, runs.py); 141 when the reader of the output stops reading (`| head`).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import warnings

from hourglass_edu.cli.data import add_corpus
from hourglass_edu.cli.evaluation import add_evaluate
from hourglass_edu.cli.models import add_export, add_models
from hourglass_edu.cli.sampling import add_sample
from hourglass_edu.cli.training import add_demo, add_finetune, add_train

__all__ = ["main"]

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
    _tolerate_unencodable_output()
    output = sys.stdout = _Output(sys.stdout) if sys.stdout is not None else None
    try:
        code = _parse_and_run(argv)
        if sys.stdout is not None:
            sys.stdout.flush()  # a full disk under `> FILE` is met here, not after main returns
        return code
    except KeyboardInterrupt:
        # Ctrl-C outside a training loop (while torch imports, a corpus loads, ...): nothing is
        # half-written, since every file is written atomically. Training loops handle their
        # own (runs.py).
        print("interrupted (Ctrl-C); files written before it are unchanged", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output stopped reading (`| head`): no error
        _discard_stdout()
        return 128 + 13  # what a shell reports for a command that SIGPIPE ended
    except OSError as error:  # the output itself cannot be written (`> /dev/full`)
        _discard_stdout()
        print(f"{_process_prefix()}error: cannot write the output: {os_error_line(error)}",
              file=sys.stderr)
        return 2
    finally:
        if output is not None and sys.stdout is output:
            sys.stdout = output.stream


class _Output:
    """sys.stdout while a command runs, remembering whether writing to it failed (a full disk
    under `> FILE`, a closed pipe), so that the error is said as the output's, not a file's."""

    def __init__(self, stream):
        self.stream, self.failed = stream, False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self.failed = True
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.failed = True
            raise

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _parse_and_run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 2:  # an option refused, in one line already (_Parser.error)
            return 2
        raise  # --help: argparse's own exit
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return int(args.run(args) or 0)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            # Library errors already say what to change; a traceback would only hide that. A
            # FileNotFoundError with an errno comes from the system, not from a library message.
            line = (os_error_line(error) if isinstance(error, OSError) and error.errno
                    else as_flags(_error_line(error, args.command), args))
            print(f"{_process_prefix()}error: {line}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            raise
        except OSError as error:  # the disk, not the input: full, read-only, not a folder
            if getattr(sys.stdout, "failed", False):
                raise  # the output, not a file the command wrote: main says so
            print(f"{_process_prefix()}error: {os_error_line(error)}", file=sys.stderr)
            return 2


def _tolerate_unencodable_output() -> None:
    """A character the terminal's encoding lacks (a generated one, a file name that is not
    UTF-8) is written escaped (\\xe9) instead of failing a command that has done its work."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream of the io module
            pass


def _discard_stdout() -> None:
    """Point stdout at os.devnull, so that the interpreter's own flush at exit does not fail a
    second time on output that cannot be written."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError):  # no file descriptor (a test's capture)
        pass


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


# Library arguments a command passes from an option of another name.
_OPTION_OF_ARGUMENT = {"folder": "out", "overwrite": "force"}
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(message: str, args: argparse.Namespace) -> str:
    """A library message in the command line's words, the one place they are translated: the
    library names its arguments in backquotes (`batch_size`, `folder`), and each one that is
    an option of this command becomes its flag (--batch-size, --out); the others stay."""
    options = set(vars(args)) - {"command", "run"}  # the subcommand's name and function

    def flag(match: re.Match) -> str:
        name = _OPTION_OF_ARGUMENT.get(match[1], match[1])
        return f"--{name.replace('_', '-')}" if name in options else match[0]

    return _ARGUMENT.sub(flag, message)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings the library gives (say, a model card without a sha256), as one line each."""
    print(f"{_process_prefix()}warning: {message}", file=file or sys.stderr)


def _process_prefix() -> str:
    """Under torchrun every process reports its own errors: the others than 0 say which they are
    (a problem that only one process meets is then easy to place)."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return "" if rank == "0" else f"process {rank}: "
