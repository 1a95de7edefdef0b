"""One command that checks the course on a real GPU and writes what it measured.

    python tools/gpu_check.py                  # on a machine with CUDA
    python tools/gpu_check.py --device sim     # the same checks, small, on the simulated device

On CUDA it runs, and records pass / fail with tokens per second, peak GPU memory and validation
bits per character in a Markdown table (default benchmarks/results/gpu_check.md):

1. every notebook in the smoke profile (HOURGLASS_EDU_SMOKE=1, HOURGLASS_EDU_DEVICE=cuda);
2. `train --preset gpu` for a few hundred steps in precision auto, fp16 and bf16 (bf16 only where
   the GPU has native bf16, compute capability >= 8.0);
3. cached generation against recomputation with a shipped model (the same text for each seed);
4. a one-process torchrun of `train --preset smoke`.

Without CUDA it says so in one line and exits 1, unless given `--device sim`: then the checks run
on the simulated accelerator of tests/simulated_device (smoke preset, few steps, fp32; the
torchrun check on the CPU, because gloo cannot carry sim tensors), which tests the plumbing of
this script, not the GPU. Exit code 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "gpu_check.md"


@dataclass
class Result:
    check: str
    passed: bool
    tokens_per_s: float | None = None
    peak_memory_gib: float | None = None
    val_bpc: float | None = None
    note: str = ""


class _Parser(argparse.ArgumentParser):
    """A bad option in one line (argparse would print the whole usage above it)."""

    def error(self, message: str):
        self.exit(2, f"gpu_check: error: {message} (--help lists the options)\n")


def parse_args(argv=None) -> argparse.Namespace:
    """The options, each checked here, before any check runs (a bad one costs no minute)."""
    sys.path.insert(0, str(REPO_ROOT))
    from hourglass_edu.cli.options import positive_int

    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "sim"),
                        help="cuda (default) or sim")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="training steps per precision (default 300 on cuda, 3 on sim)")
    parser.add_argument("--notebooks", default="",
                        help="run only the notebooks whose file name contains this text")
    parser.add_argument("--chars", type=positive_int, default=None,
                        help="characters generated per seed (default 300 on cuda, 24 on sim)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the table (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--data-dir", default=None, help="corpus directory for the training runs")
    args = parser.parse_args(argv)
    problem = _option_problem(args)
    if problem:
        parser.error(problem)
    return args


def _option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with options argparse cannot check by their type, or None."""
    notebooks = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not any(args.notebooks in path.name for path in notebooks):
        return f"--notebooks {args.notebooks!r} matches no notebook in notebooks/"
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        return f"--data-dir {args.data_dir}: no such folder"
    out = args.out or DEFAULT_OUT
    if out.is_dir():
        return f"--out {out} is a folder: name the table's file, e.g. {out / 'gpu_check.md'}"
    folder = next((parent for parent in [out.parent, *out.parent.parents] if parent.exists()),
                  None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {out}: cannot write into {folder}; choose a folder you can write"
    return None


def child_environment(device: str) -> dict[str, str]:
    """What a notebook kernel or a command needs to compute on `device` from this checkout."""
    if device == "sim":
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        import simulated_device

        return simulated_device.environment()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["HOURGLASS_EDU_DEVICE"] = device
    return env


def check_notebooks(device: str, pattern: str) -> list[Result]:
    import nbclient
    import nbformat

    results = []
    previous = dict(os.environ)
    os.environ.update(child_environment(device), HOURGLASS_EDU_SMOKE="1", MPLBACKEND="Agg")
    try:
        for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            if pattern not in path.name:
                continue
            notebook = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                                 resources={"metadata": {"path": folder}})
                try:
                    client.execute()
                    passed, note = True, ""
                except Exception as error:  # any failure is the result, recorded in the table
                    passed, note = False, str(error).strip().splitlines()[-1][:160]
            note = note or f"{time.perf_counter() - start:.0f} s"
            results.append(Result(f"notebook {path.stem}", passed, note=note))
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return results


def precisions(device: str) -> list[str]:
    if device == "sim":
        return ["auto"]  # fp16 needs CUDA; autocast on sim would not lower anything
    import torch

    native_bf16 = torch.cuda.get_device_capability()[0] >= 8
    return ["auto", "fp16"] + (["bf16"] if native_bf16 else [])


def check_training(device: str, steps: int, data_dir: str | None) -> list[Result]:
    """`train --preset gpu` (smoke on sim) in each precision, in this process, so that the peak
    GPU memory can be read after each run."""
    import json

    import torch

    from hourglass_edu import cli

    preset = "smoke" if device == "sim" else "gpu"
    results = []
    for precision in precisions(device):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as folder:
            args = ["train", "--corpus", "lovecraft", "--preset", preset, "--steps", str(steps),
                    "--precision", precision, "--device", device, "--out", f"{folder}/run",
                    "--no-progress"] + (["--data-dir", data_dir] if data_dir else [])
            try:
                code = cli.main(args)
            except SystemExit as exit_:  # argparse refusing an option
                code = exit_.code
            history = Path(folder, "run", "history.json")
            records = json.loads(history.read_text())["records"] if history.is_file() else []
        last = records[-1] if records else {}
        val = [r["val_bpc"] for r in records if r.get("val_bpc") is not None]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results.append(Result(
            f"train --preset {preset} --precision {precision}, {steps} steps", code == 0,
            tokens_per_s=last["tokens"] / last["elapsed"] if last.get("elapsed") else None,
            peak_memory_gib=peak, val_bpc=val[-1] if val else None,
            note="" if code == 0 else f"exit code {code}"))
    return results


def check_generation(device: str, chars: int) -> Result:
    """Cached decoding must give the very text recomputation gives, seed for seed."""
    from hourglass_edu.generation import generate
    from hourglass_edu.pretrained import load_pretrained

    model, tokenizer = load_pretrained("lovecraft", device=device)
    mismatches, cached_seconds = [], 0.0
    for seed in range(3):
        start = time.perf_counter()
        cached = generate(model, tokenizer, "The ", chars, seed=seed, use_cache=True)
        cached_seconds += time.perf_counter() - start
        recomputed = generate(model, tokenizer, "The ", chars, seed=seed, use_cache=False)
        if cached != recomputed:
            mismatches.append(seed)
    note = f"seeds {mismatches} differ" if mismatches else f"3 seeds x {chars} characters"
    return Result("cached generation == recomputation (lovecraft)", not mismatches,
                  tokens_per_s=3 * chars / cached_seconds, note=note)


def check_torchrun(device: str, data_dir: str | None) -> Result:
    torchrun_device = "cpu" if device == "sim" else device  # gloo cannot carry sim tensors
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "1", "-m", "hourglass_edu", "train", "--corpus", "haiku",
                   "--preset", "smoke", "--steps", "5", "--device", torchrun_device,
                   "--out", f"{folder}/run", "--no-progress"]
        command += ["--data-dir", data_dir] if data_dir else []
        done = subprocess.run(command, env=child_environment(device), capture_output=True,
                              text=True, timeout=900)
    last_line = (done.stderr.strip() or done.stdout.strip() or "-").splitlines()[-1][:160]
    return Result(f"torchrun --nproc_per_node 1 train --preset smoke ({torchrun_device})",
                  done.returncode == 0, note="" if done.returncode == 0 else last_line)


def table(device: str, results: list[Result]) -> str:
    def number(value, digits):
        return "-" if value is None else f"{value:,.{digits}f}"

    import torch

    where = torch.cuda.get_device_name() if device == "cuda" else "simulated device (CPU)"
    lines = [f"# GPU check on {where}", "",
             f"torch {torch.__version__}; written by `python tools/gpu_check.py"
             f"{' --device sim' if device == 'sim' else ''}`.", "",
             "| check | result | tokens/s | peak memory (GiB) | val bpc | note |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.check} | {'pass' if r.passed else 'FAIL'} | {number(r.tokens_per_s, 0)}"
                     f" | {number(r.peak_memory_gib, 2)} | {number(r.val_bpc, 3)} | {r.note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here; run it on a GPU machine, or pass "
              "--device sim to test the script on the simulated device")
        return 1
    if args.device == "sim":
        os.environ.update(child_environment("sim"))
        import simulated_device

        simulated_device.install()
    small = args.device == "sim"
    steps = args.steps or (3 if small else 300)
    chars = args.chars or (24 if small else 300)
    results = check_notebooks(args.device, args.notebooks)
    results += check_training(args.device, steps, args.data_dir)
    results.append(check_generation(args.device, chars))
    results.append(check_torchrun(args.device, args.data_dir))
    out = args.out or DEFAULT_OUT
    from hourglass_edu.files import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, table(args.device, results))
    failed = [r.check for r in results if not r.passed]
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} checks passed; table in "
          f"{out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
