"""`models` and `export`: the shipped models, and a checkpoint as a shareable model folder."""

from __future__ import annotations

import math
import sys

from hourglass_edu.cli.options import given

__all__ = ["add_export", "add_models"]


def add_models(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the trained models shipped with the package, with their figures",
        description="The models inside the package (hourglass_edu/pretrained), each with the "
        "figures its model card records: corpus, structure, parameters, training time and "
        "steps, validation bits per character. Use one with `sample --pretrained NAME` or "
        "`load_pretrained(NAME)`.")
    parser.set_defaults(run=run_models)


def run_models(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.pretrained import list_pretrained

    names = list_pretrained()
    if not names:
        print("no shipped models are installed (the package data is missing)")
        return 1
    print(f"{'name':<17}" + "".join(f"{heading:{'<' if kind == 'text' else '>'}{width}}"
                                    for _, heading, width, kind in _COLUMNS))
    damaged = [name for name in names if not _print_model_row(name)]
    if damaged:
        print(f"warning: the card of {', '.join(damaged)} is damaged ('bad' above, each field "
              "named on its own line): reinstall hourglass_edu", file=sys.stderr)
    return 1 if damaged else 0


# The listing's columns: (card field, heading, width, kind of value).
_COLUMNS = (("corpus", "corpus", 11, "text"), ("structure", "structure", 14, "text"),
            ("parameters", "params", 10, "count"), ("training_seconds", "minutes", 9, "minutes"),
            ("steps", "steps", 8, "count"), ("val_bpc", "val bpc", 9, "bpc"))
_KINDS = {"text": "a short line of text", "count": "a whole number of at least 0",
          "minutes": "a number of seconds of at least 0", "bpc": "a number of at least 0"}
_LONGEST_TEXT = 40


def _print_model_row(name: str) -> bool:
    """One row of the listing: what the card shows, "?" for a field it lacks and "bad" for one
    it holds wrongly (each said on stderr with the card's path). False when the card is damaged."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.model_folders import CARD_NAME
    from hourglass_edu.pretrained import pretrained_card, pretrained_folder

    where = pretrained_folder(name) / CARD_NAME
    try:
        card = pretrained_card(name)
    except (ValueError, OSError) as error:  # unreadable as a whole: every field unknown
        first = (str(error).strip().splitlines() or ["unreadable"])[0][:200]
        print(f"warning: {first if str(where) in first else f'{where}: {first}'}",
              file=sys.stderr)
        card, sound = {field: _UNREADABLE for field, *_ in _COLUMNS}, False
    else:
        sound = True
    row = f"{name:<17}"
    for field, _, width, kind in _COLUMNS:
        value = card.get(field, _ABSENT)
        shown = "?" if value is _ABSENT else _cell(value, kind)
        if shown is None:
            shown, sound = "bad", False
            if value is not _UNREADABLE:
                print(f"warning: {where}: {field} is {_short(value)}, not {_KINDS[kind]}",
                      file=sys.stderr)
        row += f"{shown:{'<' if kind == 'text' else '>'}{width}}"
    print(row)
    return sound


_ABSENT, _UNREADABLE = object(), object()


def _cell(value, kind: str) -> str | None:
    """`value` as the listing shows a field of this kind, or None when it is not of that kind."""
    if kind == "text":
        ok = isinstance(value, str) and value.isprintable() and len(value) <= _LONGEST_TEXT
        return value if ok else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind == "count":
        return f"{value:,}" if isinstance(value, int) and 0 <= value < _MOST else None
    if not 0 <= value < _MOST:  # NaN and infinities too; a huge int is never divided
        return None
    return f"{value / 60:.0f}" if kind == "minutes" else f"{value:.3f}"


_MOST = 10**15  # beyond any figure of a model card, and beyond the listing's columns


def _short(value) -> str:
    if isinstance(value, int) and value.bit_length() > 200:  # repr refuses 4,300 digits
        return f"a whole number of about {value.bit_length() * 0.30103:,.0f} digits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="save a trained checkpoint as a shareable model folder",
        description="Write CKPT's model as a folder laid out like a Hugging Face model "
        "repository: config.json, tokenizer.json, model.safetensors (no pickle) and a model "
        "card README.md with the weights' sha256. Load it with `sample --ckpt OUT` or "
        "`load_model(OUT)`.")
    parser.add_argument("--ckpt", type=given, required=True, help="checkpoint file or run "
                        "directory (its best.pt; RUN/checkpoint.pt for the last weights)")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="float32 (exact, default) or a half-size float16 / bfloat16")
    parser.add_argument("--force", action="store_true",
                        help="replace a model folder of another model in OUT whole, or write "
                        "into OUT when it holds other things (files of the same names are "
                        "replaced, nothing else is deleted); an earlier export of the same "
                        "model is replaced whole without it")
    parser.set_defaults(run=run_export)


def run_export(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.model_folders import check_export_folder, export_model_folder
    from hourglass_edu.training import load_checkpoint, model_from_checkpoint
    from hourglass_edu.training.checkpoints import model_checkpoint_file

    if not args.out.strip():
        raise ValueError("--out is empty: name the model folder to write (e.g. models/NAME)")
    check_export_folder(args.out, force=args.force)  # before the checkpoint is read
    checkpoint = load_checkpoint(model_checkpoint_file(args.ckpt))
    model, tokenizer = model_from_checkpoint(checkpoint)
    card = {"corpus": checkpoint.get("data", {}).get("corpus"), "steps": checkpoint["step"],
            "tokens_seen": checkpoint["tokens_seen"],
            "training_seconds": round(checkpoint["elapsed"])}
    card.update(_figures(model, checkpoint))
    card.update(_recorded_corpus_source(checkpoint))  # what `evaluate --ckpt OUT` checks
    folder = export_model_folder(model, tokenizer, args.out, dtype=args.dtype, card=card,
                                 force=args.force, report=print)
    print(f"wrote {folder} ({type(model).__name__}, {model.num_parameters():,} parameters)")
    return 0


def _figures(model, checkpoint) -> dict:
    """The card's figures beside the run's counts: structure, parameters and the validation bits
    per character last measured at or before the checkpoint's step (what `describe_model_folder`
    shows when a later export replaces this one)."""
    figures = {"parameters": model.num_parameters()}
    if isinstance(getattr(model.config, "structure", None), str):
        figures["structure"] = model.config.structure
    records = checkpoint["history"].get("records")
    measured = [record["val_bpc"] for record in records if isinstance(record, dict)
                and isinstance(record.get("step"), int) and record["step"] <= checkpoint["step"]
                and isinstance(record.get("val_bpc"), float) and math.isfinite(record["val_bpc"])
                ] if isinstance(records, list) else []
    if measured:
        figures["val_bpc"] = round(measured[-1], 4)
    return figures


def _recorded_corpus_source(checkpoint: dict) -> dict:
    """The corpus path and sha256 a checkpoint recorded in training (nothing for an older one)."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data.provenance import CORPUS_SOURCE_KEYS

    data = checkpoint.get("data")
    data = data if isinstance(data, dict) else {}
    return {key: data[key] for key in CORPUS_SOURCE_KEYS if isinstance(data.get(key), str)}
