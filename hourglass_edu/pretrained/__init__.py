"""The trained models that ship inside the package, one model folder each (see model_folders.py).

    from hourglass_edu import load_pretrained
    model, tokenizer = load_pretrained("haiku")

`list_pretrained()` names them; `pretrained_card(name)` gives a model's card figures (how it was
trained and what it scores); `pretrained_history(name)` what its training run measured as it went
(`viz.plot_history` draws it). `benchmarks/train_pretrained.py` trains and exports all of them; the
figures in each card are written by that script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hourglass_edu.model_folders import (
    is_model_folder,
    load_model_folder,
    read_card,
    read_history,
)

__all__ = [
    "list_pretrained",
    "load_pretrained",
    "pretrained_card",
    "pretrained_folder",
    "pretrained_history",
]

PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """The names of the shipped models, sorted."""
    return sorted(path.name for path in PRETRAINED_DIR.iterdir() if is_model_folder(path))


def pretrained_folder(name: str) -> Path:
    """The folder of shipped model `name`; ValueError listing the known names otherwise."""
    known = list_pretrained()
    if name not in known:
        listed = ", ".join(known) if known else "none are installed"
        raise ValueError(f"no shipped model called {name!r}; the shipped models are: {listed} "
                         "(python -m hourglass_edu models lists them with their figures)")
    return PRETRAINED_DIR / name


def pretrained_card(name: str) -> dict[str, Any]:
    """The figures of model `name`'s card (corpus, steps, validation bits per character, ...)."""
    return read_card(pretrained_folder(name))


def load_pretrained(name: str, device: str | torch.device = "cpu"):
    """`(model, tokenizer)` of shipped model `name`, weights checked against their sha256."""
    return load_model_folder(pretrained_folder(name), device=device)


def pretrained_history(name: str) -> dict[str, Any]:
    """The training history of model `name` (a dict: `History.from_dict` turns it into one)."""
    history = read_history(pretrained_folder(name))
    if history is None:
        raise ValueError(f"the shipped model {name!r} has no history.json")
    return history
