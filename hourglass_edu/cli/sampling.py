"""`sample`: stream a trained model's continuation of a prompt."""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path

from hourglass_edu.cli.options import device, given, non_negative_int, seed
from hourglass_edu.files import recover_folder_replacement

__all__ = ["add_sample", "refuse_a_missing_checkpoint"]


def add_sample(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="stream text from a trained model (cached decoding)",
        description="Load a checkpoint written by `train`, a model folder, or a shipped model, "
        "and continue PROMPT, printing each character as it is made. Decoding keeps key/value "
        "caches at every level of the hourglass, so each character costs one position of work. "
        "The prompt is printed as the model read it (normalized, unknown characters replaced).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=given, help="checkpoint file, run directory (its "
                        "best.pt; RUN/checkpoint.pt for the last weights) or model folder")
    source.add_argument("--pretrained", metavar="NAME", type=given,
                        help="a model shipped with the package (see `models`)")
    parser.add_argument("--prompt", default="",
                        help="text to continue (default: empty = the start of a new document)")
    parser.add_argument("--max-new-tokens", type=non_negative_int, default=500,
                        help="most characters to generate (default 500)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy; higher = more surprising (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely characters")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the smallest set with probability >= p")
    parser.add_argument("--seed", type=seed, default=None, help="makes the sample reproducible")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop before this text appears (may be given several times)")
    parser.add_argument("--no-stop-at-end", dest="stop_at_end", action="store_false",
                        help="keep going past <eot> (the end of a document)")
    parser.add_argument("--replace-unknown", default=None, metavar="TEXT",
                        help="put TEXT in place of prompt characters outside the vocabulary "
                        "(default: refuse them, for every model)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole window for every character (slow; to compare)")
    parser.add_argument("--device", type=device, default="cpu",
                        help="cpu (default), cuda, cuda:N, auto (cuda when there is one), mps")
    parser.set_defaults(run=run_sample)


def _generation_settings(args):
    """The GenerationSettings of a `sample` command line: each of its options that sets a
    setting has the setting's name as `dest`, so the fields are picked out by name."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.generation import GenerationSettings

    names = [field.name for field in fields(GenerationSettings) if hasattr(args, field.name)]
    return GenerationSettings(**{name: getattr(args, name) for name in names})


def run_sample(args) -> int:
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.generation import prompt_as_seen, stream
    from hourglass_edu.pretrained import load_pretrained
    from hourglass_edu.training import load_model

    settings = _generation_settings(args)  # checked before the checkpoint is loaded
    if args.pretrained is None:
        refuse_a_missing_checkpoint(args.ckpt)
    if args.pretrained is not None:
        model, tokenizer = load_pretrained(args.pretrained, device=args.device)
    else:
        model, tokenizer = load_model(args.ckpt, device=args.device)
    pieces = stream(model, tokenizer, args.prompt, args.max_new_tokens, settings)
    # print, not sys.stdout.write: with stdout closed (`>&-`) sys.stdout is None, and print
    # then writes nothing instead of failing
    print(prompt_as_seen(tokenizer, args.prompt, replace_unknown=settings.replace_unknown),
          end="", flush=True)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:  # Ctrl-C ends the sample, not with a traceback
        print()
        return 130
    print()
    return 0


def refuse_a_missing_checkpoint(ckpt: str) -> None:
    """--ckpt that names nothing on disk, said before anything loads; the name of a shipped
    model there means --pretrained was meant."""
    # here, not at the top: torch loads only when the command runs (cli/__init__.py)
    from hourglass_edu.pretrained import list_pretrained

    if not Path(ckpt).exists() and (recovered := recover_folder_replacement(ckpt)):
        warnings.warn(recovered, stacklevel=2)  # an export killed mid-swap: the folder is back
    if Path(ckpt).exists():
        return
    hint = (f"the shipped model of that name is --pretrained {ckpt}" if ckpt in list_pretrained()
            else "check the path")
    raise FileNotFoundError(f"--ckpt {ckpt}: no checkpoint, run folder or model folder is "
                            f"there; {hint}")
