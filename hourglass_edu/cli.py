"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `_add_NAME(subparsers)` declares its arguments and
`_run_NAME(args)` does the work. Library code stays in the library modules; this file only parses
arguments, calls them, and prints.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hourglass_edu",
        description="Hourglass transformer course: corpora, training, sampling.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _add_corpus(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="print a corpus's statistics (documents, characters, vocabulary, split)",
        description="Load a corpus (downloading and verifying it if needed), split it into train "
        "and validation documents, build the character vocabulary from train, and print the "
        "statistics. NAME is a registered corpus (haiku, lovecraft) or a path to a .txt file "
        "(documents separated by blank lines) or a folder of .txt files (one document each).",
    )
    parser.add_argument("name", metavar="NAME", help="haiku, lovecraft, or a path")
    parser.add_argument("--data-dir", default=None, help="read/download corpus files here "
                        "instead of $HOURGLASS_EDU_DATA and the cache directory")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of documents held out for validation (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading missing files")
    parser.set_defaults(run=_run_corpus)


def _run_corpus(args) -> int:
    from hourglass_edu.data import prepare_data

    data = prepare_data(args.name, val_fraction=args.val_fraction, seed=args.seed,
                        data_dir=args.data_dir, download=not args.no_download)
    print(data.describe())
    return 0


_SUBCOMMANDS: list = [_add_corpus]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors already say what to change; a traceback would only hide that.
        print(f"error: {error}", file=sys.stderr)
        return 2
