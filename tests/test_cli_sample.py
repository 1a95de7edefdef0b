"""`python -m hourglass_edu sample`: streams a checkpoint's continuation, with the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hourglass_edu import cli
from hourglass_edu.cli import sampling as cli_sampling
from hourglass_edu.data import CharTokenizer, prepare_data
from hourglass_edu.data.corpora import Corpus
from hourglass_edu.generation import GenerationSettings, generate
from hourglass_edu.training import PRESETS, build_model, load_model, train

DOCUMENTS = [
    "an old pond\na frog jumps in\nthe sound of water",
    "over the wintry\nforest, winds howl in rage\nwith no leaves to blow",
    "the light of a candle\nis transferred to another candle\nspring twilight",
] * 10




@pytest.fixture(scope="module")
def checkpoint(one_thread, tmp_path_factory) -> Path:
    """A real checkpoint: the smoke preset's model, trained for a few steps by `train`."""
    torch.manual_seed(0)
    data = prepare_data(Corpus(name="toy", documents=DOCUMENTS), val_fraction=0.1, seed=0,
                        tokenizer=CharTokenizer.from_documents(DOCUMENTS))
    preset = PRESETS["smoke"]
    model = build_model(preset, data.tokenizer.vocab_size)
    config = preset.train.replace(steps=4, eval_every=4, eval_batches=1, progress=False,
                                  device="cpu", precision="fp32", block_size=32)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    train(model, data, config, checkpoint_path=path)
    return path


def test_sample_options_are_the_generation_settings():
    args = cli.build_parser().parse_args([
        "sample", "--ckpt", "run", "--temperature", "0", "--top-k", "5", "--top-p", "0.5",
        "--seed", "4", "--stop", "a", "--stop", "bc", "--no-stop-at-end", "--no-cache",
        "--replace-unknown", " ",
    ])  # fmt: skip
    assert cli_sampling._generation_settings(args) == GenerationSettings(
        temperature=0.0, top_k=5, top_p=0.5, seed=4, stop=("a", "bc"), stop_at_end=False,
        use_cache=False, replace_unknown=" ",
    )  # fmt: skip
    args = cli.build_parser().parse_args(["sample", "--ckpt", "x"])
    defaults = cli_sampling._generation_settings(args)
    assert defaults == GenerationSettings(temperature=0.8)


def test_sample_streams_the_cached_generation(checkpoint, capsys):
    args = ["sample", "--ckpt", str(checkpoint), "--prompt", "an old", "--max-new-tokens", "40",
            "--temperature", "0.9", "--top-k", "10", "--top-p", "0.95", "--seed", "3",
            "--no-stop-at-end"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_model(checkpoint)
    expected = generate(model, tokenizer, "an old", 40, temperature=0.9, top_k=10, top_p=0.95,
                        seed=3, stop_at_end=False, use_cache=False)
    assert printed == "an old" + expected + "\n"
    assert len(expected) >= 40


def test_sample_reports_bad_input_without_a_traceback(checkpoint, capsys):
    assert cli.main(["sample", "--ckpt", str(checkpoint), "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", str(checkpoint), "--prompt", "ZQ~"]) == 2
    assert "replace_unknown" in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", str(checkpoint.parent / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # a run directory works as well as the file; unknown characters can be dropped on request
    assert cli.main(["sample", "--ckpt", str(checkpoint.parent), "--prompt", "ZQ~the",
                     "--replace-unknown", "", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the")  # the prompt as the model read it
