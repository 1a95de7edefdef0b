"""`corpus`: a corpus's statistics."""

from __future__ import annotations

from hourglass_edu.cli.options import given, seed

__all__ = ["add_corpus"]


def add_corpus(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="print a corpus's statistics (documents, characters, vocabulary, split)",
        description="Load a corpus (downloading and verifying it if needed), split it into train "
        "and validation documents, build the character vocabulary from train, and print the "
        "statistics. NAME is a registered corpus (haiku, lovecraft) or a path to a .txt file "
        "(documents separated by blank lines) or a folder of .txt files (one document each).",
    )
    parser.add_argument("name", metavar="NAME", type=given, help="haiku, lovecraft, or a path")
    parser.add_argument("--data-dir", type=given, default=None, help="read/download corpus "
                        "files here instead of $HOURGLASS_EDU_DATA and the cache directory")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of documents held out for validation (default 0.05)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the split (default 0)")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading missing files")
    parser.set_defaults(run=run_corpus)


def run_corpus(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.data import prepare_data

    data = prepare_data(args.name, val_fraction=args.val_fraction, seed=args.seed,
                        data_dir=args.data_dir, download=not args.no_download)
    print(data.describe())
    return 0
