"""Generation speed: cached decoding against recomputing the window, and threads on a busy CPU.

Two models of equal width (d_model 256, 4 heads, feed-forward 1024, 12 blocks, untrained):
the hourglass "2@1 8@3 2@1" and the plain transformer "12@1". Two tables:

1. Cached against recompute. Each model generates 256, 1024 and 2048 characters greedily from an
   empty prompt (`generate(..., temperature=0, stop_at_end=False)`), once with the per-level
   caches (`use_cache=True`, the library's default threads: `threads=None`, one thread on a CPU)
   and once recomputing the whole window for every character (`use_cache=False`, what public
   hourglass implementations do, on torch's threads). We report characters per second, the
   cached / recompute speed-up (the issue's goal: >= 10x at 1024 characters), the hourglass /
   plain ratio for each mode, and whether both modes wrote the same text.
2. Threads for cached decoding. The hourglass generates 512 characters (cached) with
   `threads=1` and `threads=2`, each on a quiet machine and "busy": beside competing processes
   (one pure-Python busy loop per core, started before and killed after that measurement), as on
   a learner's laptop running JupyterLab and a browser. The four contenders alternate within each
   of `--repeats` rounds (default 3); we report median characters per second, 1 thread / 2
   threads, and busy / quiet.

    python benchmarks/bench_generate.py            # full: about 20 minutes on a 2-core CPU
                                                   # (recomputing 2048 characters dominates)
    python benchmarks/bench_generate.py --lengths 256 1024          # both tables, shorter
    python benchmarks/bench_generate.py --threads-only --lengths 512   # table 2 only: minutes
    python benchmarks/bench_generate.py --quick    # smoke test: tiny sizes, well under a minute

`--lengths` sets the numbers of new characters of both tables (``--quick``: 32 and 96 for the
first, 32 in one round for the threads table). Writes the tables to
benchmarks/results/bench_generate.md (``--quick``: bench_generate_quick.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import torch
from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    median,
    parse_benchmark_args,
    publish,
)

from hourglass_edu import CharTokenizer, HourglassConfig, HourglassLM, generate

STRUCTURES = {"hourglass": "2@1 8@3 2@1", "plain": "12@1"}
# 95 printable ASCII characters + newline + <eot>: a realistic character vocabulary
TOKENIZER = CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])
THREADS = (1, 2)  # the contenders of the threads table
LOADS = ("quiet", "busy")
# One competing process: says it is running, then keeps a core busy until it is killed.
BUSY_LOOP = "import sys\nsys.stdout.write('ready\\n')\nsys.stdout.flush()\nwhile True:\n    pass\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, threads_help="torch CPU threads for recomputing "
                              "(default: torch's choice; --quick: 1); cached decoding uses the "
                              "library's default")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="numbers of new characters (default: 256 1024 2048 for the first "
                             "table, 512 for the threads table; --quick: 32 96 and 32)")
    parser.add_argument("--threads-only", action="store_true",
                        help="only the threads table (cached decoding, 1 and 2 threads)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of the threads table; it reports medians (default 3; "
                             "--quick: 1)")
    parser.add_argument("--busy-workers", type=int, default=os.cpu_count() or 2,
                        help="competing busy-loop processes for 'busy' (default: one per core)")
    args = parse_benchmark_args(parser, argv, "bench_generate", quick_threads=1)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.repeats < 1 or args.busy_workers < 1:
        parser.error("--repeats and --busy-workers must be at least 1")
    args.d_model, args.n_heads = (64, 2) if args.quick else (256, 4)
    args.mode_lengths = args.lengths or ([32, 96] if args.quick else [256, 1024, 2048])
    args.thread_lengths = args.lengths or ([32] if args.quick else [512])
    return args


def build(structure: str, args, device) -> HourglassLM:
    torch.manual_seed(0)
    config = HourglassConfig(vocab_size=TOKENIZER.vocab_size, d_model=args.d_model,
                             n_heads=args.n_heads, structure=structure,
                             max_length=max(args.mode_lengths + args.thread_lengths) + 1)
    return HourglassLM(config).to(device).eval()


def time_generation(model, new_characters: int, device, *, use_cache: bool = True,
                    threads: int | None = None) -> tuple[float, str]:
    """(characters per second, text) for one greedy generation of `new_characters`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    text = generate(model, TOKENIZER, "", new_characters, temperature=0, stop_at_end=False,
                    use_cache=use_cache, threads=threads)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_characters / (time.perf_counter() - start), text


def measure_modes(models: dict, args, device) -> dict:
    """{(model name, length, use_cache): (chars/s, text)}: cached against recompute."""
    for model in models.values():  # warm-up: first calls pay for allocation and dispatch
        time_generation(model, 8, device)
        time_generation(model, 8, device, use_cache=False)
    measured = {}
    for length in args.mode_lengths:
        for name, model in models.items():
            for use_cache in (True, False):
                speed, text = time_generation(model, length, device, use_cache=use_cache)
                measured[name, length, use_cache] = speed, text
                mode = "cached" if use_cache else "recompute"
                print(f"  {name:9s} {length:5d} chars {mode:9s}: {speed:8.1f} chars/s", flush=True)
    return measured


def tabulate_modes(measured: dict, args) -> str:
    rows, ratios = [], []
    for length in args.mode_lengths:
        for name in STRUCTURES:
            cached, cached_text = measured[name, length, True]
            recompute, recompute_text = measured[name, length, False]
            rows.append({"length": length, "model": f"{name} `{STRUCTURES[name]}`",
                         "cached": cached, "recompute": recompute, "gain": cached / recompute,
                         "same": "yes" if cached_text == recompute_text else "NO"})
        cached, recompute = (measured["hourglass", length, mode][0]
                             / measured["plain", length, mode][0] for mode in (True, False))
        ratios.append({"length": length, "cached": cached, "recompute": recompute})
    speeds = markdown_table(rows, [
        ("length", "new chars", "{}"), ("model", "model", "{}"),
        ("cached", "cached chars/s", "{:.1f}"), ("recompute", "recompute chars/s", "{:.1f}"),
        ("gain", "cached / recompute", "{:.1f}x"), ("same", "same text", "{}"),
    ])
    hourglass_over_plain = markdown_table(ratios, [
        ("length", "new chars", "{}"), ("cached", "hourglass / plain, cached", "{:.2f}x"),
        ("recompute", "hourglass / plain, recompute", "{:.2f}x"),
    ])
    return "\n".join([speeds, "", "Hourglass over plain transformer, same mode:", "",
                      hourglass_over_plain])


@contextlib.contextmanager
def competing_load(workers: int):
    """Inside the block, `workers` other processes keep the CPU cores busy."""
    processes = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE,
                                  text=True) for _ in range(workers)]
    try:
        for process in processes:
            process.stdout.readline()  # it is running its loop
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()
            process.stdout.close()


def measure_threads(model, args, device) -> dict:
    """{(length, threads, load): [chars/s per round]} for cached decoding; the contenders
    alternate within each round (in reverse order every other round), so a slow spell of the
    machine falls on all of them alike."""
    for threads in THREADS:  # warm-up, and the thread pool exists before any timing
        time_generation(model, 8, device, threads=threads)
    contenders = [(threads, load) for load in LOADS for threads in THREADS]
    speeds = {(length, *contender): [] for length in args.thread_lengths
              for contender in contenders}
    for round_ in range(args.repeats):
        for length in args.thread_lengths:
            for threads, load in contenders[::-1] if round_ % 2 else contenders:
                with (competing_load(args.busy_workers) if load == "busy"
                      else contextlib.nullcontext()):
                    speed, _ = time_generation(model, length, device, threads=threads)
                speeds[length, threads, load].append(speed)
                print(f"  round {round_ + 1} {length:5d} chars, {threads} thread(s), {load:5s}: "
                      f"{speed:8.1f} chars/s", flush=True)
    return speeds


def tabulate_threads(speeds: dict, args) -> str:
    medians = {key: median(values) for key, values in speeds.items()}
    rows, ratios = [], []
    for length in args.thread_lengths:
        for threads in THREADS:
            quiet, busy = (medians[length, threads, load] for load in LOADS)
            rows.append({"length": length, "threads": threads, "quiet": quiet, "busy": busy,
                         "ratio": busy / quiet})
        ratios.append({"length": length, **{load: medians[length, 1, load]
                                            / medians[length, 2, load] for load in LOADS}})
    return "\n".join([
        "## Threads for cached decoding, quiet and busy", "",
        f"Hourglass `{STRUCTURES['hourglass']}`, cached, `generate(..., threads=N)`; busy = "
        f"beside {args.busy_workers} busy-loop processes; medians of {args.repeats} rounds, the "
        "four contenders alternating within each round.", "",
        markdown_table(rows, [
            ("length", "new chars", "{}"), ("threads", "threads", "{}"),
            ("quiet", "quiet chars/s", "{:.1f}"), ("busy", "busy chars/s", "{:.1f}"),
            ("ratio", "busy / quiet", "{:.2f}x"),
        ]), "", "1 thread over 2 threads:", "",
        markdown_table(ratios, [
            ("length", "new chars", "{}"), ("quiet", "1 / 2 threads, quiet", "{:.2f}x"),
            ("busy", "1 / 2 threads, busy", "{:.2f}x"),
        ]),
    ])


def report(sections: list[str], args, device, elapsed: float) -> str:
    title = ("threads for cached decoding, quiet and busy" if args.threads_only
             else "cached incremental decoding vs recomputing the window")
    threads = ("" if args.threads_only else
               "; first table: cached decoding on the library's default threads (`threads=None`: "
               "1 on a CPU), recomputing on torch's threads")
    setup = (f"{'quick smoke run, ' if args.quick else ''}{machine_line(device)}, fp32, "
             f"d_model {args.d_model}, {args.n_heads} heads, feed-forward {4 * args.d_model}, "
             f"untrained weights, vocabulary {TOKENIZER.vocab_size}, greedy from an empty prompt "
             f"(`<eot>`), avg shortening + repeat upsampling, fused attention{threads}; took "
             f"{elapsed:.0f} s")
    return "\n".join([f"# Generation benchmark: {title}", "", f"Setup: {setup}.", "",
                      f"Command: `{args.command}`", "", *[s + "\n" for s in sections]])


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    names = ["hourglass"] if args.threads_only else list(STRUCTURES)
    models = {name: build(STRUCTURES[name], args, device) for name in names}
    sections = []
    if not args.threads_only:
        sections.append(tabulate_modes(measure_modes(models, args, device), args))
    if device.type == "cpu":
        sections.append(tabulate_threads(measure_threads(models["hourglass"], args, device), args))
    else:  # threads only change how a CPU decodes
        sections.append(f"The threads table is measured on a CPU only (`--device cpu`), not on "
                        f"{device.type}.")
    publish(report(sections, args, device, time.perf_counter() - started), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
