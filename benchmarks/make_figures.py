"""Make docs/library.md's pictures of the inside of a trained hourglass (one PNG per figure kind).

    python benchmarks/make_figures.py                  # from the shipped models: seconds
    python benchmarks/make_figures.py --train          # train two small models (2 x 6 min on
                                                       # a CPU) and draw from them instead
    python benchmarks/make_figures.py --quick          # smoke run: seconds, figures (and
                                                       # checkpoints) in a temp dir or --out
    python benchmarks/make_figures.py --load runs/figures/hourglass.pt   # reuse a checkpoint

By default it draws from the shipped `haiku` model (`--pretrained NAME` picks another), and the
training-curve figure from the histories of the shipped equal-compute pair `lovecraft-20min`
(hourglass) and `lovecraft-plain` (plain transformer). With `--train` it trains an hourglass and a
plain transformer of similar size with the library's trainer; checkpoints go to `--runs`, so a
second call with `--load` redraws without training. Every figure is drawn from text the model did
not train on (the validation split).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from hourglass_edu import analysis, viz  # noqa: E402
from hourglass_edu.data import prepare_data  # noqa: E402
from hourglass_edu.files import atomic_write  # noqa: E402
from hourglass_edu.hourglass import without_shift  # noqa: E402
from hourglass_edu.pretrained import (  # noqa: E402
    load_pretrained,
    pretrained_card,
    pretrained_history,
)
from hourglass_edu.training import (  # noqa: E402
    History,
    build_model,
    get_preset,
    load_checkpoint,
    model_from_checkpoint,
    train,
)
from hourglass_edu.viz.style import PALETTE, new_figure, styled  # noqa: E402

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
MAX_PNG_BYTES = 300_000

# Model sizes: an hourglass and a plain transformer with the same width and block count.
HOURGLASS = "2@1 4@3 2@1"
PLAIN = "8@1"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="haiku", help="haiku, lovecraft, or a path")
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes per model")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/figures")
    parser.add_argument("--runs", type=Path, default=None,
                        help="where the checkpoints go (default: runs/figures; --quick: "
                        "OUT/runs)")  # fmt: skip
    parser.add_argument("--load", type=Path, default=None,
                        help="hourglass checkpoint to draw from instead of training")  # fmt: skip
    parser.add_argument("--preset", default=None,
                        help="train with this library preset (cpu, gpu) instead of the small "
                        "figures model (d_model 64, 4 heads, windows of 96)")  # fmt: skip
    parser.add_argument("--pretrained", default="haiku",
                        help="shipped model to draw from (default haiku; see `models`)")
    parser.add_argument("--train", action="store_true",
                        help="train two small models instead of using the shipped ones")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, seconds")
    return parser.parse_args(argv)


def train_run(name: str, structure: str, data, args) -> tuple[torch.nn.Module, History]:
    if args.quick:
        preset = get_preset("smoke")
        config = preset.train.replace(steps=10, eval_every=5, eval_batches=2, log_every=2,
                                      progress=False)  # fmt: skip
        model = build_model(preset, data.tokenizer.vocab_size, structure=structure)
    elif args.preset:
        preset = get_preset(args.preset)
        config = preset.train.replace(minutes=args.minutes, steps=None)
        model = build_model(preset, data.tokenizer.vocab_size, structure=structure)
    else:
        # Small enough to learn something in a few minutes on a busy 2-core CPU.
        preset = get_preset("cpu")
        model = build_model(preset, data.tokenizer.vocab_size, structure=structure, d_model=64,
                            n_heads=4, max_length=128)  # fmt: skip
        config = preset.train.replace(minutes=args.minutes, steps=None, block_size=96,
                                      batch_size=16, lr=3e-3, warmup_steps=20, eval_every=50,
                                      eval_batches=5, log_every=5)  # fmt: skip
    path = args.runs / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    history = train(model, data, config, checkpoint_path=path, overwrite=True)
    print(f"{name}: {structure}, {model.num_parameters():,} parameters, "
          f"val bpc {history.last_val_bpc:.3f}, {time.perf_counter() - started:.0f} s")  # fmt: skip
    return model.eval(), history


def pick_text(documents, shortest: int, longest: int) -> str:
    """The first validation document of a suitable length (cut to `longest` if none fits)."""
    for document in documents:
        if shortest <= len(document) <= longest:
            return document
    return max(documents, key=len)[:longest]


def save(fig, path: Path) -> int:
    fig.savefig(path, dpi=100)
    size = path.stat().st_size
    print(f"  {path.relative_to(path.parents[1])}: {size / 1000:.0f} kB")
    if size > MAX_PNG_BYTES:
        raise RuntimeError(f"{path} is {size} bytes; keep docs pictures under {MAX_PNG_BYTES}")
    return size


def load_shipped(name: str) -> tuple[torch.nn.Module, object, dict[str, History]]:
    """A shipped model, and the training histories of the shipped equal-compute pair."""
    model, tokenizer = load_pretrained(name)
    runs = {}
    for pair in ("lovecraft-20min", "lovecraft-plain"):
        label = f"{pretrained_card(pair)['structure']} ({pair})"
        runs[label] = History.from_dict(pretrained_history(pair))
    return model, tokenizer, runs


def load_or_train(data, args) -> tuple[torch.nn.Module, object, dict[str, History]]:
    """(hourglass, tokenizer, training histories by label): from `--load`, shipped models, or
    trained now (`--train`, `--quick`)."""
    runs: dict[str, History] = {}
    if args.load is None and not (args.train or args.quick or args.preset):
        return load_shipped(args.pretrained)
    if args.load is None:
        model, runs[f"hourglass {HOURGLASS}"] = train_run("hourglass", HOURGLASS, data, args)
        _, runs[f"plain {PLAIN}"] = train_run("plain", PLAIN, data, args)
        return model, data.tokenizer, runs
    checkpoint = load_checkpoint(args.load)
    model, tokenizer = model_from_checkpoint(checkpoint)
    runs[f"hourglass {model.config.structure}"] = History.from_dict(checkpoint["history"])
    plain = args.load.with_name("plain.pt")
    if plain.exists():
        plain_checkpoint = load_checkpoint(plain)
        structure = plain_checkpoint["model_config"]["structure"]
        runs[f"plain {structure}"] = History.from_dict(plain_checkpoint["history"])
    return model, tokenizer, runs


@styled
def shipped_curves():
    """Validation bpc of the shipped `haiku` and `lovecraft` against training tokens (log axis),
    with their targets, where the runs they replaced ended, and where each was resumed with
    dropout (docs/shipped-models.md)."""
    from export_pretrained import PREVIOUS, TARGETS, restart  # benchmarks/ is on sys.path

    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    for colour, name in zip(PALETTE, TARGETS, strict=False):
        records = [record for record in pretrained_history(name)["records"]
                   if record.get("val_bpc") is not None]
        card = pretrained_card(name)
        ax.plot([r["tokens"] / 1e6 for r in records], [r["val_bpc"] for r in records],
                color=colour, lw=1.6, label=f"{name} (validation sample, during training)")
        ax.plot(card["tokens_seen"] / 1e6, card["val_bpc"], "o", color=colour, ms=7,
                label=f"{name}: {card['val_bpc']:.3f}, whole split, shipped weights")
        tokens, bpc = PREVIOUS[name]
        ax.plot(tokens / 1e6, bpc, "s", color=colour, mfc="white", ms=7,
                label=f"{name}: the run it replaced, {bpc:.3f}")
        found = restart(pretrained_history(name))
        if found:  # where the second stage resumed the run with dropout
            ax.axvline(found[0]["tokens"] / 1e6, color=colour, ls=":", lw=1.0)
        ax.axhline(TARGETS[name], color=colour, ls="--", lw=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (millions, log scale)")
    ax.set_ylabel("bits per character")
    ax.set_title("Shipped models: validation against training tokens\n(dashed: targets; dotted: "
                 "resumed with dropout 0.1 and a warm restart)", fontsize=10)
    ax.legend(fontsize=7.5)
    return fig


def draw(model, tokenizer, runs: dict[str, History], texts: list[str], out: Path) -> dict:
    """Every figure into `out`; returns {figure: PNG bytes}. `texts`: short, medium, long."""
    short_text, text, long_text = texts
    print(f"drawing into {out}")
    sizes = {}
    sizes["pooling"] = save(viz.pooling_diagram("an old silent pond", 3), out / "pooling.png")
    look = analysis.inspect_text(model, tokenizer, text)
    sizes["attention"] = save(viz.plot_attention(look, block=0), out / "attention.png")
    sizes["norms"] = save(viz.plot_activation_norms(look), out / "activation_norms.png")
    sizes["activations"] = save(viz.plot_level_activations(look, level=1), out / "activations.png")
    sizes["residual"] = save(viz.plot_residual_similarity(look), out / "residual_similarity.png")
    long_look = analysis.inspect_text(model, tokenizer, long_text)
    sizes["pca"] = save(viz.plot_pca(long_look, annotate=0), out / "pca.png")
    tokens = torch.tensor([tokenizer.eot_id, *tokenizer.encode(short_text)])
    matrices = {
        "with the k-1 shift": analysis.dependency_matrix(model, tokens),
        "shift disabled (leaks)": analysis.dependency_matrix(without_shift(model), tokens),
    }
    labels = analysis.token_chars(tokenizer, tokens.tolist())
    sizes["dependency"] = save(viz.plot_dependency(matrices, labels), out / "dependency.png")
    sizes["curves"] = save(viz.plot_training_curves(runs), out / "training_curves.png")
    sizes["shipped"] = save(shipped_curves(), out / "shipped_curves.png")
    return sizes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick and args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="hourglass-figures-"))
    out = args.out or REPO / "docs" / "figures"
    if args.runs is None:  # a smoke run never overwrites the real run's checkpoints
        args.runs = out / "runs" if args.quick else REPO / "runs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = prepare_data(args.corpus)
    model, tokenizer, runs = load_or_train(data, args)
    docs = data.val_docs
    texts = [pick_text(docs, 20, 40) if not args.quick else "the old pond",
             pick_text(docs, 40, 60 if not args.quick else 50),
             pick_text(docs, 80, 120 if not args.quick else 60)]
    sizes = draw(model, tokenizer, runs, texts, out)
    summary = {name: history.last_val_bpc for name, history in runs.items()}
    atomic_write(out / "figures.json", json.dumps(
        {"corpus": args.corpus, "val_bpc": summary, "texts": texts, "png_bytes": sizes},
        indent=1, ensure_ascii=False) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
