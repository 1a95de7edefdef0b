"""Measured results the course reads from the installed package (notebook 06 on Colab has no
benchmarks/ folder): `frontier.json` is benchmarks/results/frontier.json, copied here by
benchmarks/frontier.py."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["load_frontier"]


def load_frontier() -> dict[str, Any]:
    """The compute frontier's runs (curves of bits per character against training FLOPs) and the
    summary benchmarks/frontier.py derived from them (`summary`: pairs, seed spreads, timing)."""
    path = resources.files(__name__) / "frontier.json"
    if not path.is_file():
        raise FileNotFoundError("no frontier.json in hourglass_edu/results: run "
                                "`python benchmarks/frontier.py --runs RUNS` to make it")
    return json.loads(path.read_text(encoding="utf-8"))
