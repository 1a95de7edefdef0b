"""The loading boundary: every check that stands between a file on disk and a model in memory.

A checkpoint or model folder may be damaged, or crafted to harm whoever opens it. Model code
checks only what a learner can get wrong when typing a config; everything that defends against a
file lives here, and every loader (checkpoints, model folders, shipped models) goes through it:

1. `check_config_fields`: the config dict as read from the file, before any class sees it:
   every whole number within `SIZE_LIMITS` (the default limit for fields not named there), strings
   and lists short, so nothing downstream parses a million-digit number or loops a billion times.
2. `model_shapes` (registry.py, above the models): the config, then `check_buildable`: the
   model built on the `meta` device (shapes, no memory), its parameter count and the activation
   size of one window of `max_length` tokens (padding included) checked against `MAX_PARAMETERS`
   and `MAX_ACTIVATION_BYTES` (no model of this course comes near). `check_buildable` is also the
   one size bound of every model built by any path: `LanguageModel.__init__` runs it before
   its first weight exists, and `ModelConfig` checks each size field (`check_size_field`).
3. `check_weights` (lm.py) against the meta model: every tensor's name, shape and dtype, read
   from the file's header (safetensors) or its tensors (checkpoints), before anything is
   materialized; then `check_finite_weights` on the values read (a NaN weight makes a model
   that writes one token forever).

Before that, `check_archive_sizes` reads a checkpoint's zip directory (what torch.save writes):
what `torch.load` would inflate is bounded by the file's own size and `MAX_ARCHIVE_BYTES`.

`resolve_device` (devices.py) is the one device check of every way of loading or training a
model; every loader imports it from there.

A model and its tokenizer belong together: the ids mean the characters of one vocabulary. Every
loader (and the trainer) records the tokenizer's `vocabulary_sha256` on the model it returns
(`record_tokenizer`); `check_tokenizer_matches` refuses another tokenizer (a different size, or
the same size with ids that mean other characters) wherever both meet again: generation, widgets.
A model never loaded nor trained here carries no record, and only the sizes are compared.
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import nn

from hourglass_edu.data.tokenizer import MAX_VOCABULARY
from hourglass_edu.files import quoted

if TYPE_CHECKING:  # annotations only: lm.py imports this module
    from hourglass_edu.lm import LanguageModel

__all__ = ["MAX_ARCHIVE_BYTES", "SIZE_LIMITS", "activation_bytes"]

# Bounds that no model of this course comes near (its largest preset has about 20M parameters).
SIZE_LIMITS = {"vocab_size": MAX_VOCABULARY, "d_model": 1 << 14, "n_heads": 1 << 8, "d_ff": 1 << 16,
               "max_length": 1 << 20, "n_layers": 1 << 10}
DEFAULT_LIMIT = 1 << 20  # any other whole number in a config (windows, ranks, factors, ...)
MAX_TEXT, MAX_ITEMS = 256, 64  # characters of a config string, items of a config list
MAX_PARAMETERS = 1 << 30  # 4 GiB of float32 weights
MAX_ACTIVATION_BYTES = 16 << 30  # one window of max_length tokens, every linear layer's output
# A checkpoint's contents once read: the weights and AdamW's two moments of the largest model
# allowed, in float32, and a GiB for the rest (history, random states).
MAX_ARCHIVE_BYTES = 3 * 4 * MAX_PARAMETERS + (1 << 30)


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


# safetensors' names of the dtypes a weight may have (`lm.WEIGHT_DTYPES`).
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F64": torch.float64}


def safetensors_shapes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors (name, shape and dtype from its header;
    no data read), for `check_weights`. A dtype no weight has (integers, bool) is refused here,
    by name, before any value is read and cast."""
    try:
        with safe_open(path, framework="pt") as handle:
            header = {name: (handle.get_slice(name).get_shape(),
                             handle.get_slice(name).get_dtype())
                      for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors' own header errors
        raise ValueError(f"{path} is not a readable safetensors file "
                         f"({quoted(error)})") from None
    for name, (_, dtype) in header.items():
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: weight {name} is {dtype}, not a float16, bfloat16, "
                             "float32 or float64 tensor (it would be cast silently); the file "
                             "is damaged or not of this library")
    return {name: torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype], device="meta")
            for name, (shape, dtype) in header.items()}


def check_finite_weights(weights: dict[str, torch.Tensor], where: str) -> None:
    """Raise ValueError, naming the first tensor, when a weight holds NaN or an infinity: such a
    model loads and runs, and writes nothing but one token (or scores "nan bits")."""
    for name, tensor in weights.items():
        if tensor.is_meta:  # torch.save keeps a meta tensor's shape and no values
            raise ValueError(f"{where}: weight {name} holds no values (a tensor of the meta "
                             "device was saved); the file is damaged: use another copy")
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            count = tensor.numel() - int(finite.sum())
            raise ValueError(f"{where}: weight {name} holds {count:,} NaN or infinite values "
                             f"(of {tensor.numel():,}), and a model with them writes nothing "
                             "useful; the file is damaged: use another copy (a run's other "
                             "checkpoint, or the model exported or downloaded again)")


def check_archive_sizes(path: str | os.PathLike) -> None:
    """Raise ValueError unless `path` is a zip archive (what torch.save writes) whose contents,
    once read, fit in the file itself and in `MAX_ARCHIVE_BYTES`. torch.save stores every entry
    uncompressed, so contents larger than the file are a compressed entry that `torch.load`
    would inflate first: a 3.6 MB file can unfold into gigabytes before any check."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise ValueError(f"{path} is not a checkpoint (truncated, damaged, not a PyTorch file, "
                         "or one in the format before PyTorch 1.6)") from None
    size = os.path.getsize(path)
    if declared > size:
        raise ValueError(f"{path} declares {declared:,} bytes of contents in a {size:,}-byte "
                         "file: torch.save stores tensors uncompressed, so this archive was "
                         "packed to inflate when loaded (or is damaged); it was not read")
    if declared > MAX_ARCHIVE_BYTES:
        raise ValueError(f"{path} holds {declared:,} bytes, beyond this library's limit "
                         f"{MAX_ARCHIVE_BYTES:,} (the weights and optimizer state of the "
                         "largest model it builds); is the file damaged?")


def record_tokenizer(model: nn.Module, tokenizer) -> None:
    """Note on `model` the vocabulary of the tokenizer it was loaded or trained with (its
    `vocabulary_sha256`), for `check_tokenizer_matches`."""
    fingerprint = getattr(tokenizer, "vocabulary_sha256", None)
    if isinstance(model, nn.Module) and isinstance(fingerprint, str):
        model.vocabulary_sha256 = fingerprint


def check_tokenizer_matches(model, tokenizer, where: str) -> None:
    """Raise ValueError, naming `where`, when `tokenizer` is not the model's: another vocabulary
    size than the model's rows, or another vocabulary than the one recorded on the model."""
    rows = getattr(getattr(model, "config", None), "vocab_size", None)
    entries = getattr(tokenizer, "vocab_size", None)
    if isinstance(rows, int) and isinstance(entries, int) and rows != entries:
        raise ValueError(f"{where}: the tokenizer has {entries} entries but the model "
                         f"{rows} vocabulary rows, so they do not belong together; pass the "
                         "tokenizer that was loaded or trained with this model")
    recorded = getattr(model, "vocabulary_sha256", None)
    given = getattr(tokenizer, "vocabulary_sha256", None)
    if isinstance(recorded, str) and isinstance(given, str) and recorded != given:
        raise ValueError(f"{where}: the tokenizer is not the one this model was loaded or "
                         f"trained with (both have {entries} entries, but the ids mean other "
                         f"characters: vocabulary sha256 {given[:12]}... against the model's "
                         f"{recorded[:12]}...); pass the tokenizer that load_pretrained / "
                         "load_model / load_model_folder returned with the model")
