"""The registry of model classes: every class a checkpoint, a model folder or the comparison may
name, filled by the model modules themselves.

A model module decorates its class with `register_model`; `MODEL_MODULES` lists the modules, so
that `model_classes()` can import them all before answering. A new design is its module plus
one line here. The loader (`model_class`, `build_model_from_config`), the decoders, the
comparison (related/compare.py) and the tests read `model_classes()`; lm.py re-exports these
names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hourglass_edu.lm import LanguageModel

__all__ = [
    "MODEL_MODULES",
    "build_model_from_config",
    "model_class",
    "model_classes",
    "register_model",
]


# The modules that define model classes, in the order the comparison lists them; each
# registers its classes on import (`register_model`). A new design is its module plus one line.
MODEL_MODULES = (
    "hourglass_edu.hourglass",
    "hourglass_edu.related.long_short",
    "hourglass_edu.related.h_transformer",
    "hourglass_edu.related.simple_hierarchical",
)
_REGISTERED: dict[str, type[LanguageModel]] = {}


def register_model(cls: type[LanguageModel]) -> type[LanguageModel]:
    """Class decorator: `cls` may be named by checkpoints, model folders and the comparison."""
    _REGISTERED[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, type[LanguageModel]]:
    """Every registered model class by name, in the order of `MODEL_MODULES`."""
    for module in MODEL_MODULES:
        importlib.import_module(module)
    order = {module: index for index, module in enumerate(MODEL_MODULES)}
    ranked = sorted(_REGISTERED.values(), key=lambda cls: order.get(cls.__module__, len(order)))
    return {cls.__name__: cls for cls in ranked}


def model_class(name: str) -> type[LanguageModel]:
    """The registered model class called `name`."""
    classes = model_classes()
    if name not in classes:
        raise ValueError(f"unknown model class {name!r}; this library has {sorted(classes)}")
    return classes[name]


def build_model_from_config(class_name: str, config: dict[str, Any],
                            device: str | torch.device | None = None) -> LanguageModel:
    """An untrained model of class `class_name` from a saved config dict (validated first).

    ``device="meta"`` builds the shapes without allocating any memory (used to check a file's
    tensors before loading them).
    """
    cls = model_class(class_name)
    model_config = cls.config_class.from_dict(config)
    if device is None:
        return cls(model_config)
    with torch.device(device):
        return cls(model_config)
