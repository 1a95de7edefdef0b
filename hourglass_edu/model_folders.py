"""Model folders: a trained model saved the way model hubs share them, and loaded back safely.

The layout follows a Hugging Face model repository:

    config.json          the model class and its config (JSON)
    tokenizer.json       the character vocabulary (`CharTokenizer.to_dict`)
    model.safetensors    the weights: safetensors holds raw tensors only, so loading runs no code
    README.md            the model card: a front matter of `key: value` lines (JSON values, so
                         it is also valid YAML) with the figures and the weights' sha256, then text
    history.json         (optional) the training history: what the run measured as it went

`export_model_folder` writes one (every file atomically); `load_model_folder` checks the weights'
sha256 against the card, the config, the tokenizer against the embedding and every tensor's shape
before it builds the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from hourglass_edu.data import CharTokenizer
from hourglass_edu.files import atomic_write
from hourglass_edu.lm import LanguageModel, build_model_from_config, check_weights

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "export_model_folder",
    "is_model_folder",
    "load_model_folder",
    "read_card",
    "read_history",
    "sha256_of",
]

CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
WEIGHTS_NAME, CARD_NAME, HISTORY_NAME = "model.safetensors", "README.md", "history.json"
FOLDER_FORMAT = "hourglass_edu.model"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_NAME).exists()


def card_text(fields: dict[str, Any], body: str) -> str:
    """A model card: `---`, one `key: json-value` line per field, `---`, then the text."""
    lines = [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    return "---\n" + "\n".join(lines) + "\n---\n\n" + body.strip() + "\n"


def read_history(folder: str | os.PathLike) -> dict[str, Any] | None:
    """FOLDER/history.json as a dict (`History.from_dict` reads it), or None when absent."""
    path = Path(folder) / HISTORY_NAME
    return _read_json(path) if path.is_file() else None


def read_card(folder: str | os.PathLike) -> dict[str, Any]:
    """The front-matter fields of FOLDER/README.md ({} when there is no card)."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in lines[1:]:
        return {}
    fields = {}
    for line in lines[1:lines.index("---", 1)]:
        key, _, value = line.partition(":")
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: cannot read the card line {line!r}") from None
    return fields


def export_model_folder(model: LanguageModel, tokenizer: CharTokenizer,
                        folder: str | os.PathLike, *, dtype: str = "float32",
                        card: dict[str, Any] | None = None, card_body: str = "",
                        history: dict[str, Any] | None = None) -> Path:
    """Write `model` and `tokenizer` to `folder` (created if needed); returns the folder.

    dtype: "float32" (exact), "float16" or "bfloat16" (half the size). The card's front matter
    gets `weights_sha256` and `dtype` added to `card`; `card_body` is its text. `history` (a
    `History.to_dict()`) is saved as history.json.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} vocabulary rows but the "
                         f"tokenizer {tokenizer.vocab_size} entries: they do not belong together")
    folder = Path(folder)
    weights = {name: value.detach().to("cpu", DTYPES[dtype]).contiguous().clone()
               for name, value in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, safetensors_bytes(weights, metadata={"format": "pt"}))
    config = {"format": FOLDER_FORMAT, "model_class": type(model).__name__,
              **model.config.to_dict()}
    atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=1) + "\n")
    atomic_write(folder / TOKENIZER_NAME, json.dumps(tokenizer.to_dict(), indent=1) + "\n")
    if history is not None:
        atomic_write(folder / HISTORY_NAME, json.dumps(history) + "\n")
    fields = {**(card or {}), "dtype": dtype, "weights_sha256": sha256_of(folder / WEIGHTS_NAME)}
    atomic_write(folder / CARD_NAME, card_text(fields, card_body or f"# {folder.name}"))
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model folder holds {CONFIG_NAME}, "
                                f"{TOKENIZER_NAME} and {WEIGHTS_NAME} (export_model_folder "
                                "writes all three)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return value


def load_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """`(model, tokenizer)` from a model folder, in eval mode, weights in float32.

    Raises FileNotFoundError for a missing file and ValueError when the weights' sha256 differs
    from the card's (tampered or damaged), or anything disagrees with the config.
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG_NAME)
    tokenizer_dict = _read_json(folder / TOKENIZER_NAME)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing: the model folder has no weights")
    expected = read_card(folder).get("weights_sha256")
    if expected is not None and sha256_of(weights_path) != expected:
        raise ValueError(f"{weights_path} does not match the sha256 in its model card: the "
                         "file was changed or damaged; download or export it again")
    class_name = config.pop("model_class", None)
    if config.pop("format", None) != FOLDER_FORMAT or not isinstance(class_name, str):
        raise ValueError(f"{folder / CONFIG_NAME} is not an hourglass_edu model config")
    try:
        model = build_model_from_config(class_name, config)
        tokenizer = CharTokenizer.from_dict(tokenizer_dict)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{folder}: {type(error).__name__}: {error}") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {tokenizer.vocab_size} entries but the "
                         f"model {model.config.vocab_size} vocabulary rows")
    model.load_state_dict(_read_weights(weights_path, model))
    return model.to(device).eval(), tokenizer


def _read_weights(path: Path, model: LanguageModel) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked name by name and shape by shape."""
    try:
        with safe_open(path, framework="pt") as handle:
            weights = {name: handle.get_tensor(name).float() for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors' own header / size errors
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    check_weights(model, weights, str(path))
    return weights
