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


_SUBCOMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors already say what to change; a traceback would only hide that.
        print(f"error: {error}", file=sys.stderr)
        return 2
