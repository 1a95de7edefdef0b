"""Shared by the benchmark scripts: the machine a table was measured on, and publishing the table.

The scripts import it as ``from common import ...``: Python puts a script's own folder first on
``sys.path`` when it runs ``python benchmarks/NAME.py``. The library itself is imported as the
installed package (``pip install -e .``), never through ``sys.path`` edits.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hourglass_edu.files import atomic_write
from hourglass_edu.related.compare import markdown_table

__all__ = ["RESULTS", "benchmark_parser", "command_line", "cpu_model", "hardware", "machine_line",
           "markdown_table", "median", "parse_benchmark_args", "publish", "results_path"]

RESULTS = Path(__file__).resolve().parent / "results"


def results_path(name: str, quick: bool, out: Path | None = None) -> Path:
    """Where a table goes: ``out`` if given, else results/NAME.md (quick runs: NAME_quick.md)."""
    return out or RESULTS / (f"{name}_quick.md" if quick else f"{name}.md")


def benchmark_parser(doc: str, threads_help: str = "torch CPU threads") -> argparse.ArgumentParser:
    """The options every benchmark has: --quick, --device, --out, --threads (None = torch's)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="where the table goes")
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, name: str,
                         quick_threads: int | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (a `benchmark_parser`), then what every benchmark does with
    the common options: torch uses ``--threads`` CPU threads (default: torch's choice; quick
    runs: ``quick_threads``), ``args.out`` is where table NAME goes (`results_path`), and
    ``args.command`` is the command line the table quotes."""
    args = parser.parse_args(argv)
    args.threads = args.threads or (quick_threads if args.quick else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = results_path(name, args.quick, args.out)
    args.command = command_line(f"{name}.py", argv)
    return args


def publish(text: str, out: Path) -> None:
    """Print ``text`` and write it to ``out`` atomically (a reader never sees half a table)."""
    print()
    print(text)
    atomic_write(out, text)
    print(f"wrote {out}")


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that made a table, e.g. ``python benchmarks/bench_model.py --quick``: the
    script's arguments (default: this process's), less ``--out`` (where the table went)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--out":
            skip = True
        elif not argument.startswith("--out="):
            kept.append(argument)
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *kept])


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"): /proc/cpuinfo on Linux (where
    ``platform.processor()`` is empty), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line(device: str | torch.device) -> str:
    """One line naming what a table was measured on, e.g. ``device cpu (AMD EPYC 7B13, 2 cores,
    1 threads), torch 2.5.1``; on CUDA the GPU's name and the host CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"{torch.cuda.get_device_name(index)}; host {cpu_model()}"
    else:
        where = cpu_model()
    return (f"device {device.type} ({where}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"threads), torch {torch.__version__}")


def hardware() -> str:
    """What a shipped model was trained on, for its model card: the GPU, or the CPU and cores."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {os.cpu_count()} cores (CPU)"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
