"""Data-parallel training speed: tokens per second of 1 process against 2 processes (DDP).

The same training run (the `cpu` preset's model, d_model 128, `2@1 4@3 2@1`; a global batch of
16 windows of 256 tokens, fp32, on a synthetic corpus of random words) on one process, and under
torchrun on two processes of one thread each that take 8 windows each and average their
gradients (gloo on a CPU, nccl on GPUs). Each contender is a fresh launch; they alternate within
each of `--repeats` rounds (the order flips every round, so a machine that slows down during the
run does not favour one of them). Throughput is training tokens per second after the first
`--warmup` steps (evaluation and start-up excluded), the median over the rounds; the scaling
efficiency is the speed-up over 1 process divided by the number of processes.

    python benchmarks/bench_ddp.py             # about 5 minutes on a 2-core CPU
    python benchmarks/bench_ddp.py --quick     # smoke test: a tiny model, well under a minute
    python benchmarks/bench_ddp.py --device cuda   # 1 GPU against 2 GPUs (needs 2)

On a CPU the two processes share its cores and memory bandwidth: 2 processes of one thread each
on 2 cores is the fair comparison with 1 process of one thread, not with 1 process of 2 threads.
Writes the table to benchmarks/results/bench_ddp.md (``--quick``: bench_ddp_quick.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    benchmark_parser,
    machine_line,
    markdown_table,
    median,
    parse_benchmark_args,
    publish,
)

PROCESSES = (1, 2)  # the contenders
WORDS = ("the old house stood on a hill above the silent town where the river ran black under "
         "a moon that nobody in the valley had ever seen so pale").split()


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, threads_help="torch CPU threads of each process "
                              "(default 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per launch (default 40; --quick: 6)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps left out of the throughput (default 10; --quick: 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds; the table reports medians (default 3; --quick: 1)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv, "bench_ddp", quick_threads=1)
    args.threads = args.threads or 1
    args.steps = args.steps or (6 if args.quick else 40)
    args.warmup = args.warmup or (2 if args.quick else 10)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if not 0 < args.warmup < args.steps or args.repeats < 1:
        parser.error("need 0 < --warmup < --steps and --repeats >= 1")
    if args.quick:
        args.model = dict(d_model=32, n_heads=2, structure="1@1 1@2 1@1", max_length=64)
        args.batch_size, args.block_size = 4, 32
    else:
        args.model = dict(d_model=128, n_heads=4, structure="2@1 4@3 2@1", max_length=256)
        args.batch_size, args.block_size = 16, 256
    return args


# ------------------------------------------------------------------------------------------
# One launch: `worker` runs in each process (under torchrun for 2)


def synthetic_corpus():
    from hourglass_edu.data.corpora import Corpus

    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
                 for _ in range(400)]
    return Corpus("synthetic", documents)


def worker(args) -> None:
    """Train `args.steps` steps (data-parallel under torchrun); process 0 writes the tokens and
    training seconds after the warm-up steps to `args.worker`."""
    from hourglass_edu import HourglassConfig, HourglassLM
    from hourglass_edu.data import prepare_data
    from hourglass_edu.training import TrainConfig, train
    from hourglass_edu.training.distributed import process_group

    torch.set_num_threads(args.threads)
    data = prepare_data(synthetic_corpus(), val_fraction=0.05, seed=0)
    with process_group(args.device) as ranks:
        torch.manual_seed(0)
        model = HourglassLM(HourglassConfig(vocab_size=data.tokenizer.vocab_size, **args.model))
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size,
                             block_size=args.block_size, warmup_steps=args.warmup,
                             log_every=args.warmup, eval_every=10 * args.steps, eval_batches=1,
                             precision="fp32", progress=False, device=args.device)
        history = train(model, data, config)
        if ranks is None or ranks.is_main:
            first, last = history.records[0], history.records[-1]
            args.worker.write_text(json.dumps({
                "tokens": last["tokens"] - first["tokens"],
                "seconds": last["elapsed"] - first["elapsed"]}))


def launch(processes: int, args, result: Path) -> float:
    """One fresh launch of `processes` processes; its training tokens per second."""
    script = str(Path(__file__).resolve())
    options = ["--worker", str(result), "--device", args.device, "--threads", str(args.threads),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.quick:
        options.append("--quick")
    command = [sys.executable, script, *options]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), script, *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    measured = json.loads(result.read_text())
    return measured["tokens"] / measured["seconds"]


def measure(args) -> dict[int, list[float]]:
    speeds: dict[int, list[float]] = {processes: [] for processes in PROCESSES}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.repeats):
            order = PROCESSES if round_index % 2 == 0 else PROCESSES[::-1]
            for processes in order:
                speed = launch(processes, args, Path(folder) / f"{processes}.json")
                speeds[processes].append(speed)
                print(f"round {round_index + 1}: {processes} process(es): {speed:,.0f} tokens/s",
                      flush=True)
    return speeds


def report(speeds: dict[int, list[float]], args, elapsed: float) -> str:
    baseline = median(speeds[1])
    rows = []
    for processes in PROCESSES:
        speed = median(speeds[processes])
        rows.append({"processes": processes, "threads": args.threads,
                     "per_process": args.batch_size // processes, "speed": speed,
                     "speedup": speed / baseline, "efficiency": speed / baseline / processes,
                     "rounds": ", ".join(f"{value:,.0f}" for value in speeds[processes])})
    table = markdown_table(rows, [
        ("processes", "processes", "{}"), ("threads", "threads each", "{}"),
        ("per_process", "windows per process", "{}"), ("speed", "tokens/s (median)", "{:,.0f}"),
        ("speedup", "speed-up", "{:.2f}x"), ("efficiency", "scaling efficiency", "{:.0%}"),
        ("rounds", "tokens/s per round", "{}"),
    ])
    model = ", ".join(f"{key} {value}" for key, value in args.model.items())
    setup = (f"{'quick smoke run, ' if args.quick else ''}{machine_line(args.device)}, fp32, "
             f"{model}, global batch {args.batch_size} x {args.block_size} tokens, "
             f"{args.steps} steps per launch (the first {args.warmup} not timed), "
             f"{args.repeats} round(s), contenders alternating; took {elapsed:.0f} s")
    return "\n".join(["# Data-parallel training: 1 process against 2 (DDP)", "",
                      f"Setup: {setup}.", "", f"Command: `{args.command}`", "", table, ""])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    if args.device.startswith("cuda") and torch.cuda.device_count() < max(PROCESSES):
        raise SystemExit(f"--device cuda needs {max(PROCESSES)} GPUs; torch sees "
                         f"{torch.cuda.device_count()}")
    started = time.perf_counter()
    speeds = measure(args)
    publish(report(speeds, args, time.perf_counter() - started), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
