"""Train the models that ship inside the package (`hourglass_edu/pretrained/`), end to end.

    python benchmarks/train_pretrained.py --runs runs/pretrained        # the real thing (~2 hours)
    python benchmarks/train_pretrained.py --runs /tmp/p --smoke         # the same steps in seconds

Every model is trained by the project's own CLI (`python -m hourglass_edu train` / `finetune`),
one thread per process, `--jobs` processes at a time (default 2: one per core of a 2-core CPU):

    lovecraft-20min  hourglass "2@1 8@3 2@1" on Lovecraft, a 20-minute cosine schedule
    lovecraft-plain  plain transformer "12@1" of the same width: same recipe, same 20 minutes
    haiku            the hourglass on haiku
    lovecraft        continues lovecraft-20min with a longer budget (a warm restart of the cosine)
    lovecraft-haiku  lovecraft fine-tuned on haiku (poems that end with <eot>)

The script is resumable: a finished job (RUNS/NAME/done.json) is skipped, an interrupted one is
continued with `--resume` from its last checkpoint. Run it again with the same arguments after an
interruption. When every job is done it exports each to a model folder (`--export-to`, default
the package's `hourglass_edu/pretrained/`): config.json, tokenizer.json, model.safetensors (fp16)
and a model card README.md whose figures this script measures and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import hardware  # benchmarks/ is on sys.path for a script

REPO = Path(__file__).resolve().parents[1]

# The recipe, chosen by short trial runs on a 2-core CPU (see docs/shipped-models.md).
WIDTH = ["--d-model", "128", "--n-heads", "4"]
RECIPE = ["--batch-size", "16", "--block-size", "256", "--lr", "2e-3", "--seed", "0",
          "--precision", "auto", "--no-progress"]
HOURGLASS = ["--structure", "2@1 8@3 2@1"]
PLAIN = ["--structure", "12@1"]
SMOKE_RECIPE = ["--preset", "smoke", "--seed", "0", "--no-progress"]


@dataclass
class Job:
    """One training run: the CLI arguments after `python -m hourglass_edu`, and what it needs."""

    name: str
    args: list[str]
    after: list[str] = field(default_factory=list)

    def out(self, runs: Path) -> Path:
        return runs / self.name


def plan(runs: Path, smoke: bool) -> list[Job]:
    """The jobs in the order they start (two at a time: the first two run side by side)."""
    def minutes(full: float, smoke_steps: int) -> list[str]:
        return ["--steps", str(smoke_steps)] if smoke else ["--minutes", f"{full:g}"]

    recipe = SMOKE_RECIPE if smoke else ["--preset", "cpu", *WIDTH, *RECIPE]
    train = ["train", *recipe]
    return [
        Job("lovecraft-20min", [*train, "--corpus", "lovecraft", *HOURGLASS, *minutes(20, 20)]),
        Job("lovecraft-plain", [*train, "--corpus", "lovecraft", *PLAIN, *minutes(20, 20)]),
        Job("haiku", [*train, "--corpus", "haiku", *HOURGLASS, *minutes(95, 40)]),
        Job("lovecraft", [*train, "--corpus", "lovecraft", *HOURGLASS, *minutes(80, 40)]),
        Job("lovecraft-haiku", ["finetune", "--from", str(runs / "lovecraft"), "--corpus", "haiku",
                                "--seed", "0", "--no-progress", *minutes(15, 20)],
            after=["lovecraft"]),
    ]


def is_done(job: Job, runs: Path) -> bool:
    return (job.out(runs) / "done.json").is_file()


def launch(job: Job, runs: Path) -> subprocess.Popen:
    """Start one job in its own process with one thread; its output goes to RUNS/NAME.log (beside
    the run folder: the CLI writes only into an empty folder or one of its own runs)."""
    out = job.out(runs)
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    command = [sys.executable, "-m", "hourglass_edu", *job.args, "--out", str(out), *resume]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs.mkdir(parents=True, exist_ok=True)
    log = open(runs / f"{job.name}.log", "a")  # noqa: SIM115 (closed when the process ends)
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                               cwd=REPO)
    process.started = time.time()  # type: ignore[attr-defined]
    process.command = command  # type: ignore[attr-defined]
    return process


def mark_done(job: Job, runs: Path, process: subprocess.Popen) -> None:
    """Record how the job ran; the model card reads it."""
    record = {
        "job": job.name,
        "command": process.command,  # type: ignore[attr-defined]
        "started": process.started,  # type: ignore[attr-defined]
        "finished": time.time(),
        "commit": git_commit(),
        "hardware": hardware(),
        "threads": 1,
    }
    path = job.out(runs) / "done.json"
    path.write_text(json.dumps(record, indent=1))


def run_jobs(jobs: list[Job], runs: Path, parallel: int) -> None:
    """Start jobs in order as their dependencies finish, at most `parallel` at a time."""
    waiting = [job for job in jobs if not is_done(job, runs)]
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    while waiting or running:
        for job in list(waiting):
            if len(running) >= parallel:
                break
            needed = [other for other in jobs if other.name in job.after]
            if all(is_done(other, runs) for other in needed):
                waiting.remove(job)
                running[job.name] = (job, launch(job, runs))
                print(f"started {job.name}", flush=True)
        time.sleep(1.0)
        for name, (job, process) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[name]
            if code != 0:
                raise SystemExit(f"{name} failed with exit code {code}: see "
                                 f"{runs / (job.name + '.log')}; fix it and run this again")
            mark_done(job, runs, process)
            print(f"finished {name}", flush=True)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the training runs")
    parser.add_argument("--smoke", action="store_true", help="tiny models, seconds (tests)")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="train and export only these jobs (their dependencies must be done)")
    parser.add_argument("--train-only", action="store_true", help="train, do not export")
    parser.add_argument("--export-to", type=Path, default=None,
                        help="model folders go here (default: hourglass_edu/pretrained)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    jobs = plan(args.runs, args.smoke)
    if args.only:
        unknown = sorted(set(args.only) - {job.name for job in jobs})
        if unknown:
            parser.error(f"--only: no job named {unknown}; the jobs: {[job.name for job in jobs]}")
        jobs = [job for job in jobs if job.name in args.only]
    run_jobs(jobs, args.runs, args.jobs)
    if not args.train_only:
        from export_pretrained import export_all  # benchmarks/ is on sys.path for a script

        export_all(jobs, args.runs, args.export_to or REPO / "hourglass_edu" / "pretrained",
                   argv=sys.argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
