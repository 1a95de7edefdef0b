"""Related designs side by side: quality for a fixed wall-clock budget, and cost against length.

Five character models of the same width, sized to cost about the same per token
(``hourglass_edu.related.compare.build_comparison_models``): a plain transformer ("4@1"), the
hourglass ("1@1 4@3 1@1"), Long-Short, H-Transformer-1D and the simple hierarchical transformer.

1. Quality: each is trained by the library's trainer on the same corpus with identical settings
   for the same number of minutes, then evaluated on the same validation windows (bits per
   character, cross-entropy only).
2. Cost: one training step (forward + backward, batch 1) per model at several sequence lengths:
   milliseconds per step and the activations autograd saves for the backward pass.

    python benchmarks/bench_related.py            # full: about 7 minutes on a quiet 2-core CPU
    python benchmarks/bench_related.py --quick    # smoke test: tiny sizes, well under a minute

Needs the corpus (HOURGLASS_EDU_DATA or a download). Writes the tables to
benchmarks/results/bench_related.md (``--quick``: bench_related_quick.md).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import benchmark_parser, machine_line, markdown_table, parse_benchmark_args, publish

from hourglass_edu import prepare_data
from hourglass_edu.related.compare import build_comparison_models, measure_cost, train_comparison
from hourglass_edu.training import TrainConfig, resolve_precision


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--corpus", default="haiku")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per model (default 1.0; --quick: 10 steps)")
    args = parse_benchmark_args(parser, argv, "bench_related")
    if args.quick:
        args.size = dict(d_model=32, n_heads=2, n_layers=2, window=8)
        args.block_size, args.batch_size, args.lengths = 64, 8, [64, 128]
        args.budget = dict(steps=10, minutes=None)
        args.eval_batches = 2
    else:
        args.size = dict(d_model=128, n_heads=4, n_layers=4, window=32)
        args.block_size, args.batch_size, args.lengths = 256, 16, [256, 512, 1024, 2048]
        args.budget = dict(steps=None, minutes=args.minutes or 1.0)
        args.eval_batches = 10
    if args.minutes is not None:
        args.budget = dict(steps=None, minutes=args.minutes)
    return args


def measure_quality(data, args) -> list[dict]:
    """Train every model for the same budget; one row per model, bpc against the transformer."""
    quick = args.quick
    config = TrainConfig(**args.budget, batch_size=args.batch_size, block_size=args.block_size,
                         lr=2e-3, warmup_steps=5 if quick else 50, eval_every=5 if quick else 200,
                         eval_batches=2 if quick else 4, log_every=5 if quick else 10,
                         device=args.device, progress=False)
    models = build_comparison_models(data.tokenizer.vocab_size, max_length=args.block_size,
                                     **args.size)
    results = train_comparison(models, data, config, eval_batches=args.eval_batches)
    reference = results["transformer"]["val_bpc"]
    rows = []
    for name, result in results.items():
        seconds = max(result["train_seconds"], 1e-9)
        rows.append({
            "model": name, "parameters": result["parameters"], "steps": result["steps"],
            "train_seconds": result["train_seconds"],
            "chars_per_s": result["steps"] * args.batch_size * args.block_size / seconds,
            "val_bpc": result["val_bpc"], "delta": result["val_bpc"] - reference,
        })
    return rows


def measure_costs(vocab_size: int, args) -> list[dict]:
    """One training step per model and length, with time and memory against the transformer."""
    models = build_comparison_models(vocab_size, max_length=max(args.lengths), **args.size)
    rows = measure_cost(models, args.lengths, repeats=1 if args.quick else 2, device=args.device)
    by_key = {(row["model"], row["length"]): row for row in rows}
    for row in rows:
        base = by_key[("transformer", row["length"])]
        row["time_ratio"] = row["ms_per_step"] / base["ms_per_step"]
        row["memory_ratio"] = row["saved_mb"] / base["saved_mb"]
    return rows


def tabulate(quality_rows: list[dict], cost_rows: list[dict], args, elapsed: float) -> str:
    precision = resolve_precision("auto", torch.device(args.device))
    budget = args.budget
    budget_text = (f"{budget['steps']} steps" if budget["steps"] else
                   f"{budget['minutes']:g} training minutes")
    size = args.size
    setup = (
        f"Setup: {'quick smoke run, ' if args.quick else ''}{machine_line(args.device)}, "
        f"precision {precision}, corpus {args.corpus}; d_model {size['d_model']}, "
        f"{size['n_heads']} heads, transformer depth {size['n_layers']}, window {size['window']}; "
        f"training: {budget_text} per model, batch {args.batch_size} x {args.block_size} "
        f"characters, lr 2e-3 cosine; validation bpc on {args.eval_batches} fixed random windows; "
        f"took {elapsed:.0f} s."
    )
    quality = markdown_table(quality_rows, [
        ("model", "model", "{}"), ("parameters", "parameters", "{:,d}"), ("steps", "steps", "{}"),
        ("chars_per_s", "train chars/s", "{:,.0f}"), ("val_bpc", "val bpc", "{:.3f}"),
        ("delta", "vs transformer", "{:+.3f}"),
    ])
    cost = markdown_table(cost_rows, [
        ("model", "model", "{}"), ("length", "length", "{}"), ("ms_per_step", "ms/step", "{:.1f}"),
        ("time_ratio", "time vs transformer", "{:.2f}x"), ("saved_mb", "saved MB", "{:.1f}"),
        ("memory_ratio", "memory vs transformer", "{:.2f}x"), ("peak_mb", "peak MB", "{:.0f}"),
    ])
    longest = max(args.lengths)
    longest_rows = sorted((r for r in cost_rows if r["length"] == longest),
                          key=lambda r: r["ms_per_step"])
    fastest = ", ".join(f"{r['model']} {r['time_ratio']:.2f}x" for r in longest_rows)
    return (
        "# Related designs: quality for the same budget, cost against length\n\n"
        f"{setup}\n\nCommand: `{args.command}`\n\n"
        "## Quality after the same training budget\n\n" + quality + "\n\n"
        "## One training step (forward + backward, batch 1) against sequence length\n\n"
        + cost + "\n\n"
        f"Step time at length {longest}, relative to the plain transformer: {fastest}.\n"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    data = prepare_data(args.corpus)
    quality_rows = measure_quality(data, args)
    print(f"trained {len(quality_rows)} models in {time.perf_counter() - started:.0f} s")
    cost_rows = measure_costs(data.tokenizer.vocab_size, args)
    publish(tabulate(quality_rows, cost_rows, args, time.perf_counter() - started), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
