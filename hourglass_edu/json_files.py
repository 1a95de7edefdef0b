"""Strict JSON files: a JSON file read with bounds, so that a damaged or crafted one is refused in
one line naming the file (and the field) before it can take memory or time.

`json.loads` alone reads a file of any size whole, keeps the last of two equal keys silently,
refuses an integer of more than 4,300 digits with a message naming neither file nor field, and
raises RecursionError on deep nesting. `read_json` (a model folder's config.json, tokenizer.json,
history.json) and `parse_json` (a model card's values) refuse each of these with a ValueError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__: list[str] = []  # no public names: the modules that use these import them by name

MAX_JSON_BYTES = 64 << 20  # config and tokenizer take kilobytes; a long run's history megabytes
MAX_JSON_DIGITS = 30  # no count or size in these files needs more digits


class _LongNumber:
    """A number of more than `MAX_JSON_DIGITS` digits, held as text until its key is known."""

    def __init__(self, digits: str):
        self.digits = digits


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file, read strictly: ValueError naming the file (and the field, where
    there is one) for a file beyond `MAX_JSON_BYTES`, not UTF-8, not JSON, nested past Python's
    recursion limit, holding a key twice (JSON keeps the last one silently) or a number of more
    than `MAX_JSON_DIGITS` digits; or for JSON that is not an object."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size:,} bytes, beyond the {MAX_JSON_BYTES >> 20} MiB this "
                         "library reads from a JSON file; the file is damaged or not of this "
                         "library: export or download the model again")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text, so not JSON; the file is damaged: export "
                         "or download the model again") from None
    value = parse_json(text, str(path))
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return value


def parse_json(text: str, where: str) -> Any:
    """`json.loads` of `text` with `read_json`'s rules; ValueError naming `where`."""

    def checked_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{where}: key {key[:40]!r} appears twice (JSON would keep "
                                 "the last silently); the file is damaged or was edited by "
                                 "hand: keep one")
            items = value if isinstance(value, list) else [value]
            long = next((item for item in items if isinstance(item, _LongNumber)), None)
            if long is not None:
                raise ValueError(f"{where}: field {key[:40]!r} holds a number of "
                                 f"{len(long.digits):,} digits, more than any value of this "
                                 "library needs; the file is damaged")
            seen[key] = value
        return seen

    def checked_int(digits: str) -> int | _LongNumber:
        return int(digits) if len(digits.lstrip("-")) <= MAX_JSON_DIGITS else _LongNumber(digits)

    try:
        value = json.loads(text, object_pairs_hook=checked_object, parse_int=checked_int)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read (lists or objects within "
                         "each other thousands of times); the file is damaged") from None
    if _holds_long_number(value):
        raise ValueError(f"{where}: holds a number of more than {MAX_JSON_DIGITS} digits; the "
                         "file is damaged")
    return value


def _holds_long_number(value: Any) -> bool:
    """Whether a long number sits outside any object field (alone, or in nested lists)."""
    if isinstance(value, _LongNumber):
        return True
    return isinstance(value, list) and any(_holds_long_number(item) for item in value)
