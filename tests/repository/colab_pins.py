"""Colab's pins (requirements/colab.txt) as tools/refresh_colab_pins.py reads them: shared by the
dependency-bounds checks and the Colab-stack tier's own checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _refresh_tool():
    """tools/refresh_colab_pins.py (not a package)."""
    spec = importlib.util.spec_from_file_location(
        "refresh_colab_pins", REPO_ROOT / "tools" / "refresh_colab_pins.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("refresh_colab_pins", module)
    spec.loader.exec_module(module)
    return module


refresh = _refresh_tool()


def colab():
    return refresh.parse_pins(refresh.OUTPUT.read_text(encoding="utf-8"))
