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
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hourglass_edu import prepare_data  # noqa: E402
from hourglass_edu.related.compare import (  # noqa: E402
    build_comparison_models,
    markdown_table,
    measure_cost,
    train_comparison,
)
from hourglass_edu.training import TrainConfig, resolve_precision  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--corpus", default="haiku")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per model (default 1.0; --quick: 10 steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results_dir = Path(__file__).resolve().parent / "results"
    out = args.out or results_dir / ("bench_related_quick.md" if args.quick else "bench_related.md")

    if args.quick:
        size = dict(d_model=32, n_heads=2, n_layers=2, window=8)
        block_size, batch_size, lengths = 64, 8, [64, 128]
        budget = dict(steps=10, minutes=None)
        eval_batches = 2
    else:
        size = dict(d_model=128, n_heads=4, n_layers=4, window=32)
        block_size, batch_size, lengths = 256, 16, [256, 512, 1024, 2048]
        budget = dict(steps=None, minutes=args.minutes or 1.0)
        eval_batches = 10
    if args.minutes is not None:
        budget = dict(steps=None, minutes=args.minutes)

    started = time.perf_counter()
    data = prepare_data(args.corpus)
    vocab = data.tokenizer.vocab_size
    config = TrainConfig(**budget, batch_size=batch_size, block_size=block_size, lr=2e-3,
                         warmup_steps=5 if args.quick else 50, eval_every=5 if args.quick else 200,
                         eval_batches=2 if args.quick else 4, log_every=5 if args.quick else 10,
                         device=args.device, progress=False)
    models = build_comparison_models(vocab, max_length=block_size, **size)
    results = train_comparison(models, data, config, eval_batches=eval_batches)
    reference = results["transformer"]["val_bpc"]
    quality_rows = []
    for name, result in results.items():
        seconds = max(result["train_seconds"], 1e-9)
        quality_rows.append({
            "model": name, "parameters": result["parameters"], "steps": result["steps"],
            "train_seconds": result["train_seconds"],
            "chars_per_s": result["steps"] * batch_size * block_size / seconds,
            "val_bpc": result["val_bpc"], "delta": result["val_bpc"] - reference,
        })
    print(f"trained {len(models)} models in {time.perf_counter() - started:.0f} s")

    scaling_models = build_comparison_models(vocab, max_length=max(lengths), **size)
    cost_rows = measure_cost(scaling_models, lengths, repeats=1 if args.quick else 2,
                             device=args.device)
    by_key = {(row["model"], row["length"]): row for row in cost_rows}
    longest = max(lengths)
    for row in cost_rows:
        base = by_key[("transformer", row["length"])]
        row["time_ratio"] = row["ms_per_step"] / base["ms_per_step"]
        row["memory_ratio"] = row["saved_mb"] / base["saved_mb"]
    elapsed = time.perf_counter() - started

    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    budget_text = (f"{budget['steps']} steps" if budget["steps"] else
                   f"{budget['minutes']:g} training minutes")
    setup = (
        f"Setup: {'quick smoke run, ' if args.quick else ''}device {args.device} "
        f"({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"precision {precision}, corpus {args.corpus}; d_model {size['d_model']}, "
        f"{size['n_heads']} heads, transformer depth {size['n_layers']}, window {size['window']}; "
        f"training: {budget_text} per model, batch {batch_size} x {block_size} characters, "
        f"lr 2e-3 cosine; validation bpc on {eval_batches} fixed random windows; took "
        f"{elapsed:.0f} s."
    )
    command = "python benchmarks/bench_related.py" + (" --quick" if args.quick else "")
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
    longest_rows = sorted((r for r in cost_rows if r["length"] == longest),
                          key=lambda r: r["ms_per_step"])
    fastest = ", ".join(f"{r['model']} {r['time_ratio']:.2f}x" for r in longest_rows)
    text = (
        "# Related designs: quality for the same budget, cost against length\n\n"
        f"{setup}\n\nCommand: `{command}`\n\n"
        "## Quality after the same training budget\n\n" + quality + "\n\n"
        "## One training step (forward + backward, batch 1) against sequence length\n\n"
        + cost + "\n\n"
        f"Step time at length {longest}, relative to the plain transformer: {fastest}.\n"
    )
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + f".{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(out)  # atomic: a reader never sees half a table
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
