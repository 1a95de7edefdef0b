"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `_add_NAME(subparsers)` declares its arguments and
`_run_NAME(args)` does the work. Library code stays in the library modules; this file only parses
arguments, calls them, and prints.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hourglass_edu",
        description="Hourglass transformer course: corpora, training, sampling.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _add_corpus(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="print a corpus's statistics (documents, characters, vocabulary, split)",
        description="Load a corpus (downloading and verifying it if needed), split it into train "
        "and validation documents, build the character vocabulary from train, and print the "
        "statistics. NAME is a registered corpus (haiku, lovecraft) or a path to a .txt file "
        "(documents separated by blank lines) or a folder of .txt files (one document each).",
    )
    parser.add_argument("name", metavar="NAME", help="haiku, lovecraft, or a path")
    parser.add_argument("--data-dir", default=None, help="read/download corpus files here "
                        "instead of $HOURGLASS_EDU_DATA and the cache directory")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of documents held out for validation (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading missing files")
    parser.set_defaults(run=_run_corpus)


def _run_corpus(args) -> int:
    from hourglass_edu.data import prepare_data

    data = prepare_data(args.name, val_fraction=args.val_fraction, seed=args.seed,
                        data_dir=args.data_dir, download=not args.no_download)
    print(data.describe())
    return 0


def _add_sample(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="stream text from a trained model (cached decoding)",
        description="Load a checkpoint written by `train`, a model folder, or a shipped model, "
        "and continue PROMPT, printing each character as it is made. Decoding keeps key/value "
        "caches at every level of the hourglass, so each character costs one position of work.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint file, run directory or model folder")
    source.add_argument("--pretrained", metavar="NAME",
                        help="a model shipped with the package (see `models`)")
    parser.add_argument("--prompt", default="",
                        help="text to continue (default: empty = the start of a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=500,
                        help="most characters to generate (default 500)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy; higher = more surprising (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely characters")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the smallest set with probability >= p")
    parser.add_argument("--seed", type=int, default=None, help="makes the sample reproducible")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop before this text appears (may be given several times)")
    parser.add_argument("--no-stop-at-end", dest="stop_at_end", action="store_false",
                        help="keep going past <eot> (the end of a document)")
    parser.add_argument("--replace-unknown", default=None, metavar="TEXT",
                        help="put TEXT in place of prompt characters outside the vocabulary "
                        "(default: refuse them)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole window for every character (slow; to compare)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.set_defaults(run=_run_sample)


def _generation_settings(args):
    """The GenerationSettings of a `sample` command line: each of its options that sets a
    setting has the setting's name as `dest`, so the fields are picked out by name."""
    from dataclasses import fields

    from hourglass_edu.generation import GenerationSettings

    names = [field.name for field in fields(GenerationSettings) if hasattr(args, field.name)]
    return GenerationSettings(**{name: getattr(args, name) for name in names})


def _run_sample(args) -> int:
    from hourglass_edu.generation import stream
    from hourglass_edu.pretrained import load_pretrained
    from hourglass_edu.training import load_model

    settings = _generation_settings(args)  # checked before the checkpoint is loaded
    if args.pretrained is not None:
        model, tokenizer = load_pretrained(args.pretrained, device=args.device)
    else:
        model, tokenizer = load_model(args.ckpt, device=args.device)
    pieces = stream(model, tokenizer, args.prompt, args.max_new_tokens, settings)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C ends the sample, not with a traceback
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    return 0

# ---- train / finetune / demo (branch train) ------------------------------------------------


def _add_budget_and_optimizer_args(parser, budget_help: str) -> None:
    """Settings shared by train, finetune and demo: budget, batch, optimizer, hardware."""
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training time budget in minutes ({budget_help})")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps budget (with --minutes: whichever ends first)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per step")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per window")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                        help="auto (default) = bf16 autocast on GPUs and CPUs with bf16 units")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=None, help="seed of batches and init")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--data-dir", default=None,
                        help="corpus directory (default: $HOURGLASS_EDU_DATA, then the cache)")


def _train_config(base, args, **changes):
    """`base` TrainConfig with the command line's settings applied."""
    if args.minutes is not None or args.steps is not None:
        changes.update(steps=args.steps, minutes=args.minutes)
    for name in ("batch_size", "block_size", "lr", "precision", "device", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.compile:
        changes["compile"] = True
    if args.no_progress:
        changes["progress"] = False
    return base.replace(**changes)


def _run_training(args, model, data, config, out, *, resume, overwrite=False, metadata=None):
    """Train, then write history.json / history.png and print the validation result."""
    import json
    from pathlib import Path

    from hourglass_edu import viz
    from hourglass_edu.training import CHECKPOINT_NAME, evaluate_bpc, train

    out = Path(out)
    print(f"model: {model.num_parameters():,} parameters, structure {model.config.structure!r}, "
          f"d_model {model.config.d_model}; corpus {data.corpus.name}: "
          f"{data.train_ids.numel():,} training tokens")
    budget = " and ".join(part for part in (
        f"{config.steps} steps" if config.steps else "",
        f"{config.minutes:g} minutes" if config.minutes else "") if part)
    print(f"training for {budget} (whichever ends first); checkpoint: {out / CHECKPOINT_NAME}")
    try:
        history = train(model, data, config, checkpoint_path=out / CHECKPOINT_NAME,
                        resume=resume, overwrite=overwrite, metadata=metadata)
    except KeyboardInterrupt:
        print(f"interrupted: the checkpoint in {out} holds the last finished step; run the same "
              "command with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None
    (out / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
    viz.plot_history(history, title=f"{data.corpus.name}, {model.config.structure}").savefig(
        out / "history.png", dpi=100)
    last = history.records[-1]
    val_bpc = evaluate_bpc(model, data.val_ids, batch_size=config.batch_size,
                           block_size=config.block_size, device=config.device,
                           precision=config.precision)
    print(f"done: {last['step']} steps, {last['tokens']:,} tokens, {last['elapsed']:.0f} s of "
          f"training; validation: {val_bpc:.3f} bits per character (whole split)")
    return history, val_bpc


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an hourglass language model on a corpus",
        description="Train a character-level hourglass transformer. Writes OUT/checkpoint.pt "
        "(at every evaluation, at the end and on Ctrl-C), OUT/history.json and OUT/history.png. "
        "Presets: smoke (seconds, for tests), cpu (about 10 minutes on 2 cores), gpu (about 20M "
        "parameters, under 30 minutes on one GPU).",
    )
    parser.add_argument("--corpus", required=True, help="haiku, lovecraft, or a path")
    parser.add_argument("--preset", default="cpu", help="smoke, cpu (default) or gpu")
    parser.add_argument("--structure", default=None,
                        help='layers@shortening from outside in, e.g. "2@1 8@3 2@1"')
    parser.add_argument("--d-model", type=int, default=None, help="model width")
    parser.add_argument("--n-heads", type=int, default=None, help="attention heads")
    parser.add_argument("--shortening", default=None, help="avg, linear or attention")
    parser.add_argument("--upsampling", default=None, help="repeat, linear or attention")
    parser.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT (same settings required)")
    _add_budget_and_optimizer_args(parser, "default: the preset's")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from hourglass_edu.data import prepare_data
    from hourglass_edu.training import build_model, get_preset

    preset = get_preset(args.preset)
    config = _train_config(preset.train, args)
    data = prepare_data(args.corpus, data_dir=args.data_dir)
    model = build_model(
        preset, data.tokenizer.vocab_size, structure=args.structure, d_model=args.d_model,
        n_heads=args.n_heads, shortening=args.shortening, upsampling=args.upsampling,
        max_length=max(preset.model["max_length"], config.block_size), seed=config.seed,
    )
    _run_training(args, model, data, config, args.out, resume=args.resume)
    _print_samples(model, data.tokenizer, 1, max_new_tokens=300, seed=config.seed)
    return 0


def _add_finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="continue a trained checkpoint on another corpus (e.g. Lovecraft -> haiku)",
        description="Load CKPT and train it further on CORPUS. Characters that CORPUS has and the "
        "checkpoint's vocabulary lacks are added (listed on screen): existing characters keep "
        "their ids, new rows of the embedding and output layer start as the mean of the old "
        "ones. Defaults: the base run's recipe with a third of its peak learning rate and half "
        "its budget.",
    )
    parser.add_argument("--from", dest="base", required=True, metavar="CKPT",
                        help="checkpoint file or run directory to start from")
    parser.add_argument("--corpus", required=True, help="haiku, lovecraft, or a path")
    parser.add_argument("--out", required=True, help="run directory for the fine-tuned model")
    parser.add_argument("--resume", action="store_true",
                        help="continue the fine-tuning run in OUT (same settings required)")
    _add_budget_and_optimizer_args(parser, "default: half the base run's")
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args) -> int:
    from hourglass_edu.data import load_corpus
    from hourglass_edu.training import TrainConfig, prepare_finetuning

    corpus = load_corpus(args.corpus, data_dir=args.data_dir)
    setup = prepare_finetuning(args.base, corpus)
    base = TrainConfig.from_dict(setup.base_checkpoint["train_config"])
    defaults = dict(
        lr=base.lr / 3, warmup_steps=min(base.warmup_steps, 50),
        steps=max(1, base.steps // 2) if base.steps else None,
        minutes=base.minutes / 2 if base.minutes else None,
    )
    config = _train_config(base.replace(**defaults), args)
    added = "".join(setup.added_chars)
    print(f"fine-tuning {args.base} (step {setup.base_checkpoint['step']}) on {corpus.name}; "
          + (f"added {len(added)} characters to the vocabulary: {added!r}" if added
             else "no new characters"))
    _run_training(args, setup.model, setup.data, config, args.out, resume=args.resume,
                  metadata=setup.metadata)
    _print_samples(setup.model, setup.data.tokenizer, 3, seed=config.seed)
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a small hourglass on haiku for a few minutes, then write haiku",
        description="The quickest way to see the whole pipeline: trains an hourglass transformer "
        "on 60,835 haiku for --minutes (default 5 on a CPU with the cpu preset, 3 on a GPU with "
        "the gpu preset), reports validation bits per character and prints generated haiku. "
        "Every poem ends with an end-of-text token in training, so each sample stops by itself. "
        "The checkpoint stays in --out for `python -m hourglass_edu sample --ckpt OUT`.",
    )
    parser.add_argument("--preset", default=None, help="smoke, cpu or gpu (default by device)")
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; "
                        "replaced on every demo)")
    parser.add_argument("--samples", type=int, default=6, help="haiku to print (default 6)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature (default 0.8)")
    _add_budget_and_optimizer_args(parser, "default: 5 on a CPU, 3 on a GPU")
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from hourglass_edu.data import prepare_data
    from hourglass_edu.training import build_model, get_preset, resolve_device

    on_gpu = resolve_device(args.device or "auto").type == "cuda"
    preset = get_preset(args.preset or ("gpu" if on_gpu else "cpu"))
    if args.minutes is None and args.steps is None:
        args.minutes = 3.0 if on_gpu else 5.0
    config = _train_config(preset.train, args)
    data = prepare_data("haiku", data_dir=args.data_dir)
    model = build_model(preset, data.tokenizer.vocab_size, seed=config.seed,
                        max_length=max(preset.model["max_length"], config.block_size))
    _run_training(args, model, data, config, args.out, resume=False, overwrite=True)
    _print_samples(model, data.tokenizer, args.samples, temperature=args.temperature,
                   seed=config.seed)
    return 0


def _print_samples(model, tokenizer, count, *, max_new_tokens=200, temperature=0.8, seed=0):
    """Print `count` documents generated from an empty prompt (the start of a document)."""
    from hourglass_edu.generation import generate

    model.eval()
    for index in range(count):
        text = generate(model, tokenizer, "", max_new_tokens, temperature=temperature,
                        seed=seed + index, stop_at_end=True)
        ended = len(text) < max_new_tokens  # stopped at <eot> before running out of characters
        print(f"\n--- sample {index + 1} ({'ended by itself' if ended else 'cut at the limit'})")
        print(text)


def _add_models(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the trained models shipped with the package, with their figures",
        description="The models inside the package (hourglass_edu/pretrained), each with the "
        "figures its model card records: corpus, structure, parameters, training time and "
        "steps, validation bits per character. Use one with `sample --pretrained NAME` or "
        "`load_pretrained(NAME)`.")
    parser.set_defaults(run=_run_models)


def _run_models(args) -> int:
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


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="save a trained checkpoint as a shareable model folder",
        description="Write CKPT's model as a folder laid out like a Hugging Face model "
        "repository: config.json, tokenizer.json, model.safetensors (no pickle) and a model "
        "card README.md with the weights' sha256. Load it with `sample --ckpt OUT` or "
        "`load_model(OUT)`.")
    parser.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="float32 (exact, default) or a half-size float16 / bfloat16")
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from hourglass_edu.model_folders import export_model_folder
    from hourglass_edu.training import load_checkpoint, model_from_checkpoint

    checkpoint = load_checkpoint(args.ckpt)
    model, tokenizer = model_from_checkpoint(checkpoint)
    card = {"corpus": checkpoint.get("data", {}).get("corpus"), "steps": checkpoint["step"],
            "tokens_seen": checkpoint["tokens_seen"],
            "training_seconds": round(checkpoint["elapsed"])}
    folder = export_model_folder(model, tokenizer, args.out, dtype=args.dtype, card=card)
    print(f"wrote {folder} ({type(model).__name__}, {model.num_parameters():,} parameters)")
    return 0


_SUBCOMMANDS: list = [_add_corpus, _add_sample, _add_train, _add_finetune, _add_demo,
                      _add_models, _add_export]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors already say what to change; a traceback would only hide that.
        print(f"error: {error}", file=sys.stderr)
        return 2
