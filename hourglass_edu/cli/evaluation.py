"""`evaluate`: a trained model's bits per character on a whole validation split, long context."""

from __future__ import annotations

import sys
from pathlib import Path

from hourglass_edu.cli.options import device, given, positive_int, seed
from hourglass_edu.cli.runs import check_val_fraction
from hourglass_edu.cli.sampling import refuse_a_missing_checkpoint

__all__ = ["add_evaluate"]


def add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="bits per character on a whole validation split, with long context",
        description="Score every character of the validation split of a corpus (by default the "
        "one the model was trained on) with windows of CONTEXT characters that slide by STRIDE: "
        "each window scores only its last STRIDE characters, so every scored character sees at "
        "least CONTEXT - STRIDE characters before it (the strided sliding-window protocol). "
        "STRIDE = CONTEXT is the plain evaluation of the model cards, in which the first "
        "characters of each window see almost nothing. CONTEXT may not exceed the model's "
        "max_length.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=given, help="checkpoint file, run directory (its "
                        "best.pt; RUN/checkpoint.pt for the last weights) or model folder")
    source.add_argument("--pretrained", metavar="NAME", type=given,
                        help="a model shipped with the package (see `models`)")
    parser.add_argument("--context", type=positive_int, default=None,
                        help="characters per window (default: the model's max_length)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="characters scored per window (default: CONTEXT // 2)")
    parser.add_argument("--no-eot", dest="count_eot", action="store_false",
                        help="leave the <eot> (end of document) targets out of the average")
    parser.add_argument("--corpus", type=given, default=None,
                        help="the corpus to score (default: the model's training corpus)")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of documents held out, as in training (default 0.05)")
    parser.add_argument("--split-seed", type=seed, default=0,
                        help="the seed of the document split, as in training (default 0)")
    parser.add_argument("--max-tokens", type=positive_int, default=None,
                        help="score only the first N tokens of the split (quicker, less exact)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="windows per forward pass")
    parser.add_argument("--device", type=device, default="cpu",
                        help="cpu (default), cuda, cuda:N, auto (cuda when there is one), mps")
    parser.set_defaults(run=run_evaluate)


def _model_and_record(args):
    """`(model, tokenizer, record)` of the model the command line names (a run folder means its
    best checkpoint, as for `sample`: `model_source`); `record` says what it was trained on:
    "corpus" (a name), and where recorded "corpus_path" and "corpus_sha256"."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.model_folders import is_model_folder, load_model_folder, read_card
    from hourglass_edu.pretrained import load_pretrained, pretrained_card
    from hourglass_edu.training import load_checkpoint, model_from_checkpoint
    from hourglass_edu.training.checkpoints import model_source

    if args.pretrained is not None:
        model, tokenizer = load_pretrained(args.pretrained, device=args.device)
        return model, tokenizer, {"corpus": pretrained_card(args.pretrained).get("corpus"),
                                  "shipped": True}
    source = model_source(args.ckpt)
    if is_model_folder(source):
        model, tokenizer = load_model_folder(source, device=args.device)
        return model, tokenizer, read_card(source)
    checkpoint = load_checkpoint(source)  # read once: the model and the corpus it names
    model, tokenizer = model_from_checkpoint(checkpoint, device=args.device)
    data = checkpoint.get("data")
    return model, tokenizer, data if isinstance(data, dict) else {}


def _training_corpus(record: dict, source: str):
    """`(corpus, label)`: the corpus `record` says the model was trained on, checked against the
    recorded sha256 of its documents. Raises when it cannot be found or is another text."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import CORPORA, load_corpus
    from hourglass_edu.data.provenance import corpus_sha256

    name, path, digest = (record.get(key) for key in ("corpus", "corpus_path", "corpus_sha256"))
    name, path, digest = (value if isinstance(value, str) else None
                          for value in (name, path, digest))
    if path is not None:
        if not Path(path).exists():
            raise FileNotFoundError(f"{source} was trained on {path}, which is no longer there: "
                                    "pass that corpus (or a copy) with --corpus PATH")
        corpus, label = load_corpus(path), path
    elif name in CORPORA:
        corpus, label = load_corpus(name), name
    elif name is None:
        raise ValueError(f"{source} does not say which corpus it was trained on: name one "
                         "with --corpus")
    else:
        raise ValueError(f"{source} was trained on a corpus called {name!r}, which is not a "
                         f"registered corpus ({', '.join(sorted(CORPORA))}), and it records no "
                         "file (it was written before corpus paths were): pass that corpus "
                         "with --corpus PATH")
    if digest is None:
        if not record.get("shipped"):
            print(f"note: {source} records no sha256 of its corpus (written before they were), "
                  f"so {label} is scored without checking that it is the text it was trained "
                  "on", file=sys.stderr)
    elif corpus_sha256(corpus.documents) != digest:
        raise ValueError(f"{label} is not the text {source} was trained on (the sha256 of its "
                         "documents differs from the one recorded in training): pass the "
                         "training corpus with --corpus PATH")
    return corpus, label


def _check_options(args) -> None:
    """Everything that can be checked before the model and corpus load."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.devices import resolve_device

    if args.max_tokens is not None and args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    if args.context is not None and args.stride is not None and args.stride > args.context:
        raise ValueError(f"--stride {args.stride} exceeds --context {args.context}: a window "
                         "cannot score more characters than it holds")
    check_val_fraction(args)
    resolve_device(args.device)
    if args.ckpt is not None:
        refuse_a_missing_checkpoint(args.ckpt)


def run_evaluate(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import prepare_data
    from hourglass_edu.training import evaluate_bpc_long_context

    _check_options(args)
    model, tokenizer, record = _model_and_record(args)
    context = args.context if args.context is not None else model.config.max_length
    longest = model.config.max_length
    if context > longest:  # refused before a corpus is read or downloaded
        raise ValueError(f"--context {context} exceeds the model's max_length {longest}: "
                         f"evaluate with a context of at most {longest} (the longest sequence "
                         "the model was built for)")
    if args.corpus:
        corpus, label = args.corpus, args.corpus
    else:
        corpus, label = _training_corpus(record, args.pretrained or args.ckpt)
    data = prepare_data(corpus, args.val_fraction, args.split_seed, tokenizer=tokenizer)
    ids = data.val_ids if args.max_tokens is None else data.val_ids[:args.max_tokens]
    stride = args.stride if args.stride is not None else max(1, context // 2)
    bpc = evaluate_bpc_long_context(model, ids, context=context, stride=stride,
                                    count_eot=args.count_eot, eot_id=tokenizer.eot_id,
                                    batch_size=args.batch_size, device=args.device)
    scope = "the whole" if args.max_tokens is None else "the first part of the"
    print(f"{bpc:.4f} bits per character on {scope} {label} validation split "
          f"({ids.numel():,} tokens), context {context}, stride {stride} (every scored character "
          f"sees at least {context - stride} before it), <eot> targets "
          f"{'counted' if args.count_eot else 'left out'}")
    return 0
