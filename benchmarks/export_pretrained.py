"""Export the runs of `train_pretrained.py` to model folders with measured model cards.

Called by `train_pretrained.py` once every job is done (run that script, not this one). For each
run: the weights of its best validation (RUN/best.pt, not the last step's) go to fp16
safetensors; the *exported* weights are then loaded back and measured (whole validation split, the
fixed 20,000-character slice the tests re-measure, and for poem models how many of 20 seeded
samples end by themselves); the card records those figures with how the model was trained, its
throughput, its validation curve and, for `haiku` and `lovecraft`, the target and how far off it is.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import shlex
import time
from pathlib import Path

import torch

from hourglass_edu.data import prepare_data
from hourglass_edu.devices import resolve_device
from hourglass_edu.generation import generate
from hourglass_edu.model_folders import (
    export_model_folder,
    load_model_folder,
    read_card,
    read_history,
)
from hourglass_edu.training import evaluate_bpc, load_checkpoint, model_from_checkpoint
from hourglass_edu.training.checkpoints import model_checkpoint_file
from hourglass_edu.training.precision import resolve_precision

SAMPLES = 5  # seeds 0-4 in the card
SLICE_CHARACTERS = 20_000  # the tests re-measure this slice in seconds
ENDING_SAMPLES, ENDING_LIMIT = 20, 200
POEM_CORPORA = {"haiku"}
PROMPTS = {"haiku": "", "lovecraft": "The "}
COMPARE = {"lovecraft-plain": "lovecraft-20min", "lovecraft-20min": "lovecraft-plain"}
DESCRIPTIONS = {
    "haiku": "Hourglass `2@1 8@3 2@1` trained on the haiku corpus, in two stages of one run: "
             "95 minutes without dropout, then resumed (weights, optimizer and clock) to 170 "
             "minutes with dropout 0.1, once the first stage had begun to learn the corpus by "
             "heart.",
    "lovecraft": "Hourglass `2@1 8@3 2@1` trained on H. P. Lovecraft's stories, in two stages of "
                 "one run: 80 minutes without dropout, then resumed (weights, optimizer and clock) "
                 "to 145 minutes with dropout 0.1, once the first stage had begun to learn the "
                 "corpus by heart.",
    "lovecraft-20min": "Hourglass `2@1 8@3 2@1` trained on Lovecraft for 20 minutes: the equal-"
                       "compute partner of `lovecraft-plain`.",
    "lovecraft-plain": "Plain transformer `12@1` of the same width, trained on Lovecraft with the "
                       "same recipe and the same 20 minutes as `lovecraft-20min`.",
    "lovecraft-haiku": "`lovecraft` fine-tuned on the haiku corpus: poems that end with `<eot>`.",
}
# Whole-split validation targets (issue 24), and the run each model replaced: the same model and
# recipe, fewer tokens (one thread beside test runs). Two ends of a cosine schedule give the
# drop per doubling of tokens the card extrapolates with.
TARGETS = {"haiku": 1.80, "lovecraft": 1.75}
PREVIOUS = {"haiku": (8_941_568, 2.050), "lovecraft": (7_450_624, 2.0988)}


def measure(model, tokenizer, corpus_name: str, block_size: int) -> dict:
    """Card figures of the exported (fp16-rounded) weights."""
    data = prepare_data(corpus_name, tokenizer=tokenizer)  # the split training used
    ids = data.val_ids
    figures = {
        "training_characters": int(data.train_ids.numel()),
        "val_bpc": round(evaluate_bpc(model, ids, batch_size=16, block_size=block_size), 4),
        "val_tokens": int(ids.numel()),
        "slice_bpc": round(evaluate_bpc(model, ids[:SLICE_CHARACTERS], batch_size=16,
                                        block_size=block_size), 4),
        "slice": f"the first {SLICE_CHARACTERS:,} tokens of the validation split, windows of "
                 f"{block_size}",
    }
    if corpus_name in POEM_CORPORA:
        ended = sum(len(generate(model, tokenizer, "", ENDING_LIMIT, temperature=0.8, seed=seed))
                    < ENDING_LIMIT for seed in range(ENDING_SAMPLES))
        figures["samples_ending_by_themselves"] = f"{ended}/{ENDING_SAMPLES}"
    return figures


def overfitting_text(last: dict, passes: float, dropout: float) -> str:
    """A sentence when training bpc ends well below validation: it learns the text by heart."""
    gap = last["val_bpc"] - last["train_bpc"]
    if gap < 0.1:
        return ""
    remedy = (f"even with dropout {dropout:g}, so a longer run needs more dropout or a smaller "
              "model rather than only tokens" if dropout else
              "so a longer run should add dropout rather than only tokens")
    return (f"\nAt the end training bpc sits {gap:.2f} below validation, after {passes:.1f} passes "
            "over the training text: the model has begun to learn that text by heart, so more "
            f"passes buy less, {remedy}.\n")


def curve_table(history: dict, passes: float, dropout: float = 0.0, points: int = 10) -> str:
    """Validation bpc (the run's fixed sample of batches) against tokens seen, `points` rows."""
    evaluated = [record for record in history["records"] if record.get("val_bpc") is not None]
    if not evaluated:
        return ""
    stride = max(1, len(evaluated) // points)
    chosen = evaluated[stride - 1::stride]
    if chosen[-1] is not evaluated[-1]:
        chosen.append(evaluated[-1])
    rows = "\n".join(f"| {record['step']:,} | {record['tokens'] / 1e6:.1f}M | "
                     f"{record['train_bpc']:.3f} | {record['val_bpc']:.3f} |" for record in chosen)
    return ("## Validation curve\n\nMeasured during training on the run's fixed sample of "
            "validation batches (the whole split is measured only on the exported weights, "
            "above); train bpc is the mean over the steps since the record before.\n\n"
            "| step | tokens | train bpc | val bpc |\n|---|---|---|---|\n" + rows + "\n"
            + overfitting_text(evaluated[-1], passes, dropout))


def restart(history: dict) -> tuple[dict, dict] | None:
    """The records either side of a warm restart (a resumed run whose learning rate went up
    again: the second stage of train_pretrained.py's long runs), or None."""
    records = [record for record in history["records"] if record.get("val_bpc") is not None]
    for before, after in itertools.pairwise(records):
        if after["lr"] > 1.5 * before["lr"]:
            return before, after
    return None


def restart_text(history: dict, dropout: float) -> str:
    """What the second stage did to the validation curve, from the run's own records."""
    found = restart(history)
    if found is None:
        return ""
    before, after = found
    records = [record for record in history["records"] if record.get("val_bpc") is not None]
    first = min(record["val_bpc"] for record in records if record["step"] <= before["step"])
    second = [record for record in records if record["step"] > before["step"]]
    best = min(second, key=lambda record: record["val_bpc"])
    verdict = (f"its best, {best['val_bpc']:.3f} at step {best['step']:,}, beat the first stage's "
               f"{first:.3f}, so these weights come from it" if best["val_bpc"] < first else
               f"its best, {best['val_bpc']:.3f}, did not beat the first stage's {first:.3f}, so "
               "these weights are the first stage's")
    return (f"\n**Two stages.** The run was resumed at step {before['step']:,} "
            f"({before['tokens'] / 1e6:.1f}M tokens) with dropout {dropout:g} and a longer "
            f"schedule: the learning rate went from {before['lr']:.1e} back up to "
            f"{after['lr']:.1e} (a warm restart), validation (the fixed sample) from "
            f"{before['val_bpc']:.3f} to {after['val_bpc']:.3f}, then down again to "
            f"{second[-1]['val_bpc']:.3f} at the end ({second[-1]['tokens'] / 1e6:.1f}M tokens); "
            f"{verdict}.\n")


def rule_tested_text(history: dict, per_doubling: float) -> str:
    """When a second stage continued the run, what its tokens measured against the doubling rule:
    from the first stage's best to the end, on the validation sample both were measured on."""
    found = restart(history)
    if found is None:
        return ""
    records = [record for record in history["records"] if record.get("val_bpc") is not None]
    first = min((record for record in records if record["step"] <= found[0]["step"]),
                key=lambda record: record["val_bpc"])
    end = records[-1]
    promised = first["val_bpc"] - per_doubling * math.log2(end["tokens"] / first["tokens"])
    return (f"The second stage put that rule to the test: from the first stage's best, "
            f"{first['val_bpc']:.3f} on the validation sample at {first['tokens'] / 1e6:.1f}M "
            f"tokens, {(end['tokens'] - first['tokens']) / 1e6:.1f}M more tokens reached "
            f"{end['val_bpc']:.3f}, where the rule promised {promised:.3f}. This model and recipe "
            "have got about what these 3 MB give them; the target needs another model or recipe "
            "(the `gpu` preset on a GPU), not more hours of this one.")


def target_text(name: str, fields: dict, history: dict) -> str:
    """The target, whether the whole-split figure meets it, and if not, an extrapolation."""
    if name not in TARGETS:
        return ""
    target, bpc, tokens = TARGETS[name], fields["val_bpc"], fields["tokens_seen"]
    if bpc <= target:
        return f"## Target\n\n{bpc:.3f} bits per character meets the target of {target:.2f}.\n"
    old_tokens, old_bpc = PREVIOUS[name]
    doublings = math.log2(tokens / old_tokens)
    per_doubling = (old_bpc - bpc) / doublings if doublings > 0 else 0.0
    text = (f"## Target\n\n{bpc:.3f} bits per character misses the target of {target:.2f} by "
            f"{bpc - target:.3f}. The run before this one (same model and recipe) ended at "
            f"{old_bpc:.3f} after {old_tokens / 1e6:.1f}M tokens; this one at {bpc:.3f} after "
            f"{tokens / 1e6:.1f}M, {per_doubling:.3f} bpc per doubling of tokens. ")
    tested = rule_tested_text(history, per_doubling)
    if tested:
        text += tested
    elif per_doubling > 0:
        needed = tokens * 2 ** ((bpc - target) / per_doubling)
        hours = needed / fields["tokens_per_second"] / 3600
        text += (f"If every further doubling gave as much (they give less as the corpus repeats, "
                 f"so this is a lower bound), {target} would take about {needed / 1e6:.0f}M "
                 f"tokens, {hours:.1f} hours at this run's {fields['tokens_per_second']:,} "
                 "tokens/s.")
    return text + "\n"


def card_body(name: str, fields: dict, samples: list[str], history: dict,
              dropout: float = 0.0) -> str:
    """The model card's text; `dropout`: the run's at its end (its last stage's)."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in fields.items())
    quoted = "\n\n".join("```text\n" + text + "\n```" for text in samples)
    partner = COMPARE.get(name)
    see = (f"\nCompare with `{partner}`: the same width, recipe and training time.\n"
           if partner else "")
    return f"""# {name}

{DESCRIPTIONS.get(name, '')}
{see}
Load it with `from hourglass_edu import load_pretrained; model, tokenizer =
load_pretrained("{name}")`, or sample from the shell with
`python -m hourglass_edu sample --pretrained {name}`.

Every figure below was measured and written by `benchmarks/train_pretrained.py` (bits per
character on the exported fp16 weights, every token counted, `<eot>` included, windows of
`block_size` characters, so positions early in a window see little context).

| field | value |
|---|---|
{rows}

{target_text(name, fields, history)}
## Samples (temperature 0.8, seeds 0-{len(samples) - 1})

{quoted}

{curve_table(history, fields['tokens_seen'] / fields['training_characters'], dropout)}\
{restart_text(history, dropout)}"""


def job_command(job, runs: Path) -> str:
    """The CLI commands of a job's stages as one would type them (RUNS stands for the --runs
    folder), joined by "then": a later stage resumes the run of the one before."""
    commands = [f"python -m hourglass_edu {shlex.join([*job.args, *stage])} --out RUNS/{job.name}"
                + (" --resume" if index else "") for index, stage in enumerate(job.stages)]
    return " then ".join(commands).replace(str(runs), "RUNS")


def export_one(job, runs: Path, folder: Path, argv: list[str]) -> dict:
    done = json.loads((job.out(runs) / "done.json").read_text())
    checkpoint = load_checkpoint(model_checkpoint_file(job.out(runs)))  # best.pt
    last = load_checkpoint(job.out(runs))  # checkpoint.pt: the whole history
    model, tokenizer = model_from_checkpoint(checkpoint)
    train_config = checkpoint["train_config"]
    corpus_name = checkpoint["data"]["corpus"]
    fields = {
        "name": job.name, "model_class": checkpoint.get("model_class", "HourglassLM"),
        "structure": model.config.structure, "d_model": model.config.d_model,
        "n_heads": model.config.n_heads, "parameters": model.num_parameters(),
        "corpus": corpus_name, "seed": train_config["seed"],
        "command": "python benchmarks/train_pretrained.py " + " ".join(argv[1:]),
        "job_command": job_command(job, runs),
        "commit": done["commit"], "hardware": done["hardware"], "threads": done["threads"],
        "precision": resolve_precision(train_config["precision"], resolve_device("cpu")),
        "training_seconds": round(checkpoint["elapsed"]), "steps": checkpoint["step"],
        "tokens_seen": checkpoint["tokens_seen"],
        "tokens_per_second": round(checkpoint["tokens_seen"] / checkpoint["elapsed"]),
        "weights": f"best validation: step {checkpoint['step']:,} of {last['step']:,}",
        "batch_size": train_config["batch_size"],
        "block_size": train_config["block_size"], "lr": train_config["lr"],
        "compare_with": COMPARE.get(job.name), "exported": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__.split("+")[0], "python": platform.python_version(),
    }
    if "finetuned_from" in checkpoint.get("metadata", {}):
        fields["finetuned_from"] = "lovecraft"
    export_model_folder(model, tokenizer, folder, dtype="float16", card=fields)
    shipped, tokenizer = load_model_folder(folder)
    fields.update(measure(shipped, tokenizer, corpus_name, train_config["block_size"]))
    prompt = PROMPTS.get(corpus_name, "")
    samples = [prompt + generate(shipped, tokenizer, prompt, 300, temperature=0.8, seed=seed)
               for seed in range(SAMPLES)]
    fields = {key: value for key, value in fields.items() if value is not None}
    export_model_folder(model, tokenizer, folder, dtype="float16", card=fields,
                        card_body=card_body(job.name, fields, samples, last["history"],
                                            last["model_config"].get("dropout", 0.0)),
                        history=last["history"])
    return fields


def up_to_date(job, runs: Path, folder: Path) -> bool:
    """True when `folder` already holds this run's final state (so re-running skips it)."""
    card = read_card(folder)
    if not card or not (folder / "model.safetensors").exists():
        return False
    checkpoint = load_checkpoint(model_checkpoint_file(job.out(runs)))
    last = load_checkpoint(job.out(runs))  # a run continued past its best changes the card too
    exported = read_history(folder) or {"records": []}
    return ((card.get("steps"), card.get("tokens_seen")) == (checkpoint["step"],
                                                             checkpoint["tokens_seen"])
            and len(exported["records"]) == len(last["history"]["records"]))


def export_all(jobs, runs: Path, target: Path, argv: list[str]) -> None:
    torch.set_num_threads(1)  # small models: one thread is fastest, and leaves a core free
    for job in jobs:
        if up_to_date(job, runs, target / job.name):
            print(f"{job.name}: already exported from this run", flush=True)
            continue
        fields = export_one(job, runs, target / job.name, argv)
        print(f"exported {job.name}: val {fields['val_bpc']} bpc, {fields['steps']} steps, "
              f"{fields['training_seconds']} s -> {target / job.name}", flush=True)
