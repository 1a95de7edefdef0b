"""The command line: `python -m hourglass_edu SUBCOMMAND --help` describes each subcommand.

Each subcommand is a pair of functions: `_add_NAME(subparsers)` declares its arguments and
`_run_NAME(args)` does the work. Library code stays in the library modules; this file only parses
arguments, calls them, and prints.
"""

from __future__ import annotations

import argparse
import sys


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
        help="stream text from a trained checkpoint (cached decoding)",
        description="Load a checkpoint written by `train` and continue PROMPT, printing each "
        "character as it is made. Decoding keeps key/value caches at every level of the "
        "hourglass, so each character costs one position of work.",
    )
    parser.add_argument("--ckpt", required=True,
                        help="checkpoint file, or the run directory holding checkpoint.pt")
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
    parser.add_argument("--no-stop-at-end", action="store_true",
                        help="keep going past <eot> (the end of a document)")
    parser.add_argument("--replace-unknown", default=None, metavar="TEXT",
                        help="put TEXT in place of prompt characters outside the vocabulary "
                        "(default: refuse them)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole window for every character (slow; to compare)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from hourglass_edu.generate import stream
    from hourglass_edu.train import load_model

    model, tokenizer = load_model(args.ckpt, device=args.device)
    pieces = stream(
        model, tokenizer, args.prompt, args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache,
        stop_at_end=not args.no_stop_at_end, stop=args.stop, replace_unknown=args.replace_unknown,
    )
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


_SUBCOMMANDS: list = [_add_corpus, _add_sample]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Library errors already say what to change; a traceback would only hide that.
        print(f"error: {error}", file=sys.stderr)
        return 2
