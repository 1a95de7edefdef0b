"""`models` and `export`: the shipped models, and a checkpoint as a shareable model folder."""

from __future__ import annotations

import math

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
    from hourglass_edu.pretrained import list_pretrained, pretrained_card

    names = list_pretrained()
    if not names:
        print("no shipped models are installed (the package data is missing)")
        return 1
    print(f"{'name':<17}{'corpus':<11}{'structure':<14}{'params':>10}{'minutes':>9}"
          f"{'steps':>8}{'val bpc':>9}")
    for name in names:
        card = pretrained_card(name)
        print(f"{name:<17}{card.get('corpus', '?'):<11}{card.get('structure', '?'):<14}"
              f"{card.get('parameters', 0):>10,}{card.get('training_seconds', 0) / 60:>9.0f}"
              f"{card.get('steps', 0):>8,}{card.get('val_bpc', float('nan')):>9.3f}")
    return 0


def add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="save a trained checkpoint as a shareable model folder",
        description="Write CKPT's model as a folder laid out like a Hugging Face model "
        "repository: config.json, tokenizer.json, model.safetensors (no pickle) and a model "
        "card README.md with the weights' sha256. Load it with `sample --ckpt OUT` or "
        "`load_model(OUT)`.")
    parser.add_argument("--ckpt", required=True, help="checkpoint file or run directory (its "
                        "best.pt; RUN/checkpoint.pt for the last weights)")
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
