"""Every command in smoke size with `--device sim`, each in its own process (as a learner runs
them), and tools/gpu_check.py's plumbing on the simulated device.

The processes get the start-up hook of tests/simulated_device, so "sim" is a device torch knows
there; a model or tensor the command leaves on the CPU makes it exit non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import simulated_device
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], env=simulated_device.environment(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def command(*args: str) -> subprocess.CompletedProcess:
    return run("-m", "hourglass_edu", *args)


@pytest.fixture(scope="module")
def sim_run(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    command("train", "--corpus", "haiku", "--preset", "smoke", "--structure", "1@1 1@2 1@1",
            "--steps", "3", "--out", str(out), "--no-progress", "--device", "sim",
            "--data-dir", str(corpus_dir))
    return out


def test_train_on_sim_writes_a_run(sim_run):
    records = json.loads((sim_run / "history.json").read_text())["records"]
    assert records[-1]["step"] == 3 and records[-1]["val_bpc"] is not None
    assert (sim_run / "checkpoint.pt").is_file()


def test_finetune_and_demo_on_sim(sim_run, corpus_dir, tmp_path):
    command("finetune", "--from", str(sim_run), "--corpus", "lovecraft", "--out",
            str(tmp_path / "finetuned"), "--steps", "2", "--no-progress", "--device", "sim",
            "--data-dir", str(corpus_dir))
    assert (tmp_path / "finetuned" / "checkpoint.pt").is_file()
    command("demo", "--preset", "smoke", "--minutes", "0.02", "--samples", "1", "--out",
            str(tmp_path / "demo"), "--no-progress", "--device", "sim", "--data-dir",
            str(corpus_dir))
    assert (tmp_path / "demo" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("source", ["--ckpt", "--pretrained"])
def test_sample_and_evaluate_on_sim(sim_run, corpus_dir, source):
    model = str(sim_run) if source == "--ckpt" else "haiku"
    sampled = command("sample", source, model, "--prompt", "the", "--max-new-tokens", "12",
                      "--seed", "1", "--device", "sim")
    assert sampled.stdout.strip()
    scored = command("evaluate", source, model, "--max-tokens", "600", "--device", "sim")
    assert "bits per character" in scored.stdout


@pytest.mark.parametrize("name", ["sample", "evaluate"])
def test_pretrained_commands_accept_the_device_auto_their_help_offers(name):
    """Issue 22 finding 2: `--pretrained NAME --device auto` once handed "auto" to model.to()."""
    extra = ["--max-new-tokens", "8"] if name == "sample" else ["--max-tokens", "300"]
    command(name, "--pretrained", "haiku", "--device", "auto", *extra)


def test_export_of_a_run_trained_on_sim(sim_run, tmp_path):
    command("export", "--ckpt", str(sim_run), "--out", str(tmp_path / "folder"))
    assert (tmp_path / "folder" / "model.safetensors").is_file()


def test_gpu_check_runs_its_checks_on_sim(corpus_dir, tmp_path):
    table = tmp_path / "gpu_check.md"
    done = run("tools/gpu_check.py", "--device", "sim", "--notebooks", "00_", "--out", str(table),
               "--data-dir", str(corpus_dir), timeout=900)
    assert "4 of 4 checks passed" in done.stdout
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 5 and all("| pass |" in row for row in rows[1:]), rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu_check would run")
def test_gpu_check_without_cuda_says_so_and_fails():
    done = subprocess.run([sys.executable, "tools/gpu_check.py"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 1 and "no CUDA GPU" in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1
