"""The compute frontier: hourglass against plain transformers at equal training FLOPs.

The paper's claim is that the hourglass "improves upon the Transformer baseline given the same
amount of computation". This script trains plain `12@1` and hourglass `2@1 8@3 2@1` models of the
same width and block count (12 block-equivalents each: the hourglass runs 8 of its blocks on a
3x shorter sequence) to the same budget of **training FLOPs**, at three widths and two lengths,
and records bits per character on a fixed validation sample at log-spaced points of the budget.

Why FLOPs and not minutes: a FLOP budget gives the same curve for the same seed and precision on
any machine, however loaded; minutes on a shared 2-core machine swing 2-3x. Training FLOPs are
3 x the forward FLOPs of `flops_per_token` (the useful work: attention counts only the pairs the
causal mask lets through; backward ~ 2 x forward) x tokens. What a FLOP costs in seconds on this
CPU is measured separately (`--timing`: the two models' training steps alternated, medians).

The grid (the `POINTS` table): widths 64 / 128 / 192 (2 / 4 / 6 heads of 32) at 256 characters,
width 128 at 2,048 (where attention is a larger share of a block's FLOPs), and a second seed at
width 128 for both lengths, so the seed spread stands beside the differences. Lovecraft (long
documents), 4,096 tokens per optimizer step at both lengths, one recipe for every run (AdamW,
lr 2e-3, warm-up 5% of the steps, cosine to 10%; not tuned per architecture).

    python benchmarks/frontier.py --runs /work/frontier    # the grid: 2 processes of 1 thread
    python benchmarks/frontier.py --runs /work/frontier --timing   # then, quiet: seconds per step
    python benchmarks/frontier.py --runs /work/frontier --report   # tables and figure only
    python benchmarks/frontier.py --runs /tmp/f --smoke --corpus-file toy.txt   # seconds

Resumable: each run keeps its checkpoint and curve in RUNS/NAME/ (the checkpoint is written at
every curve point, so a rerun continues from the last one and computes the same numbers); a
finished run (RUNS/NAME/done.json) is not trained again. Writes benchmarks/results/frontier.json
(raw curves and the `summarize` rows derived from them), frontier.md (derived from the json),
docs/figures/frontier.png, and a copy of the json inside the package for notebook 06.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from common import RESULTS, cpu_model, markdown_table

from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.data import prepare_data
from hourglass_edu.devices import resolve_device
from hourglass_edu.files import atomic_write
from hourglass_edu.training import (
    TrainConfig,
    evaluate_bpc,
    language_model_loss,
    resolve_precision,
    train,
)
from hourglass_edu.training.optimization import build_optimizer
from hourglass_edu.training.precision import autocast_context
from hourglass_edu.viz import plot_frontier

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "figures" / "frontier.png"
# Notebook 06 reads the curves from the installed package (on Colab there is no benchmarks/).
PACKAGE_COPY = REPO / "hourglass_edu" / "results" / "frontier.json"
STRUCTURES = {"plain": "12@1", "hourglass": "2@1 8@3 2@1"}
TOKENS_PER_STEP = 4096
LR, WARMUP_FRACTION = 2e-3, 0.05
SAMPLE_TOKENS = 65_536  # the fixed validation sample of every curve point


@dataclass(frozen=True)
class Point:
    """One training run of the grid."""

    arch: str
    d_model: int
    length: int
    seed: int
    budget: float  # training FLOPs

    @property
    def name(self) -> str:
        return f"{self.arch}-d{self.d_model}-n{self.length}-s{self.seed}"

    @property
    def n_heads(self) -> int:
        return max(1, self.d_model // 32)

    @property
    def batch_size(self) -> int:
        return max(1, TOKENS_PER_STEP // self.length)


# Budgets: about an hour of a 2-core AVX512-BF16 CPU for the whole grid at bf16 (two one-thread
# processes side by side train at ~50 GFLOP/s each at width 128-192, ~20 at width 64); the wider
# model gets the larger budget, as a compute-optimal recipe would.
BUDGETS = {(64, 256): 1e13, (128, 256): 2.2e13, (192, 256): 4.4e13, (128, 2048): 2.2e13}
SEEDS = {(128, 256): (0, 1), (128, 2048): (0, 1)}
SMOKE_BUDGETS = {(16, 64): 2e9, (32, 64): 4e9, (16, 128): 2e9}


def grid(smoke: bool = False) -> list[Point]:
    budgets = SMOKE_BUDGETS if smoke else BUDGETS
    seeds = {(16, 64): (0, 1)} if smoke else SEEDS
    return [Point(arch, d, n, seed, budget)
            for (d, n), budget in budgets.items() for seed in seeds.get((d, n), (0,))
            for arch in STRUCTURES]


def build(point: Point, vocab_size: int) -> HourglassLM:
    torch.manual_seed(point.seed)
    return HourglassLM(HourglassConfig(vocab_size=vocab_size, d_model=point.d_model,
                                       n_heads=point.n_heads, structure=STRUCTURES[point.arch],
                                       max_length=point.length))


def training_flops_per_step(model: HourglassLM, point: Point) -> float:
    """Forward + backward (3 x forward) useful FLOPs of one optimizer step."""
    return 3 * model.flops_per_token(point.length)["total"] * point.batch_size * point.length


def curve_steps(total_steps: int, per_octave: int = 2, first: int = 10) -> list[int]:
    """Log-spaced steps ending at `total_steps`: `per_octave` points per doubling, from `first`."""
    steps, k = set(), 0
    while True:
        step = round(total_steps * 2 ** (-k / per_octave))
        if step < min(first, total_steps):
            break
        steps.add(step)
        k += 1
    return sorted(steps)


# --- one run ---------------------------------------------------------------------------------


def run_point(point: Point, data, folder: Path, precision: str, device: str) -> dict:
    """Train `point` to its budget in `folder` (resuming what is there); its record."""
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    model = build(point, data.tokenizer.vocab_size)
    per_step = training_flops_per_step(model, point)
    steps = max(1, round(point.budget / per_step))
    marks = set(curve_steps(steps))
    config = TrainConfig(steps=steps, batch_size=point.batch_size, block_size=point.length,
                         lr=LR, warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
                         eval_every=steps, eval_batches=1, log_every=max(1, steps // 50),
                         checkpoint_every=steps, seed=point.seed, precision=precision,
                         device=device, progress=False)
    checkpoint = folder / "checkpoint.pt"
    curve_file = folder / "curve.json"
    resume = checkpoint.exists()
    curve = json.loads(curve_file.read_text()) if resume and curve_file.exists() else []
    sample_batches = max(1, SAMPLE_TOKENS // (8 * point.length))

    def record_point(trainer) -> None:
        if trainer.step not in marks or any(p["step"] == trainer.step for p in curve):
            return
        bpc = evaluate_bpc(trainer.model, data.val_ids, batch_size=8, block_size=point.length,
                           max_batches=sample_batches, seed=1234, device=trainer.device,
                           precision=trainer.precision)
        curve.append({"step": trainer.step, "tokens": trainer.tokens_seen,
                      "flops": trainer.step * per_step, "sample_bpc": bpc})
        trainer.save()  # the checkpoint and the curve stay at the same step
        atomic_write(curve_file, json.dumps(curve, indent=1))
        print(f"{point.name}: step {trainer.step:,}/{steps:,}  {trainer.step * per_step:.3g} FLOPs"
              f"  sample bpc {bpc:.4f}", flush=True)

    if resume:  # points past the checkpoint are computed again, with the same numbers
        saved_step = torch.load(checkpoint, map_location="cpu", weights_only=True)["step"]
        curve = [p for p in curve if p["step"] <= saved_step]
    train(model, data, config, checkpoint_path=checkpoint, resume=resume,
          callbacks=[record_point])
    whole = evaluate_bpc(model, data.val_ids, batch_size=8, block_size=point.length,
                         max_batches=None, device=device, precision=resolve_precision(
                             precision, resolve_device(device)))
    record = {**asdict(point), "name": point.name, "steps": steps, "flops_per_step": per_step,
              "tokens": steps * point.batch_size * point.length,
              "parameters": sum(p.numel() for p in model.parameters()),
              "precision": resolve_precision(precision, resolve_device(device)),
              "curve": sorted(curve, key=lambda p: p["step"]), "val_bpc": whole}
    atomic_write(done, json.dumps(record, indent=1))
    return record


def worker(args) -> None:
    """One lane: its points one after another, on one thread."""
    torch.set_num_threads(1)
    data = load_data(args)
    points = {p.name: p for p in grid(args.smoke)}
    for name in args.worker:
        run_point(points[name], data, args.runs / name, args.precision, args.device)


def load_data(args):
    source = args.corpus_file if args.corpus_file is not None else "lovecraft"
    return prepare_data(source, val_fraction=0.05, seed=0)


def lanes(points: list[Point], count: int) -> list[list[Point]]:
    """Points shared among `count` processes, the largest budgets first, each to the lightest."""
    shared: list[list[Point]] = [[] for _ in range(count)]
    load = [0.0] * count
    for point in sorted(points, key=lambda p: -p.budget):
        lane = load.index(min(load))
        shared[lane].append(point)
        load[lane] += point.budget
    return [lane for lane in shared if lane]


def train_grid(args, points: list[Point]) -> None:
    commands = []
    for lane in lanes(points, args.processes):
        command = [sys.executable, str(Path(__file__).resolve()), "--runs", str(args.runs),
                   "--precision", args.precision, "--device", args.device,
                   "--worker", *[p.name for p in lane]]
        if args.smoke:
            command.append("--smoke")
        if args.corpus_file is not None:
            command += ["--corpus-file", str(args.corpus_file)]
        commands.append(command)
    processes = [subprocess.Popen(command) for command in commands]
    codes = [process.wait() for process in processes]
    if any(codes):
        raise SystemExit(f"a training process failed (exit codes {codes}); rerun to continue")


# --- seconds per step, alternating ---------------------------------------------------------------


def time_steps(args, points: list[Point], rounds: int, steps_per_round: int) -> dict:
    """Median seconds per training step of each architecture, the two alternated round by
    round in this process (one thread), per width and length: FLOPs turned into seconds."""
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    vocab = 100
    timings = {}
    for d, n in sorted({(p.d_model, p.length) for p in points}):
        contenders = {}
        for arch in STRUCTURES:
            point = Point(arch, d, n, 0, 0.0)
            model = build(point, vocab).to(device)
            optimizer = build_optimizer(model, TrainConfig(steps=1, lr=LR), device.type)
            batch = torch.randint(0, vocab, (point.batch_size, n + 1), device=device)
            contenders[arch] = (model, optimizer, batch, point)
        seconds = {arch: [] for arch in STRUCTURES}
        for round_index in range(rounds + 1):  # round 0 warms up and is thrown away
            for arch, (model, optimizer, batch, _) in contenders.items():
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    with autocast_context(precision, device):
                        loss = language_model_loss(model(batch[:, :-1]), batch[:, 1:])
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if round_index:
                    seconds[arch].append((time.perf_counter() - start) / steps_per_round)
        row = {f"{arch}_s_per_step": statistics.median(values) for arch, values in seconds.items()}
        for arch, (model, _, _, point) in contenders.items():
            row[f"{arch}_flops_per_step"] = training_flops_per_step(model, point)
        timings[f"d{d}-n{n}"] = {"d_model": d, "length": n, "precision": precision, **row}
        print(f"d{d} n{n}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return timings


# --- what the curves say ------------------------------------------------------------------------


def flops_to_reach(curve: list[dict], target: float) -> float | None:
    """The FLOPs at which a curve first reaches `target` bpc, interpolated linearly in log FLOPs
    between its points; None if it never does."""
    previous = None
    for point in curve:
        if point["sample_bpc"] <= target:
            if previous is None:
                return point["flops"]
            (f0, b0), (f1, b1) = (previous["flops"], previous["sample_bpc"]), (
                point["flops"], point["sample_bpc"])
            fraction = (b0 - target) / (b0 - b1) if b0 != b1 else 1.0
            return math.exp(math.log(f0) + fraction * (math.log(f1) - math.log(f0)))
        previous = point
    return None


def spread(values) -> float:
    values = list(values)
    return max(values) - min(values)


def summarize(raw: dict) -> dict:
    """Per width, length and seed: both finals at equal FLOPs, hourglass minus plain, and the
    share of the plain model's FLOPs the hourglass needed to reach the plain model's final
    sample bpc; per width and length with two seeds: the spread; the step-time ratios."""
    runs = {(r["arch"], r["d_model"], r["length"], r["seed"]): r for r in raw["runs"]}
    pairs = []
    for (arch, d, n, seed), plain in sorted(runs.items(), key=lambda kv: kv[0][1:]):
        hourglass = runs.get(("hourglass", d, n, seed))
        if arch != "plain" or hourglass is None:
            continue
        reach = flops_to_reach(hourglass["curve"], plain["curve"][-1]["sample_bpc"])
        pairs.append({
            "d_model": d, "length": n, "seed": seed, "budget": plain["budget"],
            "plain_bpc": plain["val_bpc"], "hourglass_bpc": hourglass["val_bpc"],
            "difference": hourglass["val_bpc"] - plain["val_bpc"],
            "plain_tokens": plain["tokens"], "hourglass_tokens": hourglass["tokens"],
            "flop_ratio": None if reach is None else reach / plain["curve"][-1]["flops"],
        })
    spreads = []
    for d, n in sorted({(p["d_model"], p["length"]) for p in pairs}):
        seeded = [p for p in pairs if (p["d_model"], p["length"]) == (d, n)]
        if len(seeded) < 2:
            continue
        spreads.append({
            "d_model": d, "length": n, "seeds": len(seeded),
            "plain_spread": spread(p["plain_bpc"] for p in seeded),
            "hourglass_spread": spread(p["hourglass_bpc"] for p in seeded),
            "difference_mean": statistics.mean(p["difference"] for p in seeded),
            "difference_range": spread(p["difference"] for p in seeded),
        })
    timing = []
    for row in raw.get("timing", {}).values():
        step_ratio = row["hourglass_s_per_step"] / row["plain_s_per_step"]
        flop_ratio = row["hourglass_flops_per_step"] / row["plain_flops_per_step"]
        timing.append({**row, "step_time_ratio": step_ratio, "step_flop_ratio": flop_ratio,
                       # seconds to spend the same FLOP budget, hourglass over plain
                       "seconds_at_equal_flops": step_ratio / flop_ratio})
    return {"pairs": pairs, "spreads": spreads, "timing": timing}


def render_markdown(raw: dict) -> str:
    summary = summarize(raw)
    lines = [
        "# The compute frontier: hourglass against plain at equal training FLOPs",
        "",
        f"Made by `{raw['command']}` (seconds per step: the same with `--timing`), "
        f"{raw['machine']}, precision "
        f"{raw['precision']}. Every number below is derived from frontier.json by "
        "`summarize` in benchmarks/frontier.py.",
        "",
        "## Runs",
        "",
        markdown_table(sorted(raw["runs"], key=lambda r: (r["length"], r["d_model"], r["seed"],
                                                            r["arch"])), [
            ("name", "run", "{}"), ("parameters", "parameters", "{:,}"),
            ("budget", "training FLOPs", "{:.2e}"), ("steps", "steps", "{:,}"),
            ("tokens", "tokens", "{:,}"), ("val_bpc", "val bpc (whole split)", "{:.4f}")]),
        "",
        "## Equal FLOPs, per width, length and seed",
        "",
        "`difference` is hourglass minus plain on the whole validation split (negative: the "
        "hourglass is better). `FLOP ratio`: the share of the budget the hourglass needed to reach "
        "the plain model's final bpc on the validation sample (below 1: the same result for fewer "
        "FLOPs; `-`: not reached within the budget).",
        "",
        markdown_table(summary["pairs"], [
            ("d_model", "d_model", "{}"), ("length", "length", "{:,}"), ("seed", "seed", "{}"),
            ("budget", "training FLOPs", "{:.2e}"), ("plain_bpc", "plain", "{:.4f}"),
            ("hourglass_bpc", "hourglass", "{:.4f}"), ("difference", "difference", "{:+.4f}"),
            ("flop_ratio", "FLOP ratio", "{:.2f}")]),
        "",
        "## Seed spread",
        "",
        markdown_table(summary["spreads"], [
            ("d_model", "d_model", "{}"), ("length", "length", "{:,}"), ("seeds", "seeds", "{}"),
            ("plain_spread", "plain spread", "{:.4f}"),
            ("hourglass_spread", "hourglass spread", "{:.4f}"),
            ("difference_mean", "mean difference", "{:+.4f}"),
            ("difference_range", "range of the difference", "{:.4f}")]),
        "",
        "## Seconds per step on this machine (alternating, medians, one thread)",
        "",
        markdown_table(summary["timing"], [
            ("d_model", "d_model", "{}"), ("length", "length", "{:,}"),
            ("plain_s_per_step", "plain s/step", "{:.3f}"),
            ("hourglass_s_per_step", "hourglass s/step", "{:.3f}"),
            ("step_flop_ratio", "FLOPs per step, hourglass/plain", "{:.3f}"),
            ("step_time_ratio", "seconds per step, hourglass/plain", "{:.3f}"),
            ("seconds_at_equal_flops", "seconds at equal FLOPs, hourglass/plain", "{:.3f}")])
        if summary["timing"] else "(not measured yet: run with `--timing`)",
        "",
    ]
    return "\n".join(lines)


def draw(raw: dict, path: Path) -> None:
    """bpc on the validation sample against training FLOPs (the figure notebook 06 draws)."""
    plot_frontier(raw).savefig(path, dpi=110)


def report(args, points: list[Point]) -> None:
    runs = []
    for point in points:
        done = args.runs / point.name / "done.json"
        if done.exists():
            runs.append(json.loads(done.read_text()))
    if not runs:
        raise SystemExit(f"no finished run in {args.runs}: train first")
    raw_path = args.results / ("frontier_smoke.json" if args.smoke else "frontier.json")
    old = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    raw = {"command": "python benchmarks/frontier.py" + (" --smoke" if args.smoke else ""),
           "machine": f"{cpu_model()}, torch {torch.__version__}, one thread per process",
           "precision": runs[0]["precision"], "runs": runs,
           "timing": args.timing_result or old.get("timing", {})}
    raw["summary"] = summarize(raw)  # derived, kept beside the runs for readers of the json
    atomic_write(raw_path, json.dumps(raw, indent=1))
    if not args.smoke:
        atomic_write(PACKAGE_COPY, json.dumps(raw, indent=1))
    markdown = render_markdown(raw)
    atomic_write(raw_path.with_suffix(".md"), markdown)
    figure = args.figure or (None if args.smoke else FIGURE)
    if figure is not None:
        draw(raw, figure)
    print(markdown)
    print(f"wrote {raw_path}, {raw_path.with_suffix('.md')}" + (f", {figure}" if figure else ""))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="one folder per run, resumable")
    parser.add_argument("--smoke", action="store_true", help="tiny models: seconds, for tests")
    parser.add_argument("--corpus-file", type=Path, default=None,
                        help="a text file instead of the Lovecraft corpus (smoke tests)")
    parser.add_argument("--only", nargs="+", default=None, help="run names to train")
    parser.add_argument("--processes", type=int, default=2, help="training processes side by side")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing", action="store_true",
                        help="measure seconds per step (alternating), then report")
    parser.add_argument("--report", action="store_true", help="tables and figure only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the tables go")
    parser.add_argument("--figure", type=Path, default=None, help="where the figure goes")
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    args.timing_result = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    points = grid(args.smoke)
    known = {p.name for p in points}
    if args.only:
        unknown = sorted(set(args.only) - known)
        if unknown:
            raise SystemExit(f"unknown runs {unknown}; the grid's runs: {sorted(known)}")
        points = [p for p in points if p.name in args.only]
    if args.timing:
        rounds, steps = (2, 1) if args.smoke else (7, 3)
        args.timing_result = time_steps(args, points, rounds, steps)
    elif not args.report:
        train_grid(args, points)
    report(args, grid(args.smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
