"""Generation speed: cached incremental decoding against recomputing the window per character.

Two models of equal width (d_model 256, 4 heads, feed-forward 1024, 12 blocks, untrained):
the hourglass "2@1 8@3 2@1" and the plain transformer "12@1". Each generates 256, 1024 and 2048
characters greedily from an empty prompt (`generate(..., temperature=0, stop_at_end=False)`),
once with the per-level caches (`use_cache=True`) and once recomputing the whole window for every
character (`use_cache=False`, what public hourglass implementations do). We report characters
per second, the cached / recompute speed-up (the issue's goal: >= 10x at 1024 characters), the
hourglass / plain ratio for each mode, and whether both modes wrote the same text.

    python benchmarks/bench_generate.py            # full: a few minutes on a quiet 2-core CPU
    python benchmarks/bench_generate.py --quick    # smoke test: tiny sizes, well under a minute

Writes the table to benchmarks/results/bench_generate.md (``--quick``: bench_generate_quick.md).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from _results import publish  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hourglass_edu import CharTokenizer, HourglassConfig, HourglassLM, generate  # noqa: E402

STRUCTURES = {"hourglass": "2@1 8@3 2@1", "plain": "12@1"}
# 95 printable ASCII characters + newline + <eot>: a realistic character vocabulary
TOKENIZER = CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])


def build(structure: str, args, device) -> HourglassLM:
    torch.manual_seed(0)
    config = HourglassConfig(vocab_size=TOKENIZER.vocab_size, d_model=args.d_model,
                             n_heads=args.n_heads, structure=structure,
                             max_length=max(args.lengths) + 1)
    return HourglassLM(config).to(device).eval()


def measure(model, new_characters: int, use_cache: bool, device) -> tuple[float, str]:
    """(characters per second, text) for one greedy generation of `new_characters`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    text = generate(model, TOKENIZER, "", new_characters, temperature=0, stop_at_end=False,
                    use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_characters / (time.perf_counter() - start), text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; --quick: 1)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="numbers of new characters (default 256 1024 2048; --quick: 32 96)")
    args = parser.parse_args(argv)
    lengths = args.lengths
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    if args.quick:
        args.d_model, args.n_heads, args.lengths = 64, 2, [32, 96]
    else:
        args.d_model, args.n_heads, args.lengths = 256, 4, [256, 1024, 2048]
    args.lengths = lengths or args.lengths
    device = torch.device(args.device)
    results_dir = Path(__file__).resolve().parent / "results"
    out = args.out or results_dir / ("bench_generate_quick.md" if args.quick
                                     else "bench_generate.md")

    total_start = time.perf_counter()
    models = {name: build(structure, args, device) for name, structure in STRUCTURES.items()}
    for model in models.values():  # warm-up: first calls pay for allocation and dispatch
        generate(model, TOKENIZER, "", 8, temperature=0, stop_at_end=False)
        generate(model, TOKENIZER, "", 8, temperature=0, stop_at_end=False, use_cache=False)
    measured = {}
    for length in args.lengths:
        for name, model in models.items():
            for use_cache in (True, False):
                speed, text = measure(model, length, use_cache, device)
                measured[name, length, use_cache] = speed, text
                mode = "cached" if use_cache else "recompute"
                print(f"  {name:9s} {length:5d} chars {mode:9s}: {speed:8.1f} chars/s", flush=True)

    header = ("| new chars | model | cached chars/s | recompute chars/s | cached / recompute | "
              "same text |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for length in args.lengths:
        for name in STRUCTURES:
            cached, cached_text = measured[name, length, True]
            recompute, recompute_text = measured[name, length, False]
            lines.append(f"| {length} | {name} `{STRUCTURES[name]}` | {cached:.1f} | "
                         f"{recompute:.1f} | {cached / recompute:.1f}x | "
                         f"{'yes' if cached_text == recompute_text else 'NO'} |")
    ratio_header = "| new chars | hourglass / plain, cached | hourglass / plain, recompute |"
    ratio_lines = [ratio_header, "|---|---|---|"]
    for length in args.lengths:
        cells = [measured["hourglass", length, mode][0] / measured["plain", length, mode][0]
                 for mode in (True, False)]
        ratio_lines.append(f"| {length} | {cells[0]:.2f}x | {cells[1]:.2f}x |")
    elapsed = time.perf_counter() - total_start
    setup = (f"{'quick smoke run, ' if args.quick else ''}device {device.type} "
             f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
             f"torch {torch.__version__}, fp32, d_model {args.d_model}, {args.n_heads} heads, "
             f"feed-forward {4 * args.d_model}, untrained weights, vocabulary "
             f"{TOKENIZER.vocab_size}, greedy from an empty prompt (`<eot>`), avg shortening + "
             f"repeat upsampling, fused attention; took {elapsed:.0f} s")
    text = "\n".join([
        "# Generation benchmark: cached incremental decoding vs recomputing the window", "",
        f"Setup: {setup}.", "",
        "Command: `python benchmarks/bench_generate.py" + (" --quick`" if args.quick else "`"), "",
        *lines, "", "Hourglass over plain transformer, same mode:", "", *ratio_lines, "",
    ])
    publish(text, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
