"""Data-parallel training (training/distributed.py): real processes on the CPU (gloo).

Two processes started by torchrun (`python -m torch.distributed.run --standalone`, which picks a
free port) must train exactly like one process with the same settings, refuse bad setups on every
process, let only process 0 write, stop together on Ctrl-C, and leave a checkpoint that one
process resumes. Every launch has a timeout, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

import hourglass_edu.training.trainer as trainer_module
from hourglass_edu.training import load_checkpoint, train
from hourglass_edu.training.distributed import Ranks, per_process_batch, process_group
from hourglass_edu.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds; two tiny processes need well under a minute

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * LAUNCH_TIMEOUT)]  # torchrun


def _load_worker():
    spec = importlib.util.spec_from_file_location("distributed_worker",
                                                  REPO / "tests" / "distributed_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def process_env() -> dict[str, str]:
    # One thread per process (2 processes on a 2-core machine), unbuffered for wait-for-line.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *args]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """tests/distributed_worker.py on two processes; its folder (result.json, checkpoints)."""
    out = tmp_path_factory.mktemp("two_processes")
    result = subprocess.run(torchrun("tests/distributed_worker.py", str(out)), cwd=REPO,
                            env=process_env(), capture_output=True, encoding="utf-8",
                            timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("data parallel: 2 processes (cpu), global batch 4 windows = 2 x 2 "
                               "per process") == 1  # the rank-0 line, printed once
    return out


def test_two_processes_follow_the_one_process_loss_curve(two_process_run, monkeypatch):
    """Each process trains on its half of every global batch; DDP averages the two gradients. The
    5-step loss curve (2 micro-batches per step) must be the one-process curve on the whole
    batch, and a process that kept its own gradient (no averaging) must be visibly off it."""
    result = json.loads((two_process_run / "result.json").read_text())
    data = worker.toy_data()
    vocab = data.tokenizer.vocab_size
    alone = train(worker.tiny_model(vocab), data, worker.reference_config())
    assert len(result["losses"]) == 5
    for mine, reference in zip(result["losses"], alone.column("train_loss"), strict=True):
        assert mine == pytest.approx(reference, abs=1e-5)
    assert result["val_bpc"] == pytest.approx(alone.column("val_bpc"), abs=1e-5)

    # The control: process 0's half of each micro-batch alone, what it would learn without DDP.
    # Alone with 2 windows per micro-batch it asks for 4 windows per step; it gets the rows
    # process 0 trains on out of the 8 the two-process run draws.
    draw = trainer_module.sample_batch

    def process_0_rows(ids, windows, block_size, generator):
        inputs, targets = draw(ids, 2 * windows, block_size, generator)
        rows = [0, 1, 4, 5]  # the first half of each micro-batch of 4
        return inputs[rows], targets[rows]

    monkeypatch.setattr(trainer_module, "sample_batch", process_0_rows)
    unaveraged = train(worker.tiny_model(vocab), data, worker.reference_config(batch_size=2))
    gaps = [abs(a - b) for a, b in zip(unaveraged.column("train_loss")[1:],
                                       result["losses"][1:], strict=True)]
    assert max(gaps) > 1e-3, gaps  # so the 1e-5 above can tell averaging from no averaging


def test_two_processes_refuse_different_settings_and_a_batch_smaller_than_them(two_process_run):
    result = json.loads((two_process_run / "result.json").read_text())
    assert result["mismatch"].startswith("the processes of this run were started with "
                                         "different settings")
    assert "train.seed: process 0 has 0, process 1 has 1" in result["mismatch"]
    assert result["batch_too_small"].startswith(
        "`batch_size` 1 (the global batch, in windows) is smaller than the 2 processes")


def test_only_process_0_writes_and_its_checkpoint_has_no_ddp_names(two_process_run):
    assert not (two_process_run / "rank1").exists()  # process 1 neither locked nor wrote
    checkpoint = load_checkpoint(two_process_run / "rank0")
    assert checkpoint["step"] == 5 and checkpoint["tokens_seen"] == 5 * 8 * 32
    assert checkpoint["train_config"]["batch_size"] == 4  # the global batch
    assert not [name for name in checkpoint["model"] if name.startswith("module.")]


@pytest.mark.parametrize(("batch_size", "processes", "words"), [
    (1, 2, "smaller than the 2 processes"),
    (6, 4, "use 4 or 8"),
])
def test_batch_that_does_not_split_evenly_is_refused(batch_size, processes, words):
    ranks = Ranks(rank=0, world_size=processes, local_rank=0)
    with pytest.raises(ValueError, match=words):
        per_process_batch(batch_size, ranks)
    assert per_process_batch(8, ranks) == 8 // processes


def test_accumulation_all_reduces_only_on_the_last_micro_batch(tmp_path):
    """A one-process group (gloo, in this process): with 3 micro-batches per step the gradient
    is all-reduced as often as with 1 (DDP's no_sync on the first two)."""
    data = worker.toy_data()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    try:
        with process_group("cpu"):
            counts = []
            for accumulate in (1, 3):
                trainer = Trainer(worker.tiny_model(data.tokenizer.vocab_size), data,
                                  worker.reference_config(steps=2, grad_accum=accumulate,
                                                          eval_every=100))
                calls = []

                def counting_all_reduce(state, bucket, calls=calls):
                    calls.append(1)
                    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(
                        lambda future: future.value()[0])

                trainer.parallel.ddp.register_comm_hook(None, counting_all_reduce)
                trainer.run()
                counts.append(len(calls))
            assert counts[0] == counts[1] > 0, counts
    finally:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)
    assert not dist.is_initialized()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------
# The command line under torchrun: Ctrl-C on process 0, then one process resumes


def _worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (their environment names their rank)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher.pid:
                continue
            variables = dict(item.split("=", 1) for item in
                             (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in variables:
            found[int(variables["RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the processes through /proc")
def test_ctrl_c_on_process_0_stops_both_and_one_process_resumes(tmp_path):
    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(worker.toy_data().corpus.documents) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["-m", "hourglass_edu", "train", "--corpus", str(corpus), "--preset", "smoke",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    launcher = subprocess.Popen(
        torchrun(*args, "--steps", "100000"), cwd=REPO, env=process_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (out / "checkpoint.pt").exists():  # the first checkpoint: step 15
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        workers = _worker_pids(launcher)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[0], signal.SIGINT)
        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        launcher.kill()
    for pid in workers.values():  # both processes ended (torchrun reaped them)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # torchrun reports the exit codes 130 with its own traceback; the workers show none.
    assert launcher.returncode != 0 and "exitcode  : 130" in stderr, stderr
    assert f'File "{REPO / "hourglass_edu"}' not in stderr, stderr
    assert stderr.count("stopped by Ctrl-C") == 1, stderr  # process 0 says it, once
    assert stdout.count("data parallel: 2 processes (cpu), global batch 8 windows = 2 x 4") == 1
    assert stdout.count("model: ") == 1  # the other process prints nothing
    checkpoint = load_checkpoint(out)
    step = checkpoint["step"]
    assert step >= 15
    assert json.loads((out / "history.json").read_text()) == checkpoint["history"]
    assert sorted(path.name for path in out.iterdir()) == [".lock", "best.pt", "checkpoint.pt",
                                                           "history.json"]

    resumed = subprocess.run([sys.executable, *args, "--steps", str(step + 3), "--resume"],
                             cwd=REPO, env=process_env(), capture_output=True, encoding="utf-8",
                             timeout=LAUNCH_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert "data parallel" not in resumed.stdout  # one process: a plain run
    final = load_checkpoint(out)
    assert final["step"] == step + 3 and final["tokens_seen"] == (step + 3) * 8 * 64
    records = final["history"]["records"]
    assert records[: len(checkpoint["history"]["records"])] == checkpoint["history"]["records"]
    assert records[-1]["step"] == step + 3 and records[-1]["tokens"] == final["tokens_seen"]
