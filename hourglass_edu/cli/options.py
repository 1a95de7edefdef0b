"""Option types the subcommands share: argparse checks each value while it reads the command
line, so a bad one is refused (exit 2, naming the option and the range) before any work."""

from __future__ import annotations

import argparse
import importlib
import math

__all__ = ["TableNames", "device", "given", "non_negative_int", "positive_int", "seed",
           "temperature"]

MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed (runs add small offsets)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def seed(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to 2**63 - 1 "
                                         f"({MAX_SEED}), got {text}")
    return value


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def dropout_rate(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (a probability), got "
                                         f"{text}")
    return value


def temperature(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or more, got {text}")
    return value


def device(text: str) -> str:
    """A device name `resolve_device` accepts, checked while the command line is read (before
    any corpus or model loads); kept as written, so that "auto" stays "auto"."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.devices import resolve_device

    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def given(text: str) -> str:
    """A name or path that says something: an empty one would mean the current folder (a corpus
    of whatever .txt files lie there, a run written among your files), never what was meant."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name a file, folder or model")
    return text


class TableNames:
    """The names of a library table (``module.table``, e.g. resampling's `SHORTENINGS`) as an
    option's ``choices``: read from the table when argparse first needs them (a value to check, a
    help page), so the choices are the table's and building the parser imports no torch."""

    def __init__(self, module: str, table: str):
        self.module, self.table = module, table

    def _names(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.table))

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()
