"""The benchmark scripts run as docs/benchmarks.md shows (`python benchmarks/NAME.py`), in their
smoke modes, and their tables name the machine (the CPU model, not just "x86_64") and keep their
columns. Timings are not checked: a smoke run on a busy machine measures nothing."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def cpu_model() -> str:
    """What a table must name: /proc/cpuinfo's model name where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text() if cpuinfo.exists()
                       else "", flags=re.MULTILINE)
    return names[0] if names else platform.processor() or platform.machine()


def run_benchmark(script: str, out: Path, *arguments: str) -> str:
    """Run benchmarks/`script` on one CPU thread against this checkout; the table it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, f"benchmarks/{script}", *arguments, "--device", "cpu", "--out",
               str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    return out.read_text()


def test_bench_model_quick(tmp_path):
    table = run_benchmark("bench_model.py", tmp_path / "model.md", "--quick")
    assert f"device cpu ({cpu_model()}, " in table
    assert "Command: `python benchmarks/bench_model.py --quick --device cpu`" in table
    assert ("| seq | precision | model | tokens/s | step (s) | saved activations (MiB) | "
            "GFLOP/token (fwd) |") in table
    assert ("| seq | precision | measured speed-up | FLOP-predicted speed-up | "
            "measured / predicted | activation memory ratio | bf16 / fp32 (hourglass) |") in table
    assert table.count("| hourglass `2@1 8@3 2@1` |") == 4  # 2 lengths x 2 precisions


def test_bench_generate_threads_only(tmp_path):
    table = run_benchmark("bench_generate.py", tmp_path / "generate.md", "--quick",
                          "--threads-only", "--lengths", "16", "--repeats", "1")
    assert f"device cpu ({cpu_model()}, " in table
    assert "## Threads for cached decoding, quiet and busy" in table
    assert "| new chars | threads | quiet chars/s | busy chars/s | busy / quiet |" in table
    assert "| new chars | 1 / 2 threads, quiet | 1 / 2 threads, busy |" in table
    assert "| 16 | 1 |" in table and "| 16 | 2 |" in table
    assert "cached / recompute" not in table  # --threads-only: the first table is skipped
