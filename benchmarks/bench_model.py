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
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import publish  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hourglass_edu import HourglassConfig, HourglassLM  # noqa: E402
from hourglass_edu.analysis import saved_activation_bytes  # noqa: E402

__all__ = ["main"]

STRUCTURES = {"hourglass": "2@1 8@3 2@1", "plain": "12@1"}
VOCAB = 128


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; --quick: 1, because "
                             "tiny models on a busy machine lose more to thread contention)")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    if args.quick:
        args.d_model, args.n_heads, args.lengths = 64, 2, [96, 192]
        args.tokens_per_step, args.warmup, args.steps = 384, 1, 2
    else:
        args.d_model, args.n_heads, args.lengths = 256, 4, [512, 1024, 2048]
        args.tokens_per_step, args.warmup, args.steps = 2048, 1, 3
    device = torch.device(args.device)
    results_dir = Path(__file__).resolve().parent / "results"
    out = args.out or results_dir / ("bench_model_quick.md" if args.quick else "bench_model.md")

    measured = {}
    total_start = time.perf_counter()
    for length in args.lengths:
        for precision in ("fp32", "bf16"):
            for name, structure in STRUCTURES.items():
                result = measure(structure, length, precision, args, device)
                measured[name, length, precision] = result
                print(f"  {name:9s} seq {length:5d} {precision}: "
                      f"{result['tokens_per_s']:9.0f} tokens/s", flush=True)

    header = ("| seq | precision | model | tokens/s | step (s) | saved activations (MiB) | "
              + ("peak CUDA (MiB) | " if device.type == "cuda" else "")
              + "GFLOP/token (fwd) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for length in args.lengths:
        for precision in ("fp32", "bf16"):
            for name in STRUCTURES:
                r = measured[name, length, precision]
                cells = [str(length), precision, f"{name} `{STRUCTURES[name]}`",
                         f"{r['tokens_per_s']:.0f}", f"{r['seconds']:.3f}",
                         f"{r['saved'] / 2**20:.1f}"]
                if device.type == "cuda":
                    cells.append(f"{r['peak'] / 2**20:.0f}")
                cells.append(f"{r['flops'] / 1e9:.4f}")
                lines.append("| " + " | ".join(cells) + " |")
    ratio_header = ("| seq | precision | measured speed-up | FLOP-predicted speed-up | "
                    "measured / predicted | activation memory ratio | bf16 / fp32 (hourglass) |")
    ratio_lines = [ratio_header, "|" + "---|" * (ratio_header.count("|") - 1)]
    for length in args.lengths:
        for precision in ("fp32", "bf16"):
            hourglass, plain = measured["hourglass", length, precision], measured["plain", length,
                                                                                   precision]
            speedup = hourglass["tokens_per_s"] / plain["tokens_per_s"]
            predicted = plain["flops"] / hourglass["flops"]
            bf16_gain = (measured["hourglass", length, "bf16"]["tokens_per_s"]
                         / measured["hourglass", length, "fp32"]["tokens_per_s"])
            ratio_lines.append(
                f"| {length} | {precision} | {speedup:.2f}x | {predicted:.2f}x | "
                f"{speedup / predicted:.0%} | {plain['saved'] / hourglass['saved']:.2f}x less | "
                f"{bf16_gain:.2f}x |")
    elapsed = time.perf_counter() - total_start
    setup = (f"{'quick smoke run, ' if args.quick else ''}device {device.type} "
             f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
             f"torch {torch.__version__}, d_model {args.d_model}, {args.n_heads} heads, "
             f"{args.tokens_per_step} tokens per step, {args.steps} timed steps after "
             f"{args.warmup} warm-up, avg shortening + repeat upsampling, fused attention; "
             f"took {elapsed:.0f} s")
    text = "\n".join([
        "# Model benchmark: hourglass vs plain transformer, training", "",
        f"Setup: {setup}.", "",
        "Command: `python benchmarks/bench_model.py" + (" --quick`" if args.quick else "`"), "",
        *lines, "", "Ratios (hourglass over plain unless said otherwise):", "", *ratio_lines, "",
    ])
    publish(text, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
