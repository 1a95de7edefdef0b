"""Which model and recipe `demo` should train: candidates raced for the same minutes on haiku.

    python benchmarks/tune_demo.py --runs /tmp/tune       # 5 minutes per candidate (~30 minutes)
    python benchmarks/tune_demo.py --runs /tmp/t --quick  # two steps each, a smoke test

Each candidate is trained by the project's own CLI, as `demo` trains (`python -m hourglass_edu
train --preset cpu --corpus haiku --minutes 5 --seed 0`, torch's default threads, precision
auto), one at a time with nothing else running; the round order rotates with `--rounds` > 1 so
that a slow spell of a shared machine does not always fall on the same candidate. Then the *final*
weights (what `demo` samples from) are measured on the whole validation split, windows of the
candidate's block size (the model cards' protocol). The table names the CPU: the best recipe for
a CPU with bf16 units need not be the best for an AVX2-only one, where bf16 is slow and `auto`
trains in fp32.

A finished candidate (RUNS/NAME/done.json) is not trained again: after an interruption run the
same command; an interrupted candidate starts over (its budget is wall time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from common import command_line, machine_line, markdown_table, publish, results_path

REPO = Path(__file__).resolve().parents[1]


def recipe(structure: str, d_model: int, batch_size: int, block_size: int, lr: str) -> list[str]:
    """The `train` options a candidate sets (4 heads for every width raced here)."""
    return ["--structure", structure, "--d-model", str(d_model), "--n-heads", "4",
            "--batch-size", str(batch_size), "--block-size", str(block_size), "--lr", lr]


# name: (what changes from today's recipe, the CLI options). "today" is the recipe before tuning.
CANDIDATES = {
    "today": ("the cpu preset before tuning", recipe("2@1 4@3 2@1", 128, 16, 256, "2e-3")),
    "lr4e-3": ("today's model, twice the learning rate",
               recipe("2@1 4@3 2@1", 128, 16, 256, "4e-3")),
    "block128": ("windows of 128 (a haiku is ~60 characters), batch 32: the same tokens a step, "
                 "attention half the cost", recipe("2@1 4@3 2@1", 128, 32, 128, "4e-3")),
    "narrow96": ("d_model 96: 0.56x the parameters, more steps",
                 recipe("2@1 4@3 2@1", 96, 32, 128, "4e-3")),
    "outer1": ("one full-resolution layer each side, a deeper shortened middle",
               recipe("1@1 6@3 1@1", 128, 32, 128, "4e-3")),
    "batch16": ("block128 with half the batch: twice the steps, each half the tokens",
                recipe("2@1 4@3 2@1", 128, 16, 128, "4e-3")),
    "small": ("d_model 96 and one full-resolution layer each side, batch 16: the most steps",
              recipe("1@1 6@3 1@1", 96, 16, 128, "4e-3")),
    "outer1-lr8e-3": ("outer1 at twice the learning rate",
                      recipe("1@1 6@3 1@1", 128, 32, 128, "8e-3")),
    "short4": ("outer1 shortened by 4 instead of 3: the middle layers see a quarter of the tokens",
               recipe("1@1 6@4 1@1", 128, 32, 128, "4e-3")),
    "short4-lr8e-3": ("short4 at twice the learning rate",
                      recipe("1@1 6@4 1@1", 128, 32, 128, "8e-3")),
    "deep4": ("short4 with eight shortened layers", recipe("1@1 8@4 1@1", 128, 32, 128, "4e-3")),
}
HEADERS = ["candidate", "what changes", "options", "parameters", "steps", "tokens/s", "val bpc",
           "vs today"]
QUICK = ["--steps", "2", "--batch-size", "2", "--block-size", "32"]


def train(name: str, options: list[str], runs: Path, args) -> None:
    out = runs / name
    if (out / "done.json").is_file():
        print(f"{name}: done before, not trained again", flush=True)
        return
    budget = QUICK if args.quick else ["--minutes", f"{args.minutes:g}"]
    command = [sys.executable, "-m", "hourglass_edu", "train", "--preset", "cpu", "--corpus",
               args.corpus, "--seed", "0", "--no-progress", "--device", args.device, *options,
               *budget, "--out", str(out), "--force"]
    print(f"{name}: training ({' '.join(options)})", flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=True)
    (out / "done.json").write_text(json.dumps({"command": command}))


def measure(name: str, runs: Path, corpus: str) -> dict:
    """Whole-split bits per character of the final weights, and how far training got."""
    from hourglass_edu.data import prepare_data
    from hourglass_edu.training import evaluate_bpc, load_checkpoint, model_from_checkpoint

    checkpoint = load_checkpoint(runs / name / "checkpoint.pt")
    model, tokenizer = model_from_checkpoint(checkpoint)
    block_size = checkpoint["train_config"]["block_size"]
    ids = prepare_data(corpus, tokenizer=tokenizer).val_ids
    return {
        "bpc": evaluate_bpc(model, ids, batch_size=16, block_size=block_size),
        "steps": checkpoint["step"], "tokens": checkpoint["tokens_seen"],
        "seconds": checkpoint["elapsed"], "parameters": model.num_parameters(),
    }


def table(results: dict[str, list[dict]], args) -> str:
    from hourglass_edu.training.precision import resolve_precision

    today = min(run["bpc"] for run in results["today"])
    rows = []
    for name, runs in results.items():
        best = min(run["bpc"] for run in runs)
        rows.append([
            name, CANDIDATES[name][0], f"`{shlex.join(CANDIDATES[name][1])}`",
            f"{runs[0]['parameters'] / 1e6:.2f}M",
            " / ".join(f"{run['steps']:,}" for run in runs),
            " / ".join(f"{run['tokens'] / run['seconds']:,.0f}" for run in runs),
            " / ".join(f"{run['bpc']:.3f}" for run in runs), f"{best - today:+.3f}",
        ])
    winner = min(results, key=lambda name: min(run["bpc"] for run in results[name]))
    budget = "2 steps (quick)" if args.quick else f"{args.minutes:g} minutes"
    return "\n".join([
        "# demo recipe: candidates raced on haiku",
        "",
        f"Command: `{command_line('tune_demo.py', args.argv)}`",
        f"Measured on: {machine_line(args.device)}; precision auto = "
        f"{resolve_precision('auto', torch.device(args.device))}",
        f"Each candidate: `train --preset cpu --corpus haiku --seed 0` for {budget} of training "
        "(evaluations not counted), one at a time, nothing else running; bpc = the final weights "
        "on the whole validation split, windows of the candidate's block size. Rounds separated "
        "by ` / `.",
        "",
        markdown_table([dict(zip(HEADERS, row, strict=True)) for row in rows],
                       [(header, header, "{}") for header in HEADERS]),
        "",
        f"Lowest: **{winner}**, {min(run['bpc'] for run in results[winner]) - today:+.3f} bpc "
        "against today's recipe.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the candidates' runs")
    parser.add_argument("--minutes", type=float, default=5.0, help="budget per candidate")
    parser.add_argument("--rounds", type=int, default=1, help="races (order rotated each round)")
    parser.add_argument("--only", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                        metavar="NAME", help="candidates to race (default all; today always)")
    parser.add_argument("--corpus", default="haiku", help="haiku, or a path (tests)")
    parser.add_argument("--quick", action="store_true", help="two steps each: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu (default: the race is for CPUs)")
    parser.add_argument("--out", type=Path, default=None, help="where the table goes")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = ["today", *[name for name in args.only if name != "today"]]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run_name = name if args.rounds == 1 else f"{name}-round{round_index + 1}"
            train(run_name, CANDIDATES[name][1], args.runs, args)
            results[name].append(measure(run_name, args.runs, args.corpus))
            print(f"{run_name}: {results[name][-1]['bpc']:.3f} bpc", flush=True)
    publish(table(results, args), results_path("tune_demo", args.quick, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
