"""Quality at equal compute: the hourglass "2@1 8@3 2@1" against the plain transformer "12@1".

Both models have the same width (d_model, heads, feed-forward) and 12 blocks; the hourglass runs
8 of them on a sequence 3x shorter. Both train on Lovecraft with the same recipe, batches and seed
(`hourglass_edu.training`, precision "auto": bf16 autocast where the hardware has it).

1. Same wall-clock budget: each trains for `--minutes` of training time (a time-driven cosine, so
   each ends its schedule at the end of the budget). The cheaper model takes more steps.
2. Same number of steps: each trains for S steps, S = the steps the plain model reached in (1).

Reported: optimizer steps, training tokens seen, training seconds, validation bits per character
on the whole validation split, and hourglass minus plain (negative = the hourglass is better).
The paper's claim is that the hourglass wins at equal compute (setting 1).

    python benchmarks/bench_quality.py                 # full: 2 x 2 runs of --minutes (default 10)
    python benchmarks/bench_quality.py --quick         # smoke test: tiny model, well under a minute

Writes the table to benchmarks/results/bench_quality.md (``--quick``: bench_quality_quick.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import command_line, machine_line, markdown_table, publish, results_path

from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.data import prepare_data
from hourglass_edu.devices import resolve_device
from hourglass_edu.training import TrainConfig, evaluate_bpc, resolve_precision, train

STRUCTURES = {"hourglass": "2@1 8@3 2@1", "plain": "12@1"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--minutes", type=float, default=10.0, help="budget per run (setting 1)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-batches", type=int, default=None,
                        help="validation batches (default: the whole split)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.d_model, args.n_heads = 0.05, 32, 2
        args.batch_size, args.block_size, args.warmup_steps = 8, 96, 5
        args.lr, args.val_batches = 3e-3, 8
    args.out = results_path("bench_quality", args.quick, args.out)
    args.command = command_line(__file__, argv)
    return args


def build(structure: str, vocab_size: int, args) -> HourglassLM:
    torch.manual_seed(args.seed)
    return HourglassLM(HourglassConfig(vocab_size=vocab_size, d_model=args.d_model,
                                       n_heads=args.n_heads, structure=structure,
                                       max_length=args.block_size))


def warm_up(model, data, args, device, precision) -> None:
    """One forward and backward pass, thrown away: kernel selection and first-call allocations
    (seconds for bf16 on a CPU) would otherwise be charged to the time budget."""
    from hourglass_edu.training import language_model_loss
    from hourglass_edu.training.precision import autocast_context

    model.to(device)
    tokens = data.train_ids[: args.block_size + 1].to(device)
    inputs, targets = tokens[None, :-1].expand(args.batch_size, -1), tokens[None, 1:]
    with autocast_context(precision, device):
        logits = model(inputs)
    language_model_loss(logits, targets.expand(args.batch_size, -1)).backward()
    model.zero_grad(set_to_none=True)


def run_one(structure: str, data, args, *, steps=None, minutes=None) -> dict:
    model = build(structure, data.tokenizer.vocab_size, args)
    device = resolve_device(args.device)
    warm_up(model, data, args, device, resolve_precision(args.precision, device))
    config = TrainConfig(
        steps=steps, minutes=minutes, batch_size=args.batch_size, block_size=args.block_size,
        lr=args.lr, warmup_steps=args.warmup_steps, eval_every=10**9, eval_batches=4,
        log_every=50, precision=args.precision, device=args.device, seed=args.seed,
        progress=not args.no_progress,
    )
    history = train(model, data, config)
    last = history.records[-1]
    val_bpc = evaluate_bpc(model, data.val_ids, batch_size=args.batch_size,
                           block_size=args.block_size, max_batches=args.val_batches,
                           device=args.device, precision=args.precision)
    return {"structure": structure, "params": model.num_parameters(), "steps": last["step"],
            "tokens": last["tokens"], "seconds": last["elapsed"], "val_bpc": val_bpc}


def measure(data, args) -> list[dict]:
    """Both models for the same time, then both for the plain model's number of steps."""
    rows = []
    for name, structure in STRUCTURES.items():
        print(f"[same time] {name} {structure}: {args.minutes:g} minutes", flush=True)
        rows.append({"setting": f"same time ({args.minutes:g} min)", "name": name,
                     **run_one(structure, data, args, minutes=args.minutes)})
    equal_steps = rows[1]["steps"]  # what the plain model reached in the time budget
    for name, structure in STRUCTURES.items():
        print(f"[same steps] {name} {structure}: {equal_steps} steps", flush=True)
        rows.append({"setting": f"same steps ({equal_steps})", "name": name,
                     **run_one(structure, data, args, steps=equal_steps)})
    return rows


def tabulate(rows: list[dict], args) -> str:
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    lines = [
        "# Quality at equal compute: hourglass vs plain transformer (Lovecraft)",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine_line(device)}, precision {precision}  ",
        f"Models: d_model {args.d_model}, {args.n_heads} heads, 12 blocks; batch "
        f"{args.batch_size} x {args.block_size} tokens, peak lr {args.lr:g}, seed {args.seed}  ",
        "Validation: " + ("the whole split" if args.val_batches is None
                          else f"a fixed sample of {args.val_batches} batches"),
        "",
        markdown_table(rows, [
            ("setting", "setting", "{}"), ("name", "model", "{}"),
            ("structure", "structure", "`{}`"), ("params", "params", "{:,}"),
            ("steps", "steps", "{:,}"), ("tokens", "tokens seen", "{:,}"),
            ("seconds", "train s", "{:.0f}"), ("val_bpc", "val bpc", "{:.3f}"),
        ]),
        "",
    ]
    for first in (0, 2):
        hourglass, plain = rows[first], rows[first + 1]
        lines.append(
            f"- {hourglass['setting']}: hourglass - plain = "
            f"{hourglass['val_bpc'] - plain['val_bpc']:+.3f} bits per character; the hourglass "
            f"saw {hourglass['tokens'] / plain['tokens']:.2f}x the tokens in "
            f"{hourglass['seconds'] / max(plain['seconds'], 1e-9):.2f}x the time."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    data = prepare_data("lovecraft", data_dir=args.data_dir)
    publish(tabulate(measure(data, args), args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
