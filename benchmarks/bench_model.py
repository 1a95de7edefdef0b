"""Training speed and memory: hourglass "2@1 8@3 2@1" against a plain "12@1" transformer.

Both models have the same width (d_model 256, 4 heads, feed-forward 1024, 12 blocks); the
hourglass runs 8 of its 12 blocks on a sequence 3x shorter. For sequence lengths 512, 1024 and
2048, in fp32 and under bf16 autocast, we time full training steps (forward, backward, AdamW) on a
fixed number of tokens per step and report

* tokens/s, and the measured speed-up of the hourglass over the plain model;
* the speed-up the FLOP estimate predicts (``HourglassLM.flops_per_token``), and measured /
  predicted (the issue's goal: >= 85% at sequence 1024);
* bf16 autocast over fp32;
* memory: on CUDA the peak allocated; everywhere the bytes of activations autograd saves for the
  backward pass (counted with saved-tensor hooks, parameters excluded), which is what grows with
  sequence length and what the hourglass shortens.

    python benchmarks/bench_model.py            # full: 2-5 min on a quiet 2-core CPU
    python benchmarks/bench_model.py --quick    # smoke test: tiny sizes, well under a minute

Writes the table to benchmarks/results/bench_model.md (``--quick``: bench_model_quick.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import benchmark_parser, machine_line, markdown_table, parse_benchmark_args, publish

from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.analysis import saved_activation_bytes

__all__ = ["main"]

STRUCTURES = {"hourglass": "2@1 8@3 2@1", "plain": "12@1"}
PRECISIONS = ("fp32", "bf16")
VOCAB = 128


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, threads_help="torch CPU threads (default: torch's "
                              "choice; --quick: 1, because tiny models on a busy machine lose "
                              "more to thread contention)")
    args = parse_benchmark_args(parser, argv, "bench_model", quick_threads=1)
    if args.quick:
        args.d_model, args.n_heads, args.lengths = 64, 2, [96, 192]
        args.tokens_per_step, args.warmup, args.steps = 384, 1, 2
    else:
        args.d_model, args.n_heads, args.lengths = 256, 4, [512, 1024, 2048]
        args.tokens_per_step, args.warmup, args.steps = 2048, 1, 3
    return args


def measure(structure, length, precision, args, device) -> dict:
    torch.manual_seed(0)
    config = HourglassConfig(vocab_size=VOCAB, d_model=args.d_model, n_heads=args.n_heads,
                             structure=structure, max_length=max(args.lengths))
    model = HourglassLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = max(1, args.tokens_per_step // length)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (batch, length + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def dtype_context():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    def step():
        with dtype_context():
            logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    saved = saved_activation_bytes(model, inputs, dtype_context(), targets=targets)
    return dict(tokens_per_s=batch * length / seconds, seconds=seconds, batch=batch, peak=peak,
                saved=saved, flops=model.flops_per_token(length)["total"])


def measure_all(args, device) -> dict:
    """{(model name, sequence length, precision): measure(...)} for every combination."""
    measured = {}
    for length in args.lengths:
        for precision in PRECISIONS:
            for name, structure in STRUCTURES.items():
                result = measure(structure, length, precision, args, device)
                measured[name, length, precision] = result
                print(f"  {name:9s} seq {length:5d} {precision}: "
                      f"{result['tokens_per_s']:9.0f} tokens/s", flush=True)
    return measured


def tabulate_speeds(measured: dict, args, device) -> str:
    rows = []
    for length in args.lengths:
        for precision in PRECISIONS:
            for name in STRUCTURES:
                r = measured[name, length, precision]
                rows.append({"seq": length, "precision": precision,
                             "model": f"{name} `{STRUCTURES[name]}`", "tokens_s": r["tokens_per_s"],
                             "seconds": r["seconds"], "saved": r["saved"] / 2**20,
                             "peak": r["peak"] / 2**20 if r["peak"] is not None else None,
                             "gflops": r["flops"] / 1e9})
    peak = [("peak", "peak CUDA (MiB)", "{:.0f}")] if device.type == "cuda" else []
    return markdown_table(rows, [
        ("seq", "seq", "{}"), ("precision", "precision", "{}"), ("model", "model", "{}"),
        ("tokens_s", "tokens/s", "{:.0f}"), ("seconds", "step (s)", "{:.3f}"),
        ("saved", "saved activations (MiB)", "{:.1f}"), *peak,
        ("gflops", "GFLOP/token (fwd)", "{:.4f}"),
    ])


def tabulate_ratios(measured: dict, args) -> str:
    rows = []
    for length in args.lengths:
        for precision in PRECISIONS:
            hourglass = measured["hourglass", length, precision]
            plain = measured["plain", length, precision]
            speedup = hourglass["tokens_per_s"] / plain["tokens_per_s"]
            predicted = plain["flops"] / hourglass["flops"]
            rows.append({"seq": length, "precision": precision, "speedup": speedup,
                         "predicted": predicted, "share": speedup / predicted,
                         "memory": plain["saved"] / hourglass["saved"],
                         "bf16": measured["hourglass", length, "bf16"]["tokens_per_s"]
                         / measured["hourglass", length, "fp32"]["tokens_per_s"]})
    return markdown_table(rows, [
        ("seq", "seq", "{}"), ("precision", "precision", "{}"),
        ("speedup", "measured speed-up", "{:.2f}x"),
        ("predicted", "FLOP-predicted speed-up", "{:.2f}x"),
        ("share", "measured / predicted", "{:.0%}"),
        ("memory", "activation memory ratio", "{:.2f}x less"),
        ("bf16", "bf16 / fp32 (hourglass)", "{:.2f}x"),
    ])


def report(measured: dict, args, device, elapsed: float) -> str:
    setup = (f"{'quick smoke run, ' if args.quick else ''}{machine_line(device)}, "
             f"d_model {args.d_model}, {args.n_heads} heads, "
             f"{args.tokens_per_step} tokens per step, {args.steps} timed steps after "
             f"{args.warmup} warm-up, avg shortening + repeat upsampling, fused attention; "
             f"took {elapsed:.0f} s")
    return "\n".join([
        "# Model benchmark: hourglass vs plain transformer, training", "",
        f"Setup: {setup}.", "",
        f"Command: `{args.command}`", "",
        tabulate_speeds(measured, args, device), "",
        "Ratios (hourglass over plain unless said otherwise):", "",
        tabulate_ratios(measured, args), "",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    measured = measure_all(args, device)
    text = report(measured, args, device, time.perf_counter() - started)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
