"""The loading boundary: every check that stands between a file on disk and a model in memory.

A checkpoint or model folder may be damaged, or crafted to harm whoever opens it. Model code
checks only what a learner can get wrong when typing a config; everything that defends against a
file lives here, and every loader (checkpoints, model folders, shipped models) goes through it:

1. `check_config_fields`: the config dict as read from the file, before any class sees it:
   every whole number within `SIZE_LIMITS` (the default limit for fields not named there), strings
   and lists short, so nothing downstream parses a million-digit number or loops a billion times.
2. `model_shapes`: the config, then `check_buildable`: the model built on the `meta` device
   (shapes, no memory), its parameter count and the activation size of one window of
   `max_length` tokens (padding included) checked against `MAX_PARAMETERS` and
   `MAX_ACTIVATION_BYTES` (no model of this course comes near). `check_buildable` is also the
   one size bound of every model built by any path: `LanguageModel.__init__` runs it before
   its first weight exists, and `ModelConfig` checks each size field (`check_size_field`).
3. `check_weights` (lm.py) against the meta model: every tensor's name and shape, read from the
   file's header (safetensors) or its tensors (checkpoints), before anything is materialized.

`resolve_device` is the one device check of every way of loading or training a model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from hourglass_edu.data.tokenizer import MAX_VOCABULARY
from hourglass_edu.lm import LanguageModel, model_class

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "MAX_PARAMETERS",
    "SIZE_LIMITS",
    "activation_bytes",
    "activation_bytes_per_token",
    "check_buildable",
    "check_config_fields",
    "check_model_size",
    "check_size_field",
    "describe_number",
    "model_shapes",
    "resolve_device",
    "safetensors_shapes",
]

# Bounds that no model of this course comes near (its largest preset has about 20M parameters).
SIZE_LIMITS = {"vocab_size": MAX_VOCABULARY, "d_model": 1 << 14, "n_heads": 1 << 8, "d_ff": 1 << 16,
               "max_length": 1 << 20, "n_layers": 1 << 10}
DEFAULT_LIMIT = 1 << 20  # any other whole number in a config (windows, ranks, factors, ...)
MAX_TEXT, MAX_ITEMS = 256, 64  # characters of a config string, items of a config list
MAX_PARAMETERS = 1 << 30  # 4 GiB of float32 weights
MAX_ACTIVATION_BYTES = 16 << 30  # one window of max_length tokens, every linear layer's output


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the CUDA GPU when torch sees one, else the CPU; any other name is checked.

    Every device type torch knows is accepted (cpu, cuda, mps, a registered backend such as the
    test suite's simulated accelerator); one whose backend reports itself unavailable, or an index
    past the devices there are, is refused with a ValueError in one line.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists every device type
        raise ValueError(f"unknown device {device!r}: torch knows no such device here; use "
                         "auto, cpu, cuda or cuda:N (or a type a backend has registered)") from None
    if device.type in ("cpu", "meta"):
        return device
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and not available():
        raise ValueError(f"device {str(device)!r} was asked for but torch sees no "
                         f"{device.type} device here; use cpu (or auto)")
    count = getattr(backend, "device_count", None)
    if device.index is not None and callable(count) and device.index >= count():
        raise ValueError(f"device {str(device)!r} was asked for but torch sees {count()} "
                         f"{device.type} device(s), numbered from 0")
    return device


def check_config_fields(config: Any, where: str) -> None:
    """Raise ValueError unless every value of a saved config dict is small enough to build."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the model config should be a dict, got "
                         f"{type(config).__name__}; the file is damaged")
    for name, value in config.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            _check_value(name, item, where)
        if isinstance(value, (list, tuple)) and len(value) > MAX_ITEMS:
            raise ValueError(f"{where}: config field {name!r} has {len(value)} items, beyond "
                             f"this library's limit {MAX_ITEMS}; is the file damaged?")


def describe_number(value: int) -> str:
    """A whole number fit for a message: its digits, or how many there are when they are too
    many to print (Python refuses to write an int of more than 4,300 digits)."""
    if value.bit_length() <= 64:
        return f"{value:,}"
    digits = value.bit_length() * 0.30103  # log10(2)
    return f"a {'negative ' if value < 0 else ''}number of about {digits:,.0f} digits"


def check_size_field(name: str, value: Any) -> None:
    """Raise ValueError unless the size field `name` is a positive whole number within its
    limit (`SIZE_LIMITS`, else `DEFAULT_LIMIT`): before anything loops over it or sizes a
    tensor by it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        whole = isinstance(value, int) and not isinstance(value, bool)
        shown = describe_number(value) if whole else repr(value)
        raise ValueError(f"{name} must be a positive integer, got {shown}")
    limit = SIZE_LIMITS.get(name, DEFAULT_LIMIT)
    if value > limit:
        raise ValueError(f"{name}={describe_number(value)} is beyond this library's limit "
                         f"{limit:,}: lower it (a config file with it is damaged)")


def _check_value(name: str, value: Any, where: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        limit = SIZE_LIMITS.get(name, DEFAULT_LIMIT)
        if abs(value) > limit:
            raise ValueError(f"{where}: {name}={describe_number(value)} is beyond this "
                             f"library's limit {limit:,}: lower it (a config file holding it "
                             "is damaged)")
    elif isinstance(value, str) and len(value) > MAX_TEXT:
        raise ValueError(f"{where}: config field {name!r} is a string of {len(value):,} "
                         f"characters, beyond this library's limit {MAX_TEXT}; is the file "
                         "damaged?")
    elif isinstance(value, (list, tuple, dict)):
        raise ValueError(f"{where}: config field {name!r} nests containers; a model config "
                         "holds numbers, strings and flat lists only")


def _layer_count(config) -> int:
    """Blocks the config asks for: `n_layers`, or an hourglass structure's layers in all."""
    if hasattr(config, "n_layers"):
        return config.n_layers
    levels = getattr(config, "levels", [])
    return sum(level.pre_layers + level.post_layers for level in levels)


def model_shapes(class_name: str, config: dict[str, Any], where: str) -> LanguageModel:
    """The model a saved config describes, built on the `meta` device after every check above.

    Raises ValueError (naming `where`) for a config that cannot be built or would be absurdly
    large; nothing is allocated.
    """
    check_config_fields(config, where)
    try:
        cls = model_class(class_name)
        model_config = cls.config_class.from_dict(config)
    except (ValueError, TypeError, KeyError) as error:
        detail = error if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"{where}: {detail}") from None
    return check_buildable(cls, model_config, where)


def check_buildable(cls: type[LanguageModel], model_config, where: str) -> LanguageModel:
    """The model of class `cls` that `model_config` describes, built on the `meta` device once
    its size is known to be within bounds; ValueError naming `where` otherwise. Nothing is
    allocated. Every model is built through it (`LanguageModel.__init__` calls it)."""
    layers = _layer_count(model_config)
    if layers > SIZE_LIMITS["n_layers"]:
        structure = getattr(model_config, "structure", None)
        asked = f"structure {structure!r}" if structure else "the config"
        raise ValueError(f"{where}: {asked} asks for {layers} layers in all, beyond this "
                         f"library's limit {SIZE_LIMITS['n_layers']}; is the config damaged?")
    # Every block holds at least one d_model x d_model matrix: a lower bound of the parameter
    # count that refuses a giant at once, before even the meta build (seconds for 1000 layers).
    at_least = layers * model_config.d_model**2
    if at_least > MAX_PARAMETERS:
        raise ValueError(_too_many_parameters(where, at_least, "at least "))
    with torch.device("meta"):
        model = cls(model_config)
    check_model_size(model, where)
    return model


def _too_many_parameters(where: str, count: int, qualifier: str = "") -> str:
    return (f"{where}: the config asks for {qualifier}{count:,} parameters, beyond this "
            f"library's limit {MAX_PARAMETERS:,}: lower d_model, d_ff, vocab_size or the number "
            "of layers (a config file asking for it is damaged)")


def activation_bytes(model: nn.Module) -> int:
    """An upper bound of the float32 activations of one window of `max_length` tokens: every
    linear layer's output at the longest length a layer runs on (`longest_sequence`: the
    window, padded where the design pads it; shortened levels run on fewer positions)."""
    outputs = sum(module.out_features for module in model.modules()
                  if isinstance(module, nn.Linear))
    max_length = model.config.max_length
    longest = getattr(model, "longest_sequence", lambda length: length)(max_length)
    return 4 * outputs * longest


def activation_bytes_per_token(model: nn.Module) -> int:
    """`activation_bytes` of one token (a batch of B windows of L tokens needs B * L times it)."""
    return activation_bytes(model) // model.config.max_length


def check_model_size(model: LanguageModel, where: str) -> None:
    """Raise ValueError when a model (best built on `meta`) is too large to build or run."""
    parameters = model.num_parameters()
    if parameters > MAX_PARAMETERS:
        raise ValueError(_too_many_parameters(where, parameters))
    activations = activation_bytes(model)
    if activations > MAX_ACTIVATION_BYTES:
        raise ValueError(f"{where}: one window of max_length={model.config.max_length} tokens "
                         f"would need about {activations / 2**30:,.0f} GiB of activations, beyond "
                         f"this library's limit {MAX_ACTIVATION_BYTES >> 30} GiB; lower "
                         "max_length, the model's width or its shortening factors")


def safetensors_shapes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors (name, shape and dtype from its header;
    no data read), for `check_weights`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            shapes = {name: handle.get_slice(name).get_shape()
                      for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors' own header errors
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
