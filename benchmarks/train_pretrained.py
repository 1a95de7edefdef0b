"""Train the models that ship inside the package (`hourglass_edu/pretrained/`), end to end.

    python benchmarks/train_pretrained.py --runs runs/pretrained        # the real thing (~2 hours)
    python benchmarks/train_pretrained.py --runs /tmp/p --smoke         # the same steps in seconds

Every model is trained by the project's own CLI (`python -m hourglass_edu train` / `finetune`),
one thread per process, `--jobs` processes at a time (default 2: one per core of a 2-core CPU):

    lovecraft-20min  hourglass "2@1 8@3 2@1" on Lovecraft, a 20-minute cosine schedule
    lovecraft-plain  plain transformer "12@1" of the same width: same recipe, same 20 minutes
    haiku            the hourglass on haiku: 95 minutes, then continued to 170 with dropout 0.1
    lovecraft        the hourglass on Lovecraft: 80 minutes, then continued to 145 with dropout 0.1
    lovecraft-haiku  lovecraft fine-tuned on haiku (poems that end with <eot>)

`haiku` and `lovecraft` ran in two stages on two days: the first, without dropout, ended with
training bpc 0.2 below validation (10-12 passes over 3 MB learn the text by heart), so the second
resumes the same run (weights, optimizer, clock) with a longer --minutes and dropout 0.1. The
clock-driven cosine then continues from where the longer schedule would be, about half the peak
learning rate: a warm restart, no new warm-up (the optimizer state is kept).

The script is resumable: a finished job (RUNS/NAME/done.json lists its finished stages) is
skipped, an interrupted one is continued with `--resume` from its last checkpoint. Run it again
with the same arguments after an interruption. When every job is done it exports each to a
model folder (`--export-to`, default the package's `hourglass_edu/pretrained/`): config.json,
tokenizer.json, model.safetensors (fp16) and a model card README.md whose figures this script
measures and writes.
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
    stages: list[list[str]]  # each stage's own options (budget, ...); stages after the first resume
    after: list[str] = field(default_factory=list)

    def out(self, runs: Path) -> Path:
        return runs / self.name


def plan(runs: Path, smoke: bool) -> list[Job]:
    """The jobs in the order they start (two at a time: the first two run side by side)."""
    def minutes(full: float, smoke_steps: int) -> list[str]:
        return ["--steps", str(smoke_steps)] if smoke else ["--minutes", f"{full:g}"]

    recipe = SMOKE_RECIPE if smoke else ["--preset", "cpu", *WIDTH, *RECIPE]
    train = ["train", *recipe]
    continued = ["--dropout", "0.1"]  # see the docstring: the second stage of a long run
    return [
        Job("lovecraft-20min", [*train, "--corpus", "lovecraft", *HOURGLASS], [minutes(20, 20)]),
        Job("lovecraft-plain", [*train, "--corpus", "lovecraft", *PLAIN], [minutes(20, 20)]),
        Job("haiku", [*train, "--corpus", "haiku", *HOURGLASS],
            [minutes(95, 40), [*minutes(170, 60), *continued]]),
        Job("lovecraft", [*train, "--corpus", "lovecraft", *HOURGLASS],
            [minutes(80, 40), [*minutes(145, 60), *continued]]),
        Job("lovecraft-haiku", ["finetune", "--from", str(runs / "lovecraft"), "--corpus", "haiku",
                                "--seed", "0", "--no-progress"], [minutes(15, 20)],
            after=["lovecraft"]),
    ]


def stage_records(job: Job, runs: Path) -> list[dict]:
    """How each finished stage ran (done.json of a one-stage run of before holds one record)."""
    path = job.out(runs) / "done.json"
    if not path.is_file():
        return []
    done = json.loads(path.read_text())
    return done.get("stages", [done])


def is_done(job: Job, runs: Path) -> bool:
    return len(stage_records(job, runs)) >= len(job.stages)


def launch(job: Job, runs: Path) -> subprocess.Popen:
    """Start the job's next stage in its own process with one thread; its output goes to
    RUNS/NAME.log (beside the run folder: the CLI writes only into an empty folder or one of its
    own runs)."""
    out = job.out(runs)
    stage = job.stages[len(stage_records(job, runs))]
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    if resume and (out / "done.json").exists():  # the CLI keeps a folder to its own files unless
        resume.append("--force")                 # forced; with --resume that replaces no run
    command = [sys.executable, "-m", "hourglass_edu", *job.args, *stage, "--out", str(out),
               *resume]
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
    """Record how the stage ran, after the stages before it; the model card reads the last."""
    record = {
        "job": job.name,
        "command": process.command,  # type: ignore[attr-defined]
        "started": process.started,  # type: ignore[attr-defined]
        "finished": time.time(),
        "commit": git_commit(),
        "hardware": hardware(),
        "threads": 1,
    }
    stages = [*stage_records(job, runs), record]
    path = job.out(runs) / "done.json"
    temporary = path.with_name("done.json.tmp")
    temporary.write_text(json.dumps({**record, "stages": stages}, indent=1))
    os.replace(temporary, path)  # a kill between stages leaves the old record whole


def run_jobs(jobs: list[Job], runs: Path, parallel: int) -> None:
    """Start jobs in order as their dependencies finish, at most `parallel` at a time."""
    waiting = [job for job in jobs if not is_done(job, runs)]
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    while waiting or running:
        for job in list(waiting):
            if is_done(job, runs):  # finished meanwhile by another call of this script
                waiting.remove(job)
                continue
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
            if is_done(job, runs):
                print(f"finished {name}", flush=True)
            else:  # its next stage resumes it at once
                waiting.insert(0, job)
                print(f"finished a stage of {name}", flush=True)


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
