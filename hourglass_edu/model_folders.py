"""Model folders: a trained model saved the way model hubs share them, and loaded back safely.

The layout follows a Hugging Face model repository:

    config.json          the model class and its config (JSON)
    tokenizer.json       the character vocabulary (`CharTokenizer.to_dict`)
    model.safetensors    the weights: safetensors holds raw tensors only, so loading runs no code
    README.md            the model card: a front matter of `key: value` lines (JSON values, so
                         it is also valid YAML) with the figures, the weights' sha256 and the
                         vocabulary's (`CharTokenizer.vocabulary_sha256`), then text
    history.json         (optional) the training history: what the run measured as it went

`export_model_folder` writes one (beside an earlier export of the same model, then swapped in
whole: `files.folder_replacement`; with `force`, never deleting what it did not write);
`load_model_folder` checks the config (sized on the meta device, `loading.py`), the tokenizer
against the embedding, every tensor's shape in the weights file's header (which also fixes the
file's size), then the weights' sha256 against the card, before it builds the model. Its JSON
files are read strictly (`json_files.read_json`): bounded in size, no key twice, every number
short enough to read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from hourglass_edu.data import CharTokenizer
from hourglass_edu.devices import resolve_device
from hourglass_edu.files import (
    FolderNotReplaceable,
    atomic_write,
    atomic_write_files,
    describe_contents,
    folder_replacement,
    holding_lock_if_any,
    recover_folder_replacement,
    stale_temporaries,
)
from hourglass_edu.json_files import MAX_JSON_BYTES, parse_json, read_json
from hourglass_edu.lm import LanguageModel, check_weights
from hourglass_edu.loading import (
    check_finite_weights,
    check_tokenizer_matches,
    record_tokenizer,
    safetensors_shapes,
)
from hourglass_edu.registry import build_model_from_config, model_shapes

__all__ = [
    "check_export_folder",
    "describe_model_folder",
    "export_model_folder",
    "is_model_folder",
    "load_model_folder",
    "read_card",
]

CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
WEIGHTS_NAME, CARD_NAME, HISTORY_NAME = "model.safetensors", "README.md", "history.json"
FOLDER_FORMAT = "hourglass_edu.model"
FOLDER_FILES = (CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, CARD_NAME, HISTORY_NAME)
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
                        history: dict[str, Any] | None = None, force: bool = False,
                        report: Callable[[str], Any] | None = None) -> Path:
    """Write `model` and `tokenizer` to `folder`; returns the folder.

    dtype: "float32" (exact), "float16" or "bfloat16" (half the size). The card's front matter
    gets `weights_sha256`, `vocabulary_sha256` and `dtype` added to `card`; `card_body` is its
    text; `history` (a `History.to_dict()`) is saved as history.json; `report` (say, `print`)
    hears what was replaced.

    A missing or empty `folder`, or one holding an earlier export of the same model (class,
    config, vocabulary, corpus), is replaced whole: written beside it, then swapped in, so no old
    file stays and a failure changes nothing (a folder that cannot move, a mount point, gets its
    files replaced one by one). Anything else is a ValueError unless `force`: another model's
    folder is then replaced whole; into any other folder the model's files are written over
    those of the same names and nothing else is deleted (history.json included), unless a
    training run holds its `.lock`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} vocabulary rows but the "
                         f"tokenizer {tokenizer.vocab_size} entries: they do not belong together")
    check_tokenizer_matches(model, tokenizer, "export")
    folder = export_destination(folder)
    replace_whole = check_export_folder(folder, force=force)
    files = _folder_files(model, tokenizer, dtype, card, card_body or f"# {folder.name}",
                          history)
    say = report or (lambda line: None)
    if not replace_whole:
        _write_among_other_files(folder, files, say)
        return folder
    previous = describe_model_folder(folder) if is_own_model_folder(folder) else None
    reason = _another_model(folder, files, card or {}) if previous and not force else None
    if reason is not None:
        raise ValueError(f"{folder} holds another model ({previous}; {reason}): export replaces "
                         "only an earlier export of the same model; choose another --out, or "
                         "pass --force to replace it whole")
    _replace_whole(folder, files, say)
    if previous is not None:
        say(f"replaced the model folder {folder} that held {previous}")
    return folder


def export_destination(folder: str | os.PathLike) -> Path:
    """The folder an export writes, as an absolute path with links resolved (so a link to a
    model folder gets the folder it points to replaced, not the link; and `.` has a name)."""
    if not os.fspath(folder).strip():  # Path("") would be the current folder
        raise ValueError("the model folder's path is empty: name the folder to write")
    resolved = Path(os.path.realpath(Path(folder).expanduser()))
    if resolved.parent == resolved:
        raise ValueError(f"{folder} is the root of the file system: name a folder to write")
    return resolved


def check_export_folder(folder: str | os.PathLike, *, force: bool = False) -> bool:
    """Whether `folder` can take a new model folder whole (missing, empty, or one of ours);
    False when `force` lets the files be written into a folder that holds other things; a
    ValueError naming the folder and what it holds otherwise. An export killed while it
    replaced `folder` is finished first (the old folder put back), with a warning."""
    folder = export_destination(folder)
    recovered = recover_folder_replacement(folder)
    if recovered is not None:
        warnings.warn(recovered, stacklevel=2)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: choose another --out")
    above = next(path for path in folder.parents if path.exists())
    if not above.is_dir():
        raise ValueError(f"cannot create {folder}: {above} is a file, not a folder; choose "
                         "another --out")
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
    it whole loses nothing but the old model): its files, and temporaries of their writes."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        names = {path.name for path in folder.iterdir()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    ours = {path.name for path in stale_temporaries(folder)
            if any(path.name.startswith(f".{name}.") for name in FOLDER_FILES)}
    return (isinstance(config, dict) and config.get("format") == FOLDER_FORMAT
            and names - ours <= set(FOLDER_FILES)
            and all((folder / name).is_file() and not (folder / name).is_symlink()
                    for name in names - ours))


def describe_model_folder(folder: str | os.PathLike) -> str:
    """A model folder in a few words, from its config and card: 'HourglassLM 1@1 1@2 1@1,
    d_model 16, corpus toy, 2 steps, val bpc 3.410' (fields it lacks are left out)."""
    folder = Path(folder)
    try:
        config = _read_json(folder / CONFIG_NAME)
        card = read_card(folder)
    except (OSError, ValueError, RecursionError):
        return "a model folder whose config or card cannot be read"
    words = " ".join(_short(config[key]) for key in ("model_class", "structure") if key in config)
    parts = [words or "a model"]
    parts += [f"{key} {_short(config[key])}" for key in ("d_model",) if key in config]
    parts += [f"{key} {_short(card[key])}" for key in ("name", "corpus") if key in card]
    steps = card.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps < 10 ** 15:
        parts.append(f"{steps:,} steps")
    if isinstance(card.get("val_bpc"), float) and math.isfinite(card["val_bpc"]):
        parts.append(f"val bpc {card['val_bpc']:.3f}")
    return ", ".join(parts)


def _short(value: Any, limit: int = 40) -> str:
    """A value read from a file, fit for a one-line message (a crafted file may hold anything)."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = text if text.isprintable() else repr(text)[1:-1]  # a newline stays on the line
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _another_model(folder: Path, files: dict[str, bytes | str], card: dict[str, Any]):
    """Why the model folder at `folder` holds another model than `files` (None when it holds an
    earlier export of the same one: class, config but dropout, vocabulary, corpus)."""
    try:
        old_config = _read_json(folder / CONFIG_NAME)
        old_tokenizer = _read_json(folder / TOKENIZER_NAME)
        old_corpus = read_card(folder).get("corpus")
    except (OSError, ValueError, RecursionError):
        return "its config, tokenizer or card cannot be read"
    new_config = json.loads(files[CONFIG_NAME])
    differing = sorted(key for key in (set(old_config) | set(new_config)) - {"dropout"}
                       if old_config.get(key) != new_config.get(key))
    if differing:
        return f"its {', '.join(differing[:4])} differ"
    if old_tokenizer != json.loads(files[TOKENIZER_NAME]):
        return "its vocabulary differs"
    if old_corpus != card.get("corpus"):
        return f"it was trained on {_short(old_corpus)}, this one on {_short(card.get('corpus'))}"
    return None


def _replace_whole(folder: Path, files: dict[str, bytes | str], say) -> None:
    """The folder replaced whole by `files`; in place, file by file, where it cannot be moved."""
    try:
        with folder_replacement(folder) as new:
            _write_files(new, files)
        return
    except FolderNotReplaceable as why:
        say(f"{why}: writing the model's files into it one by one instead")
    atomic_write_files(folder, files)
    for name in set(FOLDER_FILES) - set(files):  # the old model's, not the new one's
        (folder / name).unlink(missing_ok=True)


def _write_among_other_files(folder: Path, files: dict[str, bytes | str], say) -> None:
    """`--force` into a folder that holds other things: the model's files replace those of the
    same names, nothing else is deleted; refused while a training run holds the folder."""
    with holding_lock_if_any(folder / ".lock"):  # a training run's
        replaced = sorted(name for name in files if os.path.lexists(folder / name))
        atomic_write_files(folder, files)
    others = sorted(_short(path.name) for path in folder.iterdir() if path.name not in files)
    shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
    say(f"wrote the model's files into {folder} (--force): replaced "
        f"{', '.join(replaced) or 'no file'}; left {len(others)} other "
        f"{'entry' if len(others) == 1 else 'entries'} as they were"
        + (f" ({shown})" if others else ""))


def _folder_files(model, tokenizer, dtype, card, card_body, history) -> dict[str, bytes | str]:
    """The files of a model folder, name -> content."""
    weights = {name: value.detach().to("cpu", DTYPES[dtype]).contiguous().clone()
               for name, value in model.state_dict().items()}
    weight_bytes = safetensors_bytes(weights, metadata={"format": "pt"})
    config = {"format": FOLDER_FORMAT, "model_class": type(model).__name__,
              **model.config.to_dict()}
    fields = {**(card or {}), "dtype": dtype,
              "weights_sha256": hashlib.sha256(weight_bytes).hexdigest(),
              "vocabulary_sha256": tokenizer.vocabulary_sha256}
    files = {WEIGHTS_NAME: weight_bytes, CONFIG_NAME: json.dumps(config, indent=1) + "\n",
             TOKENIZER_NAME: json.dumps(tokenizer.to_dict(), indent=1) + "\n",
             CARD_NAME: card_text(fields, card_body)}
    if history is not None:
        files[HISTORY_NAME] = json.dumps(history) + "\n"
    return files


def _write_files(folder: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        atomic_write(folder / name, content)


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
    weight is read or hashed, and every weight read is finite. A card without a sha256 is said
    with a warning (nothing to check against).
    """
    folder = Path(folder)
    device = resolve_device(device)
    if not os.path.lexists(folder) and (recovered := recover_folder_replacement(folder)):
        warnings.warn(recovered, stacklevel=2)  # an export killed while it swapped folders
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
    _check_vocabulary(folder, tokenizer)
    check_weights(shapes, safetensors_shapes(weights_path), str(weights_path))
    # Hashed only now: the header, checked against the config, bounds the file's size (a
    # crafted multi-gigabyte file is refused from its first bytes, not read through).
    _check_sha256(folder, weights_path)
    weights = _read_weights(weights_path)
    check_finite_weights(weights, str(weights_path))
    model = build_model_from_config(class_name, config)
    model.load_state_dict(weights)
    record_tokenizer(model, tokenizer)
    return model.to(device).eval(), tokenizer


def _check_vocabulary(folder: Path, tokenizer: CharTokenizer) -> None:
    """The tokenizer against the vocabulary sha256 the card recorded at export (cards written
    before it was recorded have none: then only the sizes were compared)."""
    expected = read_card(folder).get("vocabulary_sha256")
    if expected is not None and expected != tokenizer.vocabulary_sha256:
        raise ValueError(f"{folder / TOKENIZER_NAME} is not the tokenizer this model was "
                         "exported with (its vocabulary's sha256 differs from the card's): "
                         "put back the folder's own tokenizer.json, or export the model again")


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
