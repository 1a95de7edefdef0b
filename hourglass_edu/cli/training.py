"""`train`, `finetune` and `demo`: a run from scratch, a run continued on another corpus, and
the quickest whole pipeline. Their shared settings and the run itself: runs.py."""

from __future__ import annotations

from pathlib import Path

from hourglass_edu.cli.options import (
    TableNames,
    dropout_rate,
    given,
    non_negative_int,
    temperature,
)
from hourglass_edu.cli.runs import (
    add_force,
    add_run_settings,
    check_precision,
    check_val_fraction,
    lock_run_folder,
    run_processes,
    run_training,
    train_config,
)

__all__ = ["add_demo", "add_finetune", "add_train"]

DEMO_MARK = {"written_by": "demo"}  # in the metadata of every checkpoint `demo` writes


def add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an hourglass language model on a corpus",
        description="Train a character-level hourglass transformer. Writes OUT/checkpoint.pt "
        "(at every evaluation, at the end and on Ctrl-C), OUT/best.pt (the weights of the best "
        "validation so far, which `sample`, `evaluate`, `export` and `finetune --from` read for "
        "OUT; name OUT/checkpoint.pt for the last), OUT/history.json and OUT/history.png. "
        "Presets: smoke (seconds, for tests), cpu (about 10 minutes on 2 cores), gpu (about 20M "
        "parameters, under 30 minutes on one GPU).",
    )
    parser.add_argument("--corpus", type=given, required=True,
                        help="haiku, lovecraft, or a path")
    parser.add_argument("--preset", default="cpu", help="smoke, cpu (default) or gpu")
    parser.add_argument("--structure", default=None,
                        help='layers@shortening from outside in, e.g. "2@1 8@3 2@1"')
    parser.add_argument("--d-model", type=int, default=None, help="model width")
    parser.add_argument("--n-heads", type=int, default=None, help="attention heads")
    # (a metavar, since argparse would otherwise read the choices as the parser is built)
    parser.add_argument("--shortening", default=None, metavar="KIND",
                        help="how a level shortens: %(choices)s",
                        choices=TableNames("hourglass_edu.resampling", "SHORTENINGS"))
    parser.add_argument("--upsampling", default=None, metavar="KIND",
                        help="how a level upsamples: %(choices)s",
                        choices=TableNames("hourglass_edu.resampling", "UPSAMPLINGS"))
    parser.add_argument("--dropout", type=dropout_rate, default=None,
                        help="dropout probability (default: the preset's; 0 for smoke and cpu, "
                        "0.2 for gpu): against learning a small corpus by heart over many passes")
    _add_out_and_resume(parser, "run directory, e.g. runs/NAME", "run",
                        changeable="--steps, --minutes, --lr and --dropout")
    add_force(parser, "a run of ours; a run there is replaced unless --resume")
    add_run_settings(parser, "default: the preset's")
    parser.set_defaults(run=run_train)


def _add_out_and_resume(parser, out_help: str, run: str,
                        changeable: str = "--steps, --minutes and --lr") -> None:
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--resume", action="store_true", help=f"continue the {run} in OUT (same "
                        f"model and data; {changeable} may change, and "
                        "--batch-size with --grad-accum if their product stays)")


def run_train(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import prepare_data
    from hourglass_edu.registry import model_shapes
    from hourglass_edu.training import build_model, get_preset
    from hourglass_edu.training.config import check_batch_fits

    preset = get_preset(args.preset)
    config = train_config(preset.train, args)
    check_val_fraction(args)
    check_precision(config.precision, config.device)
    overrides = dict(structure=args.structure, d_model=args.d_model, n_heads=args.n_heads,
                     shortening=args.shortening, upsampling=args.upsampling,
                     dropout=args.dropout,
                     max_length=max(preset.model["max_length"], config.block_size))
    # The model settings and batch, sized on the meta device before the corpus loads (256: any
    # vocabulary); the trainer checks the batch again, for every command and the library.
    fields = {**preset.model, **{k: v for k, v in overrides.items() if v is not None}}
    check_batch_fits(model_shapes("HourglassLM", {"vocab_size": 256, **fields},
                                  "the model settings"), config)
    with run_processes(config.device) as main, lock_run_folder(args.out, main, args.force):
        data = prepare_data(args.corpus, val_fraction=args.val_fraction, data_dir=args.data_dir)
        model = build_model(preset, data.tokenizer.vocab_size, seed=config.seed, **overrides)
        run_training(args, model, data, config, resume=args.resume, overwrite=args.force)
        if main:
            _print_samples(model, data.tokenizer, 1, max_new_tokens=300, seed=config.seed)
    return 0


def add_finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="continue a trained checkpoint on another corpus (e.g. Lovecraft -> haiku)",
        description="Load CKPT and train it further on CORPUS. Characters that CORPUS's training "
        "documents have and the checkpoint's vocabulary lacks are added (listed on screen): "
        "existing characters keep their ids, new rows of the embedding and output layer start "
        "as the mean of the old ones. Defaults: the base run's recipe with a third of its peak "
        "learning rate and half its budget.",
    )
    parser.add_argument("--from", dest="base", type=given, required=True, metavar="CKPT",
                        help="checkpoint file or run directory to start from")
    parser.add_argument("--corpus", type=given, required=True,
                        help="haiku, lovecraft, or a path")
    _add_out_and_resume(parser, "run directory for the fine-tuned model (not the base run's)",
                        "fine-tuning run")
    add_force(parser, "a run of ours; a run there is replaced unless --resume")
    add_run_settings(parser, "default: half the base run's")
    parser.set_defaults(run=run_finetune)


def run_finetune(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import load_corpus
    from hourglass_edu.training import TrainConfig, prepare_finetuning
    from hourglass_edu.training.config import check_batch_fits

    check_val_fraction(args)
    check_precision(args.precision, args.device)  # (otherwise the base run's, checked later)
    _check_not_the_base_run(args.base, args.out)
    with run_processes(args.device) as main, lock_run_folder(args.out, main, args.force):
        corpus = load_corpus(args.corpus, data_dir=args.data_dir)
        setup = prepare_finetuning(args.base, corpus, val_fraction=args.val_fraction)
        if args.resume:
            _check_resumes_a_finetuning_of(Path(args.out), args.base, setup.metadata)
        base = TrainConfig.from_dict(setup.base_checkpoint["train_config"])
        defaults = dict(
            lr=base.lr / 3, warmup_steps=min(base.warmup_steps, 50),
            steps=max(1, base.steps // 2) if base.steps else None,
            minutes=base.minutes / 2 if base.minutes else None,
        )
        config = train_config(base.replace(**defaults), args)
        check_batch_fits(setup.model, config)  # the base run's batch, before any word of it
        added = "".join(setup.added_chars)
        print(f"fine-tuning {args.base} (step {setup.base_checkpoint['step']}) on {corpus.name}; "
              + (f"added {len(added)} characters to the vocabulary: {added!r}" if added
                 else "no new characters"))
        run_training(args, setup.model, setup.data, config, resume=args.resume,
                     overwrite=args.force, metadata=setup.metadata)
        if main:
            _print_samples(setup.model, setup.data.tokenizer, 3, seed=config.seed)
    return 0


def _check_not_the_base_run(base, out) -> None:
    """Fine-tuning into the base run's own folder would replace its checkpoint: the run it
    started from would be gone (with or without --resume)."""
    base, out = Path(base), Path(out)
    base_folder = base if base.is_dir() else base.parent
    if out.resolve() == base_folder.resolve():
        raise ValueError(f"--out {out} is the folder of the base run (--from {base}): fine-tuning "
                         "there would replace the checkpoint it starts from; choose another "
                         f"--out, say {base_folder.name}-finetuned")


def _check_resumes_a_finetuning_of(out: Path, base, metadata: dict) -> None:
    """--resume continues a fine-tuning run of this --from, and nothing else."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training import CHECKPOINT_NAME, load_checkpoint

    if not (out / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"nothing to resume: no checkpoint at {out / CHECKPOINT_NAME}")
    saved = load_checkpoint(out).get("metadata", {}).get("finetuned_from")
    if saved is None:
        raise ValueError(f"{out} holds a run that is not a fine-tuning run, so --resume cannot "
                         "continue it as one: choose another --out")
    if saved != metadata["finetuned_from"]:
        raise ValueError(f"{out} holds a fine-tuning run of another base (corpus "
                         f"{saved.get('corpus')}, step {saved.get('step')}), not of --from "
                         f"{base}: pass that run's --from, or choose another --out")


def add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a small hourglass on haiku for a few minutes, then write haiku",
        description="The quickest way to see the whole pipeline: trains an hourglass transformer "
        "on 60,835 haiku for --minutes (default 5 on a CPU with the cpu preset, 3 on a GPU with "
        "the gpu preset), reports validation bits per character and prints generated haiku. "
        "Every poem ends with an end-of-text token in training, so each sample stops by itself. "
        "Then the shipped `haiku` model (trained for over an hour) writes with the same seeds, "
        "to show where longer training leads. The checkpoint stays in --out for "
        "`python -m hourglass_edu sample --ckpt OUT`.",
    )
    parser.add_argument("--preset", default=None, help="smoke, cpu or gpu (default by device)")
    parser.add_argument("--out", default="runs/demo", help="run directory (default "
                        "runs/demo; an earlier demo's run there is replaced, any other run "
                        "refused)")
    parser.add_argument("--samples", type=non_negative_int, default=6,
                        help="haiku to print (default 6)")
    parser.add_argument("--temperature", type=temperature, default=0.8,
                        help="sampling temperature (default 0.8)")
    add_force(parser, "an earlier demo's run")
    add_run_settings(parser, "default: 5 on a CPU, 3 on a GPU")
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import prepare_data
    from hourglass_edu.devices import resolve_device
    from hourglass_edu.generation import GenerationSettings
    from hourglass_edu.training import build_model, get_preset

    on_gpu = resolve_device(args.device or "auto").type == "cuda"
    preset = get_preset(args.preset or ("gpu" if on_gpu else "cpu"))
    if args.minutes is None and args.steps is None:
        args.minutes = 3.0 if on_gpu else 5.0
    config = train_config(preset.train, args)
    check_val_fraction(args)
    check_precision(config.precision, config.device)
    GenerationSettings(temperature=args.temperature, seed=config.seed)  # checked before training
    with run_processes(config.device) as main, lock_run_folder(args.out, main,
                                                               args.force) as out:
        if not args.force:
            _check_demo_folder(out)
        data = prepare_data("haiku", val_fraction=args.val_fraction, data_dir=args.data_dir)
        model = build_model(preset, data.tokenizer.vocab_size, seed=config.seed,
                            max_length=max(preset.model["max_length"], config.block_size))
        _, own_bpc = run_training(args, model, data, config, resume=False, overwrite=True,
                                  metadata=DEMO_MARK)
        if not main:
            return 0
        _print_samples(model, data.tokenizer, args.samples, temperature=args.temperature,
                       seed=config.seed)
    _print_shipped_haiku(own_bpc, args.samples, temperature=args.temperature, seed=config.seed)
    return 0


def _print_shipped_haiku(own_bpc: float, count: int, *, temperature: float, seed: int) -> None:
    """Where longer training leads: the shipped `haiku` model, same seeds, both scores."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.pretrained import list_pretrained, load_pretrained, pretrained_card

    if "haiku" not in list_pretrained() or count < 1:
        return
    model, tokenizer = load_pretrained("haiku")
    card = pretrained_card("haiku")
    print(f"\n=== the shipped `haiku` model: {card['training_seconds'] / 60:.0f} minutes, "
          f"{card['steps']:,} steps of training; validation {card['val_bpc']:.3f} bits per "
          f"character (its card; the model you just trained: {own_bpc:.3f}). The same seeds:")
    _print_samples(model, tokenizer, count, temperature=temperature, seed=seed)


def _check_demo_folder(folder: Path) -> None:
    """`demo` replaces only what an earlier `demo` wrote: refuse a folder with another run's
    checkpoint (or history) before any training."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.training import CHECKPOINT_NAME, load_checkpoint

    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.exists():
        try:
            metadata = load_checkpoint(checkpoint).get("metadata", {})
        except ValueError:
            metadata = {}
        if all(metadata.get(key) == value for key, value in DEMO_MARK.items()):
            return
        reason = f"{checkpoint} holds a checkpoint that demo did not write"
    else:
        found = [name for name in ("history.json", "history.png") if (folder / name).exists()]
        if not found:
            return
        reason = f"{folder} holds {' and '.join(found)} of a run that demo did not write"
    raise ValueError(f"{reason}, and demo replaces only its own runs: choose another --out (say "
                     f"{folder}-demo), move that run elsewhere first, or pass --force to "
                     "replace it")


def _print_samples(model, tokenizer, count, *, max_new_tokens=200, temperature=0.8, seed=0):
    """Print `count` documents generated from an empty prompt (the start of a document)."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.generation import generate

    model.eval()
    for index in range(count):
        text = generate(model, tokenizer, "", max_new_tokens, temperature=temperature,
                        seed=seed + index, stop_at_end=True)
        ended = len(text) < max_new_tokens  # stopped at <eot> before running out of characters
        print(f"\n--- sample {index + 1} ({'ended by itself' if ended else 'cut at the limit'})")
        print(text)
