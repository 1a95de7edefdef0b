"""The list of model classes: every class a checkpoint, a model folder or the comparison may name.

This module sits above the models: it imports each model class and lists it in `MODEL_CLASSES`,
in the order the comparison shows them. A new design is its module plus one line here. The
loaders (`model_class`, `build_model_from_config`, `model_shapes`), the comparison
(related/compare.py) and the tests read this list.
"""

from __future__ import annotations

from typing import Any

import torch

from hourglass_edu.files import quoted
from hourglass_edu.hourglass import HourglassLM
from hourglass_edu.lm import LanguageModel
from hourglass_edu.loading import check_buildable, check_config_fields
from hourglass_edu.related.h_transformer import HTransformerLM
from hourglass_edu.related.long_short import LongShortLM
from hourglass_edu.related.simple_hierarchical import SimpleHierarchicalLM

__all__ = ["MODEL_CLASSES", "build_model_from_config", "model_class", "model_shapes"]

MODEL_CLASSES: list[type[LanguageModel]] = [
    HourglassLM,
    LongShortLM,
    HTransformerLM,
    SimpleHierarchicalLM,
]


def model_classes() -> dict[str, type[LanguageModel]]:
    """Every model class by name, in the order of `MODEL_CLASSES`."""
    return {cls.__name__: cls for cls in MODEL_CLASSES}


def model_class(name: str) -> type[LanguageModel]:
    """The model class called `name`."""
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


def model_shapes(class_name: str, config: dict[str, Any], where: str) -> LanguageModel:
    """The model a saved config describes, built on the `meta` device after the loading
    boundary's checks (loading.py: `check_config_fields`, then `check_buildable`).

    Raises ValueError (naming `where`) for a config that cannot be built or would be absurdly
    large; nothing is allocated.
    """
    check_config_fields(config, where)
    try:
        cls = model_class(class_name)
        model_config = cls.config_class.from_dict(config)
    except (ValueError, TypeError, KeyError) as error:
        detail = quoted(error, 300)  # the file's own values, quoted: cut to one short line
        if not isinstance(error, ValueError):
            detail = f"{type(error).__name__}: {detail}"
        raise ValueError(f"{where}: {detail}") from None
    return check_buildable(cls, model_config, where)
