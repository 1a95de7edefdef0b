"""Model folders: a trained model saved the way model hubs share them, and loaded back safely.

The layout follows a Hugging Face model repository:

    config.json          the model class and its config (JSON)
    tokenizer.json       the character vocabulary (`CharTokenizer.to_dict`)
    model.safetensors    the weights: safetensors holds raw tensors only, so loading runs no code
    README.md            the model card: a front matter of `key: value` lines (JSON values, so
                         it is also valid YAML) with the figures and the weights' sha256, then text
    history.json         (optional) the training history: what the run measured as it went

`export_model_folder` writes one (beside an earlier one, then swapped in whole); `load_model_folder`
checks the config (sized on the meta device, `loading.py`), the tokenizer against the embedding,
every tensor's shape in the weights file's header (which also fixes the file's size), then the
weights' sha256 against the card, before it builds the model. Its JSON files are read strictly
(`json_files.read_json`): bounded in size, no key twice, every number short enough to read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from hourglass_edu.data import CharTokenizer
from hourglass_edu.files import atomic_write, describe_contents, stale_temporaries
from hourglass_edu.json_files import MAX_JSON_BYTES, parse_json, read_json
from hourglass_edu.lm import LanguageModel, build_model_from_config, check_weights
from hourglass_edu.loading import model_shapes, resolve_device, safetensors_shapes

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "check_export_folder",
    "export_model_folder",
    "is_model_folder",
    "is_own_model_folder",
    "load_model_folder",
    "read_card",
    "read_history",
    "sha256_of",
]

CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
WEIGHTS_NAME, CARD_NAME, HISTORY_NAME = "model.safetensors", "README.md", "history.json"
FOLDER_FORMAT = "hourglass_edu.model"
FOLDER_FILES = (CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, CARD_NAME, HISTORY_NAME)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_UMASK = os.umask(0)  # a new folder gets the usual permissions (mkdtemp makes it owner-only)
os.umask(_UMASK)


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
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes, beyond the "
                         f"{MAX_JSON_BYTES >> 20} MiB a model card may have; the file is damaged: "
                         "export or download the model again")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: a model card is UTF-8 text (front matter, "
                         "then prose); export the model again") from None
    if not lines or lines[0].strip() != "---" or "---" not in lines[1:]:
        return {}
    fields = {}
    for line in lines[1:lines.index("---", 1)]:
        key, _, value = line.partition(":")
        try:
            fields[key.strip()] = parse_json(value, f"field {key.strip()[:40]!r}")
        except ValueError as error:
            raise ValueError(f"{path}: cannot read the card line {line[:60]!r} "
                             f"({error})") from None
    return fields


def export_model_folder(model: LanguageModel, tokenizer: CharTokenizer,
                        folder: str | os.PathLike, *, dtype: str = "float32",
                        card: dict[str, Any] | None = None, card_body: str = "",
                        history: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write `model` and `tokenizer` to `folder`; returns the folder.

    dtype: "float32" (exact), "float16" or "bfloat16" (half the size). The card's front matter
    gets `weights_sha256` and `dtype` added to `card`; `card_body` is its text. `history` (a
    `History.to_dict()`) is saved as history.json.

    `folder` must be missing, empty or a model folder of this library, which is replaced whole
    (the new folder is written beside it, then swapped in: no file of the old model stays, and a
    failure leaves the old folder as it was). Anything else is refused with a ValueError unless
    `force`: then the model's files are written into it, replacing those of the same names (and
    a history.json the new model does not have), and every other file is left alone.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} vocabulary rows but the "
                         f"tokenizer {tokenizer.vocab_size} entries: they do not belong together")
    if not os.fspath(folder).strip():  # Path("") would be the current folder
        raise ValueError("the model folder's path is empty: name the folder to write")
    folder = Path(folder)
    replace_whole = check_export_folder(folder, force=force)
    files = _folder_files(model, tokenizer, dtype, card, card_body or f"# {folder.name}",
                          history)
    if not replace_whole:
        if history is None:
            (folder / HISTORY_NAME).unlink(missing_ok=True)
        _write_files(folder, files)
        return folder
    _make_parent(folder)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_UMASK)
        _write_files(staging, files)
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_export_folder(folder: str | os.PathLike, *, force: bool = False) -> bool:
    """Whether `folder` can take a new model folder whole (missing, empty, or one of ours);
    False when `force` lets the files be written into a folder that holds other things; a
    ValueError naming the folder and what it holds otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: choose another --out")
    if not folder.exists() or not any(folder.iterdir()) or is_own_model_folder(folder):
        return True
    if force:
        return False
    what = describe_contents(folder)
    kind = ("a training run" if (folder / "checkpoint.pt").exists()
            else "files that are not a model folder of hourglass_edu")
    raise ValueError(f"{folder} holds {kind} ({what}); export writes only into an empty folder "
                     "or over one of its own model folders: choose another --out, or pass "
                     "--force to write the model's files into it (files of the same names are "
                     "replaced, the others left alone)")


def is_own_model_folder(folder: str | os.PathLike) -> bool:
    """True when `folder` holds a model folder of this library and nothing else (so replacing
    it whole loses nothing but the old model)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        names = {path.name for path in folder.iterdir()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    stale = {path.name for path in stale_temporaries(folder)}
    return (isinstance(config, dict) and config.get("format") == FOLDER_FORMAT
            and names - stale <= set(FOLDER_FILES))


def _folder_files(model, tokenizer, dtype, card, card_body, history) -> dict[str, bytes | str]:
    """The files of a model folder, name -> content."""
    weights = {name: value.detach().to("cpu", DTYPES[dtype]).contiguous().clone()
               for name, value in model.state_dict().items()}
    weight_bytes = safetensors_bytes(weights, metadata={"format": "pt"})
    config = {"format": FOLDER_FORMAT, "model_class": type(model).__name__,
              **model.config.to_dict()}
    fields = {**(card or {}), "dtype": dtype,
              "weights_sha256": hashlib.sha256(weight_bytes).hexdigest()}
    files = {WEIGHTS_NAME: weight_bytes, CONFIG_NAME: json.dumps(config, indent=1) + "\n",
             TOKENIZER_NAME: json.dumps(tokenizer.to_dict(), indent=1) + "\n",
             CARD_NAME: card_text(fields, card_body)}
    if history is not None:
        files[HISTORY_NAME] = json.dumps(history) + "\n"
    return files


def _write_files(folder: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        atomic_write(folder / name, content)


def _make_parent(folder: Path) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot create {folder}: a part of its path is a file, not a "
                         "folder; choose another --out") from None


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the complete `staging` folder at `folder`: the old folder moves aside first and is
    deleted only once the new one is in place (two renames: POSIX has no atomic swap of
    folders, so a crash between them leaves the old model beside, in a hidden folder)."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    os.replace(folder, aside / "old")
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(aside / "old", folder)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model folder holds {CONFIG_NAME}, "
                                f"{TOKENIZER_NAME} and {WEIGHTS_NAME} (export_model_folder "
                                "writes all three)")
    return read_json(path)


def load_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """`(model, tokenizer)` from a model folder, in eval mode, weights in float32.

    Raises FileNotFoundError for a missing file and ValueError when anything disagrees with the
    config, or the weights' sha256 differs from the card's (tampered or damaged): the config is
    sized and every tensor's shape checked against the file's header (`loading.py`) before any
    weight is read or hashed. A card without a sha256 is said with a warning (nothing to check
    against).
    """
    folder = Path(folder)
    device = resolve_device(device)
    config = _read_json(folder / CONFIG_NAME)
    tokenizer_dict = _read_json(folder / TOKENIZER_NAME)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing: the model folder has no weights")
    class_name = config.pop("model_class", None)
    if config.pop("format", None) != FOLDER_FORMAT or not isinstance(class_name, str):
        raise ValueError(f"{folder / CONFIG_NAME} is not an hourglass_edu model config")
    shapes = model_shapes(class_name, config, str(folder))
    try:
        tokenizer = CharTokenizer.from_dict(tokenizer_dict)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{folder / TOKENIZER_NAME}: {error}") from None
    if tokenizer.vocab_size != shapes.config.vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {tokenizer.vocab_size} entries but the "
                         f"model {shapes.config.vocab_size} vocabulary rows")
    check_weights(shapes, safetensors_shapes(weights_path), str(weights_path))
    # Hashed only now: the header, checked against the config, bounds the file's size (a
    # crafted multi-gigabyte file is refused from its first bytes, not read through).
    _check_sha256(folder, weights_path)
    weights = _read_weights(weights_path)
    model = build_model_from_config(class_name, config)
    model.load_state_dict(weights)
    return model.to(device).eval(), tokenizer


def _check_sha256(folder: Path, weights_path: Path) -> None:
    expected = read_card(folder).get("weights_sha256")
    if expected is None:
        warnings.warn(f"{folder} has no weights_sha256 in its model card ({CARD_NAME}), so "
                      "its weights were loaded without checking that they are the ones "
                      "exported; export the model again to get a card", stacklevel=3)
    elif sha256_of(weights_path) != expected:
        raise ValueError(f"{weights_path} does not match the sha256 in its model card: the "
                         "file was changed or damaged; download or export it again")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (its header already checked), as float32."""
    try:
        with safe_open(path, framework="pt") as handle:
            return {name: handle.get_tensor(name).float() for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors' own header / size errors
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
