"""hourglass_edu: a small, tested library for building a character-level Hourglass transformer.

The course notebooks build each piece by hand and then import it from here. See ARCHITECTURE.md
for which module holds which concept and which notebook teaches it.

The names below are imported on first use (PEP 562), not with the package: `python -m
hourglass_edu` imports this package before its command line starts, and torch takes a second or
two to import, so an eager import here would put that second before the command line could
answer `--help` or take a Ctrl-C without a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.4.0"

# Each public name and the module it lives in.
_EXPORTS = {
    "CharTokenizer": "hourglass_edu.data",
    "load_corpus": "hourglass_edu.data",
    "prepare_data": "hourglass_edu.data",
    "GenerationSettings": "hourglass_edu.generation",
    "generate": "hourglass_edu.generation",
    "stream": "hourglass_edu.generation",
    "HourglassConfig": "hourglass_edu.hourglass",
    "HourglassLM": "hourglass_edu.hourglass",
    "export_model_folder": "hourglass_edu.model_folders",
    "load_model_folder": "hourglass_edu.model_folders",
    "list_pretrained": "hourglass_edu.pretrained",
    "load_pretrained": "hourglass_edu.pretrained",
    "TrainConfig": "hourglass_edu.training",
    "load_model": "hourglass_edu.training",
    "train": "hourglass_edu.training",
}

__all__ = [  # the keys of _EXPORTS, spelled out for tools that read the list without running it
    "CharTokenizer",
    "GenerationSettings",
    "HourglassConfig",
    "HourglassLM",
    "TrainConfig",
    "export_model_folder",
    "generate",
    "list_pretrained",
    "load_corpus",
    "load_model",
    "load_model_folder",
    "load_pretrained",
    "prepare_data",
    "stream",
    "train",
]

if TYPE_CHECKING:  # what editors and type checkers see
    from hourglass_edu.data import CharTokenizer, load_corpus, prepare_data
    from hourglass_edu.generation import GenerationSettings, generate, stream
    from hourglass_edu.hourglass import HourglassConfig, HourglassLM
    from hourglass_edu.model_folders import export_model_folder, load_model_folder
    from hourglass_edu.pretrained import list_pretrained, load_pretrained
    from hourglass_edu.training import TrainConfig, load_model, train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hourglass_edu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
