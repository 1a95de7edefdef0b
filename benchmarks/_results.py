"""Shared by the benchmark scripts: print a results table and write it atomically."""

from __future__ import annotations

import os
from pathlib import Path


def publish(text: str, out: Path) -> None:
    """Print ``text`` and write it to ``out`` through a temporary file (never half-written)."""
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".md.tmp")
    temporary.write_text(text)
    os.replace(temporary, out)
    print(f"wrote {out}")
